//! Short strings as message properties carry them: bytes, not text.
//!
//! AMQP's short string is a length octet and up to 255 bytes, with nothing saying they are
//! UTF-8. Clients whose strings are bytes (Go's, or pika given `bytes`) can send a
//! correlation id or a content type that is not UTF-8, and RabbitMQ passes it on byte for
//! byte; so does warren. Where the broker reads a property as text (`expiration`,
//! `user_id`, a direct reply-to address) it compares or parses the bytes.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, BytesMut};

use super::codec::{DecodeError, Reader, SHORTSTR_MAX_BYTES, shortstr_prefix};

/// A short string's bytes: at most 255 of them, any content.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ShortStr(Box<[u8]>);

impl ShortStr {
    /// The bytes as they travel.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as text, if they are UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The bytes as text, with what is not UTF-8 replaced (for display: the management
    /// API's JSON, whose strings must be text).
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads one from the wire: a length octet, then that many bytes of any content.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = r.u8()?;
        Ok(ShortStr(r.bytes(usize::from(len))?.into()))
    }

    /// Writes it as [`ShortStr::read`] reads it.
    pub fn encode(&self, out: &mut BytesMut) {
        debug_assert!(
            self.len() <= SHORTSTR_MAX_BYTES,
            "a ShortStr holds at most 255 bytes"
        );
        out.put_u8(self.len() as u8);
        out.put_slice(&self.0);
    }

    /// The number of bytes [`ShortStr::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        1 + self.len()
    }
}

impl From<&[u8]> for ShortStr {
    /// Bytes past the 255th are dropped.
    fn from(bytes: &[u8]) -> Self {
        ShortStr(bytes[..bytes.len().min(SHORTSTR_MAX_BYTES)].into())
    }
}

impl From<&str> for ShortStr {
    /// A text longer than 255 bytes is cut at the last character boundary that fits.
    fn from(text: &str) -> Self {
        ShortStr(shortstr_prefix(text).as_bytes().into())
    }
}

impl From<String> for ShortStr {
    fn from(text: String) -> Self {
        if text.len() <= SHORTSTR_MAX_BYTES {
            ShortStr(text.into_bytes().into_boxed_slice())
        } else {
            ShortStr::from(text.as_str())
        }
    }
}

impl PartialEq<str> for ShortStr {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other.as_bytes()
    }
}

impl PartialEq<&str> for ShortStr {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == *other.as_bytes()
    }
}

impl fmt::Display for ShortStr {
    /// The text, or the bytes with what is not printable ASCII escaped (`\xff`), as
    /// RabbitMQ prints them in its error texts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(text) => f.write_str(text),
            None => write!(f, "{}", self.0.escape_ascii()),
        }
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(text) => fmt::Debug::fmt(text, f),
            None => write!(f, "b\"{}\"", self.0.escape_ascii()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_utf8_are_kept_and_shown_escaped() {
        let s = ShortStr::from(&b"\xff\xfeab"[..]);
        assert_eq!(s.as_bytes(), b"\xff\xfeab");
        assert_eq!(s.as_str(), None);
        assert_eq!(s.to_string(), "\\xff\\xfeab");
        assert_eq!(format!("{s:?}"), "b\"\\xff\\xfeab\"");
        assert_eq!(s.to_str_lossy(), "\u{fffd}\u{fffd}ab");
        let text = ShortStr::from("text/plain");
        assert_eq!(text, "text/plain");
        assert_eq!(text.as_str(), Some("text/plain"));
        assert_eq!(format!("{text:?}"), "\"text/plain\"");
    }

    #[test]
    fn at_most_255_bytes_are_kept() {
        assert_eq!(ShortStr::from(&[7u8; 300][..]).len(), 255);
        // 'é' is two bytes: 127 of them fit.
        let long = "é".repeat(200);
        assert_eq!(ShortStr::from(long.as_str()), "é".repeat(127).as_str());
        assert_eq!(ShortStr::from(long).len(), 254);
        assert_eq!(ShortStr::from("x".repeat(255)).len(), 255);
    }
}
