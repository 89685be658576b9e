//! The byte layout of everything [`super::FjallStore`] writes: keys that sort the way the
//! store scans them, and values that start with a format version byte.
//!
//! Values are hand-written with the AMQP codec helpers. Strings are written as long
//! strings (32-bit length), never as short strings, because user names, password hashes
//! and permission patterns are not bounded by 255 bytes and a short string would truncate
//! them silently. Every decoder reads the whole value and refuses trailing bytes, so a
//! value that is cut short or scribbled over fails loudly instead of decoding to
//! something else.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::proto::codec::{self, DecodeError, Reader};
use crate::proto::command::Message;
use crate::proto::props::BasicProperties;
use crate::proto::table::FieldTable;
use crate::store::{
    BindingRecord, DelayedRecord, ExchangeRecord, PermissionRecord, PolicyRecord, QueueRecord,
    TopicPermissionRecord, UserLimits, UserRecord, VhostLimits,
};

/// The version byte every value starts with. A store written with a different version is
/// refused at open: version 1 (one message record per message, entries naming it) is not
/// read by this build, and there is no migration from it.
pub const FORMAT_VERSION: u8 = 2;

/// The `meta` key holding the store's format version (its 0 first byte is no record tag).
pub const FORMAT_KEY: &[u8] = b"\x00format";

/// The `meta` key counting the batches written over the store's life (a counter value,
/// rewritten by every batch), so that a store reopened after a failure knows how many of
/// the batches in doubt it kept.
pub const WRITES_KEY: &[u8] = b"\x00writes";

/// The `meta` key of a cluster member's store holding the Raft log index and term of the
/// last entry applied to it, written in the same batch as the entry's operations, so that
/// a restarted member applies the log from exactly the entry after it.
pub const APPLIED_KEY: &[u8] = b"\x00applied";

/// The `meta` key of a cluster member's store holding the cluster's members as of the
/// last entry applied (written with the entries that change them), so that a restarted
/// member, and one that installs this store as a snapshot, knows them.
pub const MEMBERS_KEY: &[u8] = b"\x00members";

/// Tags of `meta` keys: the first byte says what the key names.
pub mod tag {
    /// A vhost: tag, name.
    pub const VHOST: u8 = b'v';
    /// A user: tag, name.
    pub const USER: u8 = b'u';
    /// Permissions: tag, user (u32 length, bytes), vhost (u32 length, bytes).
    pub const PERMISSION: u8 = b'p';
    /// An exchange: tag, vhost (u32 length, bytes), name (u32 length, bytes).
    pub const EXCHANGE: u8 = b'x';
    /// A queue: tag, id (u64 BE).
    pub const QUEUE: u8 = b'q';
    /// A binding: tag, SHA-256 of the encoded binding.
    pub const BINDING: u8 = b'b';
    /// A queue id's entry generation: tag, id (u64 BE).
    pub const GENERATION: u8 = b'g';
    /// One past the highest shared message id ever stored: the tag alone.
    pub const NEXT_SHARED: u8 = b's';
    /// A vhost's limits: tag, vhost name.
    pub const VHOST_LIMITS: u8 = b'V';
    /// A user's limits: tag, user name.
    pub const USER_LIMITS: u8 = b'U';
    /// A policy: tag, kind (0 a user's policy, 1 an operator policy), vhost (u32 length,
    /// bytes), name (u32 length, bytes).
    pub const POLICY: u8 = b'P';
    /// Topic permissions: tag, user, vhost, exchange (each u32 length, bytes).
    pub const TOPIC_PERMISSION: u8 = b't';
    /// A delayed message: tag, id (u64 BE).
    pub const DELAYED: u8 = b'd';
}

/// Whether a metadata record with this key may be set aside when it does not decode: the
/// objects (vhosts, users, permissions, exchanges, queues, bindings), not the counters
/// that keep the store consistent.
pub fn can_set_aside(key: &[u8]) -> bool {
    matches!(
        key.first().copied(),
        Some(
            tag::VHOST
                | tag::USER
                | tag::PERMISSION
                | tag::EXCHANGE
                | tag::QUEUE
                | tag::BINDING
                | tag::POLICY
                | tag::TOPIC_PERMISSION
                | tag::DELAYED
        )
    )
}

