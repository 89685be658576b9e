//! The reply to `POST /api/queues/{vhost}/{name}/get`, written as the client reads it.
//!
//! Each message's JSON is made when the connection is ready for it, its payload in slices
//! of [`PAYLOAD_SLICE_BYTES`], so a reply needs the memory of one slice and its escaping
//! however large and many the messages are. Building the whole reply first took up to
//! twelve times the bodies' bytes (a text copy, the JSON tree, and the escaped output, in
//! which a control byte takes six), so a few requests for large messages could take a
//! gigabyte.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::admin::json::properties_to_json;
use crate::broker::admin::GotMessage;
use crate::proto::command::Message;

/// How much of a payload goes into one piece of the reply (a multiple of 3, so that base64
/// pieces join without padding between them).
pub const PAYLOAD_SLICE_BYTES: usize = 48 * 1024;

/// How the payloads are shown.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// `truncate`: show at most this many bytes of each payload.
    pub truncate: Option<usize>,
    /// `encoding: base64`: base64 even for payloads that are text.
    pub base64_only: bool,
}

/// A message's fields but its payload, in RabbitMQ's names.
#[derive(Serialize)]
struct Head<'a> {
    payload_bytes: usize,
    redelivered: bool,
    exchange: &'a str,
    routing_key: &'a str,
    message_count: u64,
    position: u64,
    properties: Value,
    payload_encoding: &'static str,
}

/// The message being written: the part of its payload still to go.
struct Writing {
    message: Arc<Message>,
    /// The end of the payload shown (`truncate`).
    end: usize,
    /// The next byte to write.
    at: usize,
    text: bool,
}

/// The reply as a sequence of pieces: `[`, then each message's head, payload slices and
/// end, then `]`.
pub struct GotReply {
    messages: std::vec::IntoIter<GotMessage>,
    shape: Shape,
    writing: Option<Writing>,
    started: bool,
    written: usize,
    finished: bool,
}

impl GotReply {
    /// The reply for `messages`, shown as `shape` says.
    pub fn new(messages: Vec<GotMessage>, shape: Shape) -> Self {
        GotReply {
            messages: messages.into_iter(),
            shape,
            writing: None,
            started: false,
            written: 0,
            finished: false,
        }
    }

    /// The head of the next message, up to the opening quote of its payload.
    fn head(&mut self, got: GotMessage) -> Vec<u8> {
        let body = &got.message.body;
        let end = self
            .shape
            .truncate
            .map_or(body.len(), |n| n.min(body.len()));
        let text = !self.shape.base64_only && std::str::from_utf8(&body[..end]).is_ok();
        let head = Head {
            payload_bytes: body.len(),
            redelivered: got.redelivered,
            exchange: &got.message.exchange,
            routing_key: &got.message.routing_key,
            message_count: got.message_count,
            position: got.position,
            properties: properties_to_json(&got.message.properties),
            payload_encoding: if text { "string" } else { "base64" },
        };
        let mut out = Vec::with_capacity(256);
        if self.written > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &head).expect("a message head serializes");
        assert_eq!(out.pop(), Some(b'}'), "a head is a JSON object");
        out.extend_from_slice(br#","payload":""#);
        self.written += 1;
        self.writing = Some(Writing {
            message: got.message,
            end,
            at: 0,
            text,
        });
        out
    }
}

impl Writing {
    /// The next slice of the payload, escaped for a JSON string, or the message's end.
    fn next_piece(&mut self) -> Option<Vec<u8>> {
        if self.at >= self.end {
            return None;
        }
        let payload = &self.message.body[..self.end];
        let stop = (self.at + PAYLOAD_SLICE_BYTES).min(self.end);
        let piece = if self.text {
            let text = std::str::from_utf8(payload).expect("checked as text");
            let stop = match text.floor_char_boundary(stop) {
                // A slice holds at least one whole character.
                s if s > self.at => s,
                _ => text.ceil_char_boundary(stop),
            };
            let mut quoted = serde_json::to_vec(&text[self.at..stop]).expect("a string serializes");
            self.at = stop;
            quoted.pop();
            quoted.remove(0);
            quoted
        } else {
            let piece = BASE64.encode(&payload[self.at..stop]).into_bytes();
            self.at = stop;
            piece
        };
        Some(piece)
    }
}

