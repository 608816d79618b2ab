//! The read-only stats handle of a running broker: started in this process on
//! a free port, fed by our blocking client, read from the test's own thread
//! (outside the executors) until the shards' published counters show what the
//! client did.

use std::time::{Duration, Instant};

use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::message::MessageBuilder;
use tandem_shards::broker::BrokerSettings;
use tandem_shards::client::{Client, ClientOptions};
use tandem_shards::runtime;
use tandem_shards::url::BrokerUrl;

/// Polls `done` until it holds or `within` passes.
fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::yield_now();
    }
    done()
}

#[test]
fn another_thread_reads_every_shards_counters() {
    let settings = BrokerSettings {
        shards: 2,
        ..Default::default()
    };
    let bind = "127.0.0.1:0".parse().expect("address");
    let running = runtime::start(settings, bind, None).expect("broker starts");
    let stats = running.stats();
    assert!(
        eventually(Duration::from_secs(5), || stats
            .shards()
            .iter()
            .all(Option::is_some)),
        "every shard publishes a first snapshot at start"
    );

    let url: BrokerUrl = running.addr.to_string().parse().expect("url");
    let mut client = Client::connect(&url, &ClientOptions::default()).expect("connect");
    let link = client.sender("stats-q").expect("sender");
    for i in 0..3u64 {
        let payload = MessageBuilder {
            body: Some(Value::Ulong(i)),
            ..Default::default()
        }
        .encode();
        let id = client.send(link, &payload, false).expect("send");
        client.outcome(id).expect("settled");
    }
    assert!(
        eventually(Duration::from_secs(5), || stats.queue_depth("stats-q")
            == Some(3)
            && stats.connections() == 1),
        "published counters: {:?}",
        stats.shards()
    );
    client.close().expect("close");
    assert!(
        eventually(Duration::from_secs(5), || stats.connections() == 0),
        "the closed connection leaves the counters"
    );
    running.shutdown();
}
