//! The byte layout of queue contents: keys of the `entries`, `bodies` and `paged`
//! keyspaces, entry values with their fixed header, paged values, and the reference counts
//! of shared messages (`refs`).
//!
//! An entry value starts with a header that recovery reads without decoding the message:
//!
//! ```text
//! version u8 | flags u8 | [expires_at_ms u64] | shared id u64            (SHARED)
//! version u8 | flags u8 | [expires_at_ms u64] | body_len u64 | message   (inline)
//! version u8 | flags u8 | [expires_at_ms u64] | body_len u64             (APART)
//! ```
//!
//! An inline entry whose value would reach [`BLOB_THRESHOLD_BYTES`] keeps its message in
//! `bodies` under the same key (flag APART), so the `entries` tree holds small values only
//! and a recovery scan never touches a blob file.

use bytes::{BufMut, BytesMut};

use crate::proto::codec::Reader;
use crate::proto::command::Message;
use crate::store::EntryBody;

use super::BLOB_THRESHOLD_BYTES;
use super::record::{self, RecordError, Result};

/// Entry flag: the entry refers to a shared message.
const SHARED: u8 = 1;
/// Entry or paged flag: an expiry time follows the flags.
const EXPIRES: u8 = 2;
/// Entry flag: the message is in `bodies`, under the entry's key.
const APART: u8 = 4;

/// Bytes of a content key.
pub const KEY_LEN: usize = 24;

/// A content key: queue id, generation, position, all big-endian, so that one incarnation's
/// entries are contiguous, iterate in queue order, and older generations sort first.
pub type ContentKey = [u8; KEY_LEN];

/// The key of a queue position in `entries`, `bodies` and `paged`.
pub fn content_key(queue: u64, generation: u64, seq: u64) -> ContentKey {
    let mut key = [0u8; KEY_LEN];
    key[..8].copy_from_slice(&queue.to_be_bytes());
    key[8..16].copy_from_slice(&generation.to_be_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The queue id, generation and position in a content key.
pub fn decode_content_key(key: &[u8]) -> Result<(u64, u64, u64)> {
    match (
        key.len(),
        record::u64_at(key, 0),
        record::u64_at(key, 8),
        record::u64_at(key, 16),
    ) {
        (KEY_LEN, Some(queue), Some(generation), Some(seq)) => Ok((queue, generation, seq)),
        _ => Err(RecordError::BadKey),
    }
}

/// The key of a stored shared message in `messages` and of its count in `refs`.
pub fn shared_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// The id in a shared message key.
pub fn shared_id_of_key(key: &[u8]) -> Result<u64> {
    match key.len() {
        8 => record::u64_at(key, 0).ok_or(RecordError::BadKey),
        _ => Err(RecordError::BadKey),
    }
}

/// What an entry holds, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// A reference to a shared message.
    Shared(u64),
    /// The encoded message follows the header.
    Inline {
        /// Length of the message body.
        body_len: u64,
        /// The message's fields ([`record::put_message`]).
        message: &'a [u8],
    },
    /// The message is in `bodies`.
    Apart {
        /// Length of the message body.
        body_len: u64,
    },
}

/// An entry value, its message not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader<'a> {
    /// When the message expires.
    pub expires_at_ms: Option<u64>,
    /// The message or where it is.
    pub payload: Payload<'a>,
}

impl EntryHeader<'_> {
    /// The shared message the entry refers to.
    pub fn shared(&self) -> Option<u64> {
        match self.payload {
            Payload::Shared(id) => Some(id),
            _ => None,
        }
    }

    /// Whether the message is in `bodies`.
    pub fn apart(&self) -> bool {
        matches!(self.payload, Payload::Apart { .. })
    }
}

/// An entry value, and the `bodies` value when the message goes apart.
pub fn encode_entry(body: &EntryBody, expires_at_ms: Option<u64>) -> (Vec<u8>, Option<Vec<u8>>) {
    let header = |flags: u8, extra: usize| {
        let mut out = record::new_value(18 + extra);
        out.put_u8(flags | if expires_at_ms.is_some() { EXPIRES } else { 0 });
        if let Some(at) = expires_at_ms {
            out.put_u64(at);
        }
        out
    };
    match body {
        EntryBody::Shared(id) => {
            let mut out = header(SHARED, 0);
            out.put_u64(*id);
            (Vec::from(out), None)
        }
        EntryBody::Inline(m) => {
            let mut out = header(0, record::message_capacity(m));
            out.put_u64(m.body_len());
            let fixed = out.len();
            record::put_message(&mut out, m);
            if out.len() < BLOB_THRESHOLD_BYTES as usize {
                return (Vec::from(out), None);
            }
            // The message goes to `bodies`, with a version byte of its own.
            let mut apart = Vec::with_capacity(1 + out.len() - fixed);
            apart.push(record::FORMAT_VERSION);
            apart.extend_from_slice(&out[fixed..]);
            out.truncate(fixed);
            out[1] |= APART;
            // A copy of the short header, so the message-sized buffer is freed.
            (out.to_vec(), Some(apart))
        }
    }
}

/// Reads an entry's header, leaving the message encoded.
pub fn decode_entry(value: &[u8]) -> Result<EntryHeader<'_>> {
    let mut r = record::open_value(value)?;
    let flags = record::read_flags(&mut r, SHARED | EXPIRES | APART)?;
    if flags & SHARED != 0 && flags & APART != 0 {
        return Err(RecordError::BadFlags(flags));
    }
    let expires_at_ms = read_expiry(&mut r, flags)?;
    let payload = if flags & SHARED != 0 {
        Payload::Shared(r.u64()?)
    } else {
        let body_len = r.u64()?;
        if flags & APART != 0 {
            Payload::Apart { body_len }
        } else {
            let message = r.rest();
            r = Reader::new(&[]);
            Payload::Inline { body_len, message }
        }
    };
    record::finish(
        r,
        EntryHeader {
            expires_at_ms,
            payload,
        },
    )
}

