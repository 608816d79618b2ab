//! Who gets in, on a real one-shard broker driven without sockets on a
//! virtual clock: a connection that never finishes its handshake is closed
//! after `handshake-timeout`; beyond `max-handshaking` the one waiting longest
//! is closed, so silent sockets never keep a new client out; and with
//! authentication only the cluster's user may claim to be the cluster
//! (`qpid.ha-admin`), while that user may.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{Connection, ConnectionConfig, Event, Sasl};
use tandem_shards::amqp::performative::{condition, ErrorCondition};
use tandem_shards::broker::ext::Extension;
use tandem_shards::broker::{BrokerSettings, Shard};

/// Says a connection is an admin one when its open carries `qpid.ha-admin`.
struct Cluster;

impl Extension for Cluster {
    fn is_admin(&self, properties: Option<&Value>) -> bool {
        properties.is_some_and(|p| p.map_get("qpid.ha-admin").is_some())
    }
}

fn settings(max_handshaking: usize) -> BrokerSettings {
    let users: HashMap<String, String> = [("ha", "pw"), ("alice", "pw")]
        .iter()
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .collect();
    BrokerSettings {
        auth: true,
        users: Arc::new(
            tandem_shards::users::Users::parse(
                &users
                    .iter()
                    .map(|(u, p)| format!("{u}:{p}\n"))
                    .collect::<String>(),
            )
            .expect("users")
            .into(),
        ),
        cluster_users: Some(vec!["ha@QPID".into()]),
        handshake_timeout: Duration::from_secs(10),
        max_handshaking,
        ..Default::default()
    }
}

fn shard(settings: BrokerSettings, now: Instant) -> Shard {
    let mut shard = Shard::new(0, Arc::new(settings), now);
    shard.set_extension(Box::new(Cluster));
    shard
}

fn client(user: &str, admin: bool, now: Instant) -> Connection {
    Connection::client(
        ConnectionConfig {
            container_id: format!("{user}-client"),
            max_frame_size: 65536,
            channel_max: 8,
            idle_timeout: None,
            properties: admin
                .then(|| Value::Map(vec![(Value::symbol("qpid.ha-admin"), Value::Bool(true))])),
            max_message_size: 1 << 20,
            hostname: None,
            sasl: Sasl::Client {
                credentials: Some((user.into(), "pw".into())),
                skip: false,
            },
        },
        now,
    )
}

/// Moves bytes both ways until neither side has more; the client's events.
fn pump(shard: &mut Shard, conn: u64, client: &mut Connection, now: Instant) -> Vec<Event> {
    let mut events = Vec::new();
    let (mut to_client, mut to_shard) = (BytesMut::new(), BytesMut::new());
    for _ in 0..100 {
        shard.run_local();
        let a = shard.conn_output(conn);
        let b = client.has_output().then(|| client.output().split());
        if a.is_none() && b.is_none() {
            break;
        }
        if let Some(a) = a {
            to_client.extend_from_slice(&a);
            client.input(&mut to_client, now);
            while let Some(e) = client.poll_event() {
                events.push(e);
            }
        }
        if let Some(b) = b {
            to_shard.extend_from_slice(&b);
            shard.conn_input(conn, &mut to_shard, now);
        }
    }
    events
}

fn closed_with(events: &[Event]) -> Option<&ErrorCondition> {
    events.iter().find_map(|e| match e {
        Event::Closed { error, .. } => error.as_ref(),
        _ => None,
    })
}

fn closed(shard: &Shard, conn: u64) -> bool {
    shard.conn_closed(conn) || shard.conn_closing(conn)
}

#[test]
fn a_connection_that_never_opens_is_closed_after_the_handshake_timeout() {
    let start = Instant::now();
    let mut s = shard(settings(100), start);
    let silent = s.accept_connection("silent".into());
    let deadline = s.conn_tick(silent, start + Duration::from_secs(1));
    assert!(!closed(&s, silent), "closed too early");
    assert_eq!(
        deadline,
        Some(start + Duration::from_secs(10)),
        "the next tick is due when its handshake time is up"
    );
    s.conn_tick(silent, start + Duration::from_secs(10));
    assert!(
        closed(&s, silent),
        "a silent connection outlived handshake-timeout"
    );
    // One that opened in time stays, however long it is idle.
    let now = start + Duration::from_secs(11);
    let opened = s.accept_connection("client".into());
    let mut c = client("alice", false, now);
    let events = pump(&mut s, opened, &mut c, now);
    assert!(
        events.iter().any(|e| matches!(e, Event::Opened(_))),
        "{events:?}"
    );
    s.conn_tick(opened, now + Duration::from_secs(60));
    assert!(
        !closed(&s, opened),
        "an opened connection was closed as handshaking"
    );
}

#[test]
fn beyond_max_handshaking_the_connection_waiting_longest_goes() {
    let start = Instant::now();
    let mut s = shard(settings(3), start);
    let silent: Vec<u64> = (0..3)
        .map(|i| {
            s.set_now(start + Duration::from_millis(i));
            s.accept_connection(format!("silent-{i}"))
        })
        .collect();
    assert!(silent.iter().all(|&c| !closed(&s, c)));
    // A fourth pushes out the first; a real client still gets through.
    let now = start + Duration::from_millis(10);
    s.set_now(now);
    let conn = s.accept_connection("client".into());
    assert!(closed(&s, silent[0]), "the oldest silent connection stayed");
    assert!(!closed(&s, silent[1]) && !closed(&s, silent[2]));
    let mut c = client("alice", false, now);
    let events = pump(&mut s, conn, &mut c, now);
    assert!(
        events.iter().any(|e| matches!(e, Event::Opened(_))),
        "{events:?}"
    );
}

#[test]
fn only_the_clusters_user_may_claim_to_be_the_cluster() {
    let now = Instant::now();
    let mut s = shard(settings(100), now);
    let conn = s.accept_connection("alice".into());
    let mut c = client("alice", true, now);
    let events = pump(&mut s, conn, &mut c, now);
    let error = closed_with(&events).expect("alice's admin connection is closed");
    assert_eq!(error.condition, condition::UNAUTHORIZED_ACCESS);
    let said = error.description.clone().unwrap_or_default();
    assert!(
        said.contains("'alice'") && said.contains("qpid.ha-admin"),
        "{said}"
    );
    assert!(!s.is_admin_connection(conn));
    // The HA user (configured as ha@QPID, logging in as ha) may.
    let conn = s.accept_connection("ha".into());
    let mut c = client("ha", true, now);
    let events = pump(&mut s, conn, &mut c, now);
    assert!(closed_with(&events).is_none(), "{events:?}");
    assert!(s.is_admin_connection(conn));
}
