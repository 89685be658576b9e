//! Frames: the unit of the byte stream after the protocol header.
//!
//! A frame is a type octet, a channel (short), a payload size (long), the payload, and the
//! frame-end octet 0xCE. [`FrameDecoder`] cuts frames off the front of a receive buffer
//! whatever the chunking, enforcing the negotiated frame size as soon as the 7-byte header
//! is in; the `encode_*` functions write frames to a send buffer.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use super::codec::DecodeError;
use super::codec::{self, Reader};
use super::constants::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEADER_SIZE, FRAME_HEARTBEAT, FRAME_METHOD,
    FRAME_MIN_SIZE, FRAME_OVERHEAD,
};
use super::method::Method;
use super::props::BasicProperties;

/// The largest frame accepted or produced when no limit was negotiated (frame_max 0).
pub const HARD_MAX_FRAME_BYTES: u32 = 128 * 1024 * 1024;

/// The payload of a content header frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContentHeader {
    /// The class of the method the content belongs to (60, basic).
    pub class_id: u16,
    /// Unused, always 0.
    pub weight: u16,
    /// Total size of the body frames that follow.
    pub body_size: u64,
    /// The message properties.
    pub properties: BasicProperties,
}

impl ContentHeader {
    /// Writes the header payload.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.class_id);
        out.put_u16(self.weight);
        out.put_u64(self.body_size);
        self.properties.encode(out);
    }

    /// Decodes a header frame's payload. Bytes after the properties are an error
    /// ([`DecodeError::Trailing`]).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let header = ContentHeader {
            class_id: r.u16()?,
            weight: r.u16()?,
            body_size: r.u64()?,
            properties: BasicProperties::read(&mut r)?,
        };
        match r.rest().len() {
            0 => Ok(header),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A method.
    Method {
        /// The channel, 0 for connection methods.
        channel: u16,
        /// The method.
        method: Method,
    },
    /// A content header, following a content-bearing method.
    Header {
        /// The channel.
        channel: u16,
        /// The header.
        header: ContentHeader,
    },
    /// A piece of content body.
    Body {
        /// The channel.
        channel: u16,
        /// The bytes, sharing the receive buffer's memory.
        payload: Bytes,
    },
    /// A heartbeat. The channel should be 0; the connection layer checks.
    Heartbeat {
        /// The channel as sent.
        channel: u16,
    },
}

