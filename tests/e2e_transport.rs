//! The transport layer as a running broker shows it: each connection holds
//! exactly one socket descriptor in `tandemd` (reads and writes share it), and
//! both directions keep working while the broker writes and reads at once.

mod common;

use std::time::Duration;

use common::{wait_until, Broker};
use tandem_shards::client::{Client, ClientOptions};

/// Socket descriptors `pid` holds open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn each_connection_holds_one_socket_descriptor() {
    let broker = Broker::start(&["--worker-threads", "2"]);
    let url = broker.url().parse().expect("url");
    let opts = ClientOptions {
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let before = sockets(broker.pid());
    let mut clients: Vec<Client> = (0..8)
        .map(|_| Client::connect(&url, &opts).expect("connect"))
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || sockets(broker.pid())
            == before + 8),
        "8 connections should add 8 socket descriptors: {} before, {} now",
        before,
        sockets(broker.pid())
    );
    // Every connection still carries traffic both ways.
    for (i, c) in clients.iter_mut().enumerate() {
        let queue = format!("transport-{i}");
        let sender = c.sender(&queue).expect("sender");
        let id = c
            .send(sender, b"\x00\x53\x77\xa1\x02hi", false)
            .expect("send");
        c.outcome(id).expect("settled");
        let receiver = c.receiver(&queue, 10).expect("receiver");
        let got = c.receive(Duration::from_secs(5)).expect("receive");
        assert!(
            got.is_some_and(|m| m.link == receiver),
            "message back on {queue}"
        );
    }
    drop(clients);
    assert!(
        wait_until(Duration::from_secs(5), || sockets(broker.pid()) == before),
        "closed connections release their descriptors: {} before, {} now",
        before,
        sockets(broker.pid())
    );
}