/// Decodes the message of an inline entry and checks it against the header's body length.
pub fn decode_inline(message: &[u8], body_len: u64) -> Result<Message> {
    let mut r = Reader::new(message);
    let m = record::read_message(&mut r)?;
    let m = record::finish(r, m)?;
    check_body_len(&m, body_len)?;
    Ok(m)
}

/// Decodes a message kept in `bodies` and checks it against its entry's body length.
pub fn decode_apart(value: &[u8], body_len: u64) -> Result<Message> {
    let m = record::decode_message(value)?;
    check_body_len(&m, body_len)?;
    Ok(m)
}

fn check_body_len(m: &Message, body_len: u64) -> Result<()> {
    if m.body_len() == body_len {
        Ok(())
    } else {
        Err(RecordError::KeyMismatch)
    }
}

/// A paged message's value: version, flags, [expires_at_ms], message.
pub fn encode_paged(message: &Message, expires_at_ms: Option<u64>) -> Vec<u8> {
    let mut out = record::new_value(10 + record::message_capacity(message));
    match expires_at_ms {
        Some(at) => {
            out.put_u8(EXPIRES);
            out.put_u64(at);
        }
        None => out.put_u8(0),
    }
    record::put_message(&mut out, message);
    Vec::from(out)
}

/// Decodes a paged message.
pub fn decode_paged(value: &[u8]) -> Result<(Message, Option<u64>)> {
    let mut r = record::open_value(value)?;
    let flags = record::read_flags(&mut r, EXPIRES)?;
    let expires_at_ms = read_expiry(&mut r, flags)?;
    let m = record::read_message(&mut r)?;
    record::finish(r, (m, expires_at_ms))
}

fn read_expiry(r: &mut Reader<'_>, flags: u8) -> Result<Option<u64>> {
    Ok(if flags & EXPIRES != 0 {
        Some(r.u64()?)
    } else {
        None
    })
}

/// A shared message's value in `refs`: entries that will still refer to it, and its body
/// length (so that recovery sizes queues without reading the message).
pub fn encode_refs(refs: u32, body_len: u64) -> Vec<u8> {
    let mut out: BytesMut = record::new_value(12);
    out.put_u32(refs);
    out.put_u64(body_len);
    Vec::from(out)
}

/// Decodes a `refs` value.
pub fn decode_refs(value: &[u8]) -> Result<(u32, u64)> {
    let mut r = record::open_value(value)?;
    let refs = r.u32()?;
    let body_len = r.u64()?;
    if refs == 0 {
        // A count reaching 0 deletes the record.
        return Err(RecordError::KeyMismatch);
    }
    record::finish(r, (refs, body_len))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::proto::props::BasicProperties;

    fn message(body_len: usize) -> Arc<Message> {
        Arc::new(Message {
            exchange: "x".into(),
            routing_key: "rk".into(),
            properties: BasicProperties {
                delivery_mode: Some(2),
                ..Default::default()
            },
            body: Bytes::from(vec![7; body_len]),
        })
    }

    #[test]
    fn entries_round_trip_and_go_apart_at_the_threshold() {
        let small = message(16);
        let (v, apart) = encode_entry(&EntryBody::Inline(small.clone()), Some(99));
        assert!(apart.is_none());
        let h = decode_entry(&v).expect("decodes");
        assert_eq!(h.expires_at_ms, Some(99));
        let Payload::Inline {
            body_len,
            message: m,
        } = h.payload
        else {
            panic!("inline expected: {h:?}");
        };
        assert_eq!(decode_inline(m, body_len).as_ref(), Ok(&*small));
        assert!(decode_inline(m, body_len + 1).is_err());
        for end in 0..v.len() {
            let cut = decode_entry(&v[..end]).and_then(|h| match h.payload {
                Payload::Inline {
                    body_len,
                    message: m,
                } => decode_inline(m, body_len),
                _ => Err(RecordError::BadKey),
            });
            assert!(cut.is_err(), "prefix of {end} bytes");
        }

        let big = message(1000);
        let (v, apart) = encode_entry(&EntryBody::Inline(big.clone()), None);
        assert!(v.len() < 32, "the header alone stays in the tree");
        let h = decode_entry(&v).expect("decodes");
        assert_eq!(h.payload, Payload::Apart { body_len: 1000 });
        let apart = apart.expect("the message goes to bodies");
        assert_eq!(decode_apart(&apart, 1000).as_ref(), Ok(&*big));

        let (v, apart) = encode_entry(&EntryBody::Shared(5), None);
        assert!(apart.is_none());
        assert_eq!(decode_entry(&v).map(|h| h.shared()), Ok(Some(5)));
        let mut bad = v.clone();
        bad[1] |= APART;
        assert!(decode_entry(&bad).is_err());
    }

    #[test]
    fn keys_sort_by_queue_generation_seq() {
        assert_eq!(decode_content_key(&content_key(7, 2, 9)), Ok((7, 2, 9)));
        assert!(content_key(1, 0, u64::MAX) < content_key(1, 1, 0));
        assert!(content_key(1, u64::MAX, u64::MAX) < content_key(2, 0, 0));
        assert_eq!(decode_refs(&encode_refs(3, 10)), Ok((3, 10)));
        assert!(decode_refs(&encode_refs(0, 10)).is_err());
        let m = message(3);
        assert_eq!(
            decode_paged(&encode_paged(&m, Some(4))),
            Ok(((*m).clone(), Some(4)))
        );
    }
}