/// Why the byte stream could not be cut into frames, or a frame's payload not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The declared payload plus the 8 bytes of framing exceeds the limit.
    TooLarge {
        /// Declared payload size + 8 (saturating).
        size: u32,
        /// The limit in force.
        max: u32,
    },
    /// The octet after the payload was not 0xCE.
    BadFrameEnd(u8),
    /// The type octet is not method, header, body or heartbeat.
    UnknownFrameType(u8),
    /// A heartbeat frame with a payload (RabbitMQ refuses it too).
    HeartbeatPayload(u32),
    /// A method frame's payload could not be decoded.
    Method {
        /// The frame's channel.
        channel: u16,
        /// The class id the payload names (0 if it is shorter than that).
        class_id: u16,
        /// The method id the payload names (0 if it is shorter than that).
        method_id: u16,
        /// What was wrong.
        error: DecodeError,
    },
    /// A content header frame's payload could not be decoded.
    Header {
        /// The frame's channel.
        channel: u16,
        /// What was wrong.
        error: DecodeError,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { size, max } => {
                write!(f, "frame of {size} bytes exceeds frame_max {max}")
            }
            FrameError::BadFrameEnd(octet) => write!(f, "bad frame end octet {octet:#04x}"),
            FrameError::UnknownFrameType(kind) => write!(f, "unknown frame type {kind}"),
            FrameError::HeartbeatPayload(n) => write!(f, "heartbeat frame with {n} payload bytes"),
            FrameError::Method { channel, error, .. } => {
                write!(f, "bad method frame on channel {channel}: {error}")
            }
            FrameError::Header { channel, error } => {
                write!(f, "bad content header frame on channel {channel}: {error}")
            }
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Method { error, .. } | FrameError::Header { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Cuts frames off the front of a receive buffer.
///
/// On [`FrameError::TooLarge`], [`FrameError::BadFrameEnd`] and
/// [`FrameError::UnknownFrameType`] the stream has lost its framing: nothing is consumed and
/// the connection must close. On [`FrameError::Method`] and [`FrameError::Header`] the bad
/// frame is consumed, since its boundaries were sound; so is a heartbeat with a payload
/// ([`FrameError::HeartbeatPayload`]), after which the connection must close too.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_bytes: u32,
}

impl FrameDecoder {
    /// A decoder accepting frames of at most `max_frame_bytes` bytes including framing
    /// (before tuning, use [`FRAME_MIN_SIZE`]). 0 means [`HARD_MAX_FRAME_BYTES`].
    pub fn new(max_frame_bytes: u32) -> Self {
        FrameDecoder { max_frame_bytes }
    }

    /// Changes the limit, e.g. to the frame_max agreed in connection.tune-ok. 0 means no
    /// negotiated limit, which still leaves [`HARD_MAX_FRAME_BYTES`].
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: u32) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// The limit in force: the configured one, within [`HARD_MAX_FRAME_BYTES`].
    pub fn max_frame_bytes(&self) -> u32 {
        effective_frame_max(self.max_frame_bytes)
    }

    /// Decodes one complete frame from the front of `buf`, removing its bytes; `Ok(None)`
    /// if more bytes are needed. Works whatever the chunking, down to one byte at a time.
    /// Body payloads are zero-copy slices of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode_raw(buf)? {
            Some(raw) => raw.into_frame().map(Some),
            None => Ok(None),
        }
    }

    /// Cuts one complete frame from the front of `buf`, checking its framing but not
    /// decoding its payload; `Ok(None)` if more bytes are needed. A frame type the
    /// protocol does not know is refused before its size is even read.
    pub fn decode_raw(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
        // The type octet alone tells a stream that is not AMQP frames at all.
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        if !matches!(
            kind,
            FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
        ) {
            return Err(FrameError::UnknownFrameType(kind));
        }
        let Some(header) = buf.get(..FRAME_HEADER_SIZE) else {
            return Ok(None);
        };
        let mut r = Reader::new(header);
        let (channel, payload_size) = match (r.u8(), r.u16(), r.u32()) {
            (Ok(_), Ok(channel), Ok(size)) => (channel, size),
            _ => return Ok(None),
        };
        // Checked before buffering the payload, so an oversized frame costs 7 bytes.
        let frame_size = payload_size.saturating_add(FRAME_OVERHEAD);
        let max = self.max_frame_bytes();
        if frame_size > max {
            return Err(FrameError::TooLarge {
                size: frame_size,
                max,
            });
        }
        let frame_size = frame_size as usize;
        let Some(&end) = buf.get(frame_size - 1) else {
            return Ok(None);
        };
        if end != FRAME_END {
            return Err(FrameError::BadFrameEnd(end));
        }
        let mut payload = buf.split_to(frame_size);
        payload.advance(FRAME_HEADER_SIZE);
        payload.truncate(payload_size as usize);
        Ok(Some(RawFrame {
            kind,
            channel,
            payload,
        }))
    }
}

/// A frame cut from the stream with sound framing, its payload not yet decoded: small
/// enough to pass around, so that a content header's properties are decoded where they
/// are kept rather than moved through the frame dispatch.
#[derive(Debug)]
pub struct RawFrame {
    /// The frame type: one of the four the protocol defines.
    pub kind: u8,
    /// The channel.
    pub channel: u16,
    /// The payload, without the frame's header and end octet.
    pub payload: BytesMut,
}

impl RawFrame {
    /// Decodes a content header frame's payload.
    pub fn header(&self) -> Result<ContentHeader, FrameError> {
        let channel = self.channel;
        ContentHeader::decode(&self.payload).map_err(|error| FrameError::Header { channel, error })
    }

    /// Decodes a method frame's payload.
    pub fn method(&self) -> Result<Method, FrameError> {
        let channel = self.channel;
        Method::decode(&self.payload).map_err(|error| {
            let id = |at: usize| {
                self.payload
                    .get(at..at + 2)
                    .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
            };
            FrameError::Method {
                channel,
                class_id: id(0),
                method_id: id(2),
                error,
            }
        })
    }

