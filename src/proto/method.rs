//! Methods: one struct per method of every class in AMQP 0-9-1 with RabbitMQ's extensions,
//! and the [`Method`] enum that encodes and decodes them.
//!
//! The whole protocol is described once, by the table at the bottom of this file: each
//! line gives a method's class id, method id, dotted name, whether it carries content, and
//! its arguments with their AMQP types. The `methods!` macro turns that table into the
//! structs, the enum and its codec, so adding or fixing a method is a one-line change.
//!
//! Wire format of a method frame's payload: class id (short), method id (short), then the
//! arguments in order. Consecutive `bit` arguments are packed into octets, least
//! significant bit first, eight to an octet; any other argument type closes the octet.
//!
//! Decoding accepts trailing bytes after the last argument and ignores them, as RabbitMQ
//! does, so that a client that appends fields from a later revision still works. Short
//! strings longer than 255 bytes are truncated on encode (see [`codec::put_shortstr`]).

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{self, DecodeError, Reader};
use super::constants::{
    CLASS_ACCESS, CLASS_BASIC, CLASS_CHANNEL, CLASS_CONFIRM, CLASS_CONNECTION, CLASS_EXCHANGE,
    CLASS_QUEUE, CLASS_TX,
};
use super::table::FieldTable;

/// Writes arguments, packing consecutive bits into octets.
struct ArgWriter<'a> {
    out: &'a mut BytesMut,
    /// Bits collected for the octet being packed.
    bits: u8,
    /// How many bits of `bits` are used (0 = no octet pending).
    bit_count: u8,
}

impl<'a> ArgWriter<'a> {
    fn new(out: &'a mut BytesMut) -> Self {
        ArgWriter {
            out,
            bits: 0,
            bit_count: 0,
        }
    }

    fn flush_bits(&mut self) {
        if self.bit_count > 0 {
            self.out.put_u8(self.bits);
            self.bits = 0;
            self.bit_count = 0;
        }
    }

    fn bit(&mut self, value: &bool) {
        if self.bit_count == 8 {
            self.flush_bits();
        }
        if *value {
            self.bits |= 1 << self.bit_count;
        }
        self.bit_count += 1;
    }

    fn octet(&mut self, value: &u8) {
        self.flush_bits();
        self.out.put_u8(*value);
    }

    fn short(&mut self, value: &u16) {
        self.flush_bits();
        self.out.put_u16(*value);
    }

    fn long(&mut self, value: &u32) {
        self.flush_bits();
        self.out.put_u32(*value);
    }

    fn longlong(&mut self, value: &u64) {
        self.flush_bits();
        self.out.put_u64(*value);
    }

    fn shortstr(&mut self, value: &str) {
        self.flush_bits();
        codec::put_shortstr(self.out, value);
    }

    fn longstr(&mut self, value: &Bytes) {
        self.flush_bits();
        codec::put_longstr(self.out, value);
    }

    fn table(&mut self, value: &FieldTable) {
        self.flush_bits();
        value.encode(self.out);
    }

    fn finish(mut self) {
        self.flush_bits();
    }
}

/// Reads arguments, unpacking consecutive bits from octets.
struct ArgReader<'a> {
    r: Reader<'a>,
    /// The octet bits are being read from.
    bits: u8,
    /// The next bit of `bits` to read; 8 means a new octet must be read first.
    bit_index: u8,
}

impl<'a> ArgReader<'a> {
    fn new(r: Reader<'a>) -> Self {
        ArgReader {
            r,
            bits: 0,
            bit_index: 8,
        }
    }

    fn bit(&mut self) -> Result<bool, DecodeError> {
        if self.bit_index == 8 {
            self.bits = self.r.u8()?;
            self.bit_index = 0;
        }
        let value = self.bits & (1 << self.bit_index) != 0;
        self.bit_index += 1;
        Ok(value)
    }

    /// Fails if bytes are left after the last argument.
    fn finish(&self) -> Result<(), DecodeError> {
        match self.r.rest().len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }

