//! A message body as its frames arrive: kept as it came when it is one frame, copied into
//! growing chunks while it is still arriving.

use bytes::{Bytes, BytesMut};

/// Bytes of each chunk a body in progress is copied into.
pub(crate) const BODY_CHUNK_BYTES: usize = 128 * 1024;

/// Body frames collected so far. A body that arrives in one frame is kept as it came (no
/// copy). A body still arriving is copied out of the read buffer, so that a small frame of
/// a body that never ends does not keep a whole read buffer alive, into chunks of
/// up to [`BODY_CHUNK_BYTES`] (however small its frames, the memory is about the bytes that
/// arrived, and no buffer is grown by reallocation, which would leave freed copies behind
/// with some allocators); the chunks are joined once, when the body is complete.
#[derive(Debug)]
pub(crate) enum BodyParts {
    Empty,
    One(Bytes),
    Chunks {
        full: Vec<Bytes>,
        tail: BytesMut,
        len: u64,
    },
}

impl BodyParts {
    pub(crate) fn len(&self) -> u64 {
        match self {
            BodyParts::Empty => 0,
            BodyParts::One(b) => b.len() as u64,
            BodyParts::Chunks { len, .. } => *len,
        }
    }

    /// Adds a frame's payload; `complete` when it ends the body.
    pub(crate) fn push(&mut self, payload: Bytes, complete: bool) {
        match self {
            BodyParts::Empty if complete => *self = BodyParts::One(payload),
            BodyParts::Empty => {
                *self = BodyParts::Chunks {
                    full: Vec::new(),
                    tail: BytesMut::new(),
                    len: 0,
                };
                self.push(payload, complete);
            }
            BodyParts::One(first) => {
                let first = std::mem::take(first);
                *self = BodyParts::Empty;
                self.push(first, false);
                self.push(payload, complete);
            }
            BodyParts::Chunks { full, tail, len } => {
                let mut rest = &payload[..];
                while !rest.is_empty() {
                    if tail.len() == tail.capacity() {
                        // Chunks grow with the body (each about the size of what came
                        // before it), so a body that stops early wastes at most what it
                        // sent.
                        let size = usize::try_from(*len)
                            .unwrap_or(usize::MAX)
                            .max(rest.len())
                            .min(BODY_CHUNK_BYTES);
                        let done = std::mem::replace(tail, BytesMut::with_capacity(size));
                        if !done.is_empty() {
                            full.push(done.freeze());
                        }
                    }
                    let n = rest.len().min(tail.capacity() - tail.len());
                    tail.extend_from_slice(&rest[..n]);
                    *len += n as u64;
                    rest = &rest[n..];
                }
            }
        }
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            BodyParts::Empty => Bytes::new(),
            BodyParts::One(b) => b,
            BodyParts::Chunks { full, tail, .. } if full.is_empty() => tail.freeze(),
            BodyParts::Chunks { full, tail, len } => {
                let mut all = BytesMut::with_capacity(usize::try_from(len).unwrap_or(usize::MAX));
                for chunk in &full {
                    all.extend_from_slice(chunk);
                }
                all.extend_from_slice(&tail);
                all.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    proptest::proptest! {
        /// A body assembled from frames of any sizes is the bytes sent, in order; its chunks
        /// hold about what arrived, never a buffer sized by the header's announcement.
        #[test]
        fn a_body_is_assembled_from_frames_of_any_size(
            sizes in proptest::collection::vec(
                proptest::prop_oneof![1usize..16, 100usize..5_000, 120_000usize..300_000],
                1..12,
            ),
        ) {
            let total: usize = sizes.iter().sum();
            let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
            let mut parts = BodyParts::Empty;
            let mut at = 0;
            for (i, n) in sizes.iter().enumerate() {
                parts.push(Bytes::copy_from_slice(&data[at..at + n]), i + 1 == sizes.len());
                at += n;
                proptest::prop_assert_eq!(parts.len(), at as u64);
                if let BodyParts::Chunks { full, tail, .. } = &parts {
                    let held: usize = full.iter().map(|c| c.len()).sum::<usize>() + tail.capacity();
                    proptest::prop_assert!(held <= 2 * at + BODY_CHUNK_BYTES, "{held} held for {at}");
                }
            }
            proptest::prop_assert_eq!(parts.into_bytes(), Bytes::from(data));
        }
    }
}
