//! What a backup does with a stream it cannot apply, and what a primary does
//! with a link that claims to be one of its backups: on the simulated cluster
//! of the real code, with a test-driven [`cluster::Peer`] in the part of the
//! other broker.

mod cluster;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cluster::{address, running_cluster, Cluster, Kind};
use tandem_ha::stream::codec::Event as Replication;
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{Event, LinkKey};
use tandem_shards::amqp::performative::{Attach, Source};
use tandem_shards::broker::ConfigOp;
use tandem_shards::exchange::BindingKey;

const SEED: u64 = 7;

/// Broker 1 of two, whose primary (at broker 0's address) is a peer the test
/// drives; the peer accepted broker 1's replication link and made it `ready`.
struct FakePrimary {
    c: Cluster,
    peer: usize,
    link: LinkKey,
}

impl FakePrimary {
    fn new() -> FakePrimary {
        let mut c = Cluster::new(2, 2, SEED);
        c.kill(0);
        let peer = c.add_peer(&address(0));
        let (link, attach) = c
            .peer_event(peer, Duration::from_secs(2), |e| match e {
                Event::Attached { link, attach } => Some((*link, attach.clone())),
                _ => None,
            })
            .expect("broker 1 attached its replication link to the peer");
        let epoch = Value::Map(vec![(Value::symbol("tandem.ha-epoch"), Value::Ulong(1))]);
        c.with_peer(peer, |e| {
            e.accept_attach(
                link,
                &attach,
                attach.source.clone(),
                attach.target.clone(),
                Some(epoch),
            )
        });
        let mut f = FakePrimary { c, peer, link };
        let me = f.c.brokers[1].broker_id.clone();
        f.send(&[
            Replication::QueueReset {
                name: "q".into(),
                settings: Default::default(),
            },
            Replication::Members {
                epoch: 1,
                members: vec![(me, address(1), "ready".into())],
            },
        ]);
        assert!(
            f.c.run_until(Duration::from_secs(1), |c| c.status(1) == "ready"),
            "the peer's membership made broker 1 ready: {:?}",
            f.c.statuses()
        );
        f
    }

    /// Sends one delivery holding `events`; its delivery id.
    fn send(&mut self, events: &[Replication]) -> u32 {
        let mut payload = BytesMut::new();
        for e in events {
            payload.extend_from_slice(&e.encode());
        }
        self.send_raw(&payload.freeze())
    }

    fn send_raw(&mut self, payload: &Bytes) -> u32 {
        let (link, peer) = (self.link, self.peer);
        self.c.run_until(Duration::from_secs(1), |c| {
            c.peers[peer]
                .engine
                .as_ref()
                .is_some_and(|e| e.credit(link) > 0)
        });
        self.c
            .with_peer(self.peer, |e| e.send(link, b"r", payload, false))
            .flatten()
            .expect("the backup granted credit")
    }

    /// Whether the backup settled delivery `id` within a second.
    fn settled(&mut self, id: u32) -> bool {
        self.c
            .peer_event(self.peer, Duration::from_secs(1), |e| match e {
                Event::Disposition { disposition, .. }
                    if disposition.settled
                        && disposition.first <= id
                        && id <= disposition.last.unwrap_or(disposition.first) =>
                {
                    Some(())
                }
                _ => None,
            })
            .is_some()
    }

    /// Checks that `bad` is never settled, drops the link, and leaves broker 1
    /// not ready.
    fn refuses(mut self, bad: Bytes, what: &str) {
        let good = self.send(&[Replication::Enqueue {
            queue: "q".into(),
            position: 1,
            message: Bytes::from_static(b"\x00\x53\x77\xa1\x02ok"),
        }]);
        assert!(self.settled(good), "a stored enq is settled");
        let id = self.send_raw(&bad);
        assert!(
            !self.settled(id),
            "{what}: the backup settled what it did not apply"
        );
        let peer = self.peer;
        assert!(
            self.c
                .run_until(Duration::from_secs(1), |c| c.peers[peer].closed),
            "{what}: the backup kept the link"
        );
        let status = self.c.status(1);
        assert!(
            status == "joining" || status == "catchup",
            "{what}: the backup still says {status}"
        );
    }
}