    /// The reader for a non-bit argument, which ends any octet of bits.
    fn reader(&mut self) -> &mut Reader<'a> {
        self.bit_index = 8;
        &mut self.r
    }

    fn octet(&mut self) -> Result<u8, DecodeError> {
        self.reader().u8()
    }

    fn short(&mut self) -> Result<u16, DecodeError> {
        self.reader().u16()
    }

    fn long(&mut self) -> Result<u32, DecodeError> {
        self.reader().u32()
    }

    fn longlong(&mut self) -> Result<u64, DecodeError> {
        self.reader().u64()
    }

    fn shortstr(&mut self) -> Result<String, DecodeError> {
        Ok(self.reader().shortstr()?.to_owned())
    }

    fn longstr(&mut self) -> Result<Bytes, DecodeError> {
        Ok(Bytes::copy_from_slice(self.reader().longstr()?))
    }

    fn table(&mut self) -> Result<FieldTable, DecodeError> {
        FieldTable::read(self.reader())
    }
}

/// The Rust type of an AMQP argument type. (No 0-9-1 method has a `timestamp` argument;
/// only message properties do.)
macro_rules! arg_type {
    (bit) => {
        bool
    };
    (octet) => {
        u8
    };
    (short) => {
        u16
    };
    (long) => {
        u32
    };
    (longlong) => {
        u64
    };
    (shortstr) => {
        String
    };
    (longstr) => {
        Bytes
    };
    (table) => {
        FieldTable
    };
}

/// `true` for a method marked `content` in the table.
macro_rules! has_content {
    () => {
        false
    };
    (content) => {
        true
    };
}

