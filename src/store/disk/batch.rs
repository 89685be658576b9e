//! A batch of store operations as bytes: what a cluster's leader proposes as one Raft entry
//! and each member decodes and writes to its own store.
//!
//! ```text
//! version u8 | count u32 | op*
//! op: tag u8 | fields
//! ```
//!
//! Records the store already keeps (users, permissions, exchanges, queues, bindings,
//! policies, limits, delayed messages) travel as their store key and value, each with a
//! 32-bit length, and decode with the store's own record decoders; messages travel in the
//! store's message layout. Decoding checks every length against the bytes left, so a
//! corrupt entry is an error, never a large allocation.

use bytes::{BufMut, BytesMut};

use crate::proto::codec::{self, Reader};
use crate::store::{EntryBody, StoreOp};

use super::entry;
use super::record::{self, RecordError, Result};

/// The layout version this build writes and reads.
const VERSION: u8 = 1;

mod tag {
    pub const PUT_VHOST: u8 = 1;
    pub const DELETE_VHOST: u8 = 2;
    pub const PUT_USER: u8 = 3;
    pub const DELETE_USER: u8 = 4;
    pub const PUT_PERMISSION: u8 = 5;
    pub const DELETE_PERMISSION: u8 = 6;
    pub const PUT_VHOST_LIMITS: u8 = 7;
    pub const PUT_USER_LIMITS: u8 = 8;
    pub const PUT_DELAYED: u8 = 9;
    pub const DELETE_DELAYED: u8 = 10;
    pub const PUT_TOPIC_PERMISSION: u8 = 11;
    pub const DELETE_TOPIC_PERMISSION: u8 = 12;
    pub const PUT_POLICY: u8 = 13;
    pub const DELETE_POLICY: u8 = 14;
    pub const PUT_EXCHANGE: u8 = 15;
    pub const DELETE_EXCHANGE: u8 = 16;
    pub const PUT_QUEUE: u8 = 17;
    pub const DELETE_QUEUE: u8 = 18;
    pub const PUT_BINDING: u8 = 19;
    pub const DELETE_BINDING: u8 = 20;
    pub const PUT_SHARED: u8 = 21;
    pub const ENQUEUE_INLINE: u8 = 22;
    pub const ENQUEUE_SHARED: u8 = 23;
    pub const DEQUEUE: u8 = 24;
    pub const PURGE_FROM: u8 = 25;
    pub const PAGE_OUT: u8 = 26;
    pub const DROP_PAGED: u8 = 27;
}

/// Encodes a batch.
pub fn encode_batch(ops: &[StoreOp]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(64 * ops.len() + 8);
    out.put_u8(VERSION);
    out.put_u32(codec::len_u32(ops.len()));
    for op in ops {
        put_op(&mut out, op);
    }
    Vec::from(out)
}

/// Decodes a batch made by [`encode_batch`].
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<StoreOp>> {
    let (&version, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let mut r = Reader::new(rest);
    let count = r.u32()? as usize;
    // Every op takes at least its tag: a count past the bytes left is corrupt.
    if count > r.rest().len() {
        return Err(RecordError::Trailing(r.rest().len()));
    }
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        ops.push(read_op(&mut r)?);
    }
    record::finish(r, ops)
}

fn put_blob(out: &mut BytesMut, bytes: &[u8]) {
    codec::put_longstr(out, bytes);
}

fn put_str(out: &mut BytesMut, s: &str) {
    codec::put_longstr(out, s.as_bytes());
}

fn put_opt(out: &mut BytesMut, v: Option<u64>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            out.put_u64(v);
        }
        None => out.put_u8(0),
    }
}

/// A record as its store key and value.
fn put_kv(out: &mut BytesMut, tag: u8, key: &[u8], value: &[u8]) {
    out.put_u8(tag);
    put_blob(out, key);
    put_blob(out, value);
}

