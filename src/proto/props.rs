//! Message properties (the `basic` class's content header properties).
//!
//! On the wire a property-flags word comes first: bit 15 is content-type, bit 14
//! content-encoding, down to bit 2 for cluster-id; bit 0 says another flags word follows.
//! Then the present properties, in flag order.

use bytes::{BufMut, BytesMut};

use super::codec::{DecodeError, Reader};
use super::shortstr::ShortStr;
use super::table::FieldTable;

/// The properties of a message, each optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BasicProperties {
    /// MIME content type.
    pub content_type: Option<ShortStr>,
    /// MIME content encoding.
    pub content_encoding: Option<ShortStr>,
    /// Application headers (also used by headers exchanges).
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Message priority, 0 to 9.
    pub priority: Option<u8>,
    /// Application correlation identifier.
    pub correlation_id: Option<ShortStr>,
    /// Address to reply to.
    pub reply_to: Option<ShortStr>,
    /// Per-message TTL in milliseconds, as decimal text.
    pub expiration: Option<ShortStr>,
    /// Application message identifier.
    pub message_id: Option<ShortStr>,
    /// Message timestamp, seconds since the epoch.
    pub timestamp: Option<u64>,
    /// Message type name (the spec's `type`).
    pub kind: Option<ShortStr>,
    /// Creating user id (RabbitMQ checks it against the connection's user).
    pub user_id: Option<ShortStr>,
    /// Creating application id.
    pub app_id: Option<ShortStr>,
    /// Intra-cluster routing identifier (deprecated).
    pub cluster_id: Option<ShortStr>,
}

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const KIND: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;

/// The delivery mode of a persistent message.
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;