/// A method's struct: unit-like when it has no arguments.
macro_rules! method_struct {
    ($(#[$meta:meta])* $Name:ident {}) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $Name;
    };
    ($(#[$meta:meta])* $Name:ident { $($field:ident: $ty:ident),+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $Name {
            $(
                #[doc = concat!("The `", stringify!($field), "` argument (", stringify!($ty), ").")]
                pub $field: arg_type!($ty),
            )+
        }
    };
}

macro_rules! methods {
    ($(
        $class_id:literal, $method_id:literal, $name:literal $($content:ident)? =>
            $Name:ident { $($field:ident: $ty:ident),* $(,)? }
    )*) => {
        $(
            method_struct! {
                #[doc = concat!(
                    "`", $name, "` (class ", stringify!($class_id),
                    ", method ", stringify!($method_id), ")",
                    $(" ", stringify!($content), " carrying",)? "."
                )]
                $Name { $($field: $ty),* }
            }

            impl $Name {
                /// The class id.
                pub const CLASS_ID: u16 = $class_id;
                /// The method id within the class.
                pub const METHOD_ID: u16 = $method_id;
                /// The spec's dotted name.
                pub const NAME: &'static str = $name;

                #[allow(unused_variables)]
                fn encode_args(&self, w: &mut ArgWriter<'_>) {
                    $(w.$ty(&self.$field);)*
                }

                #[allow(unused_variables)]
                fn decode_args(r: &mut ArgReader<'_>) -> Result<Self, DecodeError> {
                    Ok($Name { $($field: r.$ty()?,)* })
                }
            }

            impl From<$Name> for Method {
                fn from(method: $Name) -> Method {
                    Method::$Name(method)
                }
            }
        )*

        /// Any method of any class.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Method {
            $(
                #[doc = concat!("`", $name, "`.")]
                $Name($Name),
            )*
        }

        impl Method {
            /// The class id.
            pub fn class_id(&self) -> u16 {
                match self {
                    $(Method::$Name(_) => $class_id,)*
                }
            }

            /// The method id within the class.
            pub fn method_id(&self) -> u16 {
                match self {
                    $(Method::$Name(_) => $method_id,)*
                }
            }

            /// The spec's dotted name, e.g. `"basic.publish"`.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Method::$Name(_) => $name,)*
                }
            }

            /// Whether a content header and body frames follow this method.
            pub fn has_content(&self) -> bool {
                match self {
                    $(Method::$Name(_) => has_content!($($content)?),)*
                }
            }

            /// Writes the class id, the method id and the arguments.
            pub fn encode(&self, out: &mut BytesMut) {
                out.put_u16(self.class_id());
                out.put_u16(self.method_id());
                let mut w = ArgWriter::new(out);
                match self {
                    $(Method::$Name(m) => m.encode_args(&mut w),)*
                }
                w.finish();
            }

            /// Writes a `basic.deliver`'s payload from borrowed fields, as
            /// `Method::BasicDeliver(..).encode` would from owned ones.
            pub fn encode_deliver(
                out: &mut BytesMut,
                consumer_tag: &str,
                delivery_tag: u64,
                redelivered: bool,
                exchange: &str,
                routing_key: &str,
            ) {
                out.put_u16(BasicDeliver::CLASS_ID);
                out.put_u16(BasicDeliver::METHOD_ID);
                let mut w = ArgWriter::new(out);
                w.shortstr(consumer_tag);
                w.longlong(&delivery_tag);
                w.bit(&redelivered);
                w.shortstr(exchange);
                w.shortstr(routing_key);
                w.finish();
            }

            /// Decodes a method frame's payload. Bytes after the last argument are an error
            /// ([`DecodeError::Trailing`]), as RabbitMQ refuses them.
            pub fn decode(payload: &[u8]) -> Result<Method, DecodeError> {
                let mut r = Reader::new(payload);
                let class_id = r.u16()?;
                let method_id = r.u16()?;
                let mut args = ArgReader::new(r);
                match (class_id, method_id) {
                    $(($class_id, $method_id) => {
                        let method = $Name::decode_args(&mut args)?;
                        args.finish()?;
                        Ok(Method::$Name(method))
                    })*
                    _ if is_known_class(class_id) => Err(DecodeError::UnknownMethod {
                        class_id,
                        method_id,
                    }),
                    _ => Err(DecodeError::UnknownClass(class_id)),
                }
            }
        }

        /// The spec's dotted name of a method, e.g. `method_name(60, 40) == Some("basic.publish")`.
        pub fn method_name(class_id: u16, method_id: u16) -> Option<&'static str> {
            match (class_id, method_id) {
                $(($class_id, $method_id) => Some($name),)*
                _ => None,
            }
        }

        /// One proptest strategy per method, named, generating arbitrary argument values.
        #[cfg(test)]
        pub(crate) fn method_strategies(
        ) -> Vec<(&'static str, proptest::strategy::BoxedStrategy<Method>)> {
            use proptest::prelude::*;
            vec![
                $((
                    $name,
                    // The leading `Just(())` keeps the tuple non-empty for empty methods.
                    (Just(()), $(arb::$ty(),)*)
                        .prop_map(|(_, $($field,)*)| Method::$Name($Name { $($field,)* }))
                        .boxed(),
                ),)*
            ]
        }
    };
}

/// Whether any method is defined for `class_id`.
fn is_known_class(class_id: u16) -> bool {
    matches!(
        class_id,
        CLASS_CONNECTION
            | CLASS_CHANNEL
            | CLASS_ACCESS
            | CLASS_EXCHANGE
            | CLASS_QUEUE
            | CLASS_BASIC
            | CLASS_CONFIRM
            | CLASS_TX
    )
}

