//! The management protocol spoken with the `$management` node (AMQP Management
//! style): a request is a message whose application properties carry
//! `operation`, `type` (or `entityType`) and `name`, with a map body; the reply
//! goes to the request's `reply-to`, correlated by its `message-id`, with
//! `statusCode`/`statusDescription` application properties and a map body.
//! [`ManagementClient`] is the tools' side.

use std::time::Duration;

use bytes::Bytes;

use crate::amqp::codec::Value;
use crate::amqp::message::{DecodedMessage, MessageBuilder};
use crate::client::{Client, ClientError};

/// The node address.
pub const NODE: &str = "$management";

/// Replies a management client can receive before it grants more credit.
const REPLY_CREDIT: u32 = 16;

/// HTTP-like status codes, as AMQP Management uses them.
pub mod status {
    pub const OK: u16 = 200;
    pub const CREATED: u16 = 201;
    pub const NO_CONTENT: u16 = 204;
    pub const BAD_REQUEST: u16 = 400;
    pub const FORBIDDEN: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const CONFLICT: u16 = 409;
    pub const INTERNAL: u16 = 500;
    pub const NOT_IMPLEMENTED: u16 = 501;
    /// Try again shortly (e.g. a joining broker still checking its peers).
    pub const SERVICE_UNAVAILABLE: u16 = 503;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// CREATE, READ, UPDATE, DELETE, QUERY (case-insensitive on the wire).
    pub operation: String,
    /// broker, queue, exchange, binding, connection.
    pub entity_type: String,
    pub name: Option<String>,
    /// Attributes (CREATE/UPDATE), options (DELETE), or for QUERY an optional
    /// `attributeNames` list.
    pub body: Value,
    /// Asked on a connection that acts as the cluster (an admin connection of
    /// a user with the cluster's privileges); never read from the wire.
    pub cluster: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub description: String,
    pub body: Value,
}

impl Response {
    pub fn ok(body: Value) -> Response {
        Response {
            status: status::OK,
            description: "OK".into(),
            body,
        }
    }

    pub fn error(status: u16, description: impl Into<String>) -> Response {
        Response {
            status,
            description: description.into(),
            body: Value::Map(Vec::new()),
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

fn app_prop<'a>(m: &'a DecodedMessage, key: &str) -> Option<&'a Value> {
    m.application_properties
        .as_ref()
        .and_then(|p| p.map_get(key))
}

impl Request {
    pub fn new(operation: &str, entity_type: &str, name: Option<&str>, body: Value) -> Request {
        Request {
            operation: operation.to_owned(),
            entity_type: entity_type.to_owned(),
            name: name.map(str::to_owned),
            body,
            cluster: false,
        }
    }

    /// Reads a request from a message, or says what is wrong with it.
    pub fn decode(m: &DecodedMessage) -> Result<Request, String> {
        let operation = app_prop(m, "operation")
            .and_then(Value::as_str)
            .ok_or("missing application property 'operation'")?
            .to_ascii_uppercase();
        let entity_type = app_prop(m, "type")
            .or_else(|| app_prop(m, "entityType"))
            .and_then(Value::as_str)
            .map(|t| t.rsplit('.').next().unwrap_or(t).to_ascii_lowercase())
            .ok_or("missing application property 'type'")?;
        let name = app_prop(m, "name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let body = match &m.body {
            None | Some(Value::Null) => Value::Map(Vec::new()),
            Some(v @ Value::Map(_)) => v.clone(),
            Some(other) => return Err(format!("body must be a map, not {}", other.type_name())),
        };
        Ok(Request {
            operation,
            entity_type,
            name,
            body,
            cluster: false,
        })
    }

    pub fn encode(&self, reply_to: &str, message_id: u64) -> Bytes {
        let mut props = vec![
            ("operation".to_owned(), Value::string(&self.operation)),
            ("type".to_owned(), Value::string(&self.entity_type)),
        ];
        if let Some(n) = &self.name {
            props.push(("name".to_owned(), Value::string(n)));
        }
        MessageBuilder {
            message_id: Some(Value::Ulong(message_id)),
            reply_to: Some(reply_to.to_owned()),
            application_properties: props,
            body: Some(self.body.clone()),
            ..Default::default()
        }
        .encode()
    }
}

impl Response {
    pub fn encode(&self, to: &str, correlation_id: Option<Value>) -> Bytes {
        MessageBuilder {
            to: Some(to.to_owned()),
            correlation_id,
            application_properties: vec![
                ("statusCode".to_owned(), Value::Int(i32::from(self.status))),
                (
                    "statusDescription".to_owned(),
                    Value::string(&self.description),
                ),
            ],
            body: Some(self.body.clone()),
            ..Default::default()
        }
        .encode()
    }

