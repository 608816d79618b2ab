//! Handing a connection over to another shard, on a broker started in this
//! process: an extension claims the address `moved` and serves it on shard 1
//! only; a client whose connection the kernel gave to shard 0 attaches there,
//! and the connection moves (engine, socket and unread bytes) to shard 1,
//! which answers the attach and keeps serving it: every message the client
//! receives says it came from shard 1.

use std::sync::Arc;
use std::time::Duration;

use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{Event, LinkKey};
use tandem_shards::amqp::message::{DecodedMessage, MessageBuilder};
use tandem_shards::amqp::performative::Attach;
use tandem_shards::broker::ext::Extension;
use tandem_shards::broker::{BrokerSettings, Shard};
use tandem_shards::client::{Client, ClientOptions};
use tandem_shards::runtime::{self, ExtensionFactory};
use tandem_shards::url::BrokerUrl;

/// Serves receivers of `moved` on shard 1: one message per unit of credit,
/// naming the shard that sent it.
struct ServedOnShardOne;

impl Extension for ServedOnShardOne {
    fn claims(&self, address: &str) -> bool {
        address == "moved"
    }

    fn home(&self, _: &Shard) -> Option<usize> {
        Some(1)
    }

    fn attach(&mut self, shard: &mut Shard, conn: u64, link: LinkKey, attach: Attach) {
        if let Some(engine) = shard.engine(conn) {
            let (source, target) = (attach.source.clone(), attach.target.clone());
            engine.accept_attach(link, &attach, source, target, None);
        }
        shard.wrote_to(conn);
    }

    fn link_event(&mut self, shard: &mut Shard, conn: u64, event: &Event) {
        let Event::Credit { link, .. } = event else {
            return;
        };
        let payload = MessageBuilder {
            body: Some(Value::string(&format!("served by shard {}", shard.id))),
            ..Default::default()
        }
        .encode();
        let Some(engine) = shard.engine(conn) else {
            return;
        };
        while engine.credit(*link) > 0 {
            if engine.send(*link, b"t", &payload, true).is_none() {
                break;
            }
        }
        shard.wrote_to(conn);
    }
}

fn body(payload: &bytes::Bytes) -> Option<String> {
    DecodedMessage::decode(payload)
        .ok()
        .and_then(|m| m.body)
        .and_then(|b| b.as_str().map(str::to_owned))
}

