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