    pub fn decode(m: &DecodedMessage) -> Result<Response, String> {
        let status = app_prop(m, "statusCode")
            .and_then(|v| match v {
                Value::Int(n) => u16::try_from(*n).ok(),
                other => other.as_u64().and_then(|n| u16::try_from(n).ok()),
            })
            .ok_or("reply has no statusCode")?;
        let description = app_prop(m, "statusDescription")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Response {
            status,
            description,
            body: m.body.clone().unwrap_or(Value::Map(Vec::new())),
        })
    }
}

/// Helpers to read attribute maps.
pub fn attr<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.map_get(key)
}

/// Builds a map value from string keys.
pub fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::string(k), v))
            .collect(),
    )
}

/// The tools' side: a connection with a sender to `$management` and a receiver
/// on a temporary reply queue.
pub struct ManagementClient {
    client: Client,
    sender: crate::amqp::connection::LinkKey,
    /// The reply receiver, whose credit is topped up after every reply.
    replies: crate::amqp::connection::LinkKey,
    reply_to: String,
    next_id: u64,
    timeout: Duration,
}

impl ManagementClient {
    pub fn new(mut client: Client, timeout: Duration) -> Result<ManagementClient, ClientError> {
        let (replies, reply_to) = client.dynamic_receiver(REPLY_CREDIT)?;
        let sender = client.sender(NODE)?;
        Ok(ManagementClient {
            client,
            sender,
            replies,
            reply_to,
            next_id: 1,
            timeout,
        })
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let payload = req.encode(&self.reply_to, id);
        self.client.send(self.sender, &payload, false)?;
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(self.timeout, "management reply"));
            }
            let Some(m) = self.client.receive(deadline - now)? else {
                continue;
            };
            self.client.accept(&m)?;
            // A long-lived client (a tool retrying) must never run out of credit.
            self.client.flow(self.replies, REPLY_CREDIT)?;
            let Some(decoded) = m.decode() else { continue };
            let correlated = match &decoded.correlation_id {
                Some(v) => v.as_u64() == Some(id),
                None => true,
            };
            if !correlated {
                continue;
            }
            return Response::decode(&decoded).map_err(ClientError::Closed);
        }
    }

    pub fn into_client(self) -> Client {
        self.client
    }

    /// Closes the connection politely.
    pub fn close(self) {
        let _ = self.client.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_round_trip_through_messages() {
        let req = Request::new(
            "create",
            "queue",
            Some("q1"),
            map(vec![("durable", Value::Bool(true))]),
        );
        let raw = req.encode("reply-q", 7);
        let decoded = DecodedMessage::decode(&raw).expect("decodes");
        let back = Request::decode(&decoded).expect("request");
        assert_eq!(back.operation, "CREATE");
        assert_eq!(back.entity_type, "queue");
        assert_eq!(back.name.as_deref(), Some("q1"));
        assert_eq!(decoded.reply_to.as_deref(), Some("reply-q"));

        let resp = Response::error(status::NOT_FOUND, "queue 'x' not found");
        let raw = resp.encode("reply-q", decoded.message_id.clone());
        let decoded = DecodedMessage::decode(&raw).expect("decodes");
        assert_eq!(decoded.correlation_id, Some(Value::Ulong(7)));
        assert_eq!(Response::decode(&decoded).expect("response"), resp);
    }

    #[test]
    fn malformed_requests_say_what_is_missing() {
        let raw = MessageBuilder {
            body: Some(Value::string("not a map")),
            application_properties: vec![("operation".into(), Value::string("READ"))],
            ..Default::default()
        }
        .encode();
        let err =
            Request::decode(&DecodedMessage::decode(&raw).expect("decodes")).expect_err("bad");
        assert!(err.contains("type"), "{err}");
    }
}