#[test]
fn a_backup_never_settles_a_delivery_it_cannot_decode() {
    FakePrimary::new().refuses(
        Bytes::from_static(b"\x00\x53\x76\xa1\x03bad"),
        "undecodable",
    );
}

#[test]
fn a_backup_never_settles_an_enq_for_a_queue_it_does_not_have() {
    let bad = Replication::Enqueue {
        queue: "no-such-queue".into(),
        position: 1,
        message: Bytes::from_static(b"\x00\x53\x77\xa1\x02ok"),
    }
    .encode();
    FakePrimary::new().refuses(bad, "enq for an unknown queue");
}

#[test]
fn a_backup_skips_the_last_events_of_a_queue_the_stream_deleted() {
    let mut f = FakePrimary::new();
    // The owner's last enq may arrive after the delete (another ring on the
    // primary): the queue is gone there too, so nothing is lost by skipping it.
    f.send(&[Replication::Config(ConfigOp::DeleteQueue {
        name: "q".into(),
        if_unused: false,
    })]);
    let late = f.send(&[Replication::Enqueue {
        queue: "q".into(),
        position: 9,
        message: Bytes::from_static(b"\x00\x53\x77\xa1\x02ok"),
    }]);
    assert!(f.settled(late), "skipped and settled");
    assert_eq!(f.c.status(1), "ready");
}

/// Attaches a replication link to broker `b` as broker `victim` would, then
/// closes it.
fn impersonate(c: &mut Cluster, b: usize, victim: usize) {
    let id = c.brokers[victim].broker_id.clone();
    let epoch = c.epoch(b);
    let who = Value::Map(vec![
        (Value::symbol("broker-id"), Value::String(id.clone())),
        (Value::symbol("address"), Value::String(address(victim))),
        (Value::symbol("epoch"), Value::Ulong(epoch)),
    ]);
    let props = Value::Map(vec![(Value::symbol("qpid.ha-backup"), who)]);
    let p = c.connect_peer(b, Some(props));
    let channel = c
        .peer_event(p, Duration::from_secs(1), |e| match e {
            Event::Opened(_) => Some(()),
            _ => None,
        })
        .and_then(|()| c.with_peer(p, |e| e.begin()))
        .expect("opened");
    let source = Source {
        address: Some(tandem_ha::stream::NODE.into()),
        ..Default::default()
    };
    let attach =
        Attach::receiver(format!("ha-replication-{id}"), source).with_properties(Value::Map(vec![
            (Value::symbol("tandem.ha-broker-id"), Value::String(id)),
            (
                Value::symbol("tandem.ha-address"),
                Value::String(address(victim)),
            ),
            (Value::symbol("tandem.ha-epoch"), Value::Ulong(epoch)),
        ]));
    c.with_peer(p, |e| e.attach(channel, attach));
    c.peer_event(p, Duration::from_secs(1), |e| {
        matches!(e, Event::Attached { .. }).then_some(())
    })
    .expect("the attach was answered");
    c.with_peer(p, |e| e.close(None));
    assert!(c.run_until(Duration::from_secs(3), |c| c.peers[p].closed));
}

#[test]
fn a_second_link_with_a_backups_id_leaves_the_real_backup_guarded() {
    let mut c = running_cluster(1, SEED);
    impersonate(&mut c, 0, 1);
    let members = c.members(0);
    let real = c.brokers[1].broker_id.clone();
    assert!(
        members.iter().any(|(id, s)| *id == real && s == "ready"),
        "closing the impostor's link dropped the real backup: {members:?}"
    );
    // And the real backup still gets everything: it alone serves after the
    // primary and the other backup die.
    let p = c.add_client(Kind::Publisher, "q", 50);
    assert!(c.run_until(Duration::from_secs(3), |c| c.clients[p].settled.len() == 50));
    c.kill(0);
    c.kill(2);
    c.promote_soon(1).expect("1 is ready");
    assert_eq!(c.drain("q", 1), Vec::<u64>::new(), "settled and lost");
}

