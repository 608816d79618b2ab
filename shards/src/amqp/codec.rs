//! The AMQP 1.0 type system (spec part 1): a [`Value`] tree, its encoder, and a
//! decoder that slices binary payloads out of the read buffer instead of copying them.
//!
//! Hot-path performatives do not go through `Value` when they are encoded: see
//! [`ListWriter`], which writes a described list field by field straight into the
//! output buffer and drops trailing nulls, as the spec allows.

use bytes::{BufMut, Bytes, BytesMut};

/// Why a byte sequence is not a valid AMQP value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The buffer ended in the middle of a value: a frame was truncated or a size lies.
    #[error("truncated value: needed {needed} more bytes at offset {at}")]
    Truncated { at: usize, needed: usize },
    /// A format code the spec does not define (or reserves).
    #[error("unknown format code 0x{code:02x} at offset {at}")]
    UnknownFormatCode { at: usize, code: u8 },
    /// A string or symbol that is not valid UTF-8 / ASCII.
    #[error("invalid {what} at offset {at}")]
    InvalidText { at: usize, what: &'static str },
    /// A compound's declared count cannot fit in its declared size.
    #[error("malformed {what} at offset {at}: {why}")]
    Malformed {
        at: usize,
        what: &'static str,
        why: &'static str,
    },
    /// Nesting deeper than we are prepared to follow (defends the stack).
    #[error("values nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    /// A well-formed value of the wrong type where a field needs another.
    #[error("field {field}: expected {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    /// A mandatory field was absent or null.
    #[error("mandatory field {0} is missing")]
    Missing(&'static str),
}

/// How deep compound values may nest before we refuse them.
const MAX_DEPTH: usize = 32;

/// An AMQP 1.0 value. Binary payloads are `Bytes` slices of the buffer they came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Ubyte(u8),
    Ushort(u16),
    Uint(u32),
    Ulong(u64),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Decimal32([u8; 4]),
    Decimal64([u8; 8]),
    Decimal128([u8; 16]),
    Char(char),
    Timestamp(i64),
    Uuid([u8; 16]),
    Binary(Bytes),
    String(String),
    Symbol(String),
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
    /// Homogeneous array; every element has the same constructor when encoded.
    Array(Vec<Value>),
    Described(Box<Value>, Box<Value>),
}

impl Value {
    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Ubyte(_) => "ubyte",
            Value::Ushort(_) => "ushort",
            Value::Uint(_) => "uint",
            Value::Ulong(_) => "ulong",
            Value::Byte(_) => "byte",
            Value::Short(_) => "short",
            Value::Int(_) => "int",
            Value::Long(_) => "long",
            Value::Float(_) => "float",
            Value::Double(_) => "double",
            Value::Decimal32(_) => "decimal32",
            Value::Decimal64(_) => "decimal64",
            Value::Decimal128(_) => "decimal128",
            Value::Char(_) => "char",
            Value::Timestamp(_) => "timestamp",
            Value::Uuid(_) => "uuid",
            Value::Binary(_) => "binary",
            Value::String(_) => "string",
            Value::Symbol(_) => "symbol",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Array(_) => "array",
            Value::Described(..) => "described",
        }
    }

    pub fn symbol(s: &str) -> Value {
        Value::Symbol(s.to_owned())
    }

    pub fn string(s: &str) -> Value {
        Value::String(s.to_owned())
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The text of a string or symbol.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::Symbol(s) => Some(s),
            _ => None,
        }
    }

    /// Any unsigned or non-negative signed integer, widened.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Ubyte(v) => Some(v.into()),
            Value::Ushort(v) => Some(v.into()),
            Value::Uint(v) => Some(v.into()),
            Value::Ulong(v) => Some(v),
            Value::Byte(v) => u64::try_from(v).ok(),
            Value::Short(v) => u64::try_from(v).ok(),
            Value::Int(v) => u64::try_from(v).ok(),
            Value::Long(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Looks a key up in a map value by string or symbol text.
    pub fn map_get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The descriptor code of a described value with a numeric descriptor.
    pub fn descriptor_code(&self) -> Option<u64> {
        match self {
            Value::Described(d, _) => match **d {
                Value::Ulong(c) => Some(c),
                _ => None,
            },
            _ => None,
        }
    }

    /// Encodes this value onto the end of `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        encode_value(self, out);
    }

    /// The encoded bytes of this value.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