impl BasicProperties {
    /// Whether the message asks to be persisted (delivery mode 2).
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(DELIVERY_MODE_PERSISTENT)
    }

    /// The property-flags word for the properties present.
    pub fn flags(&self) -> u16 {
        let mut flags = 0;
        let mut set = |present: bool, bit: u16| {
            if present {
                flags |= bit;
            }
        };
        set(self.content_type.is_some(), CONTENT_TYPE);
        set(self.content_encoding.is_some(), CONTENT_ENCODING);
        set(self.headers.is_some(), HEADERS);
        set(self.delivery_mode.is_some(), DELIVERY_MODE);
        set(self.priority.is_some(), PRIORITY);
        set(self.correlation_id.is_some(), CORRELATION_ID);
        set(self.reply_to.is_some(), REPLY_TO);
        set(self.expiration.is_some(), EXPIRATION);
        set(self.message_id.is_some(), MESSAGE_ID);
        set(self.timestamp.is_some(), TIMESTAMP);
        set(self.kind.is_some(), KIND);
        set(self.user_id.is_some(), USER_ID);
        set(self.app_id.is_some(), APP_ID);
        set(self.cluster_id.is_some(), CLUSTER_ID);
        flags
    }

    /// Writes a single flags word, then the present properties.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.flags());
        let shortstr = |out: &mut BytesMut, value: &Option<ShortStr>| {
            if let Some(s) = value {
                s.encode(out);
            }
        };
        shortstr(out, &self.content_type);
        shortstr(out, &self.content_encoding);
        if let Some(headers) = &self.headers {
            headers.encode(out);
        }
        if let Some(mode) = self.delivery_mode {
            out.put_u8(mode);
        }
        if let Some(priority) = self.priority {
            out.put_u8(priority);
        }
        shortstr(out, &self.correlation_id);
        shortstr(out, &self.reply_to);
        shortstr(out, &self.expiration);
        shortstr(out, &self.message_id);
        if let Some(timestamp) = self.timestamp {
            out.put_u64(timestamp);
        }
        shortstr(out, &self.kind);
        shortstr(out, &self.user_id);
        shortstr(out, &self.app_id);
        shortstr(out, &self.cluster_id);
    }

    /// The number of bytes [`BasicProperties::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let shortstr = |value: &Option<ShortStr>| value.as_ref().map_or(0, ShortStr::encoded_len);
        2 + shortstr(&self.content_type)
            + shortstr(&self.content_encoding)
            + self.headers.as_ref().map_or(0, FieldTable::encoded_len)
            + usize::from(self.delivery_mode.is_some())
            + usize::from(self.priority.is_some())
            + shortstr(&self.correlation_id)
            + shortstr(&self.reply_to)
            + shortstr(&self.expiration)
            + shortstr(&self.message_id)
            + if self.timestamp.is_some() { 8 } else { 0 }
            + shortstr(&self.kind)
            + shortstr(&self.user_id)
            + shortstr(&self.app_id)
            + shortstr(&self.cluster_id)
    }

    /// About the bytes the properties take in memory: their encoded length, with the
    /// headers counted as [`FieldTable::held_len`] counts them.
    pub fn held_len(&self) -> usize {
        match &self.headers {
            Some(h) => self.encoded_len() - h.encoded_len() + h.held_len(),
            None => self.encoded_len(),
        }
    }

    /// Decodes properties from the start of `buf`; bytes after them are ignored.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Self::read(&mut Reader::new(buf))
    }

    /// Reads the flags word and the properties it announces.
    ///
    /// The continuation bit (bit 0) and the unused bit 1 are ignored, as RabbitMQ ignores
    /// them: the basic class defines only 14 properties, all in the first word, so no
    /// client sends a second word, and one that did would leave it unread (a content
    /// header then fails with [`DecodeError::Trailing`], as RabbitMQ refuses it).
    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let flags = r.u16()?;
        let has = |bit: u16| flags & bit != 0;
        let shortstr = |r: &mut Reader<'_>, bit: u16| -> Result<Option<ShortStr>, DecodeError> {
            if has(bit) {
                Ok(Some(ShortStr::read(r)?))
            } else {
                Ok(None)
            }
        };
        let octet = |r: &mut Reader<'_>, bit: u16| -> Result<Option<u8>, DecodeError> {
            if has(bit) {
                Ok(Some(r.u8()?))
            } else {
                Ok(None)
            }
        };
        Ok(BasicProperties {
            content_type: shortstr(r, CONTENT_TYPE)?,
            content_encoding: shortstr(r, CONTENT_ENCODING)?,
            headers: if has(HEADERS) {
                Some(FieldTable::read(r)?)
            } else {
                None
            },
            delivery_mode: octet(r, DELIVERY_MODE)?,
            priority: octet(r, PRIORITY)?,
            correlation_id: shortstr(r, CORRELATION_ID)?,
            reply_to: shortstr(r, REPLY_TO)?,
            expiration: shortstr(r, EXPIRATION)?,
            message_id: shortstr(r, MESSAGE_ID)?,
            timestamp: if has(TIMESTAMP) { Some(r.u64()?) } else { None },
            kind: shortstr(r, KIND)?,
            user_id: shortstr(r, USER_ID)?,
            app_id: shortstr(r, APP_ID)?,
            cluster_id: shortstr(r, CLUSTER_ID)?,
        })
    }
}

#[cfg(test)]
pub(crate) mod arb {
    use super::*;
    use crate::proto::table::arb as table;
    use proptest::option::of;
    use proptest::prelude::*;

    /// A property's short string: text, or any bytes (which RabbitMQ passes on too).
    pub fn short() -> impl Strategy<Value = ShortStr> {
        prop_oneof![
            3 => table::shortstr().prop_map(ShortStr::from),
            1 => proptest::collection::vec(any::<u8>(), 0..=255).prop_map(|b| ShortStr::from(&b[..])),
        ]
    }

