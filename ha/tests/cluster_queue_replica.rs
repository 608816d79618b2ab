//! Queue replication between brokers that are not one cluster, on the
//! simulated brokers of the real code (virtual clock, seeded schedules): a
//! stand-alone broker's replica of a cluster's queue follows the messages and
//! dequeues of its primary, finds the new primary after a fail-over, and ends
//! holding exactly what the new primary holds, at the same positions.

mod cluster;

use std::collections::BTreeSet;
use std::time::Duration;

use tandem_shards::amqp::message::DecodedMessage;

use cluster::{address, running_cluster, Kind};

#[test]
fn a_replica_of_a_cluster_queue_follows_fail_over_and_ends_identical() {
    for seed in cluster::seeds() {
        let mut c = running_cluster(2, seed);
        let remote = (0..3).map(address).collect::<Vec<_>>().join(",");
        let publisher = c.add_client(Kind::Publisher, "q", 3000);
        let early = c.add_client(Kind::Consumer, "q", 500);
        let r = c.add_standalone("replica:5672", &["q"], &remote);
        assert!(
            c.run_until(Duration::from_secs(10), |c| {
                c.queue_contents(r, "q").len() > 400
                    && c.clients[early].received.len() >= 500
                    && c.clients[publisher].settled.len() >= 1500
            }),
            "seed {seed}: the replica never received 400 messages"
        );
        // The primary dies mid-stream; another is promoted, the publisher
        // fails over to it, and so does the replica, which catches up.
        c.kill(0);
        assert!(
            c.run_until(Duration::from_secs(3), |c| c.promote(1).is_ok()),
            "seed {seed}: broker 1 was never promotable"
        );
        c.assert_all_settled(publisher, Duration::from_secs(30), &format!("seed {seed}"));
        let same = |c: &mut cluster::Cluster| c.queue_contents(r, "q") == c.queue_contents(1, "q");
        assert!(
            c.run_until(Duration::from_secs(10), same),
            "seed {seed}: the replica did not catch up with the new primary"
        );
        // It follows the new primary's enqueues as they happen (so it is
        // attached there)...
        let more = c.add_client(Kind::Publisher, "q", 0);
        c.clients[more].numbered(3000, 3100);
        c.assert_all_settled(more, Duration::from_secs(10), &format!("seed {seed}"));
        let has_more = |c: &mut cluster::Cluster| {
            let held = numbers(&c.queue_contents(r, "q"));
            (3000..3100).all(|n| held.contains(&n))
        };
        assert!(
            c.run_until(Duration::from_secs(10), has_more),
            "seed {seed}: the replica did not follow the new primary's enqueues"
        );
        // ...and its dequeues.
        let late = c.add_client(Kind::Consumer, "q", 1000);
        c.clients[late].broker = 1;
        assert!(
            c.run_until(Duration::from_secs(10), |c| c.clients[late].received.len()
                >= 1000),
            "seed {seed}: the consumer received {}",
            c.clients[late].received.len()
        );
        let identical = c.run_until(Duration::from_secs(10), same);
        let (ours, theirs) = (c.queue_contents(r, "q"), c.queue_contents(1, "q"));
        assert!(
            identical,
            "seed {seed}: the replica holds {} messages ({:?}..), the new primary {} ({:?}..)",
            ours.len(),
            ours.first().map(|(p, _)| *p),
            theirs.len(),
            theirs.first().map(|(p, _)| *p)
        );
        assert!(!theirs.is_empty(), "seed {seed}: nothing left to compare");
        // Every message the publisher saw settled and no consumer took is
        // on the replica.
        let held = numbers(&ours);
        let taken: BTreeSet<u64> = [early, late]
            .iter()
            .flat_map(|&k| c.clients[k].received.iter().copied())
            .collect();
        let lost: Vec<u64> = c.clients[publisher]
            .settled
            .iter()
            .chain(&c.clients[more].settled)
            .filter(|n| !held.contains(n) && !taken.contains(n))
            .copied()
            .collect();
        assert_eq!(
            lost,
            Vec::<u64>::new(),
            "seed {seed}: settled, not on the replica"
        );
    }
}

/// The numbers the simulated publishers put in the messages of a queue.
fn numbers(contents: &[(u64, bytes::Bytes)]) -> BTreeSet<u64> {
    contents
        .iter()
        .filter_map(|(_, m)| DecodedMessage::decode(m).ok()?.body?.as_u64())
        .collect()
}