    /// Decodes the payload.
    pub fn into_frame(self) -> Result<Frame, FrameError> {
        let channel = self.channel;
        Ok(match self.kind {
            FRAME_METHOD => Frame::Method {
                channel,
                method: self.method()?,
            },
            FRAME_HEADER => Frame::Header {
                channel,
                header: self.header()?,
            },
            FRAME_BODY => Frame::Body {
                channel,
                payload: self.payload.freeze(),
            },
            // A heartbeat's payload is empty; RabbitMQ closes the connection otherwise.
            _ if !self.payload.is_empty() => {
                return Err(FrameError::HeartbeatPayload(self.payload.len() as u32));
            }
            _ => Frame::Heartbeat { channel },
        })
    }
}

/// A frame_max as used on the wire: 0 (no limit) and anything above the hard cap become
/// the hard cap.
fn effective_frame_max(frame_max: u32) -> u32 {
    if frame_max == 0 {
        HARD_MAX_FRAME_BYTES
    } else {
        frame_max.min(HARD_MAX_FRAME_BYTES)
    }
}

/// Writes a frame whose payload is produced by `payload`.
fn put_frame(out: &mut BytesMut, kind: u8, channel: u16, payload: impl FnOnce(&mut BytesMut)) {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = codec::begin_u32_len(out);
    payload(out);
    codec::end_u32_len(out, at);
    out.put_u8(FRAME_END);
}

/// Writes any frame.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Method { channel, method } => encode_method(*channel, method, out),
        Frame::Header { channel, header } => {
            put_frame(out, FRAME_HEADER, *channel, |out| header.encode(out))
        }
        Frame::Body { channel, payload } => {
            put_frame(out, FRAME_BODY, *channel, |out| out.put_slice(payload))
        }
        Frame::Heartbeat { channel } => put_frame(out, FRAME_HEARTBEAT, *channel, |_| {}),
    }
}

/// Writes a frame of type `kind` around `payload` as given: for frames built byte by
/// byte, such as the malformed ones tests and the simulator send.
pub fn encode_raw_frame(kind: u8, channel: u16, payload: &[u8], out: &mut BytesMut) {
    put_frame(out, kind, channel, |out| out.put_slice(payload));
}

/// Writes a method frame.
pub fn encode_method(channel: u16, method: &Method, out: &mut BytesMut) {
    put_frame(out, FRAME_METHOD, channel, |out| method.encode(out));
}

/// Writes a content-bearing method as a method frame, a content header frame, then body
/// frames each at most `frame_max` bytes in total (`frame_max - 8` of payload); an empty
/// body has no body frame. A `frame_max` of 0 means [`HARD_MAX_FRAME_BYTES`], and one below
/// [`FRAME_MIN_SIZE`] (which negotiation never yields) is raised to it.
pub fn encode_content(
    channel: u16,
    method: &Method,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
) {
    debug_assert!(method.has_content(), "{} carries no content", method.name());
    encode_method(channel, method, out);
    encode_content_frames(channel, method.class_id(), properties, body, frame_max, out);
}

/// Writes a `basic.deliver` method frame from borrowed fields (the same bytes as
/// [`encode_method`] of the owned method); its content follows with
/// [`encode_content_frames`].
pub fn encode_deliver_method(
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    out: &mut BytesMut,
) {
    put_frame(out, FRAME_METHOD, channel, |out| {
        Method::encode_deliver(
            out,
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
        )
    });
}

/// The content header frame and body frames that follow a content-bearing method of
/// `class_id`, as [`encode_content`] writes them.
pub fn encode_content_frames(
    channel: u16,
    class_id: u16,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
) {
    // The fields of a ContentHeader, written without cloning the properties into one.
    put_frame(out, FRAME_HEADER, channel, |out| {
        out.put_u16(class_id);
        out.put_u16(0);
        out.put_u64(body.len() as u64);
        properties.encode(out);
    });
    let frame_max = effective_frame_max(frame_max).max(FRAME_MIN_SIZE);
    let chunk_bytes = (frame_max - FRAME_OVERHEAD) as usize;
    for chunk in body.chunks(chunk_bytes) {
        put_frame(out, FRAME_BODY, channel, |out| out.put_slice(chunk));
    }
}

