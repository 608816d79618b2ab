//! The performatives of AMQP 1.0 transport (spec part 2.7), the SASL frames
//! (part 5.3), terminus and outcome types, each with a decoder from the described
//! list on the wire and an encoder that writes straight into the output buffer.

use bytes::{Bytes, BytesMut};

use super::codec::{CodecError, Decoder, ListWriter, Value};

/// Descriptor codes (spec: `amqp:*:list`).
pub mod code {
    pub const OPEN: u64 = 0x10;
    pub const BEGIN: u64 = 0x11;
    pub const ATTACH: u64 = 0x12;
    pub const FLOW: u64 = 0x13;
    pub const TRANSFER: u64 = 0x14;
    pub const DISPOSITION: u64 = 0x15;
    pub const DETACH: u64 = 0x16;
    pub const END: u64 = 0x17;
    pub const CLOSE: u64 = 0x18;
    pub const ERROR: u64 = 0x1d;
    pub const RECEIVED: u64 = 0x23;
    pub const ACCEPTED: u64 = 0x24;
    pub const REJECTED: u64 = 0x25;
    pub const RELEASED: u64 = 0x26;
    pub const MODIFIED: u64 = 0x27;
    pub const SOURCE: u64 = 0x28;
    pub const TARGET: u64 = 0x29;
    pub const DELETE_ON_CLOSE: u64 = 0x2b;
    pub const SASL_MECHANISMS: u64 = 0x40;
    pub const SASL_INIT: u64 = 0x41;
    pub const SASL_CHALLENGE: u64 = 0x42;
    pub const SASL_RESPONSE: u64 = 0x43;
    pub const SASL_OUTCOME: u64 = 0x44;
}

/// Link role: the sender or the receiver end of a link (`false` / `true` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sender,
    Receiver,
}

impl Role {
    fn from_bool(b: bool) -> Role {
        if b {
            Role::Receiver
        } else {
            Role::Sender
        }
    }
    fn as_bool(self) -> bool {
        self == Role::Receiver
    }
}

/// An AMQP error: condition symbol, description, info map.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorCondition {
    pub condition: String,
    pub description: Option<String>,
    pub info: Option<Value>,
}

impl ErrorCondition {
    pub fn new(condition: &str, description: impl Into<String>) -> Self {
        ErrorCondition {
            condition: condition.to_owned(),
            description: Some(description.into()),
            info: None,
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        ListWriter::new(out, code::ERROR)
            .symbol(&self.condition)
            .opt_string(self.description.as_deref())
            .opt_value(self.info.as_ref())
            .finish();
    }

    fn decode(v: Value) -> Result<Self, CodecError> {
        let mut f = Fields::described(v, code::ERROR, "error")?;
        Ok(ErrorCondition {
            condition: f
                .symbol("error.condition")?
                .ok_or(CodecError::Missing("error.condition"))?,
            description: f.string("error.description")?,
            info: f.any(),
        })
    }
}

impl std::fmt::Display for ErrorCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Either may come from a peer: shown escaped and cut.
        use crate::shown::shown;
        match &self.description {
            Some(d) => write!(f, "{}: {}", shown(&self.condition), shown(d)),
            None => write!(f, "{}", shown(&self.condition)),
        }
    }
}

/// Well-known error conditions.
pub mod condition {
    pub const INTERNAL_ERROR: &str = "amqp:internal-error";
    pub const NOT_FOUND: &str = "amqp:not-found";
    pub const UNAUTHORIZED_ACCESS: &str = "amqp:unauthorized-access";
    pub const DECODE_ERROR: &str = "amqp:decode-error";
    pub const RESOURCE_LIMIT_EXCEEDED: &str = "amqp:resource-limit-exceeded";
    pub const NOT_ALLOWED: &str = "amqp:not-allowed";
    pub const INVALID_FIELD: &str = "amqp:invalid-field";
    pub const NOT_IMPLEMENTED: &str = "amqp:not-implemented";
    pub const PRECONDITION_FAILED: &str = "amqp:precondition-failed";
    pub const FRAMING_ERROR: &str = "amqp:connection:framing-error";
    pub const CONNECTION_FORCED: &str = "amqp:connection:forced";
    pub const WINDOW_VIOLATION: &str = "amqp:session:window-violation";
    pub const UNATTACHED_HANDLE: &str = "amqp:session:unattached-handle";
    pub const HANDLE_IN_USE: &str = "amqp:session:handle-in-use";
    pub const DETACH_FORCED: &str = "amqp:link:detach-forced";
    pub const TRANSFER_LIMIT_EXCEEDED: &str = "amqp:link:transfer-limit-exceeded";
}