// ---------------------------------------------------------------------------
// Encoding

fn encode_value(v: &Value, out: &mut BytesMut) {
    match v {
        Value::Null => out.put_u8(0x40),
        Value::Bool(true) => out.put_u8(0x41),
        Value::Bool(false) => out.put_u8(0x42),
        Value::Ubyte(n) => {
            out.put_u8(0x50);
            out.put_u8(*n);
        }
        Value::Ushort(n) => {
            out.put_u8(0x60);
            out.put_u16(*n);
        }
        Value::Uint(n) => put_uint(out, *n),
        Value::Ulong(n) => put_ulong(out, *n),
        Value::Byte(n) => {
            out.put_u8(0x51);
            out.put_i8(*n);
        }
        Value::Short(n) => {
            out.put_u8(0x61);
            out.put_i16(*n);
        }
        Value::Int(n) => {
            if let Ok(small) = i8::try_from(*n) {
                out.put_u8(0x54);
                out.put_i8(small);
            } else {
                out.put_u8(0x71);
                out.put_i32(*n);
            }
        }
        Value::Long(n) => {
            if let Ok(small) = i8::try_from(*n) {
                out.put_u8(0x55);
                out.put_i8(small);
            } else {
                out.put_u8(0x81);
                out.put_i64(*n);
            }
        }
        Value::Float(f) => {
            out.put_u8(0x72);
            out.put_f32(*f);
        }
        Value::Double(f) => {
            out.put_u8(0x82);
            out.put_f64(*f);
        }
        Value::Decimal32(b) => {
            out.put_u8(0x74);
            out.put_slice(b);
        }
        Value::Decimal64(b) => {
            out.put_u8(0x84);
            out.put_slice(b);
        }
        Value::Decimal128(b) => {
            out.put_u8(0x94);
            out.put_slice(b);
        }
        Value::Char(c) => {
            out.put_u8(0x73);
            out.put_u32(*c as u32);
        }
        Value::Timestamp(t) => {
            out.put_u8(0x83);
            out.put_i64(*t);
        }
        Value::Uuid(u) => {
            out.put_u8(0x98);
            out.put_slice(u);
        }
        Value::Binary(b) => put_binary(out, b),
        Value::String(s) => put_string(out, s),
        Value::Symbol(s) => put_symbol(out, s),
        Value::List(items) => {
            if items.is_empty() {
                out.put_u8(0x45);
            } else {
                let start = begin_compound(out, 0xd0);
                for item in items {
                    encode_value(item, out);
                }
                end_compound(out, start, items.len());
            }
        }
        Value::Map(entries) => {
            let start = begin_compound(out, 0xd1);
            for (k, v) in entries {
                encode_value(k, out);
                encode_value(v, out);
            }
            end_compound(out, start, entries.len() * 2);
        }
        Value::Array(items) => encode_array(items, out),
        Value::Described(d, v) => {
            out.put_u8(0x00);
            encode_value(d, out);
            encode_value(v, out);
        }
    }
}

/// Writes a 32-bit compound header (code, size placeholder, count placeholder);
/// returns where it started so [`end_compound`] can patch the sizes.
fn begin_compound(out: &mut BytesMut, code: u8) -> usize {
    let start = out.len();
    out.put_u8(code);
    out.put_u32(0);
    out.put_u32(0);
    start
}

fn end_compound(out: &mut BytesMut, start: usize, count: usize) {
    let size = (out.len() - start - 5) as u32;
    out[start + 1..start + 5].copy_from_slice(&size.to_be_bytes());
    out[start + 5..start + 9].copy_from_slice(&(count as u32).to_be_bytes());
}

/// Arrays use one constructor for all elements; we always use the wide form of the
/// element type so every element has the same width.
fn encode_array(items: &[Value], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(0xf0);
    out.put_u32(0);
    out.put_u32(items.len() as u32);
    match items.first() {
        None => out.put_u8(0x40),
        Some(first) => {
            let ctor = array_constructor(first);
            if let Value::Described(d, _) = first {
                out.put_u8(0x00);
                encode_value(d, out);
            }
            out.put_u8(ctor);
            for item in items {
                let inner = match item {
                    Value::Described(_, v) => v,
                    v => v,
                };
                encode_array_element(ctor, inner, out);
            }
        }
    }
    let size = (out.len() - start - 5) as u32;
    out[start + 1..start + 5].copy_from_slice(&size.to_be_bytes());
}

