//! The virtual network: one byte pipe per direction of each connection. Bytes keep their
//! order within a pipe (TCP), arrive after a latency, and are handed over in chunks of a
//! size the scheduler picks; pipes of different connections are served in random order.

use std::collections::VecDeque;

use bytes::Bytes;

/// One segment written to a pipe.
#[derive(Debug)]
struct Segment {
    ready_at_ms: u64,
    data: Bytes,
    /// Reply bytes (as the broker counts them) this segment returns once fully read.
    credit: usize,
}

/// One direction of a connection.
#[derive(Debug, Default)]
pub struct Pipe {
    segments: VecDeque<Segment>,
    last_ready_ms: u64,
}

impl Pipe {
    /// Writes `data`, readable from `ready_at_ms` (never before earlier writes).
    pub fn push(&mut self, ready_at_ms: u64, data: Bytes, credit: usize) {
        if data.is_empty() && credit == 0 {
            return;
        }
        let ready_at_ms = ready_at_ms.max(self.last_ready_ms);
        self.last_ready_ms = ready_at_ms;
        self.segments.push_back(Segment {
            ready_at_ms,
            data,
            credit,
        });
    }

    /// When the next bytes become readable.
    pub fn next_ready_ms(&self) -> Option<u64> {
        self.segments.front().map(|s| s.ready_at_ms)
    }

    /// Reads at most `max_bytes` of what is readable at `now_ms`; returns the bytes and
    /// the credit of the segments fully read.
    pub fn take(&mut self, now_ms: u64, max_bytes: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut credit = 0;
        while out.len() < max_bytes {
            let Some(seg) = self.segments.front_mut() else {
                break;
            };
            if seg.ready_at_ms > now_ms {
                break;
            }
            let n = (max_bytes - out.len()).min(seg.data.len());
            out.extend_from_slice(&seg.data.split_to(n));
            if seg.data.is_empty() {
                credit += seg.credit;
                self.segments.pop_front();
            }
        }
        (out, credit)
    }

    /// Bytes in flight.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.data.len()).sum()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Drops everything in flight.
    pub fn clear(&mut self) {
        self.segments.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_returns_credit_when_a_segment_is_read() {
        let mut p = Pipe::default();
        p.push(5, Bytes::from_static(b"abc"), 10);
        p.push(1, Bytes::from_static(b"de"), 20);
        assert_eq!(p.take(4, 10), (vec![], 0));
        assert_eq!(p.take(5, 2), (b"ab".to_vec(), 0));
        assert_eq!(p.take(5, 10), (b"cde".to_vec(), 30));
        assert!(p.is_empty());
    }
}
