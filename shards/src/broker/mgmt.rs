//! The `$management` node as a shard serves it: requests arrive on a publishing
//! link, configuration changes go through shard 0 like any other, statistics are
//! gathered from every shard (each keeps its own counters; they are summed only
//! here, on read), and the reply is routed to the request's `reply-to` queue.

use std::sync::Arc;

use bytes::Bytes;

use super::conn::{ReplyTo, Waiting};
use super::{ConfigDone, ConfigOp, Shard, ShardMsg};
use crate::access::Access;
use crate::amqp::codec::Value;
use crate::amqp::message::DecodedMessage;
use crate::amqp::performative::{condition, ErrorCondition};
use crate::attributes;
use crate::exchange::{headers_key, BindingKey, ExchangeType};
use crate::management::{attr, status, Request, Response};
use crate::stats::{ConnectionInfo, ShardReport};

/// What to do once every shard answered.
pub(super) enum AfterGather {
    Query { request: Request, reply: ReplyTo },
    DeleteQueue { name: String, reply: ReplyTo },
}

pub(super) struct Gather {
    waiting: usize,
    report: ShardReport,
    then: AfterGather,
}

fn bad(what: impl Into<String>) -> Response {
    Response::error(status::BAD_REQUEST, what)
}

fn bool_attr(body: &Value, key: &str) -> Result<Option<bool>, Response> {
    attributes::bool_attr(body, key).map_err(bad)
}

fn str_attr<'a>(body: &'a Value, key: &str) -> Result<Option<&'a str>, Response> {
    attributes::str_attr(body, key).map_err(bad)
}

fn replicate_attr(body: &Value) -> Result<Option<String>, Response> {
    attributes::replicate_attr(body).map_err(bad)
}

/// The answer to a reload: 200 with each part's outcome when all of them took, otherwise 500 naming
/// what did not (the parts that did took).
fn reload_response(parts: &[crate::reload::Reloaded]) -> Response {
    for part in parts {
        part.log("management reload");
    }
    let failed: Vec<&str> = parts
        .iter()
        .filter_map(|p| p.outcome.as_ref().err().map(String::as_str))
        .collect();
    if !failed.is_empty() {
        return Response::error(status::INTERNAL, failed.join("; "));
    }
    Response::ok(Value::Map(
        parts
            .iter()
            .map(|p| {
                let text = p
                    .outcome
                    .as_ref()
                    .map_or_else(String::as_str, String::as_str);
                (Value::string(p.what), Value::string(text))
            })
            .collect(),
    ))
}

fn status_of(e: &ErrorCondition) -> u16 {
    match e.condition.as_str() {
        condition::NOT_FOUND => status::NOT_FOUND,
        condition::PRECONDITION_FAILED => status::CONFLICT,
        condition::NOT_ALLOWED => status::FORBIDDEN,
        condition::INVALID_FIELD | condition::DECODE_ERROR => status::BAD_REQUEST,
        _ => status::INTERNAL,
    }
}