fn array_constructor(v: &Value) -> u8 {
    match v {
        Value::Null => 0x40,
        Value::Bool(_) => 0x56,
        Value::Ubyte(_) => 0x50,
        Value::Ushort(_) => 0x60,
        Value::Uint(_) => 0x70,
        Value::Ulong(_) => 0x80,
        Value::Byte(_) => 0x51,
        Value::Short(_) => 0x61,
        Value::Int(_) => 0x71,
        Value::Long(_) => 0x81,
        Value::Float(_) => 0x72,
        Value::Double(_) => 0x82,
        Value::Decimal32(_) => 0x74,
        Value::Decimal64(_) => 0x84,
        Value::Decimal128(_) => 0x94,
        Value::Char(_) => 0x73,
        Value::Timestamp(_) => 0x83,
        Value::Uuid(_) => 0x98,
        Value::Binary(_) => 0xb0,
        Value::String(_) => 0xb1,
        Value::Symbol(_) => 0xb3,
        Value::List(_) => 0xd0,
        Value::Map(_) => 0xd1,
        Value::Array(_) => 0xf0,
        Value::Described(_, v) => array_constructor(v),
    }
}

/// Encodes an element body (without constructor) for the given wide constructor.
/// Elements of a different type than the first are encoded as null-equivalents would
/// be wrong, so they are coerced through their own full encoding minus constructor.
fn encode_array_element(ctor: u8, v: &Value, out: &mut BytesMut) {
    let mut tmp = BytesMut::new();
    match (ctor, v) {
        (0x56, Value::Bool(b)) => out.put_u8(u8::from(*b)),
        (0x70, Value::Uint(n)) => out.put_u32(*n),
        (0x80, Value::Ulong(n)) => out.put_u64(*n),
        (0x71, Value::Int(n)) => out.put_i32(*n),
        (0x81, Value::Long(n)) => out.put_i64(*n),
        (0xb0, Value::Binary(b)) => {
            out.put_u32(b.len() as u32);
            out.put_slice(b);
        }
        (0xb1, Value::String(s)) | (0xb3, Value::Symbol(s)) => {
            out.put_u32(s.len() as u32);
            out.put_slice(s.as_bytes());
        }
        (0xd0, Value::List(items)) => {
            let start = out.len();
            out.put_u32(0);
            out.put_u32(items.len() as u32);
            for item in items {
                encode_value(item, out);
            }
            let size = (out.len() - start - 4) as u32;
            out[start..start + 4].copy_from_slice(&size.to_be_bytes());
        }
        (0xd1, Value::Map(entries)) => {
            let start = out.len();
            out.put_u32(0);
            out.put_u32((entries.len() * 2) as u32);
            for (k, v) in entries {
                encode_value(k, out);
                encode_value(v, out);
            }
            let size = (out.len() - start - 4) as u32;
            out[start..start + 4].copy_from_slice(&size.to_be_bytes());
        }
        (0xf0, Value::Array(items)) => {
            encode_array(items, &mut tmp);
            out.put_slice(&tmp[1..]);
        }
        (_, other) => {
            // Fixed-width types: their full encoding is constructor + body, and we
            // chose the constructor the full encoding uses for them.
            encode_value(other, &mut tmp);
            out.put_slice(&tmp[1..]);
        }
    }
}

pub fn put_uint(out: &mut BytesMut, n: u32) {
    if n == 0 {
        out.put_u8(0x43);
    } else if n < 256 {
        out.put_u8(0x52);
        out.put_u8(n as u8);
    } else {
        out.put_u8(0x70);
        out.put_u32(n);
    }
}

pub fn put_ulong(out: &mut BytesMut, n: u64) {
    if n == 0 {
        out.put_u8(0x44);
    } else if n < 256 {
        out.put_u8(0x53);
        out.put_u8(n as u8);
    } else {
        out.put_u8(0x80);
        out.put_u64(n);
    }
}

pub fn put_binary(out: &mut BytesMut, b: &[u8]) {
    if b.len() < 256 {
        out.put_u8(0xa0);
        out.put_u8(b.len() as u8);
    } else {
        out.put_u8(0xb0);
        out.put_u32(b.len() as u32);
    }
    out.put_slice(b);
}

