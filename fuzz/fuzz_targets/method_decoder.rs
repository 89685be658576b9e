//! Arbitrary bytes into `Method::decode`: never panics, and whatever decodes re-encodes to
//! bytes that decode to an equal method, and that encode again identically; as nothing may
//! follow a method's arguments, the re-encoding is as long as the input.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren::proto::method::Method;

fuzz_target!(|data: &[u8]| {
    let Ok(method) = Method::decode(data) else {
        return;
    };
    let mut bytes = BytesMut::new();
    method.encode(&mut bytes);
    assert_eq!(bytes.len(), data.len(), "bytes after the arguments were accepted");
    let again = Method::decode(&bytes).expect("re-encoded method decodes");
    assert_eq!(again, method, "re-encoded method decodes differently");
    let mut bytes_again = BytesMut::new();
    again.encode(&mut bytes_again);
    assert_eq!(bytes, bytes_again);
    assert_eq!(
        warren::proto::method::method_name(method.class_id(), method.method_id()),
        Some(method.name())
    );
});