impl Iterator for GotReply {
    type Item = Result<Bytes, Infallible>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(Ok(Bytes::from_static(b"[")));
        }
        if let Some(w) = self.writing.as_mut() {
            match w.next_piece() {
                Some(piece) => return Some(Ok(piece.into())),
                None => {
                    self.writing = None;
                    return Some(Ok(Bytes::from_static(b"\"}")));
                }
            }
        }
        match self.messages.next() {
            Some(got) => Some(Ok(self.head(got).into())),
            None => {
                self.finished = true;
                Some(Ok(Bytes::from_static(b"]")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::props::BasicProperties;

    fn got(body: Vec<u8>, position: u64) -> GotMessage {
        GotMessage {
            message: Arc::new(Message {
                exchange: "x".into(),
                routing_key: "rk \"quoted\"".into(),
                properties: BasicProperties::default(),
                body: body.into(),
            }),
            redelivered: position % 2 == 1,
            message_count: 7,
            position,
        }
    }

    fn written(messages: Vec<GotMessage>, shape: Shape) -> (Value, usize) {
        let mut all = Vec::new();
        let mut largest = 0;
        for piece in GotReply::new(messages, shape) {
            let piece = piece.expect("infallible");
            largest = largest.max(piece.len());
            all.extend_from_slice(&piece);
        }
        (
            serde_json::from_slice(&all).expect("the reply is JSON"),
            largest,
        )
    }

    #[test]
    fn pieces_join_into_the_whole_reply_in_bounded_pieces() {
        // Text with multi-byte characters across slice ends, control bytes that escape
        // to six, and bytes that are not text.
        let text: Vec<u8> = "é\u{1}ab€\"\\".repeat(40_000).into_bytes();
        let binary: Vec<u8> = (0..200_001u32).map(|i| (i * 7 % 256) as u8).collect();
        let shape = Shape {
            truncate: None,
            base64_only: false,
        };
        let (v, largest) = written(
            vec![
                got(text.clone(), 1),
                got(binary.clone(), 2),
                got(Vec::new(), 3),
            ],
            shape,
        );
        let list = v.as_array().expect("a list");
        assert_eq!(list.len(), 3);
        assert_eq!(list[0]["payload_encoding"], "string");
        assert_eq!(list[0]["payload"].as_str().unwrap().as_bytes(), &text[..]);
        assert_eq!(list[0]["payload_bytes"], text.len());
        assert_eq!(list[0]["routing_key"], "rk \"quoted\"");
        assert_eq!(list[0]["redelivered"], true);
        assert_eq!(list[0]["message_count"], 7);
        assert_eq!(list[1]["payload_encoding"], "base64");
        let decoded = BASE64.decode(list[1]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(decoded, binary);
        assert_eq!(list[2]["payload"], "");
        assert_eq!(list[2]["position"], 3);
        // Every piece is at most a slice escaped at six bytes a byte (plus quotes).
        assert!(largest <= PAYLOAD_SLICE_BYTES * 6 + 2, "{largest}");

        let (v, _) = written(
            vec![got(text.clone(), 1)],
            Shape {
                truncate: Some(3),
                base64_only: true,
            },
        );
        assert_eq!(v[0]["payload_encoding"], "base64");
        assert_eq!(
            BASE64.decode(v[0]["payload"].as_str().unwrap()).unwrap(),
            &text[..3]
        );
        assert_eq!(v[0]["payload_bytes"], text.len());
        // Truncated inside a character: not text, so base64.
        let (v, _) = written(
            vec![got(text, 1)],
            Shape {
                truncate: Some(1),
                base64_only: false,
            },
        );
        assert_eq!(v[0]["payload_encoding"], "base64");
        let (v, _) = written(Vec::new(), shape);
        assert_eq!(v, serde_json::json!([]));
    }
}