    pub fn properties() -> impl Strategy<Value = BasicProperties> {
        (
            (
                of(short()),
                of(short()),
                of(table::table()),
                of(any::<u8>()),
                of(any::<u8>()),
                of(short()),
                of(short()),
            ),
            (
                of(short()),
                of(short()),
                of(any::<u64>()),
                of(short()),
                of(short()),
                of(short()),
                of(short()),
            ),
        )
            .prop_map(|(a, b)| BasicProperties {
                content_type: a.0,
                content_encoding: a.1,
                headers: a.2,
                delivery_mode: a.3,
                priority: a.4,
                correlation_id: a.5,
                reply_to: a.6,
                expiration: b.0,
                message_id: b.1,
                timestamp: b.2,
                kind: b.3,
                user_id: b.4,
                app_id: b.5,
                cluster_id: b.6,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::table::FieldValue;
    use proptest::prelude::*;

    fn encoded(props: &BasicProperties) -> BytesMut {
        let mut out = BytesMut::new();
        props.encode(&mut out);
        out
    }

    /// Properties holding exactly the fields whose bit is set in `mask` (bit 15 =
    /// content-type, as on the wire), each with a distinct value.
    fn with_mask(mask: u16) -> BasicProperties {
        let s = |bit: u16, text: &str| (mask & bit != 0).then(|| ShortStr::from(text));
        BasicProperties {
            content_type: s(CONTENT_TYPE, "text/plain"),
            content_encoding: s(CONTENT_ENCODING, "gzip"),
            headers: (mask & HEADERS != 0)
                .then(|| [("h", FieldValue::I32(-1))].into_iter().collect()),
            delivery_mode: (mask & DELIVERY_MODE != 0).then_some(2),
            priority: (mask & PRIORITY != 0).then_some(9),
            correlation_id: s(CORRELATION_ID, "corr"),
            reply_to: s(REPLY_TO, "amq.rabbitmq.reply-to"),
            expiration: s(EXPIRATION, "60000"),
            message_id: s(MESSAGE_ID, "m-1"),
            timestamp: (mask & TIMESTAMP != 0).then_some(1_700_000_000),
            kind: s(KIND, "order"),
            user_id: s(USER_ID, "guest"),
            app_id: s(APP_ID, "app"),
            cluster_id: s(CLUSTER_ID, ""),
        }
    }

    #[test]
    fn every_subset_of_fields_round_trips() {
        // All 2^14 combinations of the 14 properties.
        for subset in 0..(1u16 << 14) {
            let mask = subset << 2;
            let props = with_mask(mask);
            let bytes = encoded(&props);
            assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), mask);
            assert_eq!(
                BasicProperties::decode(&bytes),
                Ok(props),
                "mask {mask:#06x}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_properties_round_trip(props in arb::properties()) {
            let bytes = encoded(&props);
            prop_assert_eq!(props.encoded_len(), bytes.len());
            prop_assert_eq!(BasicProperties::decode(&bytes), Ok(props));
            for end in 0..bytes.len() {
                prop_assert!(BasicProperties::decode(&bytes[..end]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(props) = BasicProperties::decode(&bytes) {
                prop_assert_eq!(BasicProperties::decode(&encoded(&props)), Ok(props));
            }
        }
    }

    #[test]
    fn known_encoding() {
        let props = BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            timestamp: Some(0x0102_0304_0506_0708),
            ..Default::default()
        };
        assert!(props.is_persistent());
        let expected: &[u8] = &[
            0x90, 0x40, // content-type, delivery-mode, timestamp
            10, b't', b'e', b'x', b't', b'/', b'p', b'l', b'a', b'i', b'n', // content-type
            2,    // delivery-mode
            1, 2, 3, 4, 5, 6, 7, 8, // timestamp
        ];
        assert_eq!(&encoded(&props)[..], expected);
        assert_eq!(BasicProperties::decode(expected), Ok(props));
        assert!(!BasicProperties::default().is_persistent());
        assert_eq!(&encoded(&BasicProperties::default())[..], &[0, 0]);
    }

    #[test]
    fn short_strings_that_are_not_utf8_are_kept_byte_for_byte() {
        // content-type and correlation-id, neither of them UTF-8.
        let bytes: &[u8] = &[0x84, 0x00, 2, 0xff, 0xfe, 3, b'a', 0x80, b'b'];
        let props = BasicProperties::decode(bytes).expect("any bytes are a short string");
        assert_eq!(
            props.content_type.as_ref().map(ShortStr::as_bytes),
            Some(&b"\xff\xfe"[..])
        );
        assert_eq!(
            props.correlation_id.as_ref().map(ShortStr::as_bytes),
            Some(&b"a\x80b"[..])
        );
        assert_eq!(&encoded(&props)[..], bytes);
    }

    #[test]
    fn the_continuation_bit_is_ignored() {
        // Priority with the continuation bit: no second word is read.
        let bytes: &[u8] = &[0x08, 0x01, 5];
        let props = BasicProperties::decode(bytes);
        assert_eq!(
            props,
            Ok(BasicProperties {
                priority: Some(5),
                ..Default::default()
            })
        );
        // A continuation bit with no following word is a complete, empty property list.
        assert_eq!(
            BasicProperties::decode(&[0x00, 0x01]),
            Ok(BasicProperties::default())
        );
    }
}