#[test]
fn a_backup_the_primary_dropped_is_not_ready_until_it_caught_up_again() {
    let mut c = running_cluster(1, SEED);
    c.stall(2);
    let p = c.add_client(Kind::Publisher, "q", 1);
    // Twice the heartbeat later the primary stops waiting for 2 and settles.
    assert!(c.run_until(cluster::HEARTBEAT * 4, |c| c.clients[p].settled.len() == 1));
    // Woken, 2 reads the primary's close: it missed a settled message, so it
    // must not be promotable until it has caught up again.
    c.resume(2);
    assert!(
        c.run_until(Duration::from_secs(1), |c| c.status(2) != "ready"),
        "a dropped backup kept saying ready"
    );
    assert!(c.run_until(Duration::from_secs(3), |c| c.status(2) == "ready"));
    c.kill(0);
    c.kill(1);
    c.promote_soon(2).expect("2 is ready again");
    assert_eq!(c.drain("q", 2), Vec::<u64>::new(), "settled and lost");
}

#[test]
fn a_backup_applies_a_delivery_across_owners_and_configuration_in_order() {
    let mut f = FakePrimary::new();
    let message = |text: &[u8]| {
        let mut m = BytesMut::from(&b"\x00\x53\x77\xa1"[..]);
        m.extend_from_slice(&[text.len() as u8]);
        m.extend_from_slice(text);
        m.freeze()
    };
    // Queues on both owners of broker 1.
    let names = ["a", "b", "c", "d", "e", "f"];
    let declare: Vec<Replication> = names
        .iter()
        .map(|n| Replication::QueueReset {
            name: n.to_string(),
            settings: Default::default(),
        })
        .collect();
    let id = f.send(&declare);
    assert!(f.settled(id));
    // Each delivery: a queue's old copy's last message, the queue deleted and
    // declared anew (the change travels from shard 0 on other rings than the
    // messages, so the stream must wait for the owner before it), a binding
    // that waits for its queue, and the new copy's first message.
    for round in 2..12u64 {
        let mut events = Vec::new();
        for n in names {
            events.extend([
                Replication::Enqueue {
                    queue: n.into(),
                    position: 2,
                    message: message(b"old"),
                },
                Replication::Config(ConfigOp::DeleteQueue {
                    name: n.into(),
                    if_unused: false,
                }),
                Replication::Config(ConfigOp::Bind {
                    exchange: "amq.direct".into(),
                    queue: n.into(),
                    key: BindingKey::Key(format!("k{round}")),
                }),
                Replication::QueueReset {
                    name: n.into(),
                    settings: Default::default(),
                },
                Replication::Enqueue {
                    queue: n.into(),
                    position: 1,
                    message: message(format!("new{round}").as_bytes()),
                },
            ]);
        }
        let id = f.send(&events);
        assert!(f.settled(id), "round {round}: applied whole and settled");
        assert_eq!(f.c.status(1), "ready", "round {round}: nothing diverged");
        for n in names {
            let held: Vec<(u64, Bytes)> = f.c.brokers[1]
                .shards
                .iter()
                .filter_map(|s| s.queue(n).map(|q| q.snapshot()))
                .flatten()
                .collect();
            let new = message(format!("new{round}").as_bytes());
            assert_eq!(
                held,
                vec![(1, new)],
                "round {round}, queue {n}: only the new copy"
            );
            let bound = f.c.brokers[1].shards[0]
                .catalogue
                .exchanges
                .get("amq.direct")
                .is_some_and(|x| {
                    x.bindings
                        .iter()
                        .any(|b| &*b.queue == n && b.key == BindingKey::Key(format!("k{round}")))
                });
            assert!(
                bound,
                "round {round}: the binding waited for {n} and was applied"
            );
        }
    }
}