/// The state a delivery ends in, or an intermediate received state.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryState {
    Received {
        section_number: u32,
        section_offset: u64,
    },
    Accepted,
    Rejected(Option<ErrorCondition>),
    Released,
    Modified {
        delivery_failed: bool,
        undeliverable_here: bool,
        message_annotations: Option<Value>,
    },
}

impl DeliveryState {
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            DeliveryState::Received {
                section_number,
                section_offset,
            } => ListWriter::new(out, code::RECEIVED)
                .uint(*section_number)
                .ulong(*section_offset)
                .finish(),
            DeliveryState::Accepted => ListWriter::new(out, code::ACCEPTED).finish(),
            DeliveryState::Rejected(e) => {
                let mut w = ListWriter::new(out, code::REJECTED);
                match e {
                    Some(e) => w.with(|o| e.encode(o)),
                    None => w.null(),
                };
                w.finish()
            }
            DeliveryState::Released => ListWriter::new(out, code::RELEASED).finish(),
            DeliveryState::Modified {
                delivery_failed,
                undeliverable_here,
                message_annotations,
            } => ListWriter::new(out, code::MODIFIED)
                .flag(*delivery_failed)
                .flag(*undeliverable_here)
                .opt_value(message_annotations.as_ref())
                .finish(),
        }
    }

    fn decode(v: Value) -> Result<Self, CodecError> {
        let code = v.descriptor_code().ok_or(CodecError::WrongType {
            field: "delivery-state",
            expected: "described list",
            found: "other",
        })?;
        let mut f = Fields::described(v, code, "delivery-state")?;
        Ok(match code {
            code::RECEIVED => DeliveryState::Received {
                section_number: f.uint("received.section-number")?.unwrap_or(0),
                section_offset: f.ulong("received.section-offset")?.unwrap_or(0),
            },
            code::ACCEPTED => DeliveryState::Accepted,
            code::REJECTED => DeliveryState::Rejected(match f.any() {
                Some(e) => Some(ErrorCondition::decode(e)?),
                None => None,
            }),
            code::RELEASED => DeliveryState::Released,
            code::MODIFIED => DeliveryState::Modified {
                delivery_failed: f.bool("modified.delivery-failed")?.unwrap_or(false),
                undeliverable_here: f.bool("modified.undeliverable-here")?.unwrap_or(false),
                message_annotations: f.any(),
            },
            _ => {
                return Err(CodecError::WrongType {
                    field: "delivery-state",
                    expected: "a delivery state",
                    found: "unknown descriptor",
                })
            }
        })
    }

    /// Whether this is a terminal outcome (as opposed to `received`).
    pub fn is_terminal(&self) -> bool {
        !matches!(self, DeliveryState::Received { .. })
    }
}

/// Source terminus.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Source {
    pub address: Option<String>,
    pub durable: u32,
    pub expiry_policy: Option<String>,
    pub timeout: u32,
    pub dynamic: bool,
    pub dynamic_node_properties: Option<Value>,
    pub distribution_mode: Option<String>,
    /// filter-set: a map from symbol to (usually described) filter.
    pub filter: Option<Value>,
    pub default_outcome: Option<Value>,
    pub outcomes: Option<Value>,
    pub capabilities: Option<Value>,
}

impl Source {
    pub fn encode(&self, out: &mut BytesMut) {
        ListWriter::new(out, code::SOURCE)
            .opt_string(self.address.as_deref())
            .uint(self.durable)
            .opt_symbol(self.expiry_policy.as_deref())
            .uint(self.timeout)
            .flag(self.dynamic)
            .opt_value(self.dynamic_node_properties.as_ref())
            .opt_symbol(self.distribution_mode.as_deref())
            .opt_value(self.filter.as_ref())
            .opt_value(self.default_outcome.as_ref())
            .opt_value(self.outcomes.as_ref())
            .opt_value(self.capabilities.as_ref())
            .finish();
    }

    fn decode(v: Value) -> Result<Self, CodecError> {
        let mut f = Fields::described(v, code::SOURCE, "source")?;
        Ok(Source {
            address: f.string("source.address")?,
            durable: f.uint("source.durable")?.unwrap_or(0),
            expiry_policy: f.symbol("source.expiry-policy")?,
            timeout: f.uint("source.timeout")?.unwrap_or(0),
            dynamic: f.bool("source.dynamic")?.unwrap_or(false),
            dynamic_node_properties: f.any(),
            distribution_mode: f.symbol("source.distribution-mode")?,
            filter: f.any(),
            default_outcome: f.any(),
            outcomes: f.any(),
            capabilities: f.any(),
        })
    }
}

/// Target terminus.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Target {
    pub address: Option<String>,
    pub durable: u32,
    pub expiry_policy: Option<String>,
    pub timeout: u32,
    pub dynamic: bool,
    pub dynamic_node_properties: Option<Value>,
    pub capabilities: Option<Value>,
}

