//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) into
//! the JSON form of the same object.
//!
//! `kubectl create <generator>` and other typed client-go code paths send protobuf, not JSON.
//! The body is the magic prefix `k8s\0` followed by a `runtime.Unknown` envelope whose
//! `typeMeta` names the kind and whose `raw` holds the object, encoded with the k8s.io/api
//! `generated.proto` schema. [`decode`] turns it into the `serde_json::Value` that the Kubernetes
//! API server would produce for that object, so that the rest of the REST layer only ever sees
//! JSON.
//!
//! The schema lives in the generated table `protobuf/schema.rs` (regenerate it with
//! `protobuf/generate_schema.py`). It is taken from kubectl v1.32 itself and records, per field,
//! what Go's `encoding/json` needs to reproduce Kubernetes' JSON exactly:
//!
//! * a field that is a Go pointer (gogoproto `nullable`) is written whenever it is on the wire,
//!   even with a zero value (`replicas: 0`, `automountServiceAccountToken: false`);
//! * any other scalar is written unless it is zero and `omitempty`;
//! * a non-pointer struct is always written (`"status": {}`), as Go does;
//! * lists and maps are written when not empty (`null` when empty and not `omitempty`);
//! * `Quantity`, `IntOrString`, `Time`, `MicroTime`, `Duration`, `FieldsV1` and `RawExtension`
//!   get their custom Go JSON forms, and `bytes` become standard base64.
//!
//! A field number that the v1.32 schema does not know is an error rather than being dropped.
//!
//! Known deviation: for about 230 non-pointer scalar fields, the Go struct tags of different
//! types disagree about `omitempty` under the same protobuf tag; those are treated as
//! `omitempty`, so a zero value (`""`, `0`, `false`) there is left out where Go would write it.
//! Both forms decode to the same Go object.

#[rustfmt::skip]
mod schema;

use base64::Engine as _;
use serde_json::{Map, Number, Value};

/// The four bytes that start every Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// How deep messages may nest; the real API needs fewer than 20 levels.
const MAX_DEPTH: usize = 64;