/// Like [`encode_content_frames`], but the body is not copied: framing goes to `out`, and
/// each body frame's payload is handed over as a slice of `body` between the bytes of
/// `out`, which are cut into `chunks` around it. The bytes to send are `chunks` then `out`.
pub fn encode_content_frames_zero_copy(
    channel: u16,
    class_id: u16,
    properties: &BasicProperties,
    body: &Bytes,
    frame_max: u32,
    out: &mut BytesMut,
    chunks: &mut std::collections::VecDeque<Bytes>,
) {
    put_frame(out, FRAME_HEADER, channel, |out| {
        out.put_u16(class_id);
        out.put_u16(0);
        out.put_u64(body.len() as u64);
        properties.encode(out);
    });
    let frame_max = effective_frame_max(frame_max).max(FRAME_MIN_SIZE);
    let chunk_bytes = (frame_max - FRAME_OVERHEAD) as usize;
    let mut start = 0;
    while start < body.len() {
        let end = (start + chunk_bytes).min(body.len());
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32((end - start) as u32);
        chunks.push_back(out.split().freeze());
        chunks.push_back(body.slice(start..end));
        out.put_u8(FRAME_END);
        start = end;
    }
}

/// Writes a heartbeat frame (channel 0, empty payload).
pub fn encode_heartbeat(out: &mut BytesMut) {
    put_frame(out, FRAME_HEARTBEAT, 0, |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::constants::FRAME_MIN_SIZE;
    use crate::proto::method::{BasicPublish, ConnectionTune, method_strategies};
    use crate::proto::props::arb::properties;
    use proptest::prelude::*;
    use proptest::strategy::Union;

    #[test]
    fn a_heartbeat_with_a_payload_is_a_frame_error() {
        let mut decoder = FrameDecoder::new(4096);
        let mut buf =
            BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 2, b'x', b'x', FRAME_END][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::HeartbeatPayload(2))
        );
        let mut buf = BytesMut::new();
        encode_heartbeat(&mut buf);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::Heartbeat { channel: 0 }))
        );
    }

    #[test]
    fn zero_copy_content_is_the_same_bytes_without_copying_the_body() {
        let body = Bytes::from((0..20_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let method = Method::BasicPublish(BasicPublish {
            routing_key: "k".into(),
            ..Default::default()
        });
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        for frame_max in [FRAME_MIN_SIZE, 8192, 131_072] {
            let mut copied = BytesMut::new();
            encode_content(3, &method, &props, &body, frame_max, &mut copied);
            let mut out = BytesMut::new();
            let mut chunks = std::collections::VecDeque::new();
            encode_method(3, &method, &mut out);
            encode_content_frames_zero_copy(
                3,
                method.class_id(),
                &props,
                &body,
                frame_max,
                &mut out,
                &mut chunks,
            );
            let mut joined = BytesMut::new();
            for c in &chunks {
                joined.extend_from_slice(c);
            }
            joined.extend_from_slice(&out);
            assert_eq!(joined, copied, "frame_max {frame_max}");
            // Every body byte travels in a slice of the original buffer.
            let body_range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
            let from_body: usize = chunks
                .iter()
                .filter(|c| body_range.contains(&(c.as_ptr() as usize)))
                .map(|c| c.len())
                .sum();
            assert_eq!(from_body, body.len());
        }
    }

    proptest! {
        #[test]
        fn a_delivery_from_borrowed_fields_is_the_same_bytes_as_the_owned_method(
            consumer_tag in "[a-z.-]{0,40}",
            delivery_tag in any::<u64>(),
            redelivered in any::<bool>(),
            exchange in "[a-z.]{0,30}",
            routing_key in "[a-z.#*]{0,60}",
        ) {
            let method = Method::BasicDeliver(crate::proto::method::BasicDeliver {
                consumer_tag: consumer_tag.clone(),
                delivery_tag,
                redelivered,
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
            });
            let mut owned = BytesMut::new();
            encode_method(7, &method, &mut owned);
            let mut borrowed = BytesMut::new();
            encode_deliver_method(
                7,
                &consumer_tag,
                delivery_tag,
                redelivered,
                &exchange,
                &routing_key,
                &mut borrowed,
            );
            prop_assert_eq!(owned, borrowed);
        }
    }

    fn any_method() -> impl Strategy<Value = Method> {
        Union::new(method_strategies().into_iter().map(|(_, s)| s))
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u16>(), any_method())
                .prop_map(|(channel, method)| Frame::Method { channel, method }),
            (
                any::<u16>(),
                any::<u16>(),
                any::<u16>(),
                any::<u64>(),
                properties()
            )
                .prop_map(|(channel, class_id, weight, body_size, properties)| {
                    Frame::Header {
                        channel,
                        header: ContentHeader {
                            class_id,
                            weight,
                            body_size,
                            properties,
                        },
                    }
                }),
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
                |(channel, body)| Frame::Body {
                    channel,
                    payload: body.into()
                }
            ),
            any::<u16>().prop_map(|channel| Frame::Heartbeat { channel }),
        ]
    }

    fn encoded(frames: &[Frame]) -> BytesMut {
        let mut out = BytesMut::new();
        for frame in frames {
            encode_frame(frame, &mut out);
        }
        out
    }

    /// Feeds `chunks` one after another, decoding all it can after each.
    fn feed<'a>(
        decoder: &mut FrameDecoder,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(Vec<Frame>, BytesMut), FrameError> {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = decoder.decode(&mut buf)? {
                frames.push(frame);
            }
        }
        Ok((frames, buf))
    }

    /// Splits `bytes` at the given points (taken modulo its length).
    fn split_at_points(bytes: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
        cuts.push(0);
        cuts.push(bytes.len());
        cuts.sort_unstable();
        cuts.windows(2)
            .map(|w| bytes[w[0]..w[1]].to_vec())
            .collect()
    }

    fn tune() -> Method {
        Method::ConnectionTune(ConnectionTune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        })
    }

    fn publish() -> Method {
        Method::BasicPublish(BasicPublish {
            exchange: "amq.direct".into(),
            routing_key: "k".into(),
            ..Default::default()
        })
    }

    proptest! {
        #[test]
        fn frames_round_trip(frame in any_frame()) {
            let mut buf = encoded(std::slice::from_ref(&frame));
            let decoded = FrameDecoder::new(0).decode(&mut buf);
            prop_assert_eq!(decoded, Ok(Some(frame)));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn any_chunking_yields_the_same_frames(
            frames in proptest::collection::vec(any_frame(), 1..8),
            body in proptest::collection::vec(any::<u8>(), 0..10_000),
            points in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let mut bytes = encoded(&frames);
            encode_content(7, &publish(), &BasicProperties::default(), &body, FRAME_MIN_SIZE, &mut bytes);
            let mut expected = frames.clone();
            expected.push(Frame::Method { channel: 7, method: publish() });
            expected.push(Frame::Header {
                channel: 7,
                header: ContentHeader {
                    class_id: 60,
                    weight: 0,
                    body_size: body.len() as u64,
                    properties: BasicProperties::default(),
                },
            });
            for chunk in body.chunks((FRAME_MIN_SIZE - FRAME_OVERHEAD) as usize) {
                expected.push(Frame::Body { channel: 7, payload: Bytes::copy_from_slice(chunk) });
            }
            let (all_at_once, rest) = feed(&mut FrameDecoder::new(0), [&bytes[..]])?;
            prop_assert!(rest.is_empty());
            prop_assert_eq!(&all_at_once, &expected);
            let chunks = split_at_points(&bytes, &points);
            let (chunked, rest) = feed(&mut FrameDecoder::new(0), chunks.iter().map(|c| &c[..]))?;
            prop_assert!(rest.is_empty());
            prop_assert_eq!(chunked, expected);
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            points in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            // Frames of random bytes after a valid frame type and length, to get past the
            // framing checks now and then.
            let mut stream = vec![FRAME_METHOD, 0, 1];
            stream.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            stream.extend_from_slice(&bytes);
            stream.push(FRAME_END);
            stream.extend_from_slice(&bytes);
            let whole = feed(&mut FrameDecoder::new(512), [&stream[..]]);
            let chunks = split_at_points(&stream, &points);
            let chunked = feed(&mut FrameDecoder::new(512), chunks.iter().map(|c| &c[..]));
            // The outcome does not depend on the chunking.
            prop_assert_eq!(whole.map(|(f, _)| f), chunked.map(|(f, _)| f));
        }
    }

    #[test]
    fn one_byte_chunks_of_a_multi_frame_stream() {
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let props = BasicProperties {
            content_type: Some("application/octet-stream".into()),
            delivery_mode: Some(2),
            ..Default::default()
        };
        let mut bytes = BytesMut::new();
        encode_method(0, &tune(), &mut bytes);
        encode_content(3, &publish(), &props, &body, FRAME_MIN_SIZE, &mut bytes);
        encode_heartbeat(&mut bytes);
        let (frames, rest) =
            feed(&mut FrameDecoder::new(FRAME_MIN_SIZE), bytes.chunks(1)).expect("valid stream");
        assert!(rest.is_empty());
        let payload_bytes = (FRAME_MIN_SIZE - FRAME_OVERHEAD) as usize;
        let expected = vec![
            Frame::Method {
                channel: 0,
                method: tune(),
            },
            Frame::Method {
                channel: 3,
                method: publish(),
            },
            Frame::Header {
                channel: 3,
                header: ContentHeader {
                    class_id: 60,
                    weight: 0,
                    body_size: 10_000,
                    properties: props,
                },
            },
            Frame::Body {
                channel: 3,
                payload: Bytes::copy_from_slice(&body[..payload_bytes]),
            },
            Frame::Body {
                channel: 3,
                payload: Bytes::copy_from_slice(&body[payload_bytes..2 * payload_bytes]),
            },
            Frame::Body {
                channel: 3,
                payload: Bytes::copy_from_slice(&body[2 * payload_bytes..]),
            },
            Frame::Heartbeat { channel: 0 },
        ];
        assert_eq!(frames, expected);
    }

    #[test]
    fn content_body_frames_respect_frame_max() {
        for (body_len, frame_max, body_frames) in [
            (0, 4096, 0),
            (1, 4096, 1),
            (4088, 4096, 1),
            (4089, 4096, 2),
            (10_000, 4096, 3),
            (10_000, 0, 1),
            (10_000, 100, 3), // raised to FRAME_MIN_SIZE
        ] {
            let body = vec![0xAB; body_len];
            let mut bytes = BytesMut::new();
            encode_content(
                1,
                &publish(),
                &BasicProperties::default(),
                &body,
                frame_max,
                &mut bytes,
            );
            let (frames, _) = feed(&mut FrameDecoder::new(0), [&bytes[..]]).expect("frames fit");
            assert_eq!(frames.len(), 2 + body_frames, "{body_len} / {frame_max}");
            let mut total = 0;
            for frame in &frames[2..] {
                let Frame::Body { payload, .. } = frame else {
                    panic!("expected a body frame, got {frame:?}");
                };
                assert!(!payload.is_empty());
                assert!(
                    payload.len() + 8
                        <= effective_frame_max(frame_max).max(FRAME_MIN_SIZE) as usize
                );
                total += payload.len();
            }
            assert_eq!(total, body_len);
        }
    }

    #[test]
    fn known_frame_bytes() {
        let mut out = BytesMut::new();
        encode_heartbeat(&mut out);
        assert_eq!(&out[..], &[8, 0, 0, 0, 0, 0, 0, 0xCE]);

        let mut out = BytesMut::new();
        encode_method(0, &tune(), &mut out);
        let expected: &[u8] = &[
            1, 0, 0, 0, 0, 0, 12, // method frame, channel 0, 12 bytes
            0, 10, 0, 30, 0x07, 0xff, 0, 2, 0, 0, 0, 60, // connection.tune
            0xCE,
        ];
        assert_eq!(&out[..], expected);

        let mut out = BytesMut::new();
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        encode_content(1, &publish(), &props, b"hi", FRAME_MIN_SIZE, &mut out);
        let header_and_body: &[u8] = &[
            2, 0, 1, 0, 0, 0, 15, // header frame, channel 1, 15 bytes
            0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // class, weight, body size
            0x10, 0x00, 2,    // delivery-mode 2
            0xCE, //
            3, 0, 1, 0, 0, 0, 2, b'h', b'i', 0xCE, // body frame
        ];
        assert!(out.ends_with(header_and_body), "{:?}", &out[..]);
    }

    #[test]
    fn body_payload_is_zero_copy() {
        let mut buf = encoded(&[Frame::Body {
            channel: 1,
            payload: Bytes::from_static(b"abcdef"),
        }]);
        let start = buf.as_ptr() as usize;
        let Ok(Some(Frame::Body { payload, .. })) = FrameDecoder::new(0).decode(&mut buf) else {
            panic!("expected a body frame");
        };
        assert_eq!(payload.as_ptr() as usize, start + FRAME_HEADER_SIZE);
    }

    #[test]
    fn oversized_frame_is_refused_once_the_header_is_in() {
        let mut decoder = FrameDecoder::new(FRAME_MIN_SIZE);
        // A body frame declaring 4089 payload bytes (4097 in all): only the header is sent.
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0, 0, 0x0f, 0xf9][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge {
                size: 4097,
                max: FRAME_MIN_SIZE
            })
        );
        // Exactly at the limit is fine (and needs the whole frame).
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0, 0, 0x0f, 0xf8][..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        // A raised limit admits the first frame; u32::MAX saturates instead of wrapping.
        decoder.set_max_frame_bytes(131_072);
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0, 0, 0x0f, 0xf9][..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        decoder.set_max_frame_bytes(0);
        assert_eq!(decoder.max_frame_bytes(), HARD_MAX_FRAME_BYTES);
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge {
                size: u32::MAX,
                max: HARD_MAX_FRAME_BYTES
            })
        );
    }

    #[test]
    fn framing_errors() {
        let mut decoder = FrameDecoder::new(FRAME_MIN_SIZE);
        let mut buf = BytesMut::from(&[8, 0, 0, 0, 0, 0, 0, 0xCD][..]);
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::BadFrameEnd(0xCD)));
        // Known from the first byte: "HTTP/1.1" is not a frame.
        let mut buf = BytesMut::from(&b"H"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::UnknownFrameType(b'H'))
        );
        let mut buf = BytesMut::from(&[4, 0, 0][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::UnknownFrameType(4))
        );
    }

    #[test]
    fn payload_errors_carry_the_channel_and_consume_the_frame() {
        let mut decoder = FrameDecoder::new(FRAME_MIN_SIZE);
        let cases: [(&[u8], FrameError); 4] = [
            (
                &[1, 0, 5, 0, 0, 0, 4, 0, 99, 0, 10, 0xCE],
                FrameError::Method {
                    channel: 5,
                    class_id: 99,
                    method_id: 10,
                    error: DecodeError::UnknownClass(99),
                },
            ),
            (
                &[1, 0, 6, 0, 0, 0, 4, 0, 60, 0, 41, 0xCE],
                FrameError::Method {
                    channel: 6,
                    class_id: 60,
                    method_id: 41,
                    error: DecodeError::UnknownMethod {
                        class_id: 60,
                        method_id: 41,
                    },
                },
            ),
            (
                // connection.tune cut short
                &[1, 0, 0, 0, 0, 0, 6, 0, 10, 0, 30, 0, 1, 0xCE],
                FrameError::Method {
                    channel: 0,
                    class_id: 10,
                    method_id: 30,
                    error: DecodeError::Truncated,
                },
            ),
            (
                &[2, 0, 7, 0, 0, 0, 3, 0, 60, 0, 0xCE],
                FrameError::Header {
                    channel: 7,
                    error: DecodeError::Truncated,
                },
            ),
        ];
        for (bytes, error) in cases {
            let mut buf = BytesMut::from(bytes);
            encode_heartbeat(&mut buf);
            assert_eq!(decoder.decode(&mut buf), Err(error));
            // The stream is still framed: the next frame decodes.
            assert_eq!(
                decoder.decode(&mut buf),
                Ok(Some(Frame::Heartbeat { channel: 0 }))
            );
        }
    }

    #[test]
    fn too_deep_headers_table_is_a_header_error() {
        let mut table = crate::proto::table::FieldTable::new();
        for _ in 0..crate::proto::table::MAX_FIELD_DEPTH {
            table = [("k", crate::proto::table::FieldValue::Table(table))]
                .into_iter()
                .collect();
        }
        let props = BasicProperties {
            headers: Some(table),
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        encode_content(9, &publish(), &props, b"", 0, &mut buf);
        let mut decoder = FrameDecoder::new(0);
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::Method { .. }))
        ));
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::Header {
                channel: 9,
                error: DecodeError::TooDeep
            })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn errors_display() {
        let error = FrameError::Method {
            channel: 2,
            class_id: 50,
            method_id: 10,
            error: DecodeError::BadUtf8,
        };
        assert_eq!(
            error.to_string(),
            "bad method frame on channel 2: short string is not valid UTF-8"
        );
        assert!(std::error::Error::source(&error).is_some());
    }
}