fn put_op(out: &mut BytesMut, op: &StoreOp) {
    match op {
        StoreOp::PutVhost(name) => {
            out.put_u8(tag::PUT_VHOST);
            put_str(out, name);
        }
        StoreOp::DeleteVhost(name) => {
            out.put_u8(tag::DELETE_VHOST);
            put_str(out, name);
        }
        StoreOp::PutUser(u) => put_kv(
            out,
            tag::PUT_USER,
            &record::user_key(&u.name),
            &record::encode_user(u),
        ),
        StoreOp::DeleteUser(name) => {
            out.put_u8(tag::DELETE_USER);
            put_str(out, name);
        }
        StoreOp::PutPermission(p) => put_kv(
            out,
            tag::PUT_PERMISSION,
            &record::permission_key(&p.user, &p.vhost),
            &record::encode_permission(p),
        ),
        StoreOp::DeletePermission { user, vhost } => {
            out.put_u8(tag::DELETE_PERMISSION);
            put_str(out, user);
            put_str(out, vhost);
        }
        StoreOp::PutVhostLimits { vhost, limits } => put_kv(
            out,
            tag::PUT_VHOST_LIMITS,
            &record::vhost_limits_key(vhost),
            &record::encode_vhost_limits(limits),
        ),
        StoreOp::PutUserLimits { user, limits } => put_kv(
            out,
            tag::PUT_USER_LIMITS,
            &record::user_limits_key(user),
            &record::encode_user_limits(limits),
        ),
        StoreOp::PutDelayed(d) => put_kv(
            out,
            tag::PUT_DELAYED,
            &record::delayed_key(d.id),
            &record::encode_delayed(d),
        ),
        StoreOp::DeleteDelayed { id } => {
            out.put_u8(tag::DELETE_DELAYED);
            out.put_u64(*id);
        }
        StoreOp::PutTopicPermission(p) => put_kv(
            out,
            tag::PUT_TOPIC_PERMISSION,
            &record::topic_permission_key(&p.user, &p.vhost, &p.exchange),
            &record::encode_topic_permission(p),
        ),
        StoreOp::DeleteTopicPermission {
            user,
            vhost,
            exchange,
        } => {
            out.put_u8(tag::DELETE_TOPIC_PERMISSION);
            put_str(out, user);
            put_str(out, vhost);
            put_str(out, exchange);
        }
        StoreOp::PutPolicy(p) => put_kv(
            out,
            tag::PUT_POLICY,
            &record::policy_key(p.operator, &p.vhost, &p.name),
            &record::encode_policy(p),
        ),
        StoreOp::DeletePolicy {
            operator,
            vhost,
            name,
        } => {
            out.put_u8(tag::DELETE_POLICY);
            out.put_u8(u8::from(*operator));
            put_str(out, vhost);
            put_str(out, name);
        }
        StoreOp::PutExchange(x) => put_kv(
            out,
            tag::PUT_EXCHANGE,
            &record::exchange_key(&x.vhost, &x.name),
            &record::encode_exchange(x),
        ),
        StoreOp::DeleteExchange { vhost, name } => {
            out.put_u8(tag::DELETE_EXCHANGE);
            put_str(out, vhost);
            put_str(out, name);
        }
        StoreOp::PutQueue(q) => put_kv(
            out,
            tag::PUT_QUEUE,
            &record::queue_key(q.id),
            &record::encode_queue(q),
        ),
        StoreOp::DeleteQueue { vhost, name, id } => {
            out.put_u8(tag::DELETE_QUEUE);
            put_str(out, vhost);
            put_str(out, name);
            out.put_u64(*id);
        }
        StoreOp::PutBinding(b) => put_kv(
            out,
            tag::PUT_BINDING,
            &record::binding_key(b),
            &record::encode_binding(b),
        ),
        StoreOp::DeleteBinding(b) => put_kv(
            out,
            tag::DELETE_BINDING,
            &record::binding_key(b),
            &record::encode_binding(b),
        ),
        StoreOp::PutShared { id, message, refs } => {
            out.put_u8(tag::PUT_SHARED);
            out.put_u64(*id);
            out.put_u32(*refs);
            put_blob(out, &entry::encode_paged(message, None));
        }
        StoreOp::Enqueue {
            queue,
            seq,
            body,
            expires_at_ms,
        } => match body {
            EntryBody::Inline(message) => {
                out.put_u8(tag::ENQUEUE_INLINE);
                out.put_u64(*queue);
                out.put_u64(*seq);
                put_blob(out, &entry::encode_paged(message, *expires_at_ms));
            }
            EntryBody::Shared(id) => {
                out.put_u8(tag::ENQUEUE_SHARED);
                out.put_u64(*queue);
                out.put_u64(*seq);
                out.put_u64(*id);
                put_opt(out, *expires_at_ms);
            }
        },
        StoreOp::Dequeue { queue, seq, shared } => {
            out.put_u8(tag::DEQUEUE);
            out.put_u64(*queue);
            out.put_u64(*seq);
            put_opt(out, *shared);
        }
        StoreOp::PurgeFrom { queue, from_seq } => {
            out.put_u8(tag::PURGE_FROM);
            out.put_u64(*queue);
            out.put_u64(*from_seq);
        }
        StoreOp::PageOut {
            queue,
            seq,
            message,
            expires_at_ms,
        } => {
            out.put_u8(tag::PAGE_OUT);
            out.put_u64(*queue);
            out.put_u64(*seq);
            put_blob(out, &entry::encode_paged(message, *expires_at_ms));
        }
        StoreOp::DropPaged { queue, up_to_seq } => {
            out.put_u8(tag::DROP_PAGED);
            out.put_u64(*queue);
            out.put_u64(*up_to_seq);
        }
    }
}