pub fn put_string(out: &mut BytesMut, s: &str) {
    if s.len() < 256 {
        out.put_u8(0xa1);
        out.put_u8(s.len() as u8);
    } else {
        out.put_u8(0xb1);
        out.put_u32(s.len() as u32);
    }
    out.put_slice(s.as_bytes());
}

pub fn put_symbol(out: &mut BytesMut, s: &str) {
    if s.len() < 256 {
        out.put_u8(0xa3);
        out.put_u8(s.len() as u8);
    } else {
        out.put_u8(0xb3);
        out.put_u32(s.len() as u32);
    }
    out.put_slice(s.as_bytes());
}

/// Writes a described list (a performative, a section, an outcome) field by field,
/// without building a `Value` tree. Trailing null fields are dropped on `finish`.
pub struct ListWriter<'a> {
    out: &'a mut BytesMut,
    /// Offset of the list's format code, to patch size and count.
    list_start: usize,
    /// Fields written so far (including nulls).
    count: usize,
    /// Buffer length and field count just after the last non-null field.
    keep_len: usize,
    keep_count: usize,
}

impl<'a> ListWriter<'a> {
    pub fn new(out: &'a mut BytesMut, descriptor: u64) -> Self {
        out.put_u8(0x00);
        put_ulong(out, descriptor);
        let list_start = begin_compound(out, 0xd0);
        let keep_len = out.len();
        ListWriter {
            out,
            list_start,
            count: 0,
            keep_len,
            keep_count: 0,
        }
    }

    fn kept(&mut self) -> &mut Self {
        self.count += 1;
        self.keep_len = self.out.len();
        self.keep_count = self.count;
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.out.put_u8(0x40);
        self.count += 1;
        self
    }

    pub fn uint(&mut self, n: u32) -> &mut Self {
        put_uint(self.out, n);
        self.kept()
    }

    pub fn opt_uint(&mut self, n: Option<u32>) -> &mut Self {
        match n {
            Some(n) => self.uint(n),
            None => self.null(),
        }
    }

    pub fn ushort(&mut self, n: u16) -> &mut Self {
        self.out.put_u8(0x60);
        self.out.put_u16(n);
        self.kept()
    }

    pub fn ubyte(&mut self, n: u8) -> &mut Self {
        self.out.put_u8(0x50);
        self.out.put_u8(n);
        self.kept()
    }

    pub fn ulong(&mut self, n: u64) -> &mut Self {
        put_ulong(self.out, n);
        self.kept()
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.out.put_u8(if b { 0x41 } else { 0x42 });
        self.kept()
    }

    /// A boolean whose default is false: written as null when false.
    pub fn flag(&mut self, b: bool) -> &mut Self {
        if b {
            self.bool(true)
        } else {
            self.null()
        }
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        put_string(self.out, s);
        self.kept()
    }

