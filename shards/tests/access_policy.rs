//! The access-policy seam, on a real one-shard broker driven without sockets:
//! a policy refuses a connection, an attach, a management operation and a
//! message, each with `amqp:unauthorized-access` (403 for management), while
//! what it allows goes through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tandem_shards::access::{Access, AccessPolicy, Principal};
use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{Connection, ConnectionConfig, Event, LinkKey, Sasl};
use tandem_shards::amqp::message::{DecodedMessage, MessageBuilder};
use tandem_shards::amqp::performative::{
    condition, Attach, DeliveryState, ErrorCondition, Role, Source, Target,
};
use tandem_shards::broker::{BrokerSettings, Shard};
use tandem_shards::management::{self, Request, Response};

/// Refuses user `mallory` at the door, lets `eve` publish only to `public`
/// and manage only with READ and QUERY, refuses messages whose subject is
/// `secret`; records every question it was asked.
#[derive(Debug, Default)]
struct Policy {
    asked: Mutex<Vec<String>>,
}

impl AccessPolicy for Policy {
    fn check(&self, who: &Principal<'_>, what: &Access<'_>) -> Result<(), String> {
        if let Ok(mut asked) = self.asked.lock() {
            asked.push(format!("{:?} {what:?}", who.user));
        }
        match (who.user, what) {
            (Some("mallory"), Access::Connect { .. }) => Err("mallory may not connect".into()),
            (Some("eve"), Access::Publish { node })
                if *node != "public" && !node.starts_with('$') =>
            {
                Err(format!("eve may not publish to {node}"))
            }
            (Some("eve"), Access::Manage { operation, .. })
                if !matches!(*operation, "READ" | "QUERY") =>
            {
                Err(format!("eve may not {operation}"))
            }
            (
                _,
                Access::Send {
                    subject: Some("secret"),
                    ..
                },
            ) => Err("no secrets".into()),
            _ => Ok(()),
        }
    }

    fn checks_messages(&self) -> bool {
        true
    }
}

/// One shard and one client engine, bytes moved in memory.
struct Pair {
    shard: Shard,
    conn: u64,
    client: Connection,
    events: Vec<Event>,
    now: Instant,
}

impl Pair {
    fn new(user: &str, policy: Arc<Policy>) -> Pair {
        let now = Instant::now();
        let users: HashMap<String, String> = ["mallory", "eve", "alice"]
            .iter()
            .map(|u| (u.to_string(), "pw".to_string()))
            .collect();
        let settings = Arc::new(BrokerSettings {
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
            access: policy,
            ..Default::default()
        });
        let mut shard = Shard::new(0, settings, now);
        let conn = shard.accept_connection("test".into());
        let client = Connection::client(
            ConnectionConfig {
                container_id: "access-test".into(),
                max_frame_size: 65536,
                channel_max: 8,
                idle_timeout: None,
                properties: None,
                max_message_size: 1 << 20,
                hostname: None,
                sasl: Sasl::Client {
                    credentials: Some((user.into(), "pw".into())),
                    skip: false,
                },
            },
            now,
        );
        let mut p = Pair {
            shard,
            conn,
            client,
            events: Vec::new(),
            now,
        };
        p.pump();
        p
    }

    fn pump(&mut self) {
        let mut to_client = BytesMut::new();
        let mut to_shard = BytesMut::new();
        for _ in 0..100 {
            self.now += Duration::from_millis(1);
            self.shard.run_local();
            let a = self.shard.conn_output(self.conn);
            let b = self
                .client
                .has_output()
                .then(|| self.client.output().split());
            if a.is_none() && b.is_none() {
                return;
            }
            if let Some(a) = a {
                to_client.extend_from_slice(&a);
                self.client.input(&mut to_client, self.now);
                while let Some(e) = self.client.poll_event() {
                    self.events.push(e);
                }
            }
            if let Some(b) = b {
                to_shard.extend_from_slice(&b);
                self.shard.conn_input(self.conn, &mut to_shard, self.now);
            }
        }
    }

    fn closed_with(&self) -> Option<&ErrorCondition> {
        self.events.iter().find_map(|e| match e {
            Event::Closed { error, .. } => error.as_ref(),
            _ => None,
        })
    }

    fn session(&mut self) -> u16 {
        let channel = self.client.begin();
        self.pump();
        channel
    }