/// Errors from decoding a protobuf body.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body does not start with `k8s\0`.
    #[error("protobuf body does not start with the Kubernetes magic prefix")]
    BadMagic,
    /// The envelope does not say which kind it holds.
    #[error("protobuf envelope has no apiVersion or kind")]
    MissingTypeMeta,
    /// The envelope's `contentEncoding` is set (for example gzip); none is supported.
    #[error("unsupported protobuf content encoding {0:?}")]
    UnsupportedEncoding(String),
    /// The envelope's `contentType` says the object is not protobuf.
    #[error("unsupported protobuf envelope content type {0:?}")]
    UnsupportedContentType(String),
    /// The kind is not in the protobuf schema table.
    #[error("{kind} in {api_version} cannot be decoded from protobuf")]
    UnsupportedKind {
        /// The envelope's `apiVersion`.
        api_version: String,
        /// The envelope's `kind`.
        kind: String,
    },
    /// The bytes are not valid protobuf (truncated, bad varint, unsupported wire type).
    #[error("malformed protobuf in {message}: {reason}")]
    Malformed {
        /// The protobuf message being decoded.
        message: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A field number that Kubernetes v1.32 does not define.
    #[error("field {number} of {message} is not in the Kubernetes v1.32 schema")]
    UnknownField {
        /// The protobuf message being decoded.
        message: &'static str,
        /// The unknown field number.
        number: u32,
    },
    /// A field encoded with a wire type that its schema type cannot have.
    #[error("field {field} of {message} has the wrong wire type {wire_type}")]
    WireType {
        /// The protobuf message being decoded.
        message: &'static str,
        /// The field's JSON name.
        field: &'static str,
        /// The wire type found.
        wire_type: u8,
    },
    /// A string field that is not UTF-8.
    #[error("field {field} of {message} is not valid UTF-8")]
    InvalidUtf8 {
        /// The protobuf message being decoded.
        message: &'static str,
        /// The field's JSON name.
        field: &'static str,
    },
    /// A `FieldsV1` or `RawExtension` whose raw bytes are not JSON.
    #[error("embedded raw object in {message} is not valid JSON")]
    EmbeddedJson {
        /// The protobuf message being decoded.
        message: &'static str,
        /// The JSON parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A timestamp that cannot be written as RFC 3339.
    #[error("timestamp in {message} is out of range")]
    TimeOutOfRange {
        /// The protobuf message being decoded.
        message: &'static str,
    },
    /// Messages nest deeper than any Kubernetes object does.
    #[error("protobuf messages nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Result of this module's functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a `Content-Type` header value names the Kubernetes protobuf media type.
pub fn is_protobuf_content_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

/// Decodes a Kubernetes protobuf body into the object's JSON, with `apiVersion` and `kind`.
///
/// # Errors
///
/// Fails when the body is not a well-formed Kubernetes protobuf envelope, when its kind is not
/// in the schema table ([`Error::UnsupportedKind`]), or when the object has fields or encodings
/// that Kubernetes v1.32 does not define.
pub fn decode(body: &[u8]) -> Result<Value> {
    decode_at(body, 0)
}

fn decode_at(body: &[u8], depth: usize) -> Result<Value> {
    let envelope = body.strip_prefix(MAGIC).ok_or(Error::BadMagic)?;
    let unknown = Envelope::parse(envelope)?;
    if !unknown.content_encoding.is_empty() {
        return Err(Error::UnsupportedEncoding(unknown.content_encoding));
    }
    if !unknown.content_type.is_empty() && !is_protobuf_content_type(&unknown.content_type) {
        return Err(Error::UnsupportedContentType(unknown.content_type));
    }
    if unknown.api_version.is_empty() || unknown.kind.is_empty() {
        return Err(Error::MissingTypeMeta);
    }
    let Some(message) = schema::KINDS
        .iter()
        .find(|(api_version, kind, _)| *api_version == unknown.api_version && *kind == unknown.kind)
        .and_then(|(_, _, name)| lookup(name))
    else {
        return Err(Error::UnsupportedKind {
            api_version: unknown.api_version,
            kind: unknown.kind,
        });
    };
    let Value::Object(fields) = decode_message(message, unknown.raw, depth + 1)? else {
        unreachable!("plain messages decode to JSON objects");
    };
    let mut object = Map::with_capacity(fields.len() + 2);
    object.insert("kind".into(), Value::String(unknown.kind));
    object.insert("apiVersion".into(), Value::String(unknown.api_version));
    object.extend(fields);
    Ok(Value::Object(object))
}

/// One protobuf message of the schema table.
#[derive(Debug)]
struct Message {
    /// Full protobuf name, such as `k8s.io.api.core.v1.Pod`.
    name: &'static str,
    /// Whether this is the synthetic entry message of a `map<K, V>` field.
    map_entry: bool,
    /// The fields, sorted by number.
    fields: &'static [Field],
}

/// One field of a [`Message`].
#[derive(Debug)]
struct Field {
    number: u32,
    /// The JSON name (Kubernetes uses the JSON name as the protobuf field name).
    json: &'static str,
    ty: Type,
    repeated: bool,
    /// Whether the Go field is a pointer, so that presence on the wire is meaningful.
    pointer: bool,
    /// Whether the Go JSON tag says `omitempty`.
    omitempty: bool,
}

/// The protobuf type of a [`Field`].
#[derive(Debug, Clone, Copy)]
enum Type {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    /// A message, by full name.
    Message(&'static str),
    /// A `map<string, V>`, by the full name of its entry message.
    Map(&'static str),
}

fn lookup(name: &str) -> Option<&'static Message> {
    schema::MESSAGES
        .binary_search_by(|m| m.name.cmp(name))
        .ok()
        .and_then(|i| schema::MESSAGES.get(i))
}

fn lookup_type(name: &'static str) -> Result<&'static Message> {
    lookup(name).ok_or(Error::Malformed {
        message: name,
        reason: "message missing from the schema table",
    })
}

/// A protobuf field value as it is on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    /// A 64-bit fixed value; Kubernetes objects have none, so only its wire type matters.
    Fixed64,
    Bytes(&'a [u8]),
    /// A 32-bit fixed value; Kubernetes objects have none, so only its wire type matters.
    Fixed32,
}

impl Wire<'_> {
    fn wire_type(&self) -> u8 {
        match self {
            Wire::Varint(_) => 0,
            Wire::Fixed64 => 1,
            Wire::Bytes(_) => 2,
            Wire::Fixed32 => 5,
        }
    }
}

/// Iterates over the `(field number, value)` pairs of one encoded message.
struct Reader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Self { buf, message }
    }

    fn malformed(&self, reason: &'static str) -> Error {
        Error::Malformed {
            message: self.message,
            reason,
        }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for (i, byte) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(self.malformed(if self.buf.len() < 10 {
            "truncated varint"
        } else {
            "varint longer than 10 bytes"
        }))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if len > self.buf.len() {
            return Err(self.malformed("field runs past the end of the message"));
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    fn next_field(&mut self) -> Result<Option<(u32, Wire<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| self.malformed("invalid field number"))?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| self.malformed("length does not fit in memory"))?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            _ => return Err(self.malformed("unsupported wire type (groups are not used)")),
        };
        Ok(Some((number, value)))
    }
}

/// The decoded `runtime.Unknown` envelope.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

impl<'a> Envelope<'a> {
    const UNKNOWN: &'static str = "k8s.io.apimachinery.pkg.runtime.Unknown";
    const TYPE_META: &'static str = "k8s.io.apimachinery.pkg.runtime.TypeMeta";

