//! A store sent in chunks on a member's Raft connection, each a snapshot message whose
//! data carries a part: `[kind][transfer id: 8 bytes][sequence: 4 bytes]` (big-endian)
//! and, for a chunk, the store's records.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Message, Point, SnapshotSink, SnapshotSource};

/// Most bytes of records in a chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Most messages a transfer leaves queued for the member's connection, so that its
/// chunks neither fill the queue the other Raft messages share nor memory.
const QUEUED: usize = 16;
/// How long a transfer waits for the queue to drain before it gives up.
const STALL: Duration = Duration::from_secs(30);
const CHUNK: u8 = 1;
const END: u8 = 2;
const HEADER: usize = 13;

/// A part of a transfer.
#[derive(Debug)]
pub enum Part<'a> {
    /// Records of the store.
    Chunk { id: u64, seq: u32, data: &'a [u8] },
    /// The end: this message goes to Raft, once `chunks` chunks were taken.
    End { id: u64, chunks: u32 },
}

impl<'a> Part<'a> {
    /// Reads a part; `None` for what is not one.
    pub fn decode(bytes: &'a [u8]) -> Option<Part<'a>> {
        let (&kind, rest) = bytes.split_first()?;
        let id = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let seq = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
        let data = &rest[12..];
        match kind {
            CHUNK => Some(Part::Chunk { id, seq, data }),
            END if data.is_empty() => Some(Part::End { id, chunks: seq }),
            _ => None,
        }
    }

    fn encode(kind: u8, id: u64, seq: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + data.len());
        out.push(kind);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(data);
        out
    }
}

/// Sends a store's chunks, then `m` (whose metadata holds the store's point), to
/// `m.to`; returns the chunks sent. Raising `cancel` stops it at the next chunk.
pub fn send(
    source: SnapshotSource,
    m: Message,
    id: u64,
    peer: &mpsc::Sender<Message>,
    cancel: &AtomicBool,
) -> Result<u32, String> {
    let mut seq: u32 = 0;
    for chunk in source.chunks(CHUNK_BYTES) {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let mut part = m.clone();
        part.mut_snapshot().data = Part::encode(CHUNK, id, seq, &chunk).into();
        queue(peer, part, cancel)?;
        seq = seq
            .checked_add(1)
            .ok_or("a snapshot of more than 2^32 chunks")?;
    }
    let mut end = m;
    end.mut_snapshot().data = Part::encode(END, id, seq, &[]).into();
    queue(peer, end, cancel)?;
    Ok(seq)
}

/// Queues a message once the queue holds few enough.
fn queue(peer: &mpsc::Sender<Message>, m: Message, cancel: &AtomicBool) -> Result<(), String> {
    let mut deadline = Instant::now() + STALL;
    let mut queued = peer.max_capacity() - peer.capacity();
    loop {
        if cancel.load(Relaxed) {
            return Err("this node no longer leads".into());
        }
        if peer.max_capacity() - peer.capacity() <= QUEUED {
            break;
        }
        if peer.is_closed() {
            return Err("the Raft transport stopped".into());
        }
        let now_queued = peer.max_capacity() - peer.capacity();
        if now_queued < queued {
            deadline = Instant::now() + STALL;
        }
        queued = now_queued;
        if Instant::now() > deadline {
            return Err(format!(
                "the member's connection took nothing for {} s",
                STALL.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    peer.try_send(m).map_err(|e| e.to_string())
}

/// A snapshot being received: its chunks so far, staged.
pub struct Incoming {
    id: u64,
    point: Point,
    next: u32,
    sink: SnapshotSink,
}

impl Incoming {
    /// Starts staging transfer `id` of the store at `point` (replacing what was staged).
    pub fn start(dir: &Path, id: u64, point: Point) -> Result<Incoming, String> {
        let sink = SnapshotSink::create(dir).map_err(|e| e.to_string())?;
        Ok(Incoming {
            id,
            point,
            next: 0,
            sink,
        })
    }

    /// Stages the next chunk; an out-of-order or foreign one fails the transfer.
    pub fn take(&mut self, id: u64, seq: u32, point: Point, data: &[u8]) -> Result<(), String> {
        if (id, seq, point) != (self.id, self.next, self.point) {
            return Err(format!(
                "chunk {seq} of transfer {id:#x} at {point:?} where chunk {} of {:#x} at {:?} was due",
                self.next, self.id, self.point
            ));
        }
        self.sink.write_chunk(data).map_err(|e| e.to_string())?;
        self.next += 1;
        Ok(())
    }

    /// Ends the transfer: every chunk was taken, and the staged store is synced.
    pub fn finish(self, id: u64, chunks: u32, point: Point) -> Result<(), String> {
        if (id, chunks, point) != (self.id, self.next, self.point) {
            return Err(format!(
                "transfer {id:#x} at {point:?} ended after {chunks} chunks; {} of {:#x} at {:?} were staged",
                self.next, self.id, self.point
            ));
        }
        self.sink
            .finish(point.0, point.1)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_read_back_and_garbage_is_refused() {
        let chunk = Part::encode(CHUNK, 7, 3, b"records");
        match Part::decode(&chunk) {
            Some(Part::Chunk {
                id: 7,
                seq: 3,
                data,
            }) => assert_eq!(data, b"records"),
            other => panic!("{other:?}"),
        }
        let end = Part::encode(END, 7, 4, &[]);
        assert!(matches!(
            Part::decode(&end),
            Some(Part::End { id: 7, chunks: 4 })
        ));
        assert!(Part::decode(&end[..5]).is_none());
        assert!(Part::decode(&[]).is_none());
        assert!(Part::decode(&Part::encode(9, 1, 1, &[])).is_none());
        assert!(Part::decode(&Part::encode(END, 1, 1, b"x")).is_none());
    }
}