    /// Attaches a link; `None` when refused (the error is in a detach).
    fn attach(&mut self, role: Role, address: &str) -> Option<LinkKey> {
        let channel = self.session();
        let (source, target) = match role {
            Role::Sender => (
                Source::default(),
                Target {
                    address: Some(address.into()),
                    ..Default::default()
                },
            ),
            Role::Receiver => (
                Source {
                    address: Some(address.into()),
                    ..Default::default()
                },
                Target::default(),
            ),
        };
        let attach = Attach::new(
            format!("{address}-{role:?}"),
            role,
            Some(source),
            Some(target),
        );
        let link = self.client.attach(channel, attach)?;
        self.pump();
        let refused = self
            .events
            .iter()
            .any(|e| matches!(e, Event::Detached { link: l, .. } if *l == link));
        (!refused).then_some(link)
    }

    fn detach_error(&self) -> Option<&ErrorCondition> {
        self.events.iter().find_map(|e| match e {
            Event::Detached { error, .. } => error.as_ref(),
            _ => None,
        })
    }

    /// Sends one message and returns the outcome the broker settled it with.
    fn publish(&mut self, link: LinkKey, subject: &str) -> Option<DeliveryState> {
        let payload = MessageBuilder {
            subject: Some(subject.into()),
            body: Some(Value::string("hello")),
            ..Default::default()
        }
        .encode();
        let id = self.client.send(link, b"t", &payload, false)?;
        self.pump();
        self.events.iter().find_map(|e| match e {
            Event::Disposition { disposition, .. } if disposition.first == id => {
                disposition.state.clone()
            }
            _ => None,
        })
    }

    /// A management request from a dynamic reply queue; the response.
    fn manage(&mut self, req: &Request) -> Option<Response> {
        let channel = self.session();
        let dynamic = Source {
            dynamic: true,
            ..Default::default()
        };
        let reply = self
            .client
            .attach(channel, Attach::receiver("replies", dynamic))?;
        self.pump();
        let address = self.events.iter().find_map(|e| match e {
            Event::Attached { link, attach } if *link == reply => {
                attach.source.as_ref().and_then(|s| s.address.clone())
            }
            _ => None,
        })?;
        self.client.grant_credit(reply, 10, false);
        let sender = self.attach(Role::Sender, management::NODE)?;
        self.pump();
        self.client
            .send(sender, b"m", &req.encode(&address, 1), false)?;
        self.pump();
        self.events.iter().find_map(|e| match e {
            Event::Transfer { link, payload, .. } if *link == reply => {
                DecodedMessage::decode(payload)
                    .ok()
                    .and_then(|m| Response::decode(&m).ok())
            }
            _ => None,
        })
    }
}

#[test]
fn a_refused_connection_is_closed_with_unauthorized_access() {
    let policy = Arc::new(Policy::default());
    let p = Pair::new("mallory", policy.clone());
    let error = p.closed_with().expect("the broker closed the connection");
    assert_eq!(error.condition, condition::UNAUTHORIZED_ACCESS);
    assert_eq!(
        error.description.as_deref(),
        Some("mallory may not connect")
    );
    let asked = policy.asked.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(
        asked[0].starts_with("Some(\"mallory\") Connect"),
        "{asked:?}"
    );
}

#[test]
fn attaches_are_checked_per_node() {
    let mut p = Pair::new("eve", Arc::new(Policy::default()));
    assert!(p.closed_with().is_none(), "eve may connect");
    assert!(p.attach(Role::Sender, "public").is_some());
    assert!(p.attach(Role::Sender, "private").is_none());
    let error = p.detach_error().expect("refused with an error");
    assert_eq!(error.condition, condition::UNAUTHORIZED_ACCESS);
    assert_eq!(
        error.description.as_deref(),
        Some("eve may not publish to private")
    );
    // Receiving is not restricted for eve.
    assert!(p.attach(Role::Receiver, "private").is_some());
}

#[test]
fn messages_are_checked_when_the_policy_asks() {
    let mut p = Pair::new("alice", Arc::new(Policy::default()));
    let link = p.attach(Role::Sender, "q").expect("attached");
    assert_eq!(p.publish(link, "ordinary"), Some(DeliveryState::Accepted));
    match p.publish(link, "secret") {
        Some(DeliveryState::Rejected(Some(e))) => {
            assert_eq!(e.condition, condition::UNAUTHORIZED_ACCESS);
            assert_eq!(e.description.as_deref(), Some("no secrets"));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn management_operations_are_checked() {
    let mut p = Pair::new("eve", Arc::new(Policy::default()));
    let read = Request::new("QUERY", "queue", None, Value::Map(Vec::new()));
    let resp = p.manage(&read).expect("answered");
    assert_eq!(resp.status, management::status::OK, "{resp:?}");
    let mut p = Pair::new("eve", Arc::new(Policy::default()));
    let create = Request::new("CREATE", "queue", Some("made"), Value::Map(Vec::new()));
    let resp = p.manage(&create).expect("answered");
    assert_eq!(resp.status, management::status::FORBIDDEN, "{resp:?}");
    assert_eq!(resp.description, "eve may not CREATE");
}