impl Shard {
    /// A request arrived on a link to `$management`.
    pub(super) fn on_management(&mut self, id: u64, payload: &Bytes) {
        let decoded = match DecodedMessage::decode(payload) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!("management: undecodable request dropped: {e}");
                return;
            }
        };
        let Some(address) = decoded.reply_to.clone() else {
            tracing::info!("management: request without reply-to dropped");
            return;
        };
        let reply = ReplyTo {
            address,
            correlation: decoded
                .message_id
                .clone()
                .or(decoded.correlation_id.clone()),
        };
        let mut request = match Request::decode(&decoded) {
            Ok(r) => r,
            Err(e) => return self.mgmt_reply(&reply, bad(e)),
        };
        request.cluster = self.is_admin_connection(id);
        let access = Access::Manage {
            operation: &request.operation,
            entity_type: &request.entity_type,
            name: request.name.as_deref(),
            durable: match request.body.map_get("durable") {
                Some(Value::Bool(b)) => Some(*b),
                _ => None,
            },
        };
        if let Err(e) = self.allowed(id, &access) {
            let why = e.description.unwrap_or(e.condition);
            return self.mgmt_reply(&reply, Response::error(status::FORBIDDEN, why));
        }
        if let Err(resp) = self.dispatch_management(request, reply.clone()) {
            self.mgmt_reply(&reply, resp);
        }
    }

    fn dispatch_management(&mut self, req: Request, reply: ReplyTo) -> Result<(), Response> {
        if self
            .ext
            .as_ref()
            .is_some_and(|e| e.manages(&req.entity_type))
        {
            self.send(
                0,
                ShardMsg::ExtRequest {
                    request: req,
                    reply,
                },
            );
            return Ok(());
        }
        let mutates = matches!(req.operation.as_str(), "CREATE" | "UPDATE" | "DELETE");
        if mutates && self.admin_only() {
            return Err(Response::error(
                status::FORBIDDEN,
                "this broker is an HA backup: replicated state can only be changed on the primary",
            ));
        }
        let name = req.name.clone().or_else(|| {
            str_attr(&req.body, "name")
                .ok()
                .flatten()
                .map(str::to_owned)
        });
        let need_name = || name.clone().ok_or_else(|| bad("missing 'name'"));
        match (req.operation.as_str(), req.entity_type.as_str()) {
            ("CREATE", "queue") => {
                let settings = self
                    .settings
                    .default_queue
                    .with_attributes(&req.body)
                    .map_err(bad)?;
                if settings.auto_delete && settings.replica_of.is_some() {
                    return Err(bad("a temporary (auto-delete) queue cannot be a replica"));
                }
                let op = ConfigOp::DeclareQueue {
                    name: Some(need_name()?),
                    settings,
                    bind: None,
                    strict: true,
                };
                self.mgmt_config(op, reply);
            }
            ("UPDATE", "queue") => {
                // Only what a queue's messages do not depend on changes in
                // place: where a replica copies from (`replica-of`; empty
                // makes it an ordinary queue again).
                let name = need_name()?;
                let Some(entry) = self.catalogue.queues.get(name.as_str()) else {
                    return Err(Response::error(
                        status::NOT_FOUND,
                        format!("queue '{name}' not found"),
                    ));
                };
                if let Value::Map(entries) = &req.body {
                    let other = entries
                        .iter()
                        .filter_map(|(k, _)| k.as_str())
                        .find(|k| !matches!(*k, "name" | "replica-of"));
                    if let Some(other) = other {
                        return Err(bad(format!(
                            "UPDATE of a queue changes only replica-of, not '{other}' (delete and create it again)"
                        )));
                    }
                }
                if req.body.map_get("replica-of").is_none() {
                    return Err(bad("UPDATE of a queue needs 'replica-of'"));
                }
                if entry.settings.auto_delete {
                    return Err(bad(format!(
                        "queue '{name}' is temporary (auto-delete): it cannot be a replica"
                    )));
                }
                let settings = entry.settings.with_attributes(&req.body).map_err(bad)?;
                self.mgmt_config(ConfigOp::ReplaceQueue { name, settings }, reply);
            }
            ("DELETE", "queue") => {
                let name = need_name()?;
                if bool_attr(&req.body, "force")?.unwrap_or(false) {
                    self.mgmt_config(
                        ConfigOp::DeleteQueue {
                            name,
                            if_unused: false,
                        },
                        reply,
                    );
                } else {
                    let Some(entry) = self.catalogue.queues.get(name.as_str()) else {
                        return Err(Response::error(
                            status::NOT_FOUND,
                            format!("queue '{name}' not found"),
                        ));
                    };
                    let owner = entry.owner;
                    self.gather(&[owner], AfterGather::DeleteQueue { name, reply });
                }
            }
            ("CREATE", "exchange") => {
                let kind_name = str_attr(&req.body, "type")?
                    .or(str_attr(&req.body, "exchange-type")?)
                    .ok_or_else(|| bad("missing 'type' (direct, topic, fanout or headers)"))?;
                let kind = ExchangeType::parse(kind_name).ok_or_else(|| {
                    bad(format!(
                        "type: '{kind_name}' is not one of direct, topic, fanout, headers"
                    ))
                })?;
                let op = ConfigOp::DeclareExchange {
                    name: need_name()?,
                    kind,
                    durable: bool_attr(&req.body, "durable")?.unwrap_or(false),
                    replicate: replicate_attr(&req.body)?,
                };
                self.mgmt_config(op, reply);
            }
            ("DELETE", "exchange") => {
                self.mgmt_config(ConfigOp::DeleteExchange { name: need_name()? }, reply)
            }
            ("CREATE", "binding") | ("DELETE", "binding") => {
                let (exchange, queue, key) = self.binding_args(&req, name.as_deref())?;
                let op = ConfigOp::binding(req.operation == "CREATE", exchange, queue, key);
                self.mgmt_config(op, reply);
            }
            ("READ" | "QUERY", "queue" | "exchange" | "binding" | "connection" | "broker") => {
                let all: Vec<usize> = (0..self.shards()).collect();
                self.gather(
                    &all,
                    AfterGather::Query {
                        request: req,
                        reply,
                    },
                );
            }
            (op, "acl") if op.eq_ignore_ascii_case(crate::acl::RELOAD_ACL_FILE) => {
                let Some(part) = self.settings.reload.acl() else {
                    return Err(Response::error(
                        status::NOT_FOUND,
                        "no acl-file is configured on this broker, so there is nothing to reload",
                    ));
                };
                self.mgmt_reply(&reply, reload_response(&[part]));
            }
            ("RELOAD", "broker") => {
                let parts = self.settings.reload.everything();
                self.mgmt_reply(&reply, reload_response(&parts));
            }
            ("CREATE" | "READ" | "UPDATE" | "DELETE" | "QUERY", t) => {
                return Err(Response::error(
                    status::NOT_IMPLEMENTED,
                    format!("{} of type '{t}' is not supported", req.operation),
                ))
            }
            (op, _) => return Err(bad(format!("unknown operation '{op}'"))),
        }
        Ok(())
    }

    /// Exchange, queue and binding key of a binding request: attributes
    /// `exchange`, `queue`, `key` (and `arguments` for headers), or a name
    /// `exchange/queue/key`.
    fn binding_args(
        &self,
        req: &Request,
        name: Option<&str>,
    ) -> Result<(String, String, BindingKey), Response> {
        let mut parts = name
            .map(|n| n.splitn(3, '/').map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default();
        parts.resize(3, String::new());
        let exchange = str_attr(&req.body, "exchange")?
            .map(str::to_owned)
            .unwrap_or(parts[0].clone());
        let queue = str_attr(&req.body, "queue")?
            .map(str::to_owned)
            .unwrap_or(parts[1].clone());
        let key = str_attr(&req.body, "key")?
            .map(str::to_owned)
            .unwrap_or(parts[2].clone());
        if exchange.is_empty() || queue.is_empty() {
            return Err(bad("a binding needs 'exchange' and 'queue'"));
        }
        let kind = self
            .catalogue
            .exchanges
            .get(exchange.as_str())
            .map(|e| e.kind)
            .ok_or_else(|| {
                Response::error(
                    status::NOT_FOUND,
                    format!("exchange '{exchange}' not found"),
                )
            })?;
        let binding_key = match kind {
            ExchangeType::Fanout => BindingKey::All,
            ExchangeType::Headers => match attr(&req.body, "arguments") {
                Some(args) => headers_key(args).ok_or_else(|| bad("arguments: must be a map"))?,
                None => {
                    return Err(bad(
                        "a headers binding needs 'arguments' (x-match and values)",
                    ))
                }
            },
            ExchangeType::Direct | ExchangeType::Topic => BindingKey::Key(key),
        };
        Ok((exchange, queue, binding_key))
    }

    /// Shard 0: a request for an entity type the extension manages.
    pub(super) fn on_ext_request(&mut self, req: Request, reply: ReplyTo) {
        let resp = self.manage(req);
        self.mgmt_reply(&reply, resp);
    }

    /// Shard 0: answers a management request of an entity type the extension
    /// manages (the management node uses it; so do simulations).
    pub fn manage(&mut self, req: Request) -> Response {
        let mut resp = None;
        let entity_type = req.entity_type.clone();
        self.with_ext_now(|ext, shard| {
            if ext.manages(&req.entity_type) {
                resp = Some(ext.manage(shard, req));
            }
        });
        resp.unwrap_or_else(|| {
            Response::error(
                status::NOT_FOUND,
                format!("no such entity type: {entity_type} (nothing on this broker manages it)"),
            )
        })
    }

    fn mgmt_config(&mut self, op: ConfigOp, reply: ReplyTo) {
        let req = self.next_req;
        self.next_req += 1;
        self.requests.insert(req, Waiting::Management(reply));
        self.send(
            0,
            ShardMsg::ConfigRequest {
                origin: self.id,
                req,
                op,
            },
        );
    }

    pub(super) fn on_management_config_reply(
        &mut self,
        reply: ReplyTo,
        result: Result<ConfigDone, ErrorCondition>,
    ) {
        let resp = match result {
            Ok(_) => Response::ok(Value::Map(Vec::new())),
            Err(e) => Response::error(status_of(&e), e.description.unwrap_or(e.condition)),
        };
        self.mgmt_reply(&reply, resp);
    }

    fn gather(&mut self, shards: &[usize], then: AfterGather) {
        let req = self.next_req;
        self.next_req += 1;
        self.gathers.insert(
            req,
            Gather {
                waiting: shards.len(),
                report: ShardReport::default(),
                then,
            },
        );
        for &s in shards {
            self.send(
                s,
                ShardMsg::StatsRequest {
                    origin: self.id,
                    req,
                },
            );
        }
    }

    /// This shard's counters.
    /// This shard's counters: owned queues, exchanges routed here,
    /// connections served (management gathers and the stats handle).
    pub fn report(&self) -> ShardReport {
        ShardReport {
            queues: self
                .queues
                .iter()
                .map(|(n, q)| {
                    let mut stats = q.stats();
                    stats.awaiting_settlement = self.holds.held(n) as u64;
                    (n.clone(), stats)
                })
                .collect(),
            exchanges: self
                .exchange_stats
                .iter()
                .map(|(n, s)| (n.clone(), *s))
                .collect(),
            connections: self.connection_infos(),
            counters: self.ext.as_ref().map(|e| e.counters()).unwrap_or_default(),
            stalls: self.stalls.clone(),
            closed: self.closed_totals,
            hold_times: self.hold_times.clone(),
            facts: self.ext.as_ref().map(|e| e.facts()).unwrap_or_default(),
            series: self
                .ext
                .as_ref()
                .map(|e| e.series(self.now))
                .unwrap_or_default(),
        }
    }

    pub(super) fn on_stats_reply(&mut self, req: u64, part: ShardReport) {
        let Some(g) = self.gathers.get_mut(&req) else {
            return;
        };
        g.report.queues.extend(part.queues);
        g.report.exchanges.extend(part.exchanges);
        g.report.connections.extend(part.connections);
        g.report.add_counters(&part.counters);
        g.report.stalls.merge(&part.stalls);
        g.report.series.extend(part.series);
        g.waiting -= 1;
        if g.waiting > 0 {
            return;
        }
        let Some(g) = self.gathers.remove(&req) else {
            return;
        };
        match g.then {
            AfterGather::Query { request, reply } => {
                let resp = self.answer_query(&request, &g.report);
                self.mgmt_reply(&reply, resp);
            }
            AfterGather::DeleteQueue { name, reply } => {
                let stats = g
                    .report
                    .queues
                    .iter()
                    .find(|(n, _)| **n == *name)
                    .map(|(_, s)| *s);
                match stats {
                    Some(s) if s.depth > 0 || s.consumers > 0 => self.mgmt_reply(
                        &reply,
                        Response::error(
                            status::CONFLICT,
                            format!(
                                "queue '{name}' has {} messages and {} consumers; delete with force to discard them",
                                s.depth, s.consumers
                            ),
                        ),
                    ),
                    _ => self.mgmt_config(ConfigOp::DeleteQueue { name, if_unused: false }, reply),
                }
            }
        }
    }

    fn answer_query(&self, req: &Request, report: &ShardReport) -> Response {
        let rows: Vec<(String, Vec<(&'static str, Value)>)> = match req.entity_type.as_str() {
            "queue" => self.queue_rows(report),
            "exchange" => self.exchange_rows(report),
            "binding" => self.binding_rows(),
            "connection" => report
                .connections
                .iter()
                .map(|c| (format!("{}:{}", c.shard, c.id), connection_row(c)))
                .collect(),
            _ => vec![(self.settings.container_id.clone(), self.broker_row(report))],
        };
        if req.operation == "READ" {
            let wanted = req.name.as_deref().unwrap_or(&self.settings.container_id);
            let row = if req.entity_type == "broker" {
                rows.into_iter().next()
            } else {
                rows.into_iter().find(|(n, _)| n == wanted)
            };
            return match row {
                Some((_, attrs)) => Response::ok(Value::Map(
                    attrs
                        .into_iter()
                        .map(|(k, v)| (Value::string(k), v))
                        .collect(),
                )),
                None => Response::error(
                    status::NOT_FOUND,
                    format!("{} '{wanted}' not found", req.entity_type),
                ),
            };
        }
        // QUERY: attributeNames + results, optionally restricted to the requested names.
        let selected: Vec<String> = match attr(&req.body, "attributeNames") {
            Some(Value::List(names)) | Some(Value::Array(names)) => names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let columns: Vec<&'static str> = rows
            .first()
            .map(|(_, a)| a.iter().map(|(k, _)| *k).collect())
            .unwrap_or_default();
        let columns: Vec<String> = if selected.is_empty() {
            columns.iter().map(|c| c.to_string()).collect()
        } else {
            selected
        };
        let results = rows
            .into_iter()
            .map(|(_, attrs)| {
                Value::List(
                    columns
                        .iter()
                        .map(|c| {
                            attrs
                                .iter()
                                .find(|(k, _)| k == c)
                                .map(|(_, v)| v.clone())
                                .unwrap_or(Value::Null)
                        })
                        .collect(),
                )
            })
            .collect();
        Response::ok(Value::Map(vec![
            (
                Value::string("attributeNames"),
                Value::List(columns.into_iter().map(Value::String).collect()),
            ),
            (Value::string("results"), Value::List(results)),
        ]))
    }

    fn queue_rows(&self, report: &ShardReport) -> Vec<(String, Vec<(&'static str, Value)>)> {
        let mut names: Vec<&Arc<str>> = self.catalogue.queues.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let entry = &self.catalogue.queues[name];
                let s = report
                    .queues
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| *s)
                    .unwrap_or_default();
                let st = &entry.settings;
                let row = vec![
                    ("name", Value::string(name)),
                    ("durable", Value::Bool(st.durable)),
                    ("auto-delete", Value::Bool(st.auto_delete)),
                    ("max-queue-size", Value::Ulong(st.max_size)),
                    ("max-queue-count", Value::Ulong(st.max_count)),
                    ("limit-policy", Value::string(st.policy.as_str())),
                    (
                        "lvq-key",
                        st.lvq_key
                            .as_deref()
                            .map(Value::string)
                            .unwrap_or(Value::Null),
                    ),
                    (
                        "replicate",
                        st.replicate
                            .as_deref()
                            .map(Value::string)
                            .unwrap_or(Value::Null),
                    ),
                    ("shard", Value::Uint(entry.owner as u32)),
                    ("depth", Value::Ulong(s.depth)),
                    ("depth-bytes", Value::Ulong(s.bytes)),
                    ("enqueues", Value::Ulong(s.enqueues)),
                    ("dequeues", Value::Ulong(s.dequeues)),
                    ("acquired", Value::Ulong(s.acquired)),
                    ("consumers", Value::Ulong(s.consumers)),
                    ("redeliveries", Value::Ulong(s.redeliveries)),
                    ("held", Value::Ulong(s.held)),
                    ("awaiting-settlement", Value::Ulong(s.awaiting_settlement)),
                    ("ring-dropped", Value::Ulong(s.ring_dropped)),
                    ("lvq-replaced", Value::Ulong(s.lvq_replaced)),
                    ("last-position", Value::Ulong(s.last_position)),
                    (
                        "replica-of",
                        st.replica_of
                            .as_deref()
                            .map(|r| Value::String(crate::url::redacted_text(r)))
                            .unwrap_or(Value::Null),
                    ),
                ];
                let mut row = row;
                if let Some(ext) = self.ext.as_ref() {
                    row.extend(ext.queue_attributes(self, name));
                }
                (name.to_string(), row)
            })
            .collect()
    }

    fn exchange_rows(&self, report: &ShardReport) -> Vec<(String, Vec<(&'static str, Value)>)> {
        let mut names: Vec<&Arc<str>> = self.catalogue.exchanges.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let ex = &self.catalogue.exchanges[name];
                let (routed, dropped) = report
                    .exchanges
                    .iter()
                    .filter(|(n, _)| n == name)
                    .fold((0, 0), |(r, d), (_, s)| (r + s.routed, d + s.dropped));
                let row = vec![
                    ("name", Value::string(name)),
                    ("type", Value::string(ex.kind.as_str())),
                    ("durable", Value::Bool(ex.durable)),
                    (
                        "replicate",
                        ex.replicate
                            .as_deref()
                            .map(Value::string)
                            .unwrap_or(Value::Null),
                    ),
                    ("bindings", Value::Ulong(ex.bindings.len() as u64)),
                    ("routed", Value::Ulong(routed)),
                    ("dropped", Value::Ulong(dropped)),
                ];
                (name.to_string(), row)
            })
            .collect()
    }

    fn binding_rows(&self) -> Vec<(String, Vec<(&'static str, Value)>)> {
        let mut rows = Vec::new();
        let mut names: Vec<&Arc<str>> = self.catalogue.exchanges.keys().collect();
        names.sort();
        for name in names {
            for b in &self.catalogue.exchanges[name].bindings {
                let (key, args) = match &b.key {
                    BindingKey::All => (String::new(), Value::Null),
                    BindingKey::Key(k) => (k.clone(), Value::Null),
                    BindingKey::Headers { match_all, values } => {
                        let mut m = vec![(
                            Value::string("x-match"),
                            Value::string(if *match_all { "all" } else { "any" }),
                        )];
                        m.extend(values.iter().map(|(k, v)| (Value::string(k), v.clone())));
                        (String::new(), Value::Map(m))
                    }
                };
                rows.push((
                    format!("{name}/{}/{key}", b.queue),
                    vec![
                        ("exchange", Value::string(name)),
                        ("queue", Value::string(&b.queue)),
                        ("key", Value::String(key)),
                        ("arguments", args),
                    ],
                ));
            }
        }
        rows
    }

    fn broker_row(&self, report: &ShardReport) -> Vec<(&'static str, Value)> {
        let (depth, bytes) = report
            .queues
            .iter()
            .fold((0, 0), |(d, b), (_, s)| (d + s.depth, b + s.bytes));
        vec![
            ("name", Value::string(&self.settings.container_id)),
            ("version", Value::string(env!("CARGO_PKG_VERSION"))),
            ("uptime", Value::Ulong(self.uptime().as_secs())),
            ("shards", Value::Uint(self.shards() as u32)),
            ("connections", Value::Ulong(report.connections.len() as u64)),
            ("queues", Value::Ulong(self.catalogue.queues.len() as u64)),
            (
                "exchanges",
                Value::Ulong(self.catalogue.exchanges.len() as u64),
            ),
            ("queue-depth", Value::Ulong(depth)),
            ("queue-bytes", Value::Ulong(bytes)),
            ("executor-stalls", Value::Ulong(report.stalls.stalls)),
            ("longest-poll-us", Value::Ulong(report.stalls.longest_us)),
            ("longest-poll-at", Value::string(&report.stalls.longest_at)),
            ("series", series_value(&report.series)),
        ]
        .into_iter()
        .chain(report.counters.iter().map(|(k, n)| (*k, Value::Ulong(*n))))
        .collect()
    }

    /// Sends a management reply to its reply-to queue (or exchange).
    pub(super) fn mgmt_reply(&mut self, reply: &ReplyTo, resp: Response) {
        let message = resp.encode(&reply.address, reply.correlation.clone());
        let mut targets = Vec::new();
        if let Some((name, entry)) = self.catalogue.queues.get_key_value(reply.address.as_str()) {
            let (queue, owner) = (name.clone(), entry.owner);
            self.send(
                owner,
                ShardMsg::Enqueue {
                    queue,
                    message,
                    ack: None,
                },
            );
            return;
        }
        if self
            .route_exchange(&reply.address, &message, &mut targets)
            .is_err()
        {
            tracing::info!(
                "management: reply-to '{}' is neither a queue nor an exchange",
                reply.address
            );
            return;
        }
        for queue in targets {
            let owner = self.owner_of(&queue);
            self.send(
                owner,
                ShardMsg::Enqueue {
                    queue,
                    message: message.clone(),
                    ack: None,
                },
            );
        }
    }
}