#[test]
fn a_connection_attaching_a_claimed_address_moves_to_the_extensions_home_shard() {
    let settings = BrokerSettings {
        shards: 2,
        ..Default::default()
    };
    let factory: ExtensionFactory = Arc::new(|_| Box::new(ServedOnShardOne) as Box<dyn Extension>);
    let bind = "127.0.0.1:0".parse().expect("address");
    let running = runtime::start(settings, bind, Some(factory)).expect("broker starts");
    let url: BrokerUrl = running.addr.to_string().parse().expect("url");
    let opts = ClientOptions {
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    // Connections until the kernel gave at least two of them to shard 0 (it
    // spreads them by their source port).
    let mut on_shard_zero = 0;
    for i in 0..64 {
        if on_shard_zero >= 2 && i >= 4 {
            break;
        }
        let mut client = Client::connect(&url, &opts).expect("connect");
        let first_shard = client
            .remote_properties
            .as_ref()
            .and_then(|p| p.map_get("tandem.shard"))
            .and_then(Value::as_u64);
        if first_shard == Some(0) {
            on_shard_zero += 1;
        }
        let link = client.receiver("moved", 1).expect("attach answered");
        for round in 0..3 {
            let m = client
                .receive(Duration::from_secs(5))
                .expect("receive")
                .unwrap_or_else(|| panic!("connection {i} round {round}: no message"));
            assert_eq!(
                body(&m.payload).as_deref(),
                Some("served by shard 1"),
                "connection {i} (accepted on shard {first_shard:?}) round {round}"
            );
            // More credit: the moved connection's input is read on shard 1 too.
            client.flow(link, 1).expect("flow");
        }
        client.close().expect("close");
    }
    assert!(
        on_shard_zero >= 2,
        "the kernel gave shard 0 only {on_shard_zero} of 64 connections"
    );
    running.shutdown();
}

/// The shard a link is served on and the shard of its queue, from the
/// properties of the broker's attach.
fn link_shards(client: &Client, link: LinkKey) -> (Option<u64>, Option<u64>) {
    let props = client.link_properties(link);
    let get = |key: &str| props.and_then(|p| p.map_get(key)).and_then(Value::as_u64);
    (get("tandem.link-shard"), get("tandem.queue-shard"))
}

/// Connection placement: whichever shard the kernel hands a connection to,
/// its first link to a queue is served on the queue's shard (the connection
/// moved there); a second link on the same connection, to a queue of the
/// other shard, stays with the connection and works across the ring; and with
/// placement off, links stay where the connection was accepted.
#[test]
fn a_connections_first_queue_link_moves_it_to_the_queues_shard() {
    use tandem_shards::placement::shard_of;
    let queue_on = |shard: usize| {
        (0..100)
            .map(|i| format!("placed-{i}"))
            .find(|q| shard_of(q, 2) == shard)
            .expect("a name on each shard")
    };
    let (q0, q1) = (queue_on(0), queue_on(1));
    for placement in [true, false] {
        let settings = BrokerSettings {
            shards: 2,
            connection_placement: placement,
            ..Default::default()
        };
        let bind = "127.0.0.1:0".parse().expect("address");
        let running = runtime::start(settings, bind, None).expect("broker starts");
        let url: BrokerUrl = running.addr.to_string().parse().expect("url");
        let opts = ClientOptions {
            timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let mut accepted_on = [0, 0];
        for i in 0..16 {
            let mut client = Client::connect(&url, &opts).expect("connect");
            let first_shard = client
                .remote_properties
                .as_ref()
                .and_then(|p| p.map_get("tandem.shard"))
                .and_then(Value::as_u64)
                .expect("the broker names the accepting shard");
            accepted_on[first_shard as usize] += 1;
            let (home, away) = if i % 2 == 0 { (&q0, &q1) } else { (&q1, &q0) };
            let home_shard = shard_of(home, 2) as u64;
            let receiver = client.receiver(home, 10).expect("first link");
            let served = if placement { home_shard } else { first_shard };
            assert_eq!(
                link_shards(&client, receiver),
                (Some(served), Some(home_shard)),
                "connection {i} (accepted on {first_shard}), placement {placement}: first link"
            );
            // The second link names the other queue: it stays on the shard
            // the connection is on now.
            let sender = client.sender(away).expect("second link");
            assert_eq!(
                link_shards(&client, sender),
                (Some(served), Some(1 - home_shard)),
                "connection {i}, placement {placement}: second link"
            );
            let back = client.receiver(away, 10).expect("third link");
            let to_home = client.sender(home).expect("fourth link");
            for (link, body) in [(sender, "away"), (to_home, "home")] {
                let payload = MessageBuilder {
                    body: Some(Value::string(&format!("{body}-{i}"))),
                    ..Default::default()
                }
                .encode();
                let id = client.send(link, &payload, false).expect("send");
                assert!(
                    matches!(
                        client.outcome(id).expect("outcome"),
                        tandem_shards::amqp::performative::DeliveryState::Accepted
                    ),
                    "connection {i}: {body} not accepted"
                );
            }
            let mut got = Vec::new();
            while got.len() < 2 {
                let m = client
                    .receive(Duration::from_secs(5))
                    .expect("receive")
                    .unwrap_or_else(|| panic!("connection {i}: only {got:?} arrived"));
                let from = if m.link == receiver {
                    "home"
                } else if m.link == back {
                    "away"
                } else {
                    "?"
                };
                got.push((from, body(&m.payload).unwrap_or_default()));
                client.accept(&m).expect("accept");
            }
            got.sort();
            assert_eq!(
                got,
                vec![("away", format!("away-{i}")), ("home", format!("home-{i}"))],
                "connection {i}, placement {placement}"
            );
            client.close().expect("close");
        }
        assert!(
            accepted_on.iter().all(|n| *n > 0),
            "the kernel put all 16 connections on one shard ({accepted_on:?}): nothing moved"
        );
        running.shutdown();
    }
}
