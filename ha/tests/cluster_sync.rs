//! Synchronous configuration: `SYNC` on the primary's ha-broker sends a
//! marker to every ready backup; `SYNC-STATUS` is done once each settled it,
//! that is once each applied every change before it. On the simulated cluster
//! of the real code.

mod cluster;

use std::time::Duration;

use cluster::{address, running_cluster, Cluster, Kind};
use tandem_shards::amqp::codec::Value;

fn sync(c: &mut Cluster) -> u64 {
    let resp = c.ha_request(0, "SYNC", Value::Map(Vec::new()));
    assert_eq!(resp.status, 200, "{}", resp.description);
    resp.body
        .map_get("id")
        .and_then(Value::as_u64)
        .expect("an id")
}

/// `(done, missing)` of sync `id`.
fn sync_status(c: &mut Cluster, id: u64) -> (bool, Vec<String>) {
    let body = Value::Map(vec![(Value::string("id"), Value::Ulong(id))]);
    let resp = c.ha_request(0, "SYNC-STATUS", body);
    assert_eq!(resp.status, 200, "{}", resp.description);
    let done = matches!(resp.body.map_get("done"), Some(Value::Bool(true)));
    let missing = match resp.body.map_get("missing") {
        Some(Value::List(l)) => l
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    (done, missing)
}

#[test]
fn a_sync_waits_for_every_ready_backup_and_names_the_one_missing() {
    let mut c = running_cluster(1, 3);
    // A change (a queue declared by a publisher's attach), then a sync.
    c.add_client(Kind::Publisher, "fresh", 1);
    c.run_for(Duration::from_millis(100));
    let id = sync(&mut c);
    assert!(
        c.run_until(Duration::from_secs(1), |c| sync_status(c, id).0),
        "{:?}",
        sync_status(&mut c, id)
    );
    // A stalled backup does not confirm; the status names it.
    c.stall(2);
    c.add_client(Kind::Publisher, "later", 1);
    c.run_for(Duration::from_millis(100));
    let id = sync(&mut c);
    c.run_for(Duration::from_millis(200));
    assert_eq!(sync_status(&mut c, id), (false, vec![address(2)]));
    // Resumed (before it was dropped), it applies the change, then confirms.
    c.resume(2);
    assert!(c.run_until(Duration::from_secs(1), |c| sync_status(c, id).0));
    let backup = c.brokers[2].shards[0]
        .catalogue
        .queues
        .contains_key("later");
    assert!(backup, "the backup confirmed before it had the queue");
}

#[test]
fn only_a_primary_syncs() {
    let mut c = running_cluster(1, 4);
    let resp = c.ha_request(1, "SYNC", Value::Map(Vec::new()));
    assert_eq!(resp.status, 409, "{}", resp.description);
}
