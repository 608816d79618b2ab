//! What a consumer on the primary takes before a backup's stream reached it
//! is not sent to that backup: its dequeue cancels the waiting enqueue. On the
//! simulated cluster of the real code.

mod cluster;

use std::time::Duration;

use cluster::{running_cluster, Kind, HEARTBEAT};

#[test]
fn messages_consumed_before_a_backup_got_them_are_not_sent_and_none_is_lost() {
    for seed in cluster::seeds() {
        let mut c = running_cluster(2, seed);
        let consumer = c.add_client(Kind::Consumer, "q", 0);
        let publisher = c.add_client(Kind::Publisher, "q", 6000);
        c.clients[publisher].padding = 4000;
        assert!(c.run_until(Duration::from_secs(2), |c| c.clients[consumer]
            .received
            .len()
            > 50));
        // Backup 2 stops reading for a while (less than it takes to be
        // dropped): its window of unsettled deliveries fills and its stream
        // waits on the primary, while the consumer takes the messages.
        c.stall(2);
        c.run_for(HEARTBEAT * 3 / 2);
        c.resume(2);
        c.assert_all_settled(publisher, Duration::from_secs(20), &format!("seed {seed}"));
        let skipped = c.counter(0, "ha-consumed-not-sent");
        assert!(
            skipped > 0,
            "seed {seed}: every consumed message was still sent"
        );
        assert!(c.counter(0, "ha-consumed-not-sent-bytes") >= skipped * 4000);
        // Backup 2 has what was not consumed, and is ready: fail over to it.
        assert!(
            c.run_until(Duration::from_secs(5), |c| c.statuses()
                == ["active", "ready", "ready"]),
            "seed {seed}: {:?}",
            c.statuses()
        );
        c.kill(0);
        c.kill(1);
        assert!(c.run_until(Duration::from_secs(3), |c| c.promote(2).is_ok()));
        assert_eq!(c.drain("q", 2), Vec::<u64>::new(), "seed {seed}");
        eprintln!("seed {seed}: {skipped} consumed messages not sent to a backup");
    }
}
