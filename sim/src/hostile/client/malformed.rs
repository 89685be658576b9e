//! Malformed frames: now and then a hostile client ends its session with one frame that
//! RabbitMQ 3.10 refuses with a connection error, and expects the same answer:
//!
//! - a method with bytes after its arguments: 501, naming the method;
//! - a `basic.publish` whose content header has a weight other than 0: 505, naming the
//!   publish;
//! - a content header with bytes after its property list: 541;
//! - a content method only a server sends (`basic.deliver`, `basic.return`,
//!   `basic.get-ok`) with its content: 503, naming it;
//! - an unsolicited `connection.close-ok`: 504.
//!
//! The channel frames go on a channel opened in the same write, which nothing else uses,
//! so that no close in flight on a busy channel hides them. After the frame the client
//! sends nothing more. The broker must close the connection within
//! [`CLOSED_WITHIN_MS`] on a live link, and a close that names the frame's method must
//! carry the expected code (one naming another method answers something the client
//! pipelined before).

use rand::Rng;

use bytes::BytesMut;
use warren::proto::constants::{FRAME_BODY, FRAME_HEADER};
use warren::proto::frame::{ContentHeader, encode_raw_frame};
use warren::proto::method::*;

use super::HostileClient;

/// How long the broker may take to close the connection after a malformed frame. Memory
/// and disk alarms block a publisher for up to 1.5 s a window.
const CLOSED_WITHIN_MS: u64 = 5_000;

/// The channel the frames go on: past the three the client uses, within its
/// `channel_max` of 8.
const CH_MALFORMED: u16 = 4;

/// The answer a malformed frame is owed.
#[derive(Debug, Clone)]
pub(super) struct Owed {
    what: &'static str,
    code: u16,
    /// The class and method the close names; (0, 0) when it names none.
    failing: (u16, u16),
    sent_ms: u64,
}

/// A frame of `kind` on `channel` around `payload`.
fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_raw_frame(kind, channel, payload, &mut out);
    out.to_vec()
}

/// A content header payload for class 60 with `weight`, `body_size` and no properties,
/// followed by `trailing`.
fn header(weight: u16, body_size: u64, trailing: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let header = ContentHeader {
        class_id: 60,
        weight,
        body_size,
        properties: Default::default(),
    };
    header.encode(&mut out);
    out.extend_from_slice(trailing);
    out.to_vec()
}

/// A method frame's payload.
fn payload(method: &Method) -> Vec<u8> {
    let mut out = BytesMut::new();
    method.encode(&mut out);
    out.to_vec()
}

impl HostileClient {
    /// Sends one malformed frame (and, for channel frames, the `channel.open` before it),
    /// after which the session sends nothing more.
    pub(super) fn send_malformed(&mut self, now_ms: u64) {
        let rng = &mut self.g.rng;
        let junk: Vec<u8> = (0..rng.gen_range(1..5)).map(|_| rng.r#gen()).collect();
        let (what, code, failing, frames) = match rng.gen_range(0..5) {
            0 => {
                let method = if rng.gen_bool(0.5) {
                    Method::AccessRequest(AccessRequest::default())
                } else {
                    Method::BasicRecover(BasicRecover { requeue: true })
                };
                let mut p = payload(&method);
                p.extend_from_slice(&junk);
                (
                    "bytes after a method's arguments",
                    501,
                    (method.class_id(), method.method_id()),
                    frame(1, CH_MALFORMED, &p),
                )
            }
            1 => {
                let mut out = frame(
                    1,
                    CH_MALFORMED,
                    &payload(&Method::BasicPublish(BasicPublish::default())),
                );
                let weight = rng.gen_range(1..=u16::MAX);
                out.extend(frame(FRAME_HEADER, CH_MALFORMED, &header(weight, 0, &[])));
                ("a content header with a weight", 505, (60, 40), out)
            }
            2 => {
                let mut out = frame(
                    1,
                    CH_MALFORMED,
                    &payload(&Method::BasicPublish(BasicPublish::default())),
                );
                out.extend(frame(FRAME_HEADER, CH_MALFORMED, &header(0, 0, &junk)));
                (
                    "bytes after a content header's properties",
                    541,
                    (0, 0),
                    out,
                )
            }
            3 => {
                let method = match rng.gen_range(0..3) {
                    0 => Method::BasicDeliver(BasicDeliver {
                        consumer_tag: "x".into(),
                        delivery_tag: 1,
                        ..Default::default()
                    }),
                    1 => Method::BasicReturn(BasicReturn {
                        reply_code: 312,
                        reply_text: "NO_ROUTE".into(),
                        ..Default::default()
                    }),
                    _ => Method::BasicGetOk(BasicGetOk::default()),
                };
                let mut out = frame(1, CH_MALFORMED, &payload(&method));
                out.extend(frame(
                    FRAME_HEADER,
                    CH_MALFORMED,
                    &header(0, junk.len() as u64, &[]),
                ));
                out.extend(frame(FRAME_BODY, CH_MALFORMED, &junk));
                (
                    "a content method only a server sends",
                    503,
                    (method.class_id(), method.method_id()),
                    out,
                )
            }
            _ => (
                "an unsolicited connection.close-ok",
                504,
                (10, 51),
                frame(
                    1,
                    0,
                    &payload(&Method::ConnectionCloseOk(ConnectionCloseOk {})),
                ),
            ),
        };
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if failing != (10, 51) {
            s.send(
                CH_MALFORMED,
                &Method::ChannelOpen(ChannelOpen::default()),
                now_ms,
            );
        }
        s.link.send_raw(&frames, now_ms);
        s.malformed = Some(Owed {
            what,
            code,
            failing,
            sent_ms: now_ms,
        });
        self.stats.malformed += 1;
    }

    /// Fails if the connection is still open too long after a malformed frame.
    pub(super) fn malformed_tick(&self, now_ms: u64) -> Result<(), String> {
        let Some(owed) = self.session.as_ref().and_then(|s| s.malformed.as_ref()) else {
            return Ok(());
        };
        if now_ms.saturating_sub(owed.sent_ms) > CLOSED_WITHIN_MS {
            return Err(format!(
                "hostile client {}: sent {} at {} ms, and the connection is still open at \
                 {now_ms} ms (owed {} naming {:?})",
                self.id, owed.what, owed.sent_ms, owed.code, owed.failing
            ));
        }
        Ok(())
    }

    /// The broker closed the connection: if it names the malformed frame's method, its
    /// code must be the one owed.
    pub(super) fn malformed_closed(
        &mut self,
        code: u16,
        text: &str,
        failing: (u16, u16),
    ) -> Result<(), String> {
        let Some(owed) = self.session.as_mut().and_then(|s| s.malformed.take()) else {
            return Ok(());
        };
        if failing != owed.failing || (failing == (0, 0) && code != owed.code) {
            // An answer to something pipelined before it (or, naming nothing, to an
            // administrator's close).
            return Ok(());
        }
        if code != owed.code {
            return Err(format!(
                "hostile client {}: sent {}, and the broker closed with {code} {text:?} \
                 naming {failing:?}, where RabbitMQ answers {}",
                self.id, owed.what, owed.code
            ));
        }
        self.stats.malformed_answered += 1;
        Ok(())
    }
}