fn connection_row(c: &ConnectionInfo) -> Vec<(&'static str, Value)> {
    vec![
        ("name", Value::String(format!("{}:{}", c.shard, c.id))),
        ("address", Value::string(&c.address)),
        (
            "user",
            c.user.as_deref().map(Value::string).unwrap_or(Value::Null),
        ),
        ("container-id", Value::string(&c.container)),
        ("shard", Value::Uint(c.shard as u32)),
        ("frames-in", Value::Ulong(c.moved.frames_in)),
        ("frames-out", Value::Ulong(c.moved.frames_out)),
        ("messages-in", Value::Ulong(c.moved.messages_in)),
        ("messages-out", Value::Ulong(c.moved.messages_out)),
    ]
}

/// The extension's labelled gauges (an HA primary's backup lag, say) as
/// management shows them: a list of `{name, labels: {k: v}, value}`.
fn series_value(series: &[crate::stats::Series]) -> Value {
    Value::List(
        series
            .iter()
            .map(|s| {
                let labels = s
                    .labels
                    .iter()
                    .map(|(k, v)| (Value::string(k), Value::string(v)))
                    .collect();
                Value::Map(vec![
                    (Value::string("name"), Value::string(s.name)),
                    (Value::string("labels"), Value::Map(labels)),
                    (Value::string("value"), Value::Double(s.value)),
                ])
            })
            .collect(),
    )
}