    fn parse(buf: &'a [u8]) -> Result<Self> {
        let mut envelope = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        let mut reader = Reader::new(buf, Self::UNKNOWN);
        while let Some((number, value)) = reader.next_field()? {
            match (number, value) {
                (1, Wire::Bytes(type_meta)) => {
                    let mut inner = Reader::new(type_meta, Self::TYPE_META);
                    while let Some((number, value)) = inner.next_field()? {
                        match (number, value) {
                            (1, Wire::Bytes(s)) => {
                                envelope.api_version = utf8(s, Self::TYPE_META, "apiVersion")?
                            }
                            (2, Wire::Bytes(s)) => {
                                envelope.kind = utf8(s, Self::TYPE_META, "kind")?;
                            }
                            (1 | 2, other) => {
                                return Err(wire_error(Self::TYPE_META, "typeMeta", other));
                            }
                            (number, _) => {
                                return Err(Error::UnknownField {
                                    message: Self::TYPE_META,
                                    number,
                                });
                            }
                        }
                    }
                }
                (2, Wire::Bytes(raw)) => envelope.raw = raw,
                (3, Wire::Bytes(s)) => {
                    envelope.content_encoding = utf8(s, Self::UNKNOWN, "contentEncoding")?;
                }
                (4, Wire::Bytes(s)) => {
                    envelope.content_type = utf8(s, Self::UNKNOWN, "contentType")?;
                }
                (1..=4, other) => return Err(wire_error(Self::UNKNOWN, "envelope", other)),
                (number, _) => {
                    return Err(Error::UnknownField {
                        message: Self::UNKNOWN,
                        number,
                    });
                }
            }
        }
        Ok(envelope)
    }
}

fn wire_error(message: &'static str, field: &'static str, value: Wire<'_>) -> Error {
    Error::WireType {
        message,
        field,
        wire_type: value.wire_type(),
    }
}

fn utf8(bytes: &[u8], message: &'static str, field: &'static str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::InvalidUtf8 { message, field })
}

/// Decodes one message into its Kubernetes JSON form.
fn decode_message(message: &'static Message, buf: &[u8], depth: usize) -> Result<Value> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep);
    }
    if let Some(special) = decode_special(message, buf, depth)? {
        return Ok(special);
    }

    // Gather the wire values of each field first: repeated fields may be interleaved, and for
    // a singular field the last value wins (or, for messages, all values merge).
    let mut values: Vec<Vec<Wire<'_>>> = vec![Vec::new(); message.fields.len()];
    let mut reader = Reader::new(buf, message.name);
    while let Some((number, value)) = reader.next_field()? {
        let index = message
            .fields
            .binary_search_by_key(&number, |f| f.number)
            .map_err(|_| Error::UnknownField {
                message: message.name,
                number,
            })?;
        values[index].push(value);
    }

    let mut object = Map::new();
    for (field, wire) in message.fields.iter().zip(&values) {
        if let Some(value) = decode_field(message, field, wire, depth)? {
            object.insert(field.json.to_owned(), value);
        }
    }
    Ok(Value::Object(object))
}

/// Decodes one field from all its wire values; `None` means Go would not write it.
fn decode_field(
    message: &'static Message,
    field: &'static Field,
    wire: &[Wire<'_>],
    depth: usize,
) -> Result<Option<Value>> {
    if field.repeated {
        let mut items = Vec::new();
        let mut entries = Map::new();
        for value in wire {
            match field.ty {
                Type::Map(entry) => {
                    let (key, value) = decode_map_entry(lookup_type(entry)?, *value, depth)?;
                    entries.insert(key, value);
                }
                Type::Int32 | Type::Int64 | Type::Bool => {
                    if let Wire::Bytes(packed) = value {
                        let mut reader = Reader::new(packed, message.name);
                        while !reader.buf.is_empty() {
                            let varint = reader.varint()?;
                            items.push(scalar(message, field, Wire::Varint(varint))?);
                        }
                    } else {
                        items.push(scalar(message, field, *value)?);
                    }
                }
                _ => items.push(singular(message, field, *value, depth)?),
            }
        }
        let (empty, value) = match field.ty {
            Type::Map(_) => (entries.is_empty(), Value::Object(entries)),
            _ => (items.is_empty(), Value::Array(items)),
        };
        return Ok(match (empty, field.omitempty) {
            (false, _) => Some(value),
            (true, true) => None,
            (true, false) => Some(Value::Null),
        });
    }

    match (field.ty, wire) {
        (Type::Message(_), []) if field.pointer => Ok(None),
        // Go always writes a struct that is not a pointer, even when it is not on the wire.
        (Type::Message(name), []) => decode_message(lookup_type(name)?, &[], depth + 1).map(Some),
        (Type::Message(name), values) => {
            // Several occurrences of a message field merge, which is the same as decoding
            // their concatenation.
            let mut merged = Vec::new();
            for value in values {
                match value {
                    Wire::Bytes(bytes) => merged.extend_from_slice(bytes),
                    other => return Err(wire_error(message.name, field.json, *other)),
                }
            }
            decode_message(lookup_type(name)?, &merged, depth + 1).map(Some)
        }
        (_, []) if field.pointer || field.omitempty => Ok(None),
        (_, []) => Ok(Some(zero(field.ty))),
        (_, [.., last]) => {
            let value = scalar(message, field, *last)?;
            let omit = !field.pointer && field.omitempty && is_zero(&value);
            Ok((!omit).then_some(value))
        }
    }
}

/// Decodes one value of a non-map field.
fn singular(
    message: &'static Message,
    field: &'static Field,
    value: Wire<'_>,
    depth: usize,
) -> Result<Value> {
    match (field.ty, value) {
        (Type::Message(name), Wire::Bytes(bytes)) => {
            decode_message(lookup_type(name)?, bytes, depth + 1)
        }
        (Type::Message(_), other) => Err(wire_error(message.name, field.json, other)),
        _ => scalar(message, field, value),
    }
}

/// Decodes a scalar (string, bytes, bool, int32, int64) value.
fn scalar(message: &'static Message, field: &'static Field, value: Wire<'_>) -> Result<Value> {
    match (field.ty, value) {
        (Type::String, Wire::Bytes(bytes)) => {
            utf8(bytes, message.name, field.json).map(Value::from)
        }
        (Type::Bytes, Wire::Bytes(bytes)) => Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        )),
        (Type::Bool, Wire::Varint(v)) => Ok(Value::Bool(v != 0)),
        // int32 is sign-extended to 64 bits on the wire; truncation restores it.
        (Type::Int32, Wire::Varint(v)) => Ok(Value::from(v as i32)),
        (Type::Int64, Wire::Varint(v)) => Ok(Value::from(v as i64)),
        (_, other) => Err(wire_error(message.name, field.json, other)),
    }
}