    pub fn opt_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.string(s),
            None => self.null(),
        }
    }

    pub fn symbol(&mut self, s: &str) -> &mut Self {
        put_symbol(self.out, s);
        self.kept()
    }

    pub fn opt_symbol(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.symbol(s),
            None => self.null(),
        }
    }

    pub fn binary(&mut self, b: &[u8]) -> &mut Self {
        put_binary(self.out, b);
        self.kept()
    }

    pub fn value(&mut self, v: &Value) -> &mut Self {
        if v.is_null() {
            return self.null();
        }
        encode_value(v, self.out);
        self.kept()
    }

    pub fn opt_value(&mut self, v: Option<&Value>) -> &mut Self {
        match v {
            Some(v) => self.value(v),
            None => self.null(),
        }
    }

    /// A field written by a closure (a nested described type); `None` from the
    /// closure's perspective is impossible: call `null()` instead.
    pub fn with(&mut self, f: impl FnOnce(&mut BytesMut)) -> &mut Self {
        f(self.out);
        self.kept()
    }

    /// Patches the list header and drops trailing nulls.
    pub fn finish(&mut self) {
        self.out.truncate(self.keep_len);
        if self.keep_count == 0 {
            // An empty list encodes as list0, which is shorter than an empty list32.
            self.out.truncate(self.list_start);
            self.out.put_u8(0x45);
        } else {
            end_compound(self.out, self.list_start, self.keep_count);
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding

/// Reads values from a `Bytes` buffer. Binary values are sliced, not copied.
pub struct Decoder {
    buf: Bytes,
    pos: usize,
    /// Offset of `buf[0]` in the enclosing frame, for error messages.
    base: usize,
    /// Values read so far from bytes of their own (at least one each).
    read: usize,
    /// Values built so far without bytes of their own: the elements of arrays
    /// of a zero-width type, and each element's copy of a descriptor the
    /// elements share. A few bytes could otherwise claim gigabytes, so there
    /// may be at most [`EXTRA_BASE`] of them plus [`EXTRA_PER_VALUE`] per value
    /// read. Both count values, not bytes, so a decoded value re-encoded (in
    /// wider or narrower forms) builds no more extra values per value read,
    /// and decodes again.
    extra: usize,
}

/// Values a decoder may build without bytes of their own per value read,
/// plus a fixed allowance.
const EXTRA_PER_VALUE: usize = 8;
const EXTRA_BASE: usize = 16 * 1024;

impl Decoder {
    pub fn new(buf: Bytes) -> Self {
        Decoder {
            buf,
            pos: 0,
            base: 0,
            read: 0,
            extra: 0,
        }
    }

    /// Counts `values` built without bytes of their own (see `extra`).
    fn charge(&mut self, values: usize, at: usize) -> Result<(), CodecError> {
        let allowed = self
            .read
            .saturating_mul(EXTRA_PER_VALUE)
            .saturating_add(EXTRA_BASE);
        match self.extra.checked_add(values).filter(|n| *n <= allowed) {
            Some(extra) => {
                self.extra = extra;
                Ok(())
            }
            None => Err(CodecError::Malformed {
                at,
                what: "array",
                why: "expands to far more values than its size (decoding budget exceeded)",
            }),
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Everything not yet decoded, as a zero-copy slice.
    pub fn rest(&self) -> Bytes {
        self.buf.slice(self.pos..)
    }

    fn at(&self) -> usize {
        self.base + self.pos
    }

    fn need(&self, n: usize) -> Result<(), CodecError> {
        if self.remaining() < n {
            Err(CodecError::Truncated {
                at: self.at(),
                needed: n - self.remaining(),
            })
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        self.need(1)?;
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        self.need(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.take::<4>()?))
    }

    fn slice(&mut self, n: usize) -> Result<Bytes, CodecError> {
        self.need(n)?;
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// Peeks at the next format code without consuming it.
    pub fn peek_code(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Decodes one value.
    pub fn value(&mut self) -> Result<Value, CodecError> {
        self.value_at_depth(0)
    }

    fn value_at_depth(&mut self, depth: usize) -> Result<Value, CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::TooDeep { limit: MAX_DEPTH });
        }
        let at = self.at();
        let code = self.u8()?;
        self.read += 1;
        if code == 0x00 {
            let descriptor = self.value_at_depth(depth + 1)?;
            let value = self.value_at_depth(depth + 1)?;
            return Ok(Value::Described(Box::new(descriptor), Box::new(value)));
        }
        self.body(code, at, depth)
    }

    /// Decodes the body of a value whose constructor `code` was already read.
    fn body(&mut self, code: u8, at: usize, depth: usize) -> Result<Value, CodecError> {
        Ok(match code {
            0x40 => Value::Null,
            0x41 => Value::Bool(true),
            0x42 => Value::Bool(false),
            0x56 => Value::Bool(self.u8()? != 0),
            0x50 => Value::Ubyte(self.u8()?),
            0x60 => Value::Ushort(u16::from_be_bytes(self.take()?)),
            0x70 => Value::Uint(self.u32()?),
            0x52 => Value::Uint(self.u8()?.into()),
            0x43 => Value::Uint(0),
            0x80 => Value::Ulong(u64::from_be_bytes(self.take()?)),
            0x53 => Value::Ulong(self.u8()?.into()),
            0x44 => Value::Ulong(0),
            0x51 => Value::Byte(self.u8()? as i8),
            0x61 => Value::Short(i16::from_be_bytes(self.take()?)),
            0x71 => Value::Int(i32::from_be_bytes(self.take()?)),
            0x54 => Value::Int((self.u8()? as i8).into()),
            0x81 => Value::Long(i64::from_be_bytes(self.take()?)),
            0x55 => Value::Long((self.u8()? as i8).into()),
            0x72 => Value::Float(f32::from_be_bytes(self.take()?)),
            0x82 => Value::Double(f64::from_be_bytes(self.take()?)),
            0x74 => Value::Decimal32(self.take()?),
            0x84 => Value::Decimal64(self.take()?),
            0x94 => Value::Decimal128(self.take()?),
            0x73 => {
                let c = self.u32()?;
                Value::Char(char::from_u32(c).ok_or(CodecError::InvalidText { at, what: "char" })?)
            }
            0x83 => Value::Timestamp(i64::from_be_bytes(self.take()?)),
            0x98 => Value::Uuid(self.take()?),
            0xa0 => {
                let n = self.u8()? as usize;
                Value::Binary(self.slice(n)?)
            }
            0xb0 => {
                let n = self.u32()? as usize;
                Value::Binary(self.slice(n)?)
            }
            0xa1 | 0xb1 => {
                let n = if code == 0xa1 {
                    self.u8()? as usize
                } else {
                    self.u32()? as usize
                };
                let b = self.slice(n)?;
                Value::String(String::from_utf8(b.to_vec()).map_err(|_| {
                    CodecError::InvalidText {
                        at,
                        what: "utf-8 string",
                    }
                })?)
            }
            0xa3 | 0xb3 => {
                let n = if code == 0xa3 {
                    self.u8()? as usize
                } else {
                    self.u32()? as usize
                };
                let b = self.slice(n)?;
                if !b.is_ascii() {
                    return Err(CodecError::InvalidText { at, what: "symbol" });
                }
                Value::Symbol(
                    String::from_utf8(b.to_vec())
                        .map_err(|_| CodecError::InvalidText { at, what: "symbol" })?,
                )
            }
            0x45 => Value::List(Vec::new()),
            0xc0 | 0xd0 => {
                let (size, count) = self.compound_header(code == 0xc0, at, "list")?;
                let end = self.pos + size;
                let mut items = Vec::with_capacity(count.min(size));
                for _ in 0..count {
                    items.push(self.value_at_depth(depth + 1)?);
                }
                self.check_end(end, at, "list")?;
                Value::List(items)
            }
            0xc1 | 0xd1 => {
                let (size, count) = self.compound_header(code == 0xc1, at, "map")?;
                if count % 2 != 0 {
                    return Err(CodecError::Malformed {
                        at,
                        what: "map",
                        why: "odd number of elements",
                    });
                }
                let end = self.pos + size;
                let mut entries = Vec::with_capacity((count / 2).min(size));
                for _ in 0..count / 2 {
                    let k = self.value_at_depth(depth + 1)?;
                    let v = self.value_at_depth(depth + 1)?;
                    entries.push((k, v));
                }
                self.check_end(end, at, "map")?;
                Value::Map(entries)
            }
            0xe0 | 0xf0 => {
                let (size, count) = self.compound_header(code == 0xe0, at, "array")?;
                let end = self.pos + size;
                let items = self.array_items(count, at, depth)?;
                self.check_end(end, at, "array")?;
                Value::Array(items)
            }
            other => return Err(CodecError::UnknownFormatCode { at, code: other }),
        })
    }

    /// Reads size and count of a compound; the size counts the count field.
    fn compound_header(
        &mut self,
        small: bool,
        at: usize,
        what: &'static str,
    ) -> Result<(usize, usize), CodecError> {
        let (size, count_width) = if small {
            (self.u8()? as usize, 1)
        } else {
            (self.u32()? as usize, 4)
        };
        if size < count_width {
            return Err(CodecError::Malformed {
                at,
                what,
                why: "size smaller than its count field",
            });
        }
        self.need(size)?;
        let count = if small {
            self.u8()? as usize
        } else {
            self.u32()? as usize
        };
        let body = size - count_width;
        // Every list or map element takes at least one byte; arrays check separately.
        if what != "array" && count > body {
            return Err(CodecError::Malformed {
                at,
                what,
                why: "more elements than bytes",
            });
        }
        Ok((body, count))
    }

    fn check_end(&mut self, end: usize, at: usize, what: &'static str) -> Result<(), CodecError> {
        if self.pos != end {
            return Err(CodecError::Malformed {
                at,
                what,
                why: "declared size does not match its elements",
            });
        }
        Ok(())
    }

    fn array_items(
        &mut self,
        count: usize,
        at: usize,
        depth: usize,
    ) -> Result<Vec<Value>, CodecError> {
        let mut ctor = self.u8()?;
        let mut descriptor = None;
        // The values in the descriptor: each element's copy builds as many.
        let mut descriptor_values = 0;
        if ctor == 0x00 {
            let before = self.read + self.extra;
            descriptor = Some(self.value_at_depth(depth + 1)?);
            descriptor_values = self.read + self.extra - before;
            ctor = self.u8()?;
        }
        // Zero-width element types could claim billions of elements in a few bytes.
        let zero_width = matches!(ctor, 0x40..=0x45);
        if zero_width && count > 65536 {
            return Err(CodecError::Malformed {
                at,
                what: "array",
                why: "too many zero-width elements",
            });
        }
        if !zero_width && count > self.remaining() {
            return Err(CodecError::Malformed {
                at,
                what: "array",
                why: "more elements than bytes",
            });
        }
        // Charged before the elements are allocated: they read nothing, so
        // charging them one by one would allow no more.
        if zero_width {
            self.charge(count, at)?;
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let item_at = self.at();
            if !zero_width {
                self.read += 1;
            }
            // Each element gets its own copy of a shared descriptor.
            self.charge(descriptor_values, at)?;
            let v = self.body(ctor, item_at, depth + 1)?;
            items.push(match &descriptor {
                Some(d) => Value::Described(Box::new(d.clone()), Box::new(v)),
                None => v,
            });
        }
        Ok(items)
    }

    /// Skips one value without building it (used to find message sections).
    pub fn skip(&mut self) -> Result<(), CodecError> {
        self.skip_at_depth(0)
    }

    fn skip_at_depth(&mut self, depth: usize) -> Result<(), CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::TooDeep { limit: MAX_DEPTH });
        }
        let at = self.at();
        let code = self.u8()?;
        let width = match code {
            0x00 => {
                self.skip_at_depth(depth + 1)?;
                return self.skip_at_depth(depth + 1);
            }
            0x40..=0x45 => 0,
            0x50..=0x56 => 1,
            0x60 | 0x61 => 2,
            0x70..=0x74 => 4,
            0x80..=0x84 => 8,
            0x94 | 0x98 => 16,
            0xa0..=0xaf | 0xc0..=0xcf | 0xe0..=0xef => self.u8()? as usize,
            0xb0..=0xbf | 0xd0..=0xdf | 0xf0..=0xff => self.u32()? as usize,
            other => return Err(CodecError::UnknownFormatCode { at, code: other }),
        };
        self.need(width)?;
        self.pos += width;
        Ok(())
    }
}