fn read_str(r: &mut Reader<'_>) -> Result<String> {
    let raw = r.longstr()?;
    let s = std::str::from_utf8(raw).map_err(|_| crate::proto::codec::DecodeError::BadUtf8)?;
    Ok(s.to_owned())
}

fn read_opt(r: &mut Reader<'_>) -> Result<Option<u64>> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.u64()?)),
        b => Err(RecordError::BadFlags(b)),
    }
}

fn read_kv<'a>(r: &mut Reader<'a>) -> Result<(&'a [u8], &'a [u8])> {
    Ok((r.longstr()?, r.longstr()?))
}

fn read_op(r: &mut Reader<'_>) -> Result<StoreOp> {
    use std::sync::Arc;
    let op = match r.u8()? {
        tag::PUT_VHOST => StoreOp::PutVhost(read_str(r)?),
        tag::DELETE_VHOST => StoreOp::DeleteVhost(read_str(r)?),
        tag::PUT_USER => {
            let (k, v) = read_kv(r)?;
            StoreOp::PutUser(record::decode_user(k, v)?)
        }
        tag::DELETE_USER => StoreOp::DeleteUser(read_str(r)?),
        tag::PUT_PERMISSION => {
            let (k, v) = read_kv(r)?;
            StoreOp::PutPermission(record::decode_permission(k, v)?)
        }
        tag::DELETE_PERMISSION => StoreOp::DeletePermission {
            user: read_str(r)?,
            vhost: read_str(r)?,
        },
        tag::PUT_VHOST_LIMITS => {
            let (k, v) = read_kv(r)?;
            let (vhost, limits) = record::decode_vhost_limits(k, v)?;
            StoreOp::PutVhostLimits { vhost, limits }
        }
        tag::PUT_USER_LIMITS => {
            let (k, v) = read_kv(r)?;
            let (user, limits) = record::decode_user_limits(k, v)?;
            StoreOp::PutUserLimits { user, limits }
        }
        tag::PUT_DELAYED => {
            let (k, v) = read_kv(r)?;
            StoreOp::PutDelayed(record::decode_delayed(k, v)?)
        }
        tag::DELETE_DELAYED => StoreOp::DeleteDelayed { id: r.u64()? },
        tag::PUT_TOPIC_PERMISSION => {
            let (k, v) = read_kv(r)?;
            StoreOp::PutTopicPermission(record::decode_topic_permission(k, v)?)
        }
        tag::DELETE_TOPIC_PERMISSION => StoreOp::DeleteTopicPermission {
            user: read_str(r)?,
            vhost: read_str(r)?,
            exchange: read_str(r)?,
        },
        tag::PUT_POLICY => {
            let (k, v) = read_kv(r)?;
            StoreOp::PutPolicy(record::decode_policy(k, v)?)
        }
        tag::DELETE_POLICY => StoreOp::DeletePolicy {
            operator: match r.u8()? {
                0 => false,
                1 => true,
                b => return Err(RecordError::BadFlags(b)),
            },
            vhost: read_str(r)?,
            name: read_str(r)?,
        },
        tag::PUT_EXCHANGE => {
            let (k, v) = read_kv(r)?;
            StoreOp::PutExchange(record::decode_exchange(k, v)?)
        }
        tag::DELETE_EXCHANGE => StoreOp::DeleteExchange {
            vhost: read_str(r)?,
            name: read_str(r)?,
        },
        tag::PUT_QUEUE => {
            let (k, v) = read_kv(r)?;
            StoreOp::PutQueue(record::decode_queue(k, v)?)
        }
        tag::DELETE_QUEUE => StoreOp::DeleteQueue {
            vhost: read_str(r)?,
            name: read_str(r)?,
            id: r.u64()?,
        },
        tag::PUT_BINDING => {
            let (k, v) = read_kv(r)?;
            StoreOp::PutBinding(record::decode_binding(k, v)?)
        }
        tag::DELETE_BINDING => {
            let (k, v) = read_kv(r)?;
            StoreOp::DeleteBinding(record::decode_binding(k, v)?)
        }
        tag::PUT_SHARED => {
            let id = r.u64()?;
            let refs = r.u32()?;
            let (message, expiry) = entry::decode_paged(r.longstr()?)?;
            if expiry.is_some() {
                return Err(RecordError::KeyMismatch);
            }
            StoreOp::PutShared {
                id,
                message: Arc::new(message),
                refs,
            }
        }
        tag::ENQUEUE_INLINE => {
            let queue = r.u64()?;
            let seq = r.u64()?;
            let (message, expires_at_ms) = entry::decode_paged(r.longstr()?)?;
            StoreOp::Enqueue {
                queue,
                seq,
                body: EntryBody::Inline(Arc::new(message)),
                expires_at_ms,
            }
        }
        tag::ENQUEUE_SHARED => StoreOp::Enqueue {
            queue: r.u64()?,
            seq: r.u64()?,
            body: EntryBody::Shared(r.u64()?),
            expires_at_ms: read_opt(r)?,
        },
        tag::DEQUEUE => StoreOp::Dequeue {
            queue: r.u64()?,
            seq: r.u64()?,
            shared: read_opt(r)?,
        },
        tag::PURGE_FROM => StoreOp::PurgeFrom {
            queue: r.u64()?,
            from_seq: r.u64()?,
        },
        tag::PAGE_OUT => {
            let queue = r.u64()?;
            let seq = r.u64()?;
            let (message, expires_at_ms) = entry::decode_paged(r.longstr()?)?;
            StoreOp::PageOut {
                queue,
                seq,
                message: Arc::new(message),
                expires_at_ms,
            }
        }
        tag::DROP_PAGED => StoreOp::DropPaged {
            queue: r.u64()?,
            up_to_seq: r.u64()?,
        },
        t => return Err(RecordError::UnknownOp(t)),
    };
    Ok(op)
}