impl Target {
    pub fn encode(&self, out: &mut BytesMut) {
        ListWriter::new(out, code::TARGET)
            .opt_string(self.address.as_deref())
            .uint(self.durable)
            .opt_symbol(self.expiry_policy.as_deref())
            .uint(self.timeout)
            .flag(self.dynamic)
            .opt_value(self.dynamic_node_properties.as_ref())
            .opt_value(self.capabilities.as_ref())
            .finish();
    }

    fn decode(v: Value) -> Result<Self, CodecError> {
        let mut f = Fields::described(v, code::TARGET, "target")?;
        Ok(Target {
            address: f.string("target.address")?,
            durable: f.uint("target.durable")?.unwrap_or(0),
            expiry_policy: f.symbol("target.expiry-policy")?,
            timeout: f.uint("target.timeout")?.unwrap_or(0),
            dynamic: f.bool("target.dynamic")?.unwrap_or(false),
            dynamic_node_properties: f.any(),
            capabilities: f.any(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Open {
    pub container_id: String,
    pub hostname: Option<String>,
    pub max_frame_size: Option<u32>,
    pub channel_max: Option<u16>,
    /// Milliseconds; the peer must send something at least this often (we halve it).
    pub idle_timeout: Option<u32>,
    pub offered_capabilities: Option<Value>,
    pub desired_capabilities: Option<Value>,
    pub properties: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Begin {
    pub remote_channel: Option<u16>,
    pub next_outgoing_id: u32,
    pub incoming_window: u32,
    pub outgoing_window: u32,
    pub handle_max: Option<u32>,
    pub properties: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attach {
    pub name: String,
    pub handle: u32,
    pub role: Role,
    /// 0 unsettled, 1 settled, 2 mixed (default).
    pub snd_settle_mode: Option<u8>,
    /// 0 first (default), 1 second.
    pub rcv_settle_mode: Option<u8>,
    pub source: Option<Source>,
    pub target: Option<Target>,
    pub initial_delivery_count: Option<u32>,
    pub max_message_size: Option<u64>,
    pub offered_capabilities: Option<Value>,
    pub desired_capabilities: Option<Value>,
    pub properties: Option<Value>,
}

impl Attach {
    /// An attach of ours: `role` with its terminus; the engine assigns the
    /// handle, everything else is the spec's default.
    pub fn new(
        name: impl Into<String>,
        role: Role,
        source: Option<Source>,
        target: Option<Target>,
    ) -> Attach {
        Attach {
            name: name.into(),
            handle: 0,
            role,
            snd_settle_mode: None,
            rcv_settle_mode: None,
            source,
            target,
            initial_delivery_count: None,
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        }
    }

    /// A receiving link from `source`.
    pub fn receiver(name: impl Into<String>, source: Source) -> Attach {
        Attach::new(name, Role::Receiver, Some(source), Some(Target::default()))
    }

    /// A sending link to `target`.
    pub fn sender(name: impl Into<String>, target: Target) -> Attach {
        Attach::new(name, Role::Sender, Some(Source::default()), Some(target))
    }

    /// With these attach properties.
    pub fn with_properties(mut self, properties: Value) -> Attach {
        self.properties = Some(properties);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Flow {
    pub next_incoming_id: Option<u32>,
    pub incoming_window: u32,
    pub next_outgoing_id: u32,
    pub outgoing_window: u32,
    pub handle: Option<u32>,
    pub delivery_count: Option<u32>,
    pub link_credit: Option<u32>,
    pub available: Option<u32>,
    pub drain: bool,
    pub echo: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transfer {
    pub handle: u32,
    pub delivery_id: Option<u32>,
    pub delivery_tag: Option<Bytes>,
    pub message_format: Option<u32>,
    pub settled: Option<bool>,
    pub more: bool,
    pub rcv_settle_mode: Option<u8>,
    pub state: Option<DeliveryState>,
    pub resume: bool,
    pub aborted: bool,
    pub batchable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Disposition {
    pub role: Role,
    pub first: u32,
    pub last: Option<u32>,
    pub settled: bool,
    pub state: Option<DeliveryState>,
    pub batchable: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detach {
    pub handle: u32,
    pub closed: bool,
    pub error: Option<ErrorCondition>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct End {
    pub error: Option<ErrorCondition>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Close {
    pub error: Option<ErrorCondition>,
}

/// A frame body of the AMQP (non-SASL) layer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Performative {
    Open(Open),
    Begin(Begin),
    Attach(Attach),
    Flow(Flow),
    Transfer(Transfer),
    Disposition(Disposition),
    Detach(Detach),
    End(End),
    Close(Close),
}

impl Performative {
    pub fn name(&self) -> &'static str {
        match self {
            Performative::Open(_) => "open",
            Performative::Begin(_) => "begin",
            Performative::Attach(_) => "attach",
            Performative::Flow(_) => "flow",
            Performative::Transfer(_) => "transfer",
            Performative::Disposition(_) => "disposition",
            Performative::Detach(_) => "detach",
            Performative::End(_) => "end",
            Performative::Close(_) => "close",
        }
    }

    /// Decodes a frame body: the performative, then (for transfers) the payload.
    pub fn decode(body: Bytes) -> Result<(Performative, Bytes), CodecError> {
        let mut d = Decoder::new(body);
        let v = d.value()?;
        let payload = d.rest();
        let code = v.descriptor_code().ok_or(CodecError::WrongType {
            field: "frame body",
            expected: "a described performative",
            found: "other",
        })?;
        let perf = match code {
            code::OPEN => {
                let mut f = Fields::described(v, code, "open")?;
                Performative::Open(Open {
                    container_id: f
                        .string("open.container-id")?
                        .ok_or(CodecError::Missing("open.container-id"))?,
                    hostname: f.string("open.hostname")?,
                    max_frame_size: f.uint("open.max-frame-size")?,
                    channel_max: f.ushort("open.channel-max")?,
                    idle_timeout: f.uint("open.idle-time-out")?,
                    offered_capabilities: {
                        f.skip(2); // outgoing-locales, incoming-locales
                        f.any()
                    },
                    desired_capabilities: f.any(),
                    properties: f.any(),
                })
            }
            code::BEGIN => {
                let mut f = Fields::described(v, code, "begin")?;
                Performative::Begin(Begin {
                    remote_channel: f.ushort("begin.remote-channel")?,
                    next_outgoing_id: f
                        .uint("begin.next-outgoing-id")?
                        .ok_or(CodecError::Missing("begin.next-outgoing-id"))?,
                    incoming_window: f
                        .uint("begin.incoming-window")?
                        .ok_or(CodecError::Missing("begin.incoming-window"))?,
                    outgoing_window: f
                        .uint("begin.outgoing-window")?
                        .ok_or(CodecError::Missing("begin.outgoing-window"))?,
                    handle_max: f.uint("begin.handle-max")?,
                    properties: {
                        f.skip(2);
                        f.any()
                    },
                })
            }
            code::ATTACH => {
                let mut f = Fields::described(v, code, "attach")?;
                Performative::Attach(Attach {
                    name: f
                        .string("attach.name")?
                        .ok_or(CodecError::Missing("attach.name"))?,
                    handle: f
                        .uint("attach.handle")?
                        .ok_or(CodecError::Missing("attach.handle"))?,
                    role: Role::from_bool(
                        f.bool("attach.role")?
                            .ok_or(CodecError::Missing("attach.role"))?,
                    ),
                    snd_settle_mode: f.ubyte("attach.snd-settle-mode")?,
                    rcv_settle_mode: f.ubyte("attach.rcv-settle-mode")?,
                    source: match f.any() {
                        Some(s) => Some(Source::decode(s)?),
                        None => None,
                    },
                    target: match f.any() {
                        Some(t) => Some(Target::decode(t)?),
                        None => None,
                    },
                    initial_delivery_count: {
                        f.skip(2); // unsettled, incomplete-unsettled
                        f.uint("attach.initial-delivery-count")?
                    },
                    max_message_size: f.ulong("attach.max-message-size")?,
                    offered_capabilities: f.any(),
                    desired_capabilities: f.any(),
                    properties: f.any(),
                })
            }
            code::FLOW => {
                let mut f = Fields::described(v, code, "flow")?;
                Performative::Flow(Flow {
                    next_incoming_id: f.uint("flow.next-incoming-id")?,
                    incoming_window: f
                        .uint("flow.incoming-window")?
                        .ok_or(CodecError::Missing("flow.incoming-window"))?,
                    next_outgoing_id: f
                        .uint("flow.next-outgoing-id")?
                        .ok_or(CodecError::Missing("flow.next-outgoing-id"))?,
                    outgoing_window: f
                        .uint("flow.outgoing-window")?
                        .ok_or(CodecError::Missing("flow.outgoing-window"))?,
                    handle: f.uint("flow.handle")?,
                    delivery_count: f.uint("flow.delivery-count")?,
                    link_credit: f.uint("flow.link-credit")?,
                    available: f.uint("flow.available")?,
                    drain: f.bool("flow.drain")?.unwrap_or(false),
                    echo: f.bool("flow.echo")?.unwrap_or(false),
                })
            }
            code::TRANSFER => {
                let mut f = Fields::described(v, code, "transfer")?;
                Performative::Transfer(Transfer {
                    handle: f
                        .uint("transfer.handle")?
                        .ok_or(CodecError::Missing("transfer.handle"))?,
                    delivery_id: f.uint("transfer.delivery-id")?,
                    delivery_tag: f.binary("transfer.delivery-tag")?,
                    message_format: f.uint("transfer.message-format")?,
                    settled: f.bool("transfer.settled")?,
                    more: f.bool("transfer.more")?.unwrap_or(false),
                    rcv_settle_mode: f.ubyte("transfer.rcv-settle-mode")?,
                    state: match f.any() {
                        Some(s) => Some(DeliveryState::decode(s)?),
                        None => None,
                    },
                    resume: f.bool("transfer.resume")?.unwrap_or(false),
                    aborted: f.bool("transfer.aborted")?.unwrap_or(false),
                    batchable: f.bool("transfer.batchable")?.unwrap_or(false),
                })
            }
            code::DISPOSITION => {
                let mut f = Fields::described(v, code, "disposition")?;
                Performative::Disposition(Disposition {
                    role: Role::from_bool(
                        f.bool("disposition.role")?
                            .ok_or(CodecError::Missing("disposition.role"))?,
                    ),
                    first: f
                        .uint("disposition.first")?
                        .ok_or(CodecError::Missing("disposition.first"))?,
                    last: f.uint("disposition.last")?,
                    settled: f.bool("disposition.settled")?.unwrap_or(false),
                    state: match f.any() {
                        Some(s) => Some(DeliveryState::decode(s)?),
                        None => None,
                    },
                    batchable: f.bool("disposition.batchable")?.unwrap_or(false),
                })
            }
            code::DETACH => {
                let mut f = Fields::described(v, code, "detach")?;
                Performative::Detach(Detach {
                    handle: f
                        .uint("detach.handle")?
                        .ok_or(CodecError::Missing("detach.handle"))?,
                    closed: f.bool("detach.closed")?.unwrap_or(false),
                    error: f.error()?,
                })
            }
            code::END => {
                let mut f = Fields::described(v, code, "end")?;
                Performative::End(End { error: f.error()? })
            }
            code::CLOSE => {
                let mut f = Fields::described(v, code, "close")?;
                Performative::Close(Close { error: f.error()? })
            }
            _ => {
                return Err(CodecError::WrongType {
                    field: "frame body",
                    expected: "a performative",
                    found: "unknown descriptor",
                })
            }
        };
        Ok((perf, payload))
    }

    /// Encodes the performative (not the frame header, not a payload).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Performative::Open(o) => ListWriter::new(out, code::OPEN)
                .string(&o.container_id)
                .opt_string(o.hostname.as_deref())
                .opt_uint(o.max_frame_size)
                .with(|out| match o.channel_max {
                    Some(c) => Value::Ushort(c).encode(out),
                    None => Value::Null.encode(out),
                })
                .opt_uint(o.idle_timeout)
                .null()
                .null()
                .opt_value(o.offered_capabilities.as_ref())
                .opt_value(o.desired_capabilities.as_ref())
                .opt_value(o.properties.as_ref())
                .finish(),
            Performative::Begin(b) => {
                let mut w = ListWriter::new(out, code::BEGIN);
                match b.remote_channel {
                    Some(c) => w.ushort(c),
                    None => w.null(),
                };
                w.uint(b.next_outgoing_id)
                    .uint(b.incoming_window)
                    .uint(b.outgoing_window)
                    .opt_uint(b.handle_max)
                    .null()
                    .null()
                    .opt_value(b.properties.as_ref())
                    .finish()
            }
            Performative::Attach(a) => {
                let mut w = ListWriter::new(out, code::ATTACH);
                w.string(&a.name).uint(a.handle).bool(a.role.as_bool());
                match a.snd_settle_mode {
                    Some(m) => w.ubyte(m),
                    None => w.null(),
                };
                match a.rcv_settle_mode {
                    Some(m) => w.ubyte(m),
                    None => w.null(),
                };
                match &a.source {
                    Some(s) => w.with(|o| s.encode(o)),
                    None => w.null(),
                };
                match &a.target {
                    Some(t) => w.with(|o| t.encode(o)),
                    None => w.null(),
                };
                w.null().null().opt_uint(a.initial_delivery_count);
                match a.max_message_size {
                    Some(m) => w.ulong(m),
                    None => w.null(),
                };
                w.opt_value(a.offered_capabilities.as_ref())
                    .opt_value(a.desired_capabilities.as_ref())
                    .opt_value(a.properties.as_ref())
                    .finish()
            }
            Performative::Flow(fl) => ListWriter::new(out, code::FLOW)
                .opt_uint(fl.next_incoming_id)
                .uint(fl.incoming_window)
                .uint(fl.next_outgoing_id)
                .uint(fl.outgoing_window)
                .opt_uint(fl.handle)
                .opt_uint(fl.delivery_count)
                .opt_uint(fl.link_credit)
                .opt_uint(fl.available)
                .flag(fl.drain)
                .flag(fl.echo)
                .finish(),
            Performative::Transfer(t) => {
                let mut w = ListWriter::new(out, code::TRANSFER);
                w.uint(t.handle).opt_uint(t.delivery_id);
                match &t.delivery_tag {
                    Some(tag) => w.binary(tag),
                    None => w.null(),
                };
                w.opt_uint(t.message_format);
                match t.settled {
                    Some(s) => w.bool(s),
                    None => w.null(),
                };
                w.flag(t.more);
                match t.rcv_settle_mode {
                    Some(m) => w.ubyte(m),
                    None => w.null(),
                };
                match &t.state {
                    Some(s) => w.with(|o| s.encode(o)),
                    None => w.null(),
                };
                w.flag(t.resume).flag(t.aborted).flag(t.batchable).finish()
            }
            Performative::Disposition(d) => {
                let mut w = ListWriter::new(out, code::DISPOSITION);
                w.bool(d.role.as_bool())
                    .uint(d.first)
                    .opt_uint(d.last)
                    .flag(d.settled);
                match &d.state {
                    Some(s) => w.with(|o| s.encode(o)),
                    None => w.null(),
                };
                w.flag(d.batchable).finish()
            }
            Performative::Detach(d) => {
                let mut w = ListWriter::new(out, code::DETACH);
                w.uint(d.handle).flag(d.closed);
                match &d.error {
                    Some(e) => w.with(|o| e.encode(o)),
                    None => w.null(),
                };
                w.finish()
            }
            Performative::End(End { error }) | Performative::Close(Close { error }) => {
                let descriptor = if matches!(self, Performative::End(_)) {
                    code::END
                } else {
                    code::CLOSE
                };
                let mut w = ListWriter::new(out, descriptor);
                match error {
                    Some(e) => w.with(|o| e.encode(o)),
                    None => w.null(),
                };
                w.finish()
            }
        }
    }
}

/// SASL frame bodies.
#[derive(Debug, Clone, PartialEq)]
pub enum SaslFrame {
    Mechanisms(Vec<String>),
    Init {
        mechanism: String,
        initial_response: Option<Bytes>,
        hostname: Option<String>,
    },
    Challenge(Bytes),
    Response(Bytes),
    /// `code`: 0 ok, 1 auth, 2 sys, 3 sys-perm, 4 sys-temp; `additional_data`:
    /// what the mechanism sends with success (SCRAM's server signature).
    Outcome {
        code: u8,
        additional_data: Option<Bytes>,
    },
}

impl SaslFrame {
    pub fn decode(body: Bytes) -> Result<SaslFrame, CodecError> {
        let v = Decoder::new(body).value()?;
        let code = v.descriptor_code().ok_or(CodecError::WrongType {
            field: "sasl frame",
            expected: "described list",
            found: "other",
        })?;
        let mut f = Fields::described(v, code, "sasl")?;
        Ok(match code {
            code::SASL_MECHANISMS => {
                let mechs = match f.any() {
                    Some(Value::Array(items)) => items
                        .iter()
                        .filter_map(|m| m.as_str().map(str::to_owned))
                        .collect(),
                    Some(Value::Symbol(s)) => vec![s],
                    _ => {
                        return Err(CodecError::Missing(
                            "sasl-mechanisms.sasl-server-mechanisms",
                        ))
                    }
                };
                SaslFrame::Mechanisms(mechs)
            }
            code::SASL_INIT => SaslFrame::Init {
                mechanism: f
                    .symbol("sasl-init.mechanism")?
                    .ok_or(CodecError::Missing("sasl-init.mechanism"))?,
                initial_response: f.binary("sasl-init.initial-response")?,
                hostname: f.string("sasl-init.hostname")?,
            },
            code::SASL_CHALLENGE => {
                SaslFrame::Challenge(f.binary("sasl-challenge.challenge")?.unwrap_or_default())
            }
            code::SASL_RESPONSE => {
                SaslFrame::Response(f.binary("sasl-response.response")?.unwrap_or_default())
            }
            code::SASL_OUTCOME => SaslFrame::Outcome {
                code: f
                    .ubyte("sasl-outcome.code")?
                    .ok_or(CodecError::Missing("sasl-outcome.code"))?,
                additional_data: f.binary("sasl-outcome.additional-data")?,
            },
            _ => {
                return Err(CodecError::WrongType {
                    field: "sasl frame",
                    expected: "a SASL frame",
                    found: "unknown descriptor",
                })
            }
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            SaslFrame::Mechanisms(m) => ListWriter::new(out, code::SASL_MECHANISMS)
                .value(&Value::Array(m.iter().map(|s| Value::symbol(s)).collect()))
                .finish(),
            SaslFrame::Init {
                mechanism,
                initial_response,
                hostname,
            } => {
                let mut w = ListWriter::new(out, code::SASL_INIT);
                w.symbol(mechanism);
                match initial_response {
                    Some(r) => w.binary(r),
                    None => w.null(),
                };
                w.opt_string(hostname.as_deref()).finish()
            }
            SaslFrame::Challenge(c) => ListWriter::new(out, code::SASL_CHALLENGE)
                .binary(c)
                .finish(),
            SaslFrame::Response(r) => ListWriter::new(out, code::SASL_RESPONSE).binary(r).finish(),
            SaslFrame::Outcome {
                code,
                additional_data,
            } => {
                let mut w = ListWriter::new(out, code::SASL_OUTCOME);
                w.ubyte(*code);
                if let Some(data) = additional_data {
                    w.binary(data);
                }
                w.finish()
            }
        }
    }
}

/// Reads the fields of a described list in order, with typed accessors that
/// name the field in their errors. Missing trailing fields read as null.
struct Fields {
    items: std::vec::IntoIter<Value>,
}

impl Fields {
    fn described(v: Value, expect: u64, what: &'static str) -> Result<Fields, CodecError> {
        match v {
            Value::Described(d, body)
                if d.as_u64() == Some(expect) || matches!(*d, Value::Symbol(_)) =>
            {
                match *body {
                    Value::List(items) => Ok(Fields {
                        items: items.into_iter(),
                    }),
                    other => Err(CodecError::WrongType {
                        field: what,
                        expected: "list",
                        found: other.type_name(),
                    }),
                }
            }
            other => Err(CodecError::WrongType {
                field: what,
                expected: "described list",
                found: other.type_name(),
            }),
        }
    }

    /// The next field, `None` when null or absent.
    fn any(&mut self) -> Option<Value> {
        match self.items.next() {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn skip(&mut self, n: usize) {
        for _ in 0..n {
            self.items.next();
        }
    }

    fn wrong(field: &'static str, expected: &'static str, v: &Value) -> CodecError {
        CodecError::WrongType {
            field,
            expected,
            found: v.type_name(),
        }
    }

    fn uint(&mut self, field: &'static str) -> Result<Option<u32>, CodecError> {
        match self.any() {
            None => Ok(None),
            Some(Value::Uint(n)) => Ok(Some(n)),
            Some(v) => Err(Self::wrong(field, "uint", &v)),
        }
    }

    fn ulong(&mut self, field: &'static str) -> Result<Option<u64>, CodecError> {
        match self.any() {
            None => Ok(None),
            Some(Value::Ulong(n)) => Ok(Some(n)),
            Some(v) => Err(Self::wrong(field, "ulong", &v)),
        }
    }

    fn ushort(&mut self, field: &'static str) -> Result<Option<u16>, CodecError> {
        match self.any() {
            None => Ok(None),
            Some(Value::Ushort(n)) => Ok(Some(n)),
            Some(v) => Err(Self::wrong(field, "ushort", &v)),
        }
    }

    fn ubyte(&mut self, field: &'static str) -> Result<Option<u8>, CodecError> {
        match self.any() {
            None => Ok(None),
            Some(Value::Ubyte(n)) => Ok(Some(n)),
            Some(v) => Err(Self::wrong(field, "ubyte", &v)),
        }
    }

    fn bool(&mut self, field: &'static str) -> Result<Option<bool>, CodecError> {
        match self.any() {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(Self::wrong(field, "boolean", &v)),
        }
    }

    fn string(&mut self, field: &'static str) -> Result<Option<String>, CodecError> {
        match self.any() {
            None => Ok(None),
            // Some peers send symbols where the spec says string; accept both.
            Some(Value::String(s)) | Some(Value::Symbol(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong(field, "string", &v)),
        }
    }

    fn symbol(&mut self, field: &'static str) -> Result<Option<String>, CodecError> {
        match self.any() {
            None => Ok(None),
            Some(Value::Symbol(s)) => Ok(Some(s)),
            // Tolerate a string where a symbol belongs, but only if it could be one:
            // we may echo it back as a symbol.
            Some(Value::String(s)) if s.is_ascii() => Ok(Some(s)),
            Some(v) => Err(Self::wrong(field, "symbol", &v)),
        }
    }

    fn binary(&mut self, field: &'static str) -> Result<Option<Bytes>, CodecError> {
        match self.any() {
            None => Ok(None),
            Some(Value::Binary(b)) => Ok(Some(b)),
            Some(v) => Err(Self::wrong(field, "binary", &v)),
        }
    }

    fn error(&mut self) -> Result<Option<ErrorCondition>, CodecError> {
        match self.any() {
            None => Ok(None),
            Some(v) => Ok(Some(ErrorCondition::decode(v)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: Performative) {
        let mut out = BytesMut::new();
        p.encode(&mut out);
        let (back, payload) = Performative::decode(out.freeze()).expect("decodes");
        assert_eq!(back, p);
        assert!(payload.is_empty());
    }

    #[test]
    fn performatives_round_trip() {
        round_trip(Performative::Open(Open {
            container_id: "c1".into(),
            hostname: Some("h".into()),
            max_frame_size: Some(65536),
            channel_max: Some(255),
            idle_timeout: Some(30000),
            properties: Some(Value::Map(vec![(
                Value::symbol("product"),
                Value::string("tandem"),
            )])),
            ..Default::default()
        }));
        round_trip(Performative::Begin(Begin {
            remote_channel: Some(0),
            next_outgoing_id: 1,
            incoming_window: 2048,
            outgoing_window: 2048,
            handle_max: Some(1023),
            properties: None,
        }));
        round_trip(Performative::Attach(Attach {
            name: "l".into(),
            handle: 0,
            role: Role::Receiver,
            snd_settle_mode: Some(0),
            rcv_settle_mode: None,
            source: Some(Source {
                address: Some("q".into()),
                distribution_mode: Some("copy".into()),
                filter: Some(Value::Map(vec![(
                    Value::symbol("f"),
                    Value::Described(
                        Box::new(Value::symbol("apache.org:legacy-amqp-topic-binding:string")),
                        Box::new(Value::string("a.#")),
                    ),
                )])),
                ..Default::default()
            }),
            target: Some(Target::default()),
            initial_delivery_count: None,
            max_message_size: Some(1 << 20),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        }));
        round_trip(Performative::Flow(Flow {
            next_incoming_id: Some(5),
            incoming_window: 100,
            next_outgoing_id: 7,
            outgoing_window: 100,
            handle: Some(1),
            delivery_count: Some(3),
            link_credit: Some(500),
            available: None,
            drain: true,
            echo: false,
        }));
        round_trip(Performative::Transfer(Transfer {
            handle: 0,
            delivery_id: Some(9),
            delivery_tag: Some(Bytes::from_static(b"t")),
            message_format: Some(0),
            settled: Some(false),
            more: true,
            ..Default::default()
        }));
        round_trip(Performative::Disposition(Disposition {
            role: Role::Receiver,
            first: 1,
            last: Some(10),
            settled: true,
            state: Some(DeliveryState::Rejected(Some(ErrorCondition::new(
                condition::NOT_ALLOWED,
                "no",
            )))),
            batchable: false,
        }));
        round_trip(Performative::Detach(Detach {
            handle: 2,
            closed: true,
            error: None,
        }));
        round_trip(Performative::End(End { error: None }));
        round_trip(Performative::Close(Close {
            error: Some(ErrorCondition::new(condition::CONNECTION_FORCED, "backup")),
        }));
    }

    #[test]
    fn sasl_frames_round_trip() {
        for f in [
            SaslFrame::Mechanisms(vec!["ANONYMOUS".into(), "PLAIN".into()]),
            SaslFrame::Init {
                mechanism: "PLAIN".into(),
                initial_response: Some(Bytes::from_static(b"\0u\0p")),
                hostname: None,
            },
            SaslFrame::Outcome {
                code: 1,
                additional_data: None,
            },
        ] {
            let mut out = BytesMut::new();
            f.encode(&mut out);
            assert_eq!(SaslFrame::decode(out.freeze()).expect("decodes"), f);
        }
    }

    #[test]
    fn transfer_payload_follows_performative() {
        let mut out = BytesMut::new();
        Performative::Transfer(Transfer {
            handle: 1,
            delivery_id: Some(0),
            delivery_tag: Some(Bytes::from_static(b"x")),
            ..Default::default()
        })
        .encode(&mut out);
        out.extend_from_slice(b"payload");
        let (_, payload) = Performative::decode(out.freeze()).expect("decodes");
        assert_eq!(&payload[..], b"payload");
    }

    #[test]
    fn wrong_field_type_names_the_field() {
        let v = Value::Described(
            Box::new(Value::Ulong(code::DETACH)),
            Box::new(Value::List(vec![Value::string("not a handle")])),
        );
        let err = Performative::decode(v.to_bytes()).expect_err("must fail");
        assert!(err.to_string().contains("detach.handle"), "{err}");
    }
}
