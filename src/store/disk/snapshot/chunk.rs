//! The chunk codec: a chunk is a sequence of records
//! `[space: 1][key length: 4][key][value length: 4][value]`, lengths big-endian.
//!
//! Chunks come from another node over the network, so decoding checks everything: a
//! chunk cut short, naming an unknown keyspace, or holding a key fjall would refuse (fjall
//! panics on an empty or too long key rather than returning an error) does not decode.

use super::Space;

/// The keyspaces a snapshot carries, in the order they are sent; a record names its
/// keyspace by its index here.
pub(super) const SENT: [Space; 5] = [
    Space::Meta,
    Space::Messages,
    Space::Refs,
    Space::Entries,
    Space::Bodies,
];

/// Bytes a record takes in a chunk besides its key and value.
pub(super) const RECORD_OVERHEAD_BYTES: usize = 9;

/// fjall's longest key.
pub(super) const MAX_KEY_BYTES: usize = u16::MAX as usize;

/// The byte naming `space` in a chunk.
pub(super) fn space_id(space: Space) -> u8 {
    let index = SENT.iter().position(|s| *s == space);
    debug_assert!(index.is_some(), "{space:?} is not sent");
    index.and_then(|i| u8::try_from(i).ok()).unwrap_or(u8::MAX)
}

/// One record of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ChunkRecord<'a> {
    pub(super) space: Space,
    pub(super) key: &'a [u8],
    pub(super) value: &'a [u8],
}

/// Appends a record to a chunk. fjall bounds keys to 64 KiB and values to 4 GiB, so both
/// lengths always fit; the check stays, as an error, for what must never happen.
pub(super) fn encode_record(
    out: &mut Vec<u8>,
    space: Space,
    key: &[u8],
    value: &[u8],
) -> Result<(), String> {
    let key_len = u32::try_from(key.len()).map_err(|_| "a key of 4 GiB or more".to_string())?;
    let value_len =
        u32::try_from(value.len()).map_err(|_| "a value of 4 GiB or more".to_string())?;
    out.reserve(RECORD_OVERHEAD_BYTES + key.len() + value.len());
    out.push(space_id(space));
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&value_len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// Reads every record of a chunk, or says why it does not decode: a chunk is taken whole
/// or not at all. Keys are checked against fjall's limits here, since fjall panics on an
/// empty or too long key rather than refusing it.
pub(super) fn decode_chunk(chunk: &[u8]) -> Result<Vec<ChunkRecord<'_>>, String> {
    let mut reader = Reader {
        bytes: chunk,
        at: 0,
    };
    let mut out = Vec::new();
    while !reader.bytes.is_empty() {
        let start = reader.at;
        let id = reader.take(1, "space")?[0];
        let space = SENT
            .get(usize::from(id))
            .copied()
            .ok_or_else(|| format!("record at byte {start}: unknown keyspace {id}"))?;
        let key_len = reader.length("key length")?;
        if key_len == 0 || key_len > MAX_KEY_BYTES {
            return Err(format!(
                "record at byte {start}: a key of {key_len} bytes (1 to {MAX_KEY_BYTES} allowed)"
            ));
        }
        let key = reader.take(key_len, "key")?;
        let value_len = reader.length("value length")?;
        let value = reader.take(value_len, "value")?;
        out.push(ChunkRecord { space, key, value });
    }
    Ok(out)
}

/// The unread rest of a chunk.
struct Reader<'a> {
    bytes: &'a [u8],
    /// Offset of `bytes` in the chunk, for error messages.
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "cut short at byte {}: {what} of {n} bytes, {} left",
                self.at,
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        self.at += n;
        Ok(head)
    }

    fn length(&mut self, what: &str) -> Result<usize, String> {
        let b = self.take(4, what)?;
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        usize::try_from(n).map_err(|_| format!("{what} {n} at byte {}", self.at - 4))
    }
}
