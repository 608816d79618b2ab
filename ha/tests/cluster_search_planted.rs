//! The checkers of the fault-schedule search find a bug when one is
//! planted: with `tandem_ha::planted` making primaries settle before their
//! backups acknowledge, the search must report lost settled messages within
//! its first seeds, and shrink the failing schedule to a shorter replay that
//! still fails. (A test binary of its own: the planted bug is process-wide.)

mod cluster;

use cluster::schedule::{run, search, shrink, Schedule};

#[test]
fn settling_before_the_backup_ack_is_found_as_lost_messages_and_shrunk() {
    tandem_ha::planted::plant_settle_before_backup_ack(true);
    let found = (1..=40u64).find_map(|seed| {
        let schedule = Schedule::generate(seed);
        match run(seed, &schedule) {
            Err(failure) if failure.checker == "lost" => Some((seed, schedule, failure)),
            _ => None,
        }
    });
    let Some((seed, schedule, failure)) = found else {
        panic!("the planted bug went unnoticed in 40 seeds");
    };
    eprintln!("seed {seed}: {failure}");
    let small = shrink(seed, &schedule, &failure, 60);
    assert!(
        small.0.len() < schedule.0.len(),
        "shrinking kept all {} ops",
        schedule.0.len()
    );
    let again = run(seed, &small).expect_err("the shrunk schedule still fails");
    assert_eq!(again.checker, "lost", "{again}");
    // The report names the seed and the replay line.
    let report = search([seed], 10);
    assert_eq!(report.len(), 1);
    assert!(
        report[0].contains(&format!("TANDEM_SIM_SEED={seed}")),
        "{}",
        report[0]
    );
    assert!(report[0].contains("TANDEM_SIM_REPLAY='"), "{}", report[0]);
    tandem_ha::planted::plant_settle_before_backup_ack(false);
}