/// Decodes the entry message of a `map<string, V>` field into its key and JSON value.
fn decode_map_entry(
    entry: &'static Message,
    wire: Wire<'_>,
    depth: usize,
) -> Result<(String, Value)> {
    let Wire::Bytes(buf) = wire else {
        return Err(wire_error(entry.name, "entry", wire));
    };
    let (true, Some(key_field), Some(value_field)) =
        (entry.map_entry, entry.fields.first(), entry.fields.get(1))
    else {
        return Err(Error::Malformed {
            message: entry.name,
            reason: "map entry schema needs a key and a value",
        });
    };
    let mut key = String::new();
    let mut value = None;
    let mut reader = Reader::new(buf, entry.name);
    while let Some((number, wire)) = reader.next_field()? {
        match number {
            1 => key = utf8_field(entry, key_field, wire)?,
            2 => value = Some(singular(entry, value_field, wire, depth)?),
            number => {
                return Err(Error::UnknownField {
                    message: entry.name,
                    number,
                })
            }
        }
    }
    let value = match (value, value_field.ty) {
        (Some(value), _) => value,
        (None, Type::Message(name)) => decode_message(lookup_type(name)?, &[], depth + 1)?,
        (None, ty) => zero(ty),
    };
    Ok((key, value))
}

fn utf8_field(message: &'static Message, field: &'static Field, wire: Wire<'_>) -> Result<String> {
    match wire {
        Wire::Bytes(bytes) => utf8(bytes, message.name, field.json),
        other => Err(wire_error(message.name, field.json, other)),
    }
}

/// The JSON of a Go zero value of a scalar type.
fn zero(ty: Type) -> Value {
    match ty {
        Type::String | Type::Bytes => Value::String(String::new()),
        Type::Bool => Value::Bool(false),
        Type::Int32 | Type::Int64 => Value::Number(Number::from(0)),
        Type::Message(_) | Type::Map(_) => Value::Null,
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Reads the raw fields of a small well-known message as `(number, value)` pairs, last wins.
fn raw_fields<'a>(message: &'static Message, buf: &'a [u8]) -> Result<Vec<(u32, Wire<'a>)>> {
    let mut fields: Vec<(u32, Wire<'a>)> = Vec::new();
    let mut reader = Reader::new(buf, message.name);
    while let Some((number, value)) = reader.next_field()? {
        if message.fields.iter().all(|f| f.number != number) {
            return Err(Error::UnknownField {
                message: message.name,
                number,
            });
        }
        fields.retain(|(n, _)| *n != number);
        fields.push((number, value));
    }
    Ok(fields)
}

fn raw_field<'a>(fields: &[(u32, Wire<'a>)], number: u32) -> Option<Wire<'a>> {
    fields.iter().find(|(n, _)| *n == number).map(|(_, v)| *v)
}

fn raw_varint(
    message: &'static Message,
    wire: Option<Wire<'_>>,
    field: &'static str,
) -> Result<u64> {
    match wire {
        None => Ok(0),
        Some(Wire::Varint(v)) => Ok(v),
        Some(other) => Err(wire_error(message.name, field, other)),
    }
}

