//! Primitive wire types: checked reads from a byte slice, and writes to a `BytesMut`.
//!
//! Every read checks the remaining length first and fails with [`DecodeError::Truncated`]
//! instead of panicking, so no input can crash the decoder. Integers are big-endian.

use std::fmt;

use bytes::{BufMut, BytesMut};

/// Why a method, content header or field table could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The class is known but has no method with this id.
    UnknownMethod {
        /// The class id read from the payload.
        class_id: u16,
        /// The method id read from the payload.
        method_id: u16,
    },
    /// No class has this id.
    UnknownClass(u16),
    /// The payload (or a table inside it) ended before the value being read.
    Truncated,
    /// A field-table value has a type tag that no AMQP dialect defines.
    BadFieldType(u8),
    /// A short string (a name, a table key) is not valid UTF-8.
    BadUtf8,
    /// Field tables and arrays are nested deeper than [`crate::proto::table::MAX_FIELD_DEPTH`].
    TooDeep,
    /// Bytes were left after the last field: this many.
    Trailing(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownMethod {
                class_id,
                method_id,
            } => write!(f, "unknown method {class_id}.{method_id}"),
            DecodeError::UnknownClass(class_id) => write!(f, "unknown class {class_id}"),
            DecodeError::Truncated => f.write_str("truncated payload"),
            DecodeError::BadFieldType(tag) => {
                write!(f, "unknown field type {:?}", char::from(*tag))
            }
            DecodeError::BadUtf8 => f.write_str("short string is not valid UTF-8"),
            DecodeError::TooDeep => f.write_str("field table nested too deeply"),
            DecodeError::Trailing(1) => f.write_str("1 byte after the last field"),
            DecodeError::Trailing(n) => write!(f, "{n} bytes after the last field"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A cursor over a byte slice whose reads never panic.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or(DecodeError::Truncated)?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let head = self.bytes(N)?;
        head.try_into().map_err(|_| DecodeError::Truncated)
    }

    /// An octet.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    /// A signed octet.
    pub fn i8(&mut self) -> Result<i8, DecodeError> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    /// A short.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A signed short.
    pub fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    /// A long.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A signed long.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// A long long.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A signed long long.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// An IEEE-754 single.
    pub fn f32(&mut self) -> Result<f32, DecodeError> {
        Ok(f32::from_be_bytes(self.array()?))
    }

    /// An IEEE-754 double.
    pub fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_be_bytes(self.array()?))
    }

    /// A short string: a length octet, then that many bytes of UTF-8.
    pub fn shortstr(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u8()?;
        let raw = self.bytes(usize::from(len))?;
        std::str::from_utf8(raw).map_err(|_| DecodeError::BadUtf8)
    }

    /// A long string: a 32-bit length, then that many bytes (any content).
    pub fn longstr(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        self.bytes(len)
    }
}

/// The longest byte length a short string can carry.
pub const SHORTSTR_MAX_BYTES: usize = 255;

/// The longest prefix of `s` that fits in a short string and ends on a char boundary.
pub fn shortstr_prefix(s: &str) -> &str {
    if s.len() <= SHORTSTR_MAX_BYTES {
        return s;
    }
    let mut end = SHORTSTR_MAX_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Writes a short string. A string longer than 255 bytes is truncated at the last char
/// boundary that fits: the frame stays well-formed, and a reply text built from a long
/// user-supplied name loses its tail instead of corrupting the stream. Callers that need
/// the exact value (queue and exchange names) must keep it within 255 bytes themselves.
pub fn put_shortstr(out: &mut BytesMut, s: &str) {
    let s = shortstr_prefix(s);
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

/// Writes a long string: a 32-bit length, then the bytes.
pub fn put_longstr(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(len_u32(bytes.len()));
    out.put_slice(bytes);
}

/// Reserves a 32-bit length prefix to be filled by [`end_u32_len`] once the content is
/// written. Returns the prefix's offset.
pub fn begin_u32_len(out: &mut BytesMut) -> usize {
    let at = out.len();
    out.put_u32(0);
    at
}

/// Fills the prefix reserved at `at` with the number of bytes written after it.
pub fn end_u32_len(out: &mut BytesMut, at: usize) {
    let len = len_u32(out.len() - at - 4);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A length as the protocol's 32-bit size. Nothing the broker encodes comes near 4 GiB
/// (frames are capped far below), so a larger value is a bug, not an input.
pub fn len_u32(len: usize) -> u32 {
    assert!(
        u32::try_from(len).is_ok(),
        "length {len} does not fit the protocol's 32-bit size"
    );
    len as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_check_length_first() {
        let mut r = Reader::new(&[0x01, 0x02, 0x03]);
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(r.u16(), Err(DecodeError::Truncated));
        // A failed read consumes nothing.
        assert_eq!(r.u8(), Ok(0x03));
        assert!(r.is_empty());
    }

    #[test]
    fn longstr_with_huge_declared_length_is_truncated_not_allocated() {
        let mut r = Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, b'a']);
        assert_eq!(r.longstr(), Err(DecodeError::Truncated));
    }

    #[test]
    fn shortstr_rejects_bad_utf8() {
        let mut r = Reader::new(&[2, 0xC3, 0x28]);
        assert_eq!(r.shortstr(), Err(DecodeError::BadUtf8));
    }

    #[test]
    fn long_shortstr_is_truncated_at_a_char_boundary() {
        // 'é' is two bytes: 200 of them are 400 bytes; 127 fit in 255 bytes (254).
        let long = "é".repeat(200);
        let mut out = BytesMut::new();
        put_shortstr(&mut out, &long);
        assert_eq!(out[0], 254);
        let mut r = Reader::new(&out);
        assert_eq!(r.shortstr(), Ok("é".repeat(127).as_str()));
        assert!(r.is_empty());

        let ascii = "a".repeat(300);
        assert_eq!(shortstr_prefix(&ascii).len(), 255);
        assert_eq!(shortstr_prefix("abc"), "abc");
    }
}