// The protocol: class id, method id, "class.method" [content] => Struct { argument: type }.
// Names follow the spec with '-' as '_' and `type` as `kind`; deprecated arguments (ticket,
// insist, known_hosts, out_of_band, cluster_id, ...) are kept so that encoding round-trips.
methods! {
    10, 10, "connection.start" => ConnectionStart {
        version_major: octet,
        version_minor: octet,
        server_properties: table,
        mechanisms: longstr,
        locales: longstr,
    }
    10, 11, "connection.start-ok" => ConnectionStartOk {
        client_properties: table,
        mechanism: shortstr,
        response: longstr,
        locale: shortstr,
    }
    10, 20, "connection.secure" => ConnectionSecure { challenge: longstr }
    10, 21, "connection.secure-ok" => ConnectionSecureOk { response: longstr }
    10, 30, "connection.tune" => ConnectionTune {
        channel_max: short,
        frame_max: long,
        heartbeat: short,
    }
    10, 31, "connection.tune-ok" => ConnectionTuneOk {
        channel_max: short,
        frame_max: long,
        heartbeat: short,
    }
    10, 40, "connection.open" => ConnectionOpen {
        virtual_host: shortstr,
        capabilities: shortstr,
        insist: bit,
    }
    10, 41, "connection.open-ok" => ConnectionOpenOk { known_hosts: shortstr }
    10, 50, "connection.close" => ConnectionClose {
        reply_code: short,
        reply_text: shortstr,
        class_id: short,
        method_id: short,
    }
    10, 51, "connection.close-ok" => ConnectionCloseOk {}
    10, 60, "connection.blocked" => ConnectionBlocked { reason: shortstr }
    10, 61, "connection.unblocked" => ConnectionUnblocked {}
    10, 70, "connection.update-secret" => ConnectionUpdateSecret {
        new_secret: longstr,
        reason: shortstr,
    }
    10, 71, "connection.update-secret-ok" => ConnectionUpdateSecretOk {}
    20, 10, "channel.open" => ChannelOpen { out_of_band: shortstr }
    20, 11, "channel.open-ok" => ChannelOpenOk { channel_id: longstr }
    20, 20, "channel.flow" => ChannelFlow { active: bit }
    20, 21, "channel.flow-ok" => ChannelFlowOk { active: bit }
    20, 40, "channel.close" => ChannelClose {
        reply_code: short,
        reply_text: shortstr,
        class_id: short,
        method_id: short,
    }
    20, 41, "channel.close-ok" => ChannelCloseOk {}
    30, 10, "access.request" => AccessRequest {
        realm: shortstr,
        exclusive: bit,
        passive: bit,
        active: bit,
        write: bit,
        read: bit,
    }
    30, 11, "access.request-ok" => AccessRequestOk { ticket: short }
    40, 10, "exchange.declare" => ExchangeDeclare {
        ticket: short,
        exchange: shortstr,
        kind: shortstr,
        passive: bit,
        durable: bit,
        auto_delete: bit,
        internal: bit,
        nowait: bit,
        arguments: table,
    }
    40, 11, "exchange.declare-ok" => ExchangeDeclareOk {}
    40, 20, "exchange.delete" => ExchangeDelete {
        ticket: short,
        exchange: shortstr,
        if_unused: bit,
        nowait: bit,
    }
    40, 21, "exchange.delete-ok" => ExchangeDeleteOk {}
    40, 30, "exchange.bind" => ExchangeBind {
        ticket: short,
        destination: shortstr,
        source: shortstr,
        routing_key: shortstr,
        nowait: bit,
        arguments: table,
    }
    40, 31, "exchange.bind-ok" => ExchangeBindOk {}
    40, 40, "exchange.unbind" => ExchangeUnbind {
        ticket: short,
        destination: shortstr,
        source: shortstr,
        routing_key: shortstr,
        nowait: bit,
        arguments: table,
    }
    40, 51, "exchange.unbind-ok" => ExchangeUnbindOk {}
    50, 10, "queue.declare" => QueueDeclare {
        ticket: short,
        queue: shortstr,
        passive: bit,
        durable: bit,
        exclusive: bit,
        auto_delete: bit,
        nowait: bit,
        arguments: table,
    }
    50, 11, "queue.declare-ok" => QueueDeclareOk {
        queue: shortstr,
        message_count: long,
        consumer_count: long,
    }
    50, 20, "queue.bind" => QueueBind {
        ticket: short,
        queue: shortstr,
        exchange: shortstr,
        routing_key: shortstr,
        nowait: bit,
        arguments: table,
    }
    50, 21, "queue.bind-ok" => QueueBindOk {}
    50, 30, "queue.purge" => QueuePurge { ticket: short, queue: shortstr, nowait: bit }
    50, 31, "queue.purge-ok" => QueuePurgeOk { message_count: long }
    50, 40, "queue.delete" => QueueDelete {
        ticket: short,
        queue: shortstr,
        if_unused: bit,
        if_empty: bit,
        nowait: bit,
    }
    50, 41, "queue.delete-ok" => QueueDeleteOk { message_count: long }
    50, 50, "queue.unbind" => QueueUnbind {
        ticket: short,
        queue: shortstr,
        exchange: shortstr,
        routing_key: shortstr,
        arguments: table,
    }
    50, 51, "queue.unbind-ok" => QueueUnbindOk {}
    60, 10, "basic.qos" => BasicQos { prefetch_size: long, prefetch_count: short, global: bit }
    60, 11, "basic.qos-ok" => BasicQosOk {}
    60, 20, "basic.consume" => BasicConsume {
        ticket: short,
        queue: shortstr,
        consumer_tag: shortstr,
        no_local: bit,
        no_ack: bit,
        exclusive: bit,
        nowait: bit,
        arguments: table,
    }
    60, 21, "basic.consume-ok" => BasicConsumeOk { consumer_tag: shortstr }
    60, 30, "basic.cancel" => BasicCancel { consumer_tag: shortstr, nowait: bit }
    60, 31, "basic.cancel-ok" => BasicCancelOk { consumer_tag: shortstr }
    60, 40, "basic.publish" content => BasicPublish {
        ticket: short,
        exchange: shortstr,
        routing_key: shortstr,
        mandatory: bit,
        immediate: bit,
    }
    60, 50, "basic.return" content => BasicReturn {
        reply_code: short,
        reply_text: shortstr,
        exchange: shortstr,
        routing_key: shortstr,
    }
    60, 60, "basic.deliver" content => BasicDeliver {
        consumer_tag: shortstr,
        delivery_tag: longlong,
        redelivered: bit,
        exchange: shortstr,
        routing_key: shortstr,
    }
    60, 70, "basic.get" => BasicGet { ticket: short, queue: shortstr, no_ack: bit }
    60, 71, "basic.get-ok" content => BasicGetOk {
        delivery_tag: longlong,
        redelivered: bit,
        exchange: shortstr,
        routing_key: shortstr,
        message_count: long,
    }
    60, 72, "basic.get-empty" => BasicGetEmpty { cluster_id: shortstr }
    60, 80, "basic.ack" => BasicAck { delivery_tag: longlong, multiple: bit }
    60, 90, "basic.reject" => BasicReject { delivery_tag: longlong, requeue: bit }
    60, 100, "basic.recover-async" => BasicRecoverAsync { requeue: bit }
    60, 110, "basic.recover" => BasicRecover { requeue: bit }
    60, 111, "basic.recover-ok" => BasicRecoverOk {}
    60, 120, "basic.nack" => BasicNack { delivery_tag: longlong, multiple: bit, requeue: bit }
    90, 10, "tx.select" => TxSelect {}
    90, 11, "tx.select-ok" => TxSelectOk {}
    90, 20, "tx.commit" => TxCommit {}
    90, 21, "tx.commit-ok" => TxCommitOk {}
    90, 30, "tx.rollback" => TxRollback {}
    90, 31, "tx.rollback-ok" => TxRollbackOk {}
    85, 10, "confirm.select" => ConfirmSelect { nowait: bit }
    85, 11, "confirm.select-ok" => ConfirmSelectOk {}
}

