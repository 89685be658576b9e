//! Arbitrary bytes into `FrameDecoder`, whole and in chunks derived from the input.
//!
//! Checks that decoding never panics, that the outcome does not depend on how the bytes
//! are chunked, and that every decoded frame re-encodes to bytes that decode to an equal
//! frame.
//!
//! The first input byte is control: bits 6-7 pick the frame size limit, bits 0-2 the
//! chunking, and bit 5 a "framed" mode in which the rest of the input is a list of
//! `[type, channel, length, payload...]` records wrapped into well-formed frames, so that
//! the fuzzer reaches the method, property and table decoders without having to guess
//! matching payload sizes and frame-end octets.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren::proto::constants::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE,
};
use warren::proto::frame::{Frame, FrameDecoder, FrameError, encode_frame};

/// Frames decoded from `chunks` fed in order, and the error that stopped decoding, if any.
fn decode_all<'a>(
    max_frame_bytes: u32,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(max_frame_bytes);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return (frames, Some(error)),
            }
        }
    }
    (frames, None)
}

/// Splits `stream` into chunks whose sizes come from a small generator seeded by `seed`:
/// from one byte at a time up to a few kilobytes.
fn chunks(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    let span = [1usize, 3, 16, 64, 512, 4096, 65536, usize::MAX][usize::from(seed & 7)];
    let mut state = u32::from(seed) | 0x9E37_0000;
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = 1 + (state as usize) % span.min(rest.len());
        let (head, tail) = rest.split_at(size);
        out.push(head);
        rest = tail;
    }
    out
}

/// Wraps `[type, channel, length, payload...]` records into frames.
fn framed(mut records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let [kind, channel, len, tail @ ..] = records {
        let (payload, rest) = tail.split_at(usize::from(*len).min(tail.len()));
        out.push([FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT][usize::from(kind & 3)]);
        out.extend_from_slice(&u16::from(*channel).to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(FRAME_END);
        records = rest;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let max_frame_bytes = match control >> 6 {
        0 => 0,
        1 => FRAME_MIN_SIZE,
        2 => 64,
        _ => 131_072,
    };
    let framed_stream;
    let stream = if control & 0x20 != 0 {
        framed_stream = framed(stream);
        &framed_stream[..]
    } else {
        stream
    };
    let whole = decode_all(max_frame_bytes, [stream]);
    let chunked = decode_all(max_frame_bytes, chunks(stream, control));
    assert_eq!(whole, chunked, "the outcome depends on the chunking");

    for frame in whole.0 {
        let mut bytes = BytesMut::new();
        encode_frame(&frame, &mut bytes);
        let mut decoder = FrameDecoder::new(0);
        let again = decoder.decode(&mut bytes);
        assert_eq!(
            again,
            Ok(Some(frame)),
            "re-encoded frame decodes differently"
        );
        assert!(bytes.is_empty(), "re-encoded frame left bytes behind");
    }
});