fn raw_bytes<'a>(
    message: &'static Message,
    wire: Option<Wire<'a>>,
    field: &'static str,
) -> Result<&'a [u8]> {
    match wire {
        None => Ok(&[]),
        Some(Wire::Bytes(b)) => Ok(b),
        Some(other) => Err(wire_error(message.name, field, other)),
    }
}

/// Seconds of Go's zero `time.Time` (January 1, year 1, UTC) since the Unix epoch.
const GO_ZERO_TIME_SECONDS: i64 = -62_135_596_800;

/// Decodes the messages whose Go types have their own JSON form; `None` for all others.
fn decode_special(message: &'static Message, buf: &[u8], depth: usize) -> Result<Option<Value>> {
    let value = match message.name {
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            // Go writes the canonical string on both wires; a zero Quantity is "0".
            let fields = raw_fields(message, buf)?;
            let s = raw_bytes(message, raw_field(&fields, 1), "string")?;
            let s = utf8(s, message.name, "string")?;
            Value::String(if s.is_empty() { "0".to_owned() } else { s })
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            let fields = raw_fields(message, buf)?;
            if raw_varint(message, raw_field(&fields, 1), "type")? == 1 {
                let s = raw_bytes(message, raw_field(&fields, 3), "strVal")?;
                Value::String(utf8(s, message.name, "strVal")?)
            } else {
                Value::from(raw_varint(message, raw_field(&fields, 2), "intVal")? as i32)
            }
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => {
            // Kubernetes keeps only whole seconds of a Time read from protobuf, and an empty
            // message is the zero time, which Go writes as null.
            if buf.is_empty() {
                return Ok(Some(Value::Null));
            }
            let fields = raw_fields(message, buf)?;
            let seconds = raw_varint(message, raw_field(&fields, 1), "seconds")? as i64;
            format_time(message, seconds, 0, "%Y-%m-%dT%H:%M:%SZ")?
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            if buf.is_empty() {
                return Ok(Some(Value::Null));
            }
            let fields = raw_fields(message, buf)?;
            let seconds = raw_varint(message, raw_field(&fields, 1), "seconds")? as i64;
            let nanos = raw_varint(message, raw_field(&fields, 2), "nanos")? as i32;
            format_time(message, seconds, nanos, "%Y-%m-%dT%H:%M:%S.%6fZ")?
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            let fields = raw_fields(message, buf)?;
            let nanos = raw_varint(message, raw_field(&fields, 1), "duration")? as i64;
            Value::String(go_duration(nanos))
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1"
        | "k8s.io.apimachinery.pkg.runtime.RawExtension" => {
            let fields = raw_fields(message, buf)?;
            let raw = raw_bytes(message, raw_field(&fields, 1), "raw")?;
            if raw.is_empty() {
                Value::Null
            } else if raw.starts_with(MAGIC) {
                // An object that a protobuf client embedded in its own encoding.
                decode_at(raw, depth + 1)?
            } else {
                serde_json::from_slice(raw).map_err(|source| Error::EmbeddedJson {
                    message: message.name,
                    source,
                })?
            }
        }
        // Go slice types that protobuf wraps in a message.
        "k8s.io.apimachinery.pkg.apis.meta.v1.Verbs"
        | "k8s.io.api.authentication.v1.ExtraValue" => {
            let mut items = Vec::new();
            let mut reader = Reader::new(buf, message.name);
            while let Some((number, value)) = reader.next_field()? {
                match (number, value) {
                    (1, Wire::Bytes(s)) => {
                        items.push(Value::String(utf8(s, message.name, "items")?))
                    }
                    (1, other) => return Err(wire_error(message.name, "items", other)),
                    (number, _) => {
                        return Err(Error::UnknownField {
                            message: message.name,
                            number,
                        })
                    }
                }
            }
            Value::Array(items)
        }
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// Formats a Unix time in UTC; the Go zero time is `null`.
fn format_time(message: &'static Message, seconds: i64, nanos: i32, format: &str) -> Result<Value> {
    if seconds == GO_ZERO_TIME_SECONDS && nanos == 0 {
        return Ok(Value::Null);
    }
    let out_of_range = || Error::TimeOutOfRange {
        message: message.name,
    };
    let timestamp = jiff::Timestamp::new(seconds, nanos).map_err(|_| out_of_range())?;
    let year = timestamp.to_zoned(jiff::tz::TimeZone::UTC).year();
    if !(0..=9999).contains(&year) {
        return Err(out_of_range());
    }
    Ok(Value::String(timestamp.strftime(format).to_string()))
}

/// Formats nanoseconds as Go's `time.Duration.String` does (`1h2m3.5s`, `150ms`, `0s`).
fn go_duration(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n == 0 {
        return "0s".to_owned();
    }
    if n < 1_000_000_000 {
        // Below one second Go picks the largest unit that keeps an integer part.
        let (unit, scale) = match n {
            0..=999 => ("ns", 1),
            1_000..=999_999 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{unit}", fraction(n, scale));
    }
    let hours = n / 3_600_000_000_000;
    let minutes = n / 60_000_000_000 % 60;
    let seconds = fraction(n % 60_000_000_000, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{sign}{seconds}s"),
        (0, m) => format!("{sign}{m}m{seconds}s"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}s"),
    }
}

/// `value / scale` in decimal, without trailing zeros in the fraction.
fn fraction(value: u64, scale: u64) -> String {
    let whole = value / scale;
    let rest = value % scale;
    if rest == 0 {
        return whole.to_string();
    }
    let digits = scale.ilog10() as usize;
    let frac = format!("{rest:0digits$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Bodies captured from `kubectl create …` (v1.32) and the JSON that
    /// `kubectl create … --dry-run=client -o json` prints for the same object.
    const FIXTURES: &[(&str, &[u8], &str)] = &[
        (
            "namespace",
            include_bytes!("../tests/fixtures/protobuf/namespace.pb"),
            include_str!("../tests/fixtures/protobuf/namespace.json"),
        ),
        (
            "configmap",
            include_bytes!("../tests/fixtures/protobuf/configmap.pb"),
            include_str!("../tests/fixtures/protobuf/configmap.json"),
        ),
        (
            "secret",
            include_bytes!("../tests/fixtures/protobuf/secret.pb"),
            include_str!("../tests/fixtures/protobuf/secret.json"),
        ),
        (
            "deployment",
            include_bytes!("../tests/fixtures/protobuf/deployment.pb"),
            include_str!("../tests/fixtures/protobuf/deployment.json"),
        ),
        (
            "deployment_zero",
            include_bytes!("../tests/fixtures/protobuf/deployment_zero.pb"),
            include_str!("../tests/fixtures/protobuf/deployment_zero.json"),
        ),
        (
            "service",
            include_bytes!("../tests/fixtures/protobuf/service.pb"),
            include_str!("../tests/fixtures/protobuf/service.json"),
        ),
        (
            "service_headless",
            include_bytes!("../tests/fixtures/protobuf/service_headless.pb"),
            include_str!("../tests/fixtures/protobuf/service_headless.json"),
        ),
        (
            "service_nodeport",
            include_bytes!("../tests/fixtures/protobuf/service_nodeport.pb"),
            include_str!("../tests/fixtures/protobuf/service_nodeport.json"),
        ),
        (
            "serviceaccount",
            include_bytes!("../tests/fixtures/protobuf/serviceaccount.pb"),
            include_str!("../tests/fixtures/protobuf/serviceaccount.json"),
        ),
        (
            "quota",
            include_bytes!("../tests/fixtures/protobuf/quota.pb"),
            include_str!("../tests/fixtures/protobuf/quota.json"),
        ),
        (
            "job",
            include_bytes!("../tests/fixtures/protobuf/job.pb"),
            include_str!("../tests/fixtures/protobuf/job.json"),
        ),
        (
            "cronjob",
            include_bytes!("../tests/fixtures/protobuf/cronjob.pb"),
            include_str!("../tests/fixtures/protobuf/cronjob.json"),
        ),
    ];

    #[test]
    fn kubectl_bodies_decode_to_kubectl_json() {
        for (name, body, want) in FIXTURES {
            let want: Value = serde_json::from_str(want).expect("fixture JSON parses");
            let got = decode(body).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn values_from_the_command_line_survive() {
        let deployment = decode(FIXTURES[3].1).expect("deployment decodes");
        assert_eq!(deployment["spec"]["replicas"], json!(2));
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80}])
        );
        // A pointer set to zero is kept: `--replicas=0` is not "unset".
        let idle = decode(FIXTURES[4].1).expect("deployment decodes");
        assert_eq!(idle["spec"]["replicas"], json!(0));
        let secret = decode(FIXTURES[2].1).expect("secret decodes");
        assert_eq!(secret["data"]["password"], json!("cEBzcyB3MHJk")); // "p@ss w0rd"
        let nodeport = decode(FIXTURES[7].1).expect("service decodes");
        assert_eq!(nodeport["spec"]["ports"][0]["nodePort"], json!(30080));
        assert_eq!(nodeport["spec"]["ports"][0]["targetPort"], json!(8080));
    }

    /// Encoding helpers for hand-built bodies.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn field_bytes(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(number) << 3 | 2, &mut out);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn field_varint(number: u32, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(number) << 3, &mut out);
        varint(value, &mut out);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [
            field_bytes(1, api_version.as_bytes()),
            field_bytes(2, kind.as_bytes()),
        ]
        .concat();
        [
            MAGIC.to_vec(),
            field_bytes(1, &type_meta),
            field_bytes(2, raw),
            field_bytes(3, b""),
            field_bytes(4, b""),
        ]
        .concat()
    }

    fn meta(name: &str) -> Vec<u8> {
        field_bytes(1, &field_bytes(1, name.as_bytes()))
    }

    #[test]
    fn lease_times_and_pointers() {
        // LeaseSpec: holderIdentity 1, leaseDurationSeconds 2, acquireTime 3 (MicroTime),
        // renewTime 4 (MicroTime), leaseTransitions 5.
        let micro = [field_varint(1, 1_700_000_000), field_varint(2, 123_456_789)].concat();
        let spec = [
            field_bytes(1, b"node-1"),
            field_varint(2, 40),
            field_bytes(3, &micro),
            field_bytes(4, &[]),
            field_varint(5, 0),
        ]
        .concat();
        let raw = [meta("node-1"), field_bytes(2, &spec)].concat();
        let got = decode(&envelope("coordination.k8s.io/v1", "Lease", &raw)).expect("lease");
        assert_eq!(
            got,
            json!({
                "kind": "Lease",
                "apiVersion": "coordination.k8s.io/v1",
                "metadata": {"name": "node-1", "creationTimestamp": null},
                "spec": {
                    "holderIdentity": "node-1",
                    "leaseDurationSeconds": 40,
                    "acquireTime": "2023-11-14T22:13:20.123456Z",
                    "renewTime": null,
                    "leaseTransitions": 0
                }
            })
        );
    }

    #[test]
    fn int64_negative_int32_and_object_meta_times() {
        // ObjectMeta: generation 7 (int64), creationTimestamp 8 (Time, nanos dropped),
        // deletionGracePeriodSeconds 10 (*int64).
        let time = [field_varint(1, 1_700_000_000), field_varint(2, 5)].concat();
        let object_meta = [
            field_bytes(1, b"p"),
            field_varint(7, 9_007_199_254_740_993),
            field_bytes(8, &time),
            field_varint(10, 0),
        ]
        .concat();
        // PodSpec.containers[0] with a readiness probe whose exec command is set, and a
        // negative int32 (priority = -5) sign-extended to ten bytes.
        let container = [field_bytes(1, b"c"), field_bytes(2, b"img")].concat();
        let pod_spec = [field_bytes(2, &container), field_varint(25, (-5i64) as u64)].concat();
        let raw = [field_bytes(1, &object_meta), field_bytes(2, &pod_spec)].concat();
        let got = decode(&envelope("v1", "Pod", &raw)).expect("pod");
        assert_eq!(
            got["metadata"]["generation"],
            json!(9_007_199_254_740_993i64)
        );
        assert_eq!(
            got["metadata"]["creationTimestamp"],
            json!("2023-11-14T22:13:20Z")
        );
        assert_eq!(got["metadata"]["deletionGracePeriodSeconds"], json!(0));
        assert_eq!(got["spec"]["priority"], json!(-5));
        assert_eq!(
            got["spec"]["containers"],
            json!([{"name": "c", "image": "img", "resources": {}}])
        );
        assert_eq!(got["status"], json!({}));
    }

    #[test]
    fn int_or_string_and_packed_repeated() {
        // ServicePort: name 1, port 3, targetPort 4 as a string.
        let target = [field_varint(1, 1), field_bytes(3, b"http")].concat();
        let port = [
            field_bytes(1, b"web"),
            field_varint(3, 80),
            field_bytes(4, &target),
        ]
        .concat();
        let spec = field_bytes(1, &port);
        let raw = [meta("s"), field_bytes(2, &spec)].concat();
        let got = decode(&envelope("v1", "Service", &raw)).expect("service");
        assert_eq!(
            got["spec"]["ports"],
            json!([{"name": "web", "port": 80, "targetPort": "http"}])
        );

        // PodSecurityContext.supplementalGroups (repeated int64) packed and unpacked.
        let mut packed = Vec::new();
        varint(1000, &mut packed);
        varint(2000, &mut packed);
        let security = [field_bytes(4, &packed), field_varint(4, 3000)].concat();
        let pod_spec = field_bytes(14, &security);
        let raw = [meta("p"), field_bytes(2, &pod_spec)].concat();
        let got = decode(&envelope("v1", "Pod", &raw)).expect("pod");
        assert_eq!(
            got["spec"]["securityContext"]["supplementalGroups"],
            json!([1000, 2000, 3000])
        );
    }

    #[test]
    fn kinds_rkube_serves_are_supported() {
        for (api_version, kind) in [
            ("v1", "Namespace"),
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("v1", "Service"),
            ("v1", "Pod"),
            ("v1", "Node"),
            ("v1", "Endpoints"),
            ("v1", "Event"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "ReplicaSet"),
            ("apps/v1", "DaemonSet"),
            ("apps/v1", "StatefulSet"),
            ("coordination.k8s.io/v1", "Lease"),
        ] {
            let got = decode(&envelope(api_version, kind, &meta("x")))
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(got["kind"], json!(kind));
            assert_eq!(got["apiVersion"], json!(api_version));
            assert_eq!(got["metadata"]["name"], json!("x"), "{kind}");
        }
    }

    #[test]
    fn schema_table_is_consistent() {
        assert!(schema::MESSAGES.windows(2).all(|w| w[0].name < w[1].name));
        for message in schema::MESSAGES {
            assert!(
                message.fields.windows(2).all(|w| w[0].number < w[1].number),
                "{}",
                message.name
            );
            for field in message.fields {
                if let Type::Message(name) | Type::Map(name) = field.ty {
                    let target = lookup(name).unwrap_or_else(|| panic!("{name} missing"));
                    assert_eq!(target.map_entry, matches!(field.ty, Type::Map(_)), "{name}");
                }
            }
        }
        for (_, kind, name) in schema::KINDS {
            assert!(lookup(name).is_some(), "{kind}");
        }
    }

    #[test]
    fn go_duration_strings() {
        for (nanos, want) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (150_000_000, "150ms"),
            (1_000_000_000, "1s"),
            (90_500_000_000, "1m30.5s"),
            (3_600_000_000_000, "1h0m0s"),
            (-2_000_000_000, "-2s"),
        ] {
            assert_eq!(go_duration(nanos), want, "{nanos}");
        }
    }

    #[test]
    fn content_type_matching() {
        assert!(is_protobuf_content_type(
            "application/vnd.kubernetes.protobuf"
        ));
        assert!(is_protobuf_content_type(
            "application/vnd.kubernetes.protobuf; charset=x"
        ));
        assert!(!is_protobuf_content_type("application/json"));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let good = FIXTURES[3].1;
        assert!(matches!(decode(b""), Err(Error::BadMagic)));
        assert!(matches!(decode(b"k8s"), Err(Error::BadMagic)));
        assert!(matches!(
            decode(b"{\"kind\":\"Pod\"}"),
            Err(Error::BadMagic)
        ));
        assert!(matches!(decode(MAGIC), Err(Error::MissingTypeMeta)));
        // Every truncation of a real body fails cleanly (or, when it cuts exactly between
        // envelope fields, still names a kind); none panics.
        for len in 0..good.len() {
            let _ = decode(&good[..len]);
        }
        assert!(matches!(
            decode(&good[..good.len() - 3]),
            Err(Error::Malformed { .. })
        ));
        // A length prefix far beyond the end.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(decode(&huge), Err(Error::Malformed { .. })));
        // An endless varint.
        let mut endless = MAGIC.to_vec();
        endless.extend_from_slice(&[0x08; 1]);
        endless.extend_from_slice(&[0xff; 12]);
        assert!(matches!(decode(&endless), Err(Error::Malformed { .. })));
        // Every single-byte corruption of a real body is handled without panicking.
        for i in 4..good.len() {
            for byte in [0x00, 0x07, 0x80, 0xff] {
                let mut corrupt = good.to_vec();
                corrupt[i] = byte;
                let _ = decode(&corrupt);
            }
        }
    }

    #[test]
    fn unsupported_and_unknown_input_is_rejected() {
        assert!(matches!(
            decode(&envelope("v1", "Nonsense", &meta("x"))),
            Err(Error::UnsupportedKind { .. })
        ));
        assert!(matches!(
            decode(&envelope("v1", "PodSpec", &[])),
            Err(Error::UnsupportedKind { .. })
        ));
        // Field 99 does not exist in ConfigMap.
        let raw = [meta("x"), field_bytes(99, b"?")].concat();
        assert!(matches!(
            decode(&envelope("v1", "ConfigMap", &raw)),
            Err(Error::UnknownField { number: 99, .. })
        ));
        // A string field sent as a varint.
        let raw = field_bytes(1, &field_varint(1, 5));
        assert!(matches!(
            decode(&envelope("v1", "ConfigMap", &raw)),
            Err(Error::WireType { .. })
        ));
        // Invalid UTF-8 in a name.
        let raw = meta("\u{0}");
        let mut raw = raw;
        let last = raw.len() - 1;
        raw[last] = 0xff;
        assert!(matches!(
            decode(&envelope("v1", "ConfigMap", &raw)),
            Err(Error::InvalidUtf8 { .. })
        ));
        // gzip content encoding.
        let mut body = envelope("v1", "ConfigMap", &meta("x"));
        body.extend(field_bytes(3, b"gzip"));
        assert!(matches!(decode(&body), Err(Error::UnsupportedEncoding(_))));
        // Deep nesting through RawExtension-free recursion: nested JSONSchemaProps-like loops
        // do not exist in core, so nest envelopes through ControllerRevision.data instead.
        let mut inner = envelope("v1", "ConfigMap", &meta("x"));
        for _ in 0..100 {
            let raw = [meta("r"), field_bytes(2, &field_bytes(1, &inner))].concat();
            inner = envelope("apps/v1", "ControllerRevision", &raw);
        }
        assert!(matches!(decode(&inner), Err(Error::TooDeep)));
    }
}