/// Strategies for each argument type, named as in the protocol table.
#[cfg(test)]
mod arb {
    pub use crate::proto::table::arb::{bytes as longstr, shortstr, table};
    use proptest::prelude::*;

    pub fn bit() -> impl Strategy<Value = bool> {
        any::<bool>()
    }
    pub fn octet() -> impl Strategy<Value = u8> {
        any::<u8>()
    }
    pub fn short() -> impl Strategy<Value = u16> {
        any::<u16>()
    }
    pub fn long() -> impl Strategy<Value = u32> {
        any::<u32>()
    }
    pub fn longlong() -> impl Strategy<Value = u64> {
        any::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::table::FieldValue;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use std::collections::HashSet;

    fn encoded(method: &Method) -> BytesMut {
        let mut out = BytesMut::new();
        method.encode(&mut out);
        out
    }

    #[test]
    fn the_table_covers_every_method_once() {
        let strategies = method_strategies();
        assert_eq!(strategies.len(), 66);
        let names: HashSet<_> = strategies.iter().map(|(name, _)| *name).collect();
        assert_eq!(names.len(), strategies.len());
        assert_eq!(method_name(40, 51), Some("exchange.unbind-ok"));
        assert_eq!(method_name(40, 41), None);
        assert_eq!(method_name(10, 71), Some("connection.update-secret-ok"));
        assert_eq!(method_name(85, 11), Some("confirm.select-ok"));
        assert_eq!(method_name(99, 10), None);
    }

    /// Every method, each with its own arbitrary arguments: encode, decode, compare.
    #[test]
    fn every_method_round_trips() {
        for (name, strategy) in method_strategies() {
            let mut runner = TestRunner::new(Config {
                cases: 64,
                ..Config::default()
            });
            let result = runner.run(&strategy, |method| {
                prop_assert_eq!(method.name(), name);
                prop_assert_eq!(
                    method_name(method.class_id(), method.method_id()),
                    Some(name)
                );
                let bytes = encoded(&method);
                let decoded = Method::decode(&bytes)?;
                prop_assert_eq!(&decoded, &method);
                prop_assert_eq!(encoded(&decoded), bytes.clone());
                // Cutting the payload anywhere inside the arguments is an error.
                for end in 0..bytes.len() {
                    if Method::decode(&bytes[..end]).is_ok() {
                        return Err(TestCaseError::fail(format!("prefix {end} decoded")));
                    }
                }
                Ok(())
            });
            if let Err(error) = result {
                panic!("{name}: {error}");
            }
        }
    }

    #[test]
    fn content_methods() {
        let with_content: Vec<_> = method_strategies()
            .into_iter()
            .filter_map(|(name, strategy)| {
                let mut runner = TestRunner::deterministic();
                let method = strategy.new_tree(&mut runner).ok()?.current();
                method.has_content().then_some(name)
            })
            .collect();
        assert_eq!(
            with_content,
            [
                "basic.publish",
                "basic.return",
                "basic.deliver",
                "basic.get-ok"
            ]
        );
    }

    #[test]
    fn connection_tune_bytes() {
        let method = Method::ConnectionTune(ConnectionTune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        });
        let expected: &[u8] = &[0, 10, 0, 30, 0x07, 0xff, 0, 2, 0, 0, 0, 60];
        assert_eq!(&encoded(&method)[..], expected);
        assert_eq!(Method::decode(expected), Ok(method));
    }