/// Why a stored value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The value starts with a version byte this build does not write.
    Version(u8),
    /// The value is empty (no version byte).
    Empty,
    /// A field did not decode.
    Decode(DecodeError),
    /// Bytes were left after the last field.
    Trailing(usize),
    /// The key does not have the length or shape its tag requires.
    BadKey,
    /// The value decoded, but does not belong under this key.
    KeyMismatch,
    /// A flags octet has bits set that no version defines.
    BadFlags(u8),
    /// An encoded batch holds an operation tag that no version defines.
    UnknownOp(u8),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Version(v) => write!(
                f,
                "unknown record format version {v} (this build writes {FORMAT_VERSION})"
            ),
            RecordError::Empty => f.write_str("empty value (no format version byte)"),
            RecordError::Decode(e) => write!(f, "undecodable value: {e}"),
            RecordError::Trailing(n) => write!(f, "{n} unexpected bytes after the record"),
            RecordError::BadKey => f.write_str("malformed key"),
            RecordError::KeyMismatch => f.write_str("the value does not match its key"),
            RecordError::BadFlags(b) => write!(f, "undefined flag bits {b:#04x}"),
            RecordError::UnknownOp(t) => write!(f, "unknown store operation tag {t}"),
        }
    }
}

impl From<DecodeError> for RecordError {
    fn from(e: DecodeError) -> Self {
        RecordError::Decode(e)
    }
}

pub(super) type Result<T> = std::result::Result<T, RecordError>;

// ----- primitives -----

fn put_str(out: &mut BytesMut, s: &str) {
    codec::put_longstr(out, s.as_bytes());
}

fn read_string(r: &mut Reader<'_>) -> Result<String> {
    let raw = r.longstr()?;
    let s = std::str::from_utf8(raw).map_err(|_| DecodeError::BadUtf8)?;
    Ok(s.to_owned())
}

fn put_table(out: &mut BytesMut, table: &FieldTable) {
    table.encode(out);
}

fn read_table(r: &mut Reader<'_>) -> Result<FieldTable> {
    Ok(FieldTable::read(r)?)
}

/// A reader past the version byte, which must be [`FORMAT_VERSION`].
pub(super) fn open_value(value: &[u8]) -> Result<Reader<'_>> {
    let (&version, rest) = value.split_first().ok_or(RecordError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(RecordError::Version(version));
    }
    Ok(Reader::new(rest))
}

pub(super) fn finish<T>(r: Reader<'_>, value: T) -> Result<T> {
    match r.rest().len() {
        0 => Ok(value),
        n => Err(RecordError::Trailing(n)),
    }
}

pub(super) fn new_value(capacity: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(capacity + 1);
    out.put_u8(FORMAT_VERSION);
    out
}