/// Decodes a single value that must fill `buf` exactly.
pub fn decode_exact(buf: Bytes) -> Result<Value, CodecError> {
    let mut d = Decoder::new(buf);
    let v = d.value()?;
    if !d.is_empty() {
        return Err(CodecError::Malformed {
            at: d.position(),
            what: "value",
            why: "trailing bytes",
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: Value) {
        let bytes = v.to_bytes();
        assert_eq!(decode_exact(bytes).expect("decodes"), v);
    }

    #[test]
    fn scalars_round_trip() {
        for v in [
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Uint(0),
            Value::Uint(7),
            Value::Uint(70000),
            Value::Ulong(0),
            Value::Ulong(200),
            Value::Ulong(u64::MAX),
            Value::Int(-3),
            Value::Int(1 << 20),
            Value::Long(i64::MIN),
            Value::Char('é'),
            Value::Timestamp(1_700_000_000_000),
            Value::Uuid([7; 16]),
            Value::string("héllo"),
            Value::String("x".repeat(300)),
            Value::symbol("amqp:not-found"),
            Value::Binary(Bytes::from_static(b"\x00\x01")),
        ] {
            round_trip(v);
        }
    }

    #[test]
    fn compounds_round_trip() {
        round_trip(Value::List(vec![]));
        round_trip(Value::List(vec![Value::Null, Value::Uint(1)]));
        round_trip(Value::Map(vec![(Value::symbol("k"), Value::string("v"))]));
        round_trip(Value::Array(vec![Value::symbol("a"), Value::symbol("bb")]));
        round_trip(Value::Array(vec![Value::Uint(1), Value::Uint(100000)]));
        round_trip(Value::Described(
            Box::new(Value::Ulong(0x70)),
            Box::new(Value::List(vec![Value::Bool(true)])),
        ));
    }

    #[test]
    fn binary_is_sliced_not_copied() {
        let v = Value::Binary(Bytes::from(vec![9u8; 1000]));
        let encoded = v.to_bytes();
        let base = encoded.as_ptr() as usize;
        match decode_exact(encoded.clone()).expect("decodes") {
            Value::Binary(b) => {
                let p = b.as_ptr() as usize;
                assert!(p > base && p < base + encoded.len());
            }
            other => panic!("not binary: {other:?}"),
        }
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        assert!(matches!(
            decode_exact(Bytes::from_static(&[0x70, 0, 0])),
            Err(CodecError::Truncated { .. })
        ));
        assert!(matches!(
            decode_exact(Bytes::from_static(&[0x3f])),
            Err(CodecError::UnknownFormatCode { code: 0x3f, .. })
        ));
        // A list claiming a billion elements in a few bytes.
        assert!(decode_exact(Bytes::from_static(&[
            0xd0, 0, 0, 0, 5, 0x3b, 0x9a, 0xca, 0, 0x40
        ]))
        .is_err());
    }

    #[test]
    fn list_writer_drops_trailing_nulls() {
        let mut out = BytesMut::new();
        ListWriter::new(&mut out, 0x18).null().null().finish();
        let v = decode_exact(out.freeze()).expect("decodes");
        assert_eq!(
            v,
            Value::Described(Box::new(Value::Ulong(0x18)), Box::new(Value::List(vec![])))
        );
        let mut out = BytesMut::new();
        ListWriter::new(&mut out, 0x13)
            .uint(1)
            .null()
            .uint(3)
            .null()
            .finish();
        match decode_exact(out.freeze()).expect("decodes") {
            Value::Described(_, l) => assert_eq!(
                *l,
                Value::List(vec![Value::Uint(1), Value::Null, Value::Uint(3)])
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn skip_matches_decode() {
        let v = Value::List(vec![
            Value::Map(vec![(Value::string("a"), Value::Long(-1))]),
            Value::Array(vec![Value::Int(1), Value::Int(2)]),
            Value::Described(Box::new(Value::Ulong(1)), Box::new(Value::Null)),
        ]);
        let b = v.to_bytes();
        let mut d = Decoder::new(b.clone());
        d.skip().expect("skips");
        assert_eq!(d.position(), b.len());
    }

    /// An array32 of `count` zero-width `true`s whose elements share
    /// `descriptor`.
    fn described_trues(count: u32, descriptor: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(0xf0);
        out.put_u32(4 + 1 + descriptor.len() as u32 + 1);
        out.put_u32(count);
        out.put_u8(0x00);
        out.put_slice(descriptor);
        out.put_u8(0x41);
        out.freeze()
    }

    /// Found by the `performative` fuzz target: the encoder writes arrays'
    /// elements in their wide forms, so a value the decoder accepted could
    /// re-encode (into a replication event, the store's configuration file)
    /// as bytes the decoder refused, when descriptor copies were charged by
    /// their encoded bytes.
    #[test]
    fn a_decoded_value_decodes_again_after_re_encoding() {
        // The descriptor: an array8 of four ulong0 (4 bytes, 5 values; 42
        // bytes re-encoded with wide ulongs).
        let raw = described_trues(2500, &[0xe0, 0x02, 0x04, 0x44]);
        let value = decode_exact(raw).expect("within the budget");
        let again = decode_exact(value.to_bytes()).expect("re-encoded, still within it");
        assert_eq!(again, value);
    }

    #[test]
    fn descriptor_copies_are_charged_by_their_values_not_their_bytes() {
        // 4 bytes of descriptor holding 127 values, copied 3000 times.
        let raw = described_trues(3000, &[0xe0, 0x02, 0x7e, 0x44]);
        let err = decode_exact(raw).expect_err("far more values than bytes");
        assert!(
            err.to_string().contains("decoding budget exceeded"),
            "{err}"
        );
    }
}