    #[test]
    fn basic_publish_bytes() {
        let method: Method = BasicPublish {
            ticket: 0,
            exchange: "ex".into(),
            routing_key: "rk".into(),
            mandatory: true,
            immediate: false,
        }
        .into();
        let expected: &[u8] = &[
            0, 60, 0, 40, // basic.publish
            0, 0, // ticket
            2, b'e', b'x', // exchange
            2, b'r', b'k', // routing key
            0b01, // mandatory (bit 0), immediate (bit 1)
        ];
        assert_eq!(&encoded(&method)[..], expected);
        assert_eq!(Method::decode(expected), Ok(method));
        let immediate = [&expected[..12], &[0b10]].concat();
        assert!(matches!(
            Method::decode(&immediate),
            Ok(Method::BasicPublish(BasicPublish {
                mandatory: false,
                immediate: true,
                ..
            }))
        ));
    }

    #[test]
    fn queue_declare_packs_five_bits_before_the_table() {
        let method: Method = QueueDeclare {
            ticket: 0,
            queue: "q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: true,
            nowait: true,
            arguments: [("x-max-length", FieldValue::I64(5))].into_iter().collect(),
        }
        .into();
        let mut expected = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0b11010];
        expected.extend_from_slice(&[0, 0, 0, 22, 12]);
        expected.extend_from_slice(b"x-max-length");
        expected.extend_from_slice(&[b'l', 0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(&encoded(&method)[..], &expected[..]);
        assert_eq!(Method::decode(&expected), Ok(method));
    }

    #[test]
    fn basic_deliver_bit_between_fields() {
        let method: Method = BasicDeliver {
            consumer_tag: "c".into(),
            delivery_tag: 3,
            redelivered: true,
            exchange: String::new(),
            routing_key: "q".into(),
        }
        .into();
        let expected: &[u8] = &[0, 60, 0, 60, 1, b'c', 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 1, b'q'];
        assert_eq!(&encoded(&method)[..], expected);
        assert_eq!(Method::decode(expected), Ok(method));
    }

    #[test]
    fn more_than_eight_bits_spill_into_a_second_octet() {
        let bits = [
            true, false, true, true, false, false, true, false, false, true,
        ];
        let mut out = BytesMut::new();
        let mut w = ArgWriter::new(&mut out);
        for bit in &bits {
            w.bit(bit);
        }
        w.short(&0x0102);
        w.bit(&true);
        w.finish();
        assert_eq!(&out[..], &[0b0100_1101, 0b10, 1, 2, 1]);
        let mut r = ArgReader::new(Reader::new(&out));
        for bit in bits {
            assert_eq!(r.bit(), Ok(bit));
        }
        assert_eq!(r.short(), Ok(0x0102));
        assert_eq!(r.bit(), Ok(true));
        assert_eq!(r.short(), Err(DecodeError::Truncated));
    }

    #[test]
    fn decode_errors() {
        assert_eq!(
            Method::decode(&[0, 99, 0, 10]),
            Err(DecodeError::UnknownClass(99))
        );
        assert_eq!(
            Method::decode(&[0, 60, 0, 41]),
            Err(DecodeError::UnknownMethod {
                class_id: 60,
                method_id: 41
            })
        );
        assert_eq!(Method::decode(&[0, 60, 0]), Err(DecodeError::Truncated));
        // connection.tune missing its heartbeat.
        assert_eq!(
            Method::decode(&[0, 10, 0, 30, 0, 1, 0, 0, 16, 0]),
            Err(DecodeError::Truncated)
        );
        // basic.consume whose queue name is not UTF-8.
        assert_eq!(
            Method::decode(&[0, 60, 0, 20, 0, 0, 1, 0xff]),
            Err(DecodeError::BadUtf8)
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert_eq!(
            Method::decode(&[0, 90, 0, 10, 0xde, 0xad]),
            Err(DecodeError::Trailing(2))
        );
        // After a final octet of bits.
        assert_eq!(
            Method::decode(&[0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 9, 1, 0xff]),
            Err(DecodeError::Trailing(1))
        );
        assert_eq!(
            Method::decode(&[0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 9, 1]),
            Ok(Method::BasicAck(BasicAck {
                delivery_tag: 9,
                multiple: true
            }))
        );
    }

    proptest! {
        /// Any method with bytes after its arguments is refused, whatever they are.
        #[test]
        fn any_method_with_trailing_bytes_is_refused(
            (_, method) in proptest::sample::select(method_strategies())
                .prop_flat_map(|(name, strategy)| (Just(name), strategy)),
            junk in proptest::collection::vec(any::<u8>(), 1..8),
        ) {
            let mut bytes = BytesMut::new();
            method.encode(&mut bytes);
            bytes.extend_from_slice(&junk);
            prop_assert_eq!(Method::decode(&bytes), Err(DecodeError::Trailing(junk.len())));
        }
    }

    /// A known class and method id followed by random argument bytes.
    fn plausible_payload() -> impl Strategy<Value = Vec<u8>> {
        let ids: Vec<(u16, u16)> = (0..=u16::MAX / 256)
            .flat_map(|c| (0..=130).map(move |m| (c, m)))
            .filter(|&(c, m)| method_name(c, m).is_some())
            .collect();
        (
            proptest::sample::select(ids),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|((class_id, method_id), args)| {
                let mut payload = Vec::new();
                payload.extend_from_slice(&class_id.to_be_bytes());
                payload.extend_from_slice(&method_id.to_be_bytes());
                payload.extend_from_slice(&args);
                payload
            })
    }

    proptest! {
        #[test]
        fn random_payloads_never_panic(payload in plausible_payload()) {
            if let Ok(method) = Method::decode(&payload) {
                prop_assert_eq!(Method::decode(&encoded(&method)), Ok(method));
            }
        }
    }
}