/// A key part that keeps two variable strings apart: 32-bit length, then the bytes.
fn put_key_part(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&codec::len_u32(s.len()).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(super) fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

// ----- meta keys -----

/// The key of a vhost.
pub fn vhost_key(name: &str) -> Vec<u8> {
    let mut key = vec![tag::VHOST];
    key.extend_from_slice(name.as_bytes());
    key
}

/// The key of a user.
pub fn user_key(name: &str) -> Vec<u8> {
    let mut key = vec![tag::USER];
    key.extend_from_slice(name.as_bytes());
    key
}

/// The key of a vhost's limits.
pub fn vhost_limits_key(vhost: &str) -> Vec<u8> {
    let mut key = vec![tag::VHOST_LIMITS];
    key.extend_from_slice(vhost.as_bytes());
    key
}

/// The key of a user's limits.
pub fn user_limits_key(user: &str) -> Vec<u8> {
    let mut key = vec![tag::USER_LIMITS];
    key.extend_from_slice(user.as_bytes());
    key
}

/// The key of a user's permissions in a vhost.
pub fn permission_key(user: &str, vhost: &str) -> Vec<u8> {
    let mut key = vec![tag::PERMISSION];
    put_key_part(&mut key, user);
    put_key_part(&mut key, vhost);
    key
}

/// The key of a user's topic permissions on an exchange of a vhost.
pub fn topic_permission_key(user: &str, vhost: &str, exchange: &str) -> Vec<u8> {
    let mut key = vec![tag::TOPIC_PERMISSION];
    put_key_part(&mut key, user);
    put_key_part(&mut key, vhost);
    put_key_part(&mut key, exchange);
    key
}

/// Encodes topic permissions.
pub fn encode_topic_permission(p: &TopicPermissionRecord) -> Vec<u8> {
    let mut out = new_value(64);
    for s in [&p.user, &p.vhost, &p.exchange, &p.write, &p.read] {
        put_str(&mut out, s);
    }
    Vec::from(out)
}

/// Decodes topic permissions and checks they belong under `key`.
pub fn decode_topic_permission(key: &[u8], value: &[u8]) -> Result<TopicPermissionRecord> {
    let mut r = open_value(value)?;
    let p = TopicPermissionRecord {
        user: read_string(&mut r)?,
        vhost: read_string(&mut r)?,
        exchange: read_string(&mut r)?,
        write: read_string(&mut r)?,
        read: read_string(&mut r)?,
    };
    check_key(key, &topic_permission_key(&p.user, &p.vhost, &p.exchange))?;
    finish(r, p)
}

/// The key of a delayed message.
pub fn delayed_key(id: u64) -> Vec<u8> {
    let mut key = vec![tag::DELAYED];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Encodes a delayed message.
pub fn encode_delayed(d: &DelayedRecord) -> Vec<u8> {
    let mut out = new_value(message_capacity(&d.message) + 64);
    put_str(&mut out, &d.vhost);
    put_str(&mut out, &d.exchange);
    out.put_u64(d.due_ms);
    put_message(&mut out, &d.message);
    Vec::from(out)
}

/// Decodes a delayed message and checks it belongs under `key`.
pub fn decode_delayed(key: &[u8], value: &[u8]) -> Result<DelayedRecord> {
    let id = u64_at(key, 1)
        .filter(|_| key.len() == 9)
        .ok_or(RecordError::BadKey)?;
    let mut r = open_value(value)?;
    let vhost = read_string(&mut r)?;
    let exchange = read_string(&mut r)?;
    let due_ms = r.u64()?;
    let message = Arc::new(read_message(&mut r)?);
    finish(
        r,
        DelayedRecord {
            id,
            vhost,
            exchange,
            due_ms,
            message,
        },
    )
}

/// The key of a policy.
pub fn policy_key(operator: bool, vhost: &str, name: &str) -> Vec<u8> {
    let mut key = vec![tag::POLICY, u8::from(operator)];
    put_key_part(&mut key, vhost);
    put_key_part(&mut key, name);
    key
}

/// The key of an exchange.
pub fn exchange_key(vhost: &str, name: &str) -> Vec<u8> {
    let mut key = vec![tag::EXCHANGE];
    put_key_part(&mut key, vhost);
    put_key_part(&mut key, name);
    key
}

/// The key of a queue.
pub fn queue_key(id: u64) -> Vec<u8> {
    let mut key = vec![tag::QUEUE];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The key of a queue id's entry generation.
pub fn generation_key(id: u64) -> Vec<u8> {
    let mut key = vec![tag::GENERATION];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The id in a queue or generation key.
pub fn id_of_key(key: &[u8]) -> Result<u64> {
    match key.len() {
        9 => u64_at(key, 1).ok_or(RecordError::BadKey),
        _ => Err(RecordError::BadKey),
    }
}

/// The key of a binding: a digest of the whole record. A binding has no shorter identity
/// (its arguments are part of it), and its arguments may exceed fjall's 64 KiB key limit,
/// so the key is the record's SHA-256 and the record itself is the value.
pub fn binding_key(b: &BindingRecord) -> Vec<u8> {
    binding_key_of_body(&binding_body(b))
}

fn binding_key_of_body(body: &[u8]) -> Vec<u8> {
    let mut key = vec![tag::BINDING];
    key.extend_from_slice(&Sha256::digest(body));
    key
}

// ----- meta values -----

/// A vhost's value: the version byte alone (the name is the key).
pub fn encode_vhost() -> Vec<u8> {
    vec![FORMAT_VERSION]
}

/// Checks a vhost value and returns the name from its key.
pub fn decode_vhost(key: &[u8], value: &[u8]) -> Result<String> {
    let r = open_value(value)?;
    let name = key.get(1..).ok_or(RecordError::BadKey)?;
    let name = std::str::from_utf8(name).map_err(|_| RecordError::BadKey)?;
    finish(r, name.to_owned())
}

/// Encodes a user.
pub fn encode_user(u: &UserRecord) -> Vec<u8> {
    let mut out = new_value(64);
    put_str(&mut out, &u.name);
    put_str(&mut out, &u.password_hash);
    out.put_u32(codec::len_u32(u.tags.len()));
    for t in &u.tags {
        put_str(&mut out, t);
    }
    Vec::from(out)
}

/// Decodes a user and checks it belongs under `key`.
pub fn decode_user(key: &[u8], value: &[u8]) -> Result<UserRecord> {
    let mut r = open_value(value)?;
    let name = read_string(&mut r)?;
    let password_hash = read_string(&mut r)?;
    let count = r.u32()?;
    let mut tags = Vec::new();
    for _ in 0..count {
        // Each tag takes at least its 4-byte length, so a corrupt count fails on a short
        // read long before it could allocate much.
        tags.push(read_string(&mut r)?);
    }
    let user = UserRecord {
        name,
        password_hash,
        tags,
    };
    check_key(key, &user_key(&user.name))?;
    finish(r, user)
}

/// Encodes two optional limits: a flags octet saying which are set, then each set one as
/// a signed 64-bit integer.
fn encode_limit_pair(pair: [Option<i64>; 2]) -> Vec<u8> {
    let mut out = new_value(17);
    let flags = pair
        .iter()
        .enumerate()
        .fold(0u8, |f, (i, v)| f | (u8::from(v.is_some()) << i));
    out.put_u8(flags);
    for v in pair.into_iter().flatten() {
        out.put_i64(v);
    }
    Vec::from(out)
}

/// Decodes what [`encode_limit_pair`] wrote; the name comes from the key.
fn decode_limit_pair(key: &[u8], value: &[u8]) -> Result<(String, [Option<i64>; 2])> {
    let mut r = open_value(value)?;
    let flags = read_flags(&mut r, 0b11)?;
    let mut pair = [None; 2];
    for (i, slot) in pair.iter_mut().enumerate() {
        if flags & (1 << i) != 0 {
            *slot = Some(r.i64()?);
        }
    }
    let name = key.get(1..).ok_or(RecordError::BadKey)?;
    let name = std::str::from_utf8(name).map_err(|_| RecordError::BadKey)?;
    finish(r, (name.to_owned(), pair))
}

/// Encodes a vhost's limits (the vhost name is the key).
pub fn encode_vhost_limits(l: &VhostLimits) -> Vec<u8> {
    encode_limit_pair([l.max_connections, l.max_queues])
}

/// Decodes a vhost's limits and the vhost name from its key.
pub fn decode_vhost_limits(key: &[u8], value: &[u8]) -> Result<(String, VhostLimits)> {
    let (name, [max_connections, max_queues]) = decode_limit_pair(key, value)?;
    Ok((
        name,
        VhostLimits {
            max_connections,
            max_queues,
        },
    ))
}

/// Encodes a user's limits (the user name is the key).
pub fn encode_user_limits(l: &UserLimits) -> Vec<u8> {
    encode_limit_pair([l.max_connections, l.max_channels])
}

/// Decodes a user's limits and the user name from its key.
pub fn decode_user_limits(key: &[u8], value: &[u8]) -> Result<(String, UserLimits)> {
    let (name, [max_connections, max_channels]) = decode_limit_pair(key, value)?;
    Ok((
        name,
        UserLimits {
            max_connections,
            max_channels,
        },
    ))
}

/// Encodes permissions.
pub fn encode_permission(p: &PermissionRecord) -> Vec<u8> {
    let mut out = new_value(64);
    for s in [&p.user, &p.vhost, &p.configure, &p.write, &p.read] {
        put_str(&mut out, s);
    }
    Vec::from(out)
}

/// Decodes permissions and checks they belong under `key`.
pub fn decode_permission(key: &[u8], value: &[u8]) -> Result<PermissionRecord> {
    let mut r = open_value(value)?;
    let p = PermissionRecord {
        user: read_string(&mut r)?,
        vhost: read_string(&mut r)?,
        configure: read_string(&mut r)?,
        write: read_string(&mut r)?,
        read: read_string(&mut r)?,
    };
    check_key(key, &permission_key(&p.user, &p.vhost))?;
    finish(r, p)
}

/// Encodes a policy.
pub fn encode_policy(p: &PolicyRecord) -> Vec<u8> {
    let mut out = new_value(64);
    out.put_u8(u8::from(p.operator));
    put_str(&mut out, &p.vhost);
    put_str(&mut out, &p.name);
    put_str(&mut out, &p.pattern);
    put_str(&mut out, &p.apply_to);
    out.put_i64(p.priority);
    put_table(&mut out, &p.definition);
    Vec::from(out)
}

/// Decodes a policy and checks it belongs under `key`.
pub fn decode_policy(key: &[u8], value: &[u8]) -> Result<PolicyRecord> {
    let mut r = open_value(value)?;
    let operator = read_flags(&mut r, 1)? == 1;
    let p = PolicyRecord {
        operator,
        vhost: read_string(&mut r)?,
        name: read_string(&mut r)?,
        pattern: read_string(&mut r)?,
        apply_to: read_string(&mut r)?,
        priority: r.i64()?,
        definition: read_table(&mut r)?,
    };
    check_key(key, &policy_key(p.operator, &p.vhost, &p.name))?;
    finish(r, p)
}

/// Encodes an exchange.
pub fn encode_exchange(x: &ExchangeRecord) -> Vec<u8> {
    let mut out = new_value(64);
    put_str(&mut out, &x.vhost);
    put_str(&mut out, &x.name);
    put_str(&mut out, &x.kind);
    out.put_u8(u8::from(x.auto_delete) | (u8::from(x.internal) << 1));
    put_table(&mut out, &x.arguments);
    Vec::from(out)
}

/// Decodes an exchange and checks it belongs under `key`.
pub fn decode_exchange(key: &[u8], value: &[u8]) -> Result<ExchangeRecord> {
    let mut r = open_value(value)?;
    let vhost = read_string(&mut r)?;
    let name = read_string(&mut r)?;
    let kind = read_string(&mut r)?;
    let flags = read_flags(&mut r, 0b11)?;
    let x = ExchangeRecord {
        vhost,
        name,
        kind,
        auto_delete: flags & 1 != 0,
        internal: flags & 2 != 0,
        arguments: read_table(&mut r)?,
    };
    check_key(key, &exchange_key(&x.vhost, &x.name))?;
    finish(r, x)
}

/// Encodes a queue.
pub fn encode_queue(q: &QueueRecord) -> Vec<u8> {
    let mut out = new_value(64);
    put_str(&mut out, &q.vhost);
    put_str(&mut out, &q.name);
    out.put_u64(q.id);
    out.put_u8(u8::from(q.auto_delete));
    put_table(&mut out, &q.arguments);
    Vec::from(out)
}

/// Decodes a queue and checks it belongs under `key`.
pub fn decode_queue(key: &[u8], value: &[u8]) -> Result<QueueRecord> {
    let mut r = open_value(value)?;
    let vhost = read_string(&mut r)?;
    let name = read_string(&mut r)?;
    let id = r.u64()?;
    let flags = read_flags(&mut r, 1)?;
    let q = QueueRecord {
        vhost,
        name,
        id,
        auto_delete: flags & 1 != 0,
        arguments: read_table(&mut r)?,
    };
    check_key(key, &queue_key(q.id))?;
    finish(r, q)
}

fn binding_body(b: &BindingRecord) -> BytesMut {
    let mut out = BytesMut::with_capacity(64 + b.arguments.len());
    put_str(&mut out, &b.vhost);
    put_str(&mut out, &b.source);
    put_str(&mut out, &b.destination);
    out.put_u8(u8::from(b.to_exchange));
    put_str(&mut out, &b.routing_key);
    codec::put_longstr(&mut out, &b.arguments);
    out
}

/// Encodes a binding.
pub fn encode_binding(b: &BindingRecord) -> Vec<u8> {
    let body = binding_body(b);
    let mut out = new_value(body.len());
    out.put_slice(&body);
    Vec::from(out)
}

/// Decodes a binding and checks its digest against `key`.
pub fn decode_binding(key: &[u8], value: &[u8]) -> Result<BindingRecord> {
    let mut r = open_value(value)?;
    let body = r.rest();
    let vhost = read_string(&mut r)?;
    let source = read_string(&mut r)?;
    let destination = read_string(&mut r)?;
    let to_exchange = read_flags(&mut r, 1)? != 0;
    let b = BindingRecord {
        vhost,
        source,
        destination,
        to_exchange,
        routing_key: read_string(&mut r)?,
        arguments: r.longstr()?.to_vec(),
    };
    let b = finish(r, b)?;
    check_key(key, &binding_key_of_body(body))?;
    Ok(b)
}

/// The key of the shared message id counter.
pub fn next_shared_key() -> Vec<u8> {
    vec![tag::NEXT_SHARED]
}

/// Encodes a counter: a queue id's entry generation, or the next shared message id.
pub fn encode_counter(value: u64) -> Vec<u8> {
    let mut out = new_value(8);
    out.put_u64(value);
    Vec::from(out)
}

/// Decodes a counter written by [`encode_counter`].
pub fn decode_counter(value: &[u8]) -> Result<u64> {
    let mut r = open_value(value)?;
    let counter = r.u64()?;
    finish(r, counter)
}

/// Encodes the applied key's value: a Raft log index and its term.
pub fn encode_applied(index: u64, term: u64) -> Vec<u8> {
    let mut out = new_value(16);
    out.put_u64(index);
    out.put_u64(term);
    Vec::from(out)
}

/// Decodes a value written by [`encode_applied`].
pub fn decode_applied(value: &[u8]) -> Result<(u64, u64)> {
    let mut r = open_value(value)?;
    let index = r.u64()?;
    let term = r.u64()?;
    finish(r, (index, term))
}

/// Decodes the format key's value: the version the store was written with.
pub fn decode_format(value: &[u8]) -> Result<u8> {
    match value {
        [version] => Ok(*version),
        [] => Err(RecordError::Empty),
        _ => Err(RecordError::Trailing(value.len() - 1)),
    }
}

pub(super) fn read_flags(r: &mut Reader<'_>, allowed: u8) -> Result<u8> {
    let flags = r.u8()?;
    if flags & !allowed != 0 {
        return Err(RecordError::BadFlags(flags));
    }
    Ok(flags)
}

fn check_key(key: &[u8], expected: &[u8]) -> Result<()> {
    if key == expected {
        Ok(())
    } else {
        Err(RecordError::KeyMismatch)
    }
}

// ----- messages -----

/// Encodes a message: the version byte, then [`put_message`].
pub fn encode_message(m: &Message) -> Vec<u8> {
    let mut out = new_value(message_capacity(m));
    put_message(&mut out, m);
    Vec::from(out)
}

/// Bytes a message takes encoded, near enough to size a buffer.
pub fn message_capacity(m: &Message) -> usize {
    64 + m.exchange.len() + m.routing_key.len() + m.properties.encoded_len() + m.body.len()
}

/// Appends a message's fields: exchange, routing key, properties (as a long string holding
/// their content-header encoding), body (as a long string).
pub fn put_message(out: &mut BytesMut, m: &Message) {
    put_str(out, &m.exchange);
    put_str(out, &m.routing_key);
    let at = codec::begin_u32_len(out);
    m.properties.encode(out);
    codec::end_u32_len(out, at);
    codec::put_longstr(out, &m.body);
}

/// Decodes a message written by [`encode_message`].
pub fn decode_message(value: &[u8]) -> Result<Message> {
    let mut r = open_value(value)?;
    let m = read_message(&mut r)?;
    finish(r, m)
}

/// Reads the fields [`put_message`] wrote; the caller checks that nothing follows.
pub fn read_message(r: &mut Reader<'_>) -> Result<Message> {
    #[cfg(test)]
    MESSAGES_DECODED.with(|n| n.set(n.get() + 1));
    let exchange = read_string(r)?;
    let routing_key = read_string(r)?;
    let mut props = Reader::new(r.longstr()?);
    let properties = BasicProperties::read(&mut props)?;
    if !props.is_empty() {
        return Err(RecordError::Trailing(props.rest().len()));
    }
    let body = Bytes::copy_from_slice(r.longstr()?);
    Ok(Message {
        exchange,
        routing_key,
        properties,
        body,
    })
}

#[cfg(test)]
thread_local! {
    /// Messages decoded by this thread: tests check that recovery decodes only the head.
    pub static MESSAGES_DECODED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Decodes a message into the shared form queues hold.
pub fn decode_message_arc(value: &[u8]) -> Result<Arc<Message>> {
    decode_message(value).map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::table::FieldValue;

    fn sample_message(body_len: usize) -> Message {
        Message {
            exchange: "amq.direct".into(),
            routing_key: "k".repeat(300),
            properties: BasicProperties {
                delivery_mode: Some(2),
                headers: Some([("h", FieldValue::I32(7))].into_iter().collect()),
                ..Default::default()
            },
            body: Bytes::from(vec![0xAB; body_len]),
        }
    }

    #[test]
    fn records_round_trip_and_every_strict_prefix_fails() {
        let m = sample_message(40);
        let v = encode_message(&m);
        assert_eq!(decode_message(&v), Ok(m));
        for end in 0..v.len() {
            assert!(decode_message(&v[..end]).is_err(), "prefix of {end} bytes");
        }
        let mut longer = v.clone();
        longer.push(0);
        assert_eq!(decode_message(&longer), Err(RecordError::Trailing(1)));

        let u = UserRecord {
            name: "n".repeat(400),
            password_hash: "h".into(),
            tags: vec!["administrator".into(), String::new()],
        };
        let v = encode_user(&u);
        assert_eq!(decode_user(&user_key(&u.name), &v), Ok(u.clone()));
        assert_eq!(
            decode_user(&user_key("other"), &v),
            Err(RecordError::KeyMismatch)
        );

        let b = BindingRecord {
            vhost: "/".into(),
            source: "x".into(),
            destination: "q".into(),
            to_exchange: false,
            routing_key: "#".into(),
            arguments: vec![0, 0, 0, 0],
        };
        let v = encode_binding(&b);
        assert_eq!(decode_binding(&binding_key(&b), &v), Ok(b.clone()));
        let mut other = b.clone();
        other.routing_key = "*".into();
        assert_eq!(
            decode_binding(&binding_key(&other), &v),
            Err(RecordError::KeyMismatch)
        );
    }

    #[test]
    fn limits_round_trip_and_refuse_damage() {
        let l = VhostLimits {
            max_connections: Some(-1),
            max_queues: Some(i64::MAX),
        };
        let v = encode_vhost_limits(&l);
        let key = vhost_limits_key("v/1");
        assert_eq!(decode_vhost_limits(&key, &v), Ok(("v/1".into(), l)));
        for end in 0..v.len() {
            assert!(
                decode_vhost_limits(&key, &v[..end]).is_err(),
                "prefix {end}"
            );
        }
        let u = UserLimits {
            max_connections: None,
            max_channels: Some(0),
        };
        let v = encode_user_limits(&u);
        assert_eq!(v.len(), 1 + 1 + 8, "only the set limit is written");
        assert_eq!(
            decode_user_limits(&user_limits_key("u"), &v),
            Ok(("u".into(), u))
        );
        let mut bad = v.clone();
        bad[1] = 0b100;
        assert_eq!(
            decode_user_limits(&user_limits_key("u"), &bad),
            Err(RecordError::BadFlags(0b100))
        );
    }

    #[test]
    fn versions_and_counters() {
        let mut v = encode_message(&sample_message(1));
        v[0] = 9;
        assert_eq!(decode_message(&v), Err(RecordError::Version(9)));
        assert_eq!(decode_message(&[]), Err(RecordError::Empty));
        assert_eq!(decode_counter(&encode_counter(7)), Ok(7));
        assert!(decode_counter(&encode_counter(7)[..5]).is_err());
    }
}
