//! Field tables: the typed key/value maps carried by `arguments`, `client-properties`,
//! message `headers` and the like.
//!
//! The value types are those of RabbitMQ's errata to 0-9-1 (which every client library
//! follows), not the spec's original list: `s` is a signed short, `l` a signed long long,
//! `x` a byte array, and there is no unsigned long long.
//!
//! A [`FieldTable`] keeps entries in wire order, duplicates included, so that decoding then
//! encoding gives back the same bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{self, DecodeError, Reader};
use super::shortstr::ShortStr;

/// How deeply tables and arrays may nest: a top-level table is depth 1, a table inside it
/// depth 2, and so on. Decoding anything deeper fails with [`DecodeError::TooDeep`], which
/// bounds the decoder's recursion whatever the input.
pub const MAX_FIELD_DEPTH: usize = 32;

/// A decimal: `value / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decimal {
    /// Number of decimal digits after the point.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// One typed value in a field table or field array.
#[derive(Debug, Clone)]
pub enum FieldValue {
    /// `t`: a boolean octet.
    Bool(bool),
    /// `b`: a signed octet.
    I8(i8),
    /// `B`: an unsigned octet.
    U8(u8),
    /// `s`: a signed short (RabbitMQ errata).
    I16(i16),
    /// `u`: an unsigned short.
    U16(u16),
    /// `I`: a signed long.
    I32(i32),
    /// `i`: an unsigned long.
    U32(u32),
    /// `l`: a signed long long.
    I64(i64),
    /// `f`: an IEEE-754 single.
    F32(f32),
    /// `d`: an IEEE-754 double.
    F64(f64),
    /// `D`: a decimal.
    Decimal(Decimal),
    /// `S`: a long string (any bytes; usually UTF-8).
    LongStr(Bytes),
    /// `A`: an array of values.
    Array(Vec<FieldValue>),
    /// `T`: a timestamp in seconds since the epoch.
    Timestamp(u64),
    /// `F`: a nested table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
    /// `x`: a byte array.
    Bytes(Bytes),
}

/// Floats compare by bit pattern, so a NaN equals itself and a decoded value equals the
/// value that was encoded. This makes `Eq` sound.
impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        use FieldValue::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a == b,
            (I8(a), I8(b)) => a == b,
            (U8(a), U8(b)) => a == b,
            (I16(a), I16(b)) => a == b,
            (U16(a), U16(b)) => a == b,
            (I32(a), I32(b)) => a == b,
            (U32(a), U32(b)) => a == b,
            (I64(a), I64(b)) => a == b,
            (F32(a), F32(b)) => a.to_bits() == b.to_bits(),
            (F64(a), F64(b)) => a.to_bits() == b.to_bits(),
            (Decimal(a), Decimal(b)) => a == b,
            (LongStr(a), LongStr(b)) => a == b,
            (Array(a), Array(b)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Table(a), Table(b)) => a == b,
            (Void, Void) => true,
            (Bytes(a), Bytes(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for FieldValue {}

/// Hashes agree with `PartialEq`: the type, then the value, floats by bit pattern.
impl std::hash::Hash for FieldValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        use FieldValue::*;
        self.type_tag().hash(state);
        match self {
            Bool(v) => v.hash(state),
            I8(v) => v.hash(state),
            U8(v) => v.hash(state),
            I16(v) => v.hash(state),
            U16(v) => v.hash(state),
            I32(v) => v.hash(state),
            U32(v) => v.hash(state),
            I64(v) => v.hash(state),
            F32(v) => v.to_bits().hash(state),
            F64(v) => v.to_bits().hash(state),
            Decimal(d) => (d.scale, d.value).hash(state),
            LongStr(b) | Bytes(b) => b.hash(state),
            Array(values) => values.hash(state),
            Timestamp(v) => v.hash(state),
            Table(t) => t.hash(state),
            Void => {}
        }
    }
}

impl FieldValue {
    /// The type tag written before the value on the wire.
    pub fn type_tag(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal(_) => b'D',
            FieldValue::LongStr(_) => b'S',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
            FieldValue::Bytes(_) => b'x',
        }
    }

    /// The text of a long string, if it is one and is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    /// The value of any integer type, for arguments such as `x-max-length` that clients
    /// send with whatever width their language picks.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(i64::from(v)),
            FieldValue::U8(v) => Some(i64::from(v)),
            FieldValue::I16(v) => Some(i64::from(v)),
            FieldValue::U16(v) => Some(i64::from(v)),
            FieldValue::I32(v) => Some(i64::from(v)),
            FieldValue::U32(v) => Some(i64::from(v)),
            FieldValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// Writes the type tag and the value.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.type_tag());
        match self {
            FieldValue::Bool(v) => out.put_u8(u8::from(*v)),
            FieldValue::I8(v) => out.put_i8(*v),
            FieldValue::U8(v) => out.put_u8(*v),
            FieldValue::I16(v) => out.put_i16(*v),
            FieldValue::U16(v) => out.put_u16(*v),
            FieldValue::I32(v) => out.put_i32(*v),
            FieldValue::U32(v) => out.put_u32(*v),
            FieldValue::I64(v) => out.put_i64(*v),
            FieldValue::F32(v) => out.put_f32(*v),
            FieldValue::F64(v) => out.put_f64(*v),
            FieldValue::Decimal(d) => {
                out.put_u8(d.scale);
                out.put_u32(d.value);
            }
            FieldValue::LongStr(bytes) | FieldValue::Bytes(bytes) => codec::put_longstr(out, bytes),
            FieldValue::Array(values) => {
                let at = codec::begin_u32_len(out);
                for value in values {
                    value.encode(out);
                }
                codec::end_u32_len(out, at);
            }
            FieldValue::Timestamp(v) => out.put_u64(*v),
            FieldValue::Table(table) => table.encode(out),
            FieldValue::Void => {}
        }
    }

    /// Reads a type tag and its value. `depth` is that of the table or array holding it.
    fn read(r: &mut Reader<'_>, depth: usize) -> Result<Self, DecodeError> {
        let tag = r.u8()?;
        Ok(match tag {
            // RabbitMQ reads any non-zero octet as true; so do we.
            b't' => FieldValue::Bool(r.u8()? != 0),
            b'b' => FieldValue::I8(r.i8()?),
            b'B' => FieldValue::U8(r.u8()?),
            b's' => FieldValue::I16(r.i16()?),
            b'u' => FieldValue::U16(r.u16()?),
            b'I' => FieldValue::I32(r.i32()?),
            b'i' => FieldValue::U32(r.u32()?),
            b'l' => FieldValue::I64(r.i64()?),
            b'f' => FieldValue::F32(r.f32()?),
            b'd' => FieldValue::F64(r.f64()?),
            b'D' => FieldValue::Decimal(Decimal {
                scale: r.u8()?,
                value: r.u32()?,
            }),
            b'S' => FieldValue::LongStr(Bytes::copy_from_slice(r.longstr()?)),
            b'A' => FieldValue::Array(read_array(r, depth + 1)?),
            b'T' => FieldValue::Timestamp(r.u64()?),
            b'F' => FieldValue::Table(FieldTable::read_at_depth(r, depth + 1)?),
            b'V' => FieldValue::Void,
            b'x' => FieldValue::Bytes(Bytes::copy_from_slice(r.longstr()?)),
            other => return Err(DecodeError::BadFieldType(other)),
        })
    }
}

/// Reads a field array (32-bit byte length, then values) at nesting `depth`.
fn read_array(r: &mut Reader<'_>, depth: usize) -> Result<Vec<FieldValue>, DecodeError> {
    if depth > MAX_FIELD_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    // The whole array must be in the input before anything is decoded or allocated;
    // values are then pushed one at a time, so memory grows only with bytes present.
    let mut inner = Reader::new(r.longstr()?);
    let mut values = Vec::new();
    while !inner.is_empty() {
        values.push(FieldValue::read(&mut inner, depth)?);
    }
    Ok(values)
}

/// A field table: short-string keys to typed values, in wire order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FieldTable(Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    /// A table of entries whose keys are already distinct (a JSON object's, say), built in
    /// linear time; [`FromIterator`] checks every key against the ones before it.
    pub fn from_distinct(entries: Vec<(String, FieldValue)>) -> Self {
        debug_assert!(
            {
                let mut seen = std::collections::HashSet::new();
                entries.iter().all(|(k, _)| seen.insert(k.as_str()))
            },
            "keys are distinct"
        );
        FieldTable(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Whether an entry named `key` exists.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing the first existing entry of that name in place, or
    /// appending a new one.
    pub fn insert(&mut self, key: impl Into<ShortStr>, value: FieldValue) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => *slot = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes every entry named `key`, returning the first one's value.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let index = self.0.iter().position(|(k, _)| *k == key)?;
        let (_, value) = self.0.remove(index);
        self.0.retain(|(k, _)| *k != key);
        Some(value)
    }

    /// The entries in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&ShortStr, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Writes the table: a 32-bit byte length, then each key (short string) and value.
    pub fn encode(&self, out: &mut BytesMut) {
        let at = codec::begin_u32_len(out);
        for (key, value) in &self.0 {
            key.encode(out);
            value.encode(out);
        }
        codec::end_u32_len(out, at);
    }

    /// Decodes a table from the start of `buf`; bytes after it are ignored.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Self::read(&mut Reader::new(buf))
    }

    /// Reads a top-level table from `r`.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::read_at_depth(r, 1)
    }

    fn read_at_depth(r: &mut Reader<'_>, depth: usize) -> Result<Self, DecodeError> {
        if depth > MAX_FIELD_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let mut inner = Reader::new(r.longstr()?);
        let mut entries = Vec::new();
        while !inner.is_empty() {
            let key = ShortStr::read(&mut inner)?;
            let value = FieldValue::read(&mut inner, depth)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }
}

/// The largest encoded field table warren accepts where a table enters from outside a
/// frame that already bounds it: queue, exchange and binding arguments (over AMQP and
/// HTTP), message properties published over HTTP, definitions imports. With
/// [`MAX_FIELD_DEPTH`] it is the one limit every stored table keeps, so that the store
/// never holds a table it cannot read back.
pub const MAX_TABLE_BYTES: usize = 128 * 1024;

/// Why a table is refused by [`FieldTable::check_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableLimitError {
    /// Tables or arrays nest deeper than [`MAX_FIELD_DEPTH`].
    TooDeep,
    /// The encoded table is larger than [`MAX_TABLE_BYTES`].
    TooLarge,
}

impl std::fmt::Display for TableLimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableLimitError::TooDeep => write!(
                f,
                "field tables and arrays nested deeper than {MAX_FIELD_DEPTH} levels"
            ),
            TableLimitError::TooLarge => {
                write!(f, "field table larger than {MAX_TABLE_BYTES} bytes encoded")
            }
        }
    }
}

impl std::error::Error for TableLimitError {}

/// Encoded bytes of a value's type tag and payload, not counting nested values.
fn own_encoded_len(value: &FieldValue) -> usize {
    1 + match value {
        FieldValue::Bool(_) | FieldValue::I8(_) | FieldValue::U8(_) => 1,
        FieldValue::I16(_) | FieldValue::U16(_) => 2,
        FieldValue::I32(_) | FieldValue::U32(_) | FieldValue::F32(_) => 4,
        FieldValue::I64(_) | FieldValue::F64(_) | FieldValue::Timestamp(_) => 8,
        FieldValue::Decimal(_) => 5,
        FieldValue::LongStr(b) | FieldValue::Bytes(b) => 4 + b.len(),
        FieldValue::Array(_) | FieldValue::Table(_) => 4,
        FieldValue::Void => 0,
    }
}

impl FieldTable {
    /// Checks the limits every table that warren stores or routes on must keep: nesting of
    /// at most [`MAX_FIELD_DEPTH`] (what the decoder and the store read back) and at most
    /// [`MAX_TABLE_BYTES`] encoded. Iterative, and it stops as soon as a limit is passed,
    /// so its cost is bounded whatever the table (a table built from JSON can be deeper
    /// than any decoded one).
    pub fn check_limits(&self) -> Result<(), TableLimitError> {
        self.measure(MAX_TABLE_BYTES).map(|_| ())
    }

    /// The number of bytes [`FieldTable::encode`] writes. Iterative; a table deeper than
    /// [`MAX_FIELD_DEPTH`] still measures correctly.
    pub fn encoded_len(&self) -> usize {
        self.sizes().0
    }

    /// About the bytes the table takes in memory once decoded: what it encodes to, plus
    /// each value's place in its vector, which its encoding does not show (a void value
    /// in an array is 1 byte on the wire and a whole [`FieldValue`] in memory). What holds
    /// a message's headers is charged for this, so that tables of many small values are
    /// charged for what they take.
    pub fn held_len(&self) -> usize {
        let (encoded, values) = self.sizes();
        encoded.saturating_add(values.saturating_mul(std::mem::size_of::<(ShortStr, FieldValue)>()))
    }

    /// The encoded length, and how many values the table holds at every depth.
    fn sizes(&self) -> (usize, usize) {
        let mut total = 4;
        let mut values = 0;
        let mut stack: Vec<&FieldValue> = Vec::new();
        for (key, value) in &self.0 {
            total += key.encoded_len();
            stack.push(value);
        }
        while let Some(value) = stack.pop() {
            values += 1;
            total += own_encoded_len(value);
            match value {
                FieldValue::Array(values) => stack.extend(values.iter()),
                FieldValue::Table(table) => {
                    for (key, value) in &table.0 {
                        total += key.encoded_len();
                        stack.push(value);
                    }
                }
                _ => {}
            }
        }
        (total, values)
    }

    /// The encoded length, failing once it passes `max_bytes` or the nesting passes
    /// [`MAX_FIELD_DEPTH`].
    fn measure(&self, max_bytes: usize) -> Result<usize, TableLimitError> {
        let mut total = 4;
        // Values with the depth of the table or array holding them (the top table is 1).
        let mut stack: Vec<(&FieldValue, usize)> = Vec::new();
        for (key, value) in &self.0 {
            total += key.encoded_len();
            if total > max_bytes {
                return Err(TableLimitError::TooLarge);
            }
            stack.push((value, 1));
        }
        while let Some((value, depth)) = stack.pop() {
            total += own_encoded_len(value);
            if total > max_bytes {
                return Err(TableLimitError::TooLarge);
            }
            match value {
                FieldValue::Array(values) => {
                    if depth + 1 > MAX_FIELD_DEPTH {
                        return Err(TableLimitError::TooDeep);
                    }
                    stack.extend(values.iter().map(|v| (v, depth + 1)));
                }
                FieldValue::Table(table) => {
                    if depth + 1 > MAX_FIELD_DEPTH {
                        return Err(TableLimitError::TooDeep);
                    }
                    for (key, value) in &table.0 {
                        total += key.encoded_len();
                        if total > max_bytes {
                            return Err(TableLimitError::TooLarge);
                        }
                        stack.push((value, depth + 1));
                    }
                }
                _ => {}
            }
        }
        Ok(total)
    }
}

impl<K: Into<ShortStr>> FromIterator<(K, FieldValue)> for FieldTable {
    /// Collects entries with [`FieldTable::insert`]: a repeated key keeps its first position
    /// and its last value.
    fn from_iter<I: IntoIterator<Item = (K, FieldValue)>>(iter: I) -> Self {
        let mut table = FieldTable::new();
        for (key, value) in iter {
            table.insert(key, value);
        }
        table
    }
}

/// RabbitMQ's name for a field value's type, used in argument errors.
pub fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal(_) => "decimal",
        FieldValue::LongStr(_) => "longstr",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Void => "void",
        FieldValue::Bytes(_) => "binary",
    }
}

/// Proptest strategies for tables and values, shared by the other codec tests.
#[cfg(test)]
pub(crate) mod arb {
    use super::*;
    use proptest::prelude::*;

    /// Keys and short strings: any Unicode text that fits in 255 bytes.
    pub fn shortstr() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "\\PC{0,20}",
            1 => "\\PC{0,63}",
            1 => "[a-z]{255}",
        ]
    }

    pub fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn leaf() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<bool>().prop_map(FieldValue::Bool),
            any::<i8>().prop_map(FieldValue::I8),
            any::<u8>().prop_map(FieldValue::U8),
            any::<i16>().prop_map(FieldValue::I16),
            any::<u16>().prop_map(FieldValue::U16),
            any::<i32>().prop_map(FieldValue::I32),
            any::<u32>().prop_map(FieldValue::U32),
            any::<i64>().prop_map(FieldValue::I64),
            // Every bit pattern, so NaNs with payloads, infinities and -0.0 all appear.
            any::<u32>().prop_map(|b| FieldValue::F32(f32::from_bits(b))),
            any::<u64>().prop_map(|b| FieldValue::F64(f64::from_bits(b))),
            Just(FieldValue::F64(f64::NAN)),
            (any::<u8>(), any::<u32>())
                .prop_map(|(scale, value)| FieldValue::Decimal(Decimal { scale, value })),
            bytes().prop_map(FieldValue::LongStr),
            any::<u64>().prop_map(FieldValue::Timestamp),
            Just(FieldValue::Void),
            bytes().prop_map(FieldValue::Bytes),
        ]
    }

    pub fn value() -> impl Strategy<Value = FieldValue> {
        leaf().prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
                proptest::collection::vec((key(), inner), 0..6)
                    .prop_map(|entries| FieldValue::Table(FieldTable(entries))),
            ]
        })
    }

    /// Tables with possibly repeated keys, as a peer may send them.
    pub fn table() -> impl Strategy<Value = FieldTable> {
        proptest::collection::vec((key(), value()), 0..6).prop_map(FieldTable)
    }

    /// Table keys: text, or now and then any bytes (RabbitMQ takes those too).
    pub fn key() -> impl Strategy<Value = ShortStr> {
        prop_oneof![
            4 => shortstr().prop_map(ShortStr::from),
            1 => proptest::collection::vec(any::<u8>(), 0..=40).prop_map(|b| ShortStr::from(&b[..])),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(table: &FieldTable) -> BytesMut {
        let mut out = BytesMut::new();
        table.encode(&mut out);
        out
    }

    proptest! {
        #[test]
        fn table_round_trips(table in arb::table()) {
            let bytes = encoded(&table);
            prop_assert_eq!(FieldTable::decode(&bytes), Ok(table.clone()));
            // Wire order and duplicates are kept, so re-encoding is byte-identical.
            let again = FieldTable::decode(&bytes).map(|t| encoded(&t));
            prop_assert_eq!(again, Ok(bytes));
        }

        #[test]
        fn every_strict_prefix_fails_cleanly(table in arb::table()) {
            let bytes = encoded(&table);
            for end in 0..bytes.len() {
                prop_assert!(FieldTable::decode(&bytes[..end]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(table) = FieldTable::decode(&bytes) {
                prop_assert_eq!(FieldTable::decode(&encoded(&table)), Ok(table));
            }
        }
    }

    #[test]
    fn rabbitmq_encoding_of_s_l_x_and_friends() {
        let table: FieldTable = [
            ("s", FieldValue::I16(-2)),
            ("l", FieldValue::I64(0x0102_0304_0506_0708)),
            ("x", FieldValue::Bytes(Bytes::from_static(b"\x00\xff"))),
            ("S", FieldValue::LongStr(Bytes::from_static(b"hi"))),
            ("t", FieldValue::Bool(true)),
            ("i", FieldValue::U32(7)),
            ("D", FieldValue::Decimal(Decimal { scale: 2, value: 5 })),
            ("V", FieldValue::Void),
        ]
        .into_iter()
        .collect();
        let expected: &[u8] = &[
            0, 0, 0, 56, // table length
            1, b's', b's', 0xff, 0xfe, // signed short -2
            1, b'l', b'l', 1, 2, 3, 4, 5, 6, 7, 8, // signed long long
            1, b'x', b'x', 0, 0, 0, 2, 0x00, 0xff, // byte array
            1, b'S', b'S', 0, 0, 0, 2, b'h', b'i', // long string
            1, b't', b't', 1, // boolean
            1, b'i', b'i', 0, 0, 0, 7, // unsigned long
            1, b'D', b'D', 2, 0, 0, 0, 5, // decimal
            1, b'V', b'V', // void
        ];
        assert_eq!(&encoded(&table)[..], expected);
        assert_eq!(FieldTable::decode(expected), Ok(table));
    }

    #[test]
    fn nested_table_and_array_bytes() {
        let inner: FieldTable = [("a", FieldValue::U8(1))].into_iter().collect();
        let table: FieldTable = [(
            "n",
            FieldValue::Array(vec![FieldValue::Table(inner), FieldValue::I8(-1)]),
        )]
        .into_iter()
        .collect();
        let expected: &[u8] = &[
            0, 0, 0, 18, // outer table
            1, b'n', b'A', 0, 0, 0, 11, // array of 11 bytes
            b'F', 0, 0, 0, 4, 1, b'a', b'B', 1, // nested table
            b'b', 0xff, // signed octet
        ];
        assert_eq!(&encoded(&table)[..], expected);
        assert_eq!(FieldTable::decode(expected), Ok(table));
    }

    /// A table holding `levels - 1` nested tables: `levels` tables deep in all.
    fn nested_tables(levels: usize) -> FieldTable {
        let mut table = FieldTable::new();
        for _ in 1..levels {
            table = [("k", FieldValue::Table(table))].into_iter().collect();
        }
        table
    }

    /// A table holding arrays nested `levels - 1` deep.
    fn nested_arrays(levels: usize) -> FieldTable {
        let mut value = FieldValue::Array(Vec::new());
        for _ in 2..levels {
            value = FieldValue::Array(vec![value]);
        }
        [("k", value)].into_iter().collect()
    }

    #[test]
    fn depth_limit_is_exact() {
        for deep in [nested_tables, nested_arrays] {
            let at_limit = deep(MAX_FIELD_DEPTH);
            assert_eq!(FieldTable::decode(&encoded(&at_limit)), Ok(at_limit));
            let over = encoded(&deep(MAX_FIELD_DEPTH + 1));
            assert_eq!(FieldTable::decode(&over), Err(DecodeError::TooDeep));
        }
        // Far deeper than the limit: still an error, not a stack overflow.
        // Each level is a length, then key "k" and tag 'F'; the innermost table is empty.
        let levels: u32 = 100_000;
        let mut bytes = Vec::new();
        for level in (1..=levels).rev() {
            bytes.extend_from_slice(&(7 * level).to_be_bytes());
            bytes.extend_from_slice(&[1, b'k', b'F']);
        }
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(FieldTable::decode(&bytes), Err(DecodeError::TooDeep));
    }

    #[test]
    fn limits_match_what_the_decoder_reads_back() {
        for deep in [nested_tables, nested_arrays] {
            let at_limit = deep(MAX_FIELD_DEPTH);
            assert_eq!(at_limit.check_limits(), Ok(()));
            assert_eq!(at_limit.encoded_len(), encoded(&at_limit).len());
            let over = deep(MAX_FIELD_DEPTH + 1);
            assert_eq!(over.check_limits(), Err(TableLimitError::TooDeep));
            assert!(FieldTable::decode(&encoded(&over)).is_err());
        }
        let big: FieldTable = [(
            "k",
            FieldValue::LongStr(Bytes::from(vec![b'x'; MAX_TABLE_BYTES - 10])),
        )]
        .into_iter()
        .collect();
        // 4 (table) + 2 (key) + 1 (tag) + 4 (length) + the bytes.
        assert_eq!(big.encoded_len(), MAX_TABLE_BYTES + 1);
        assert_eq!(big.check_limits(), Err(TableLimitError::TooLarge));
    }

    proptest! {
        #[test]
        fn encoded_len_is_exact(table in arb::table()) {
            prop_assert_eq!(table.encoded_len(), encoded(&table).len());
            prop_assert_eq!(table.check_limits(), Ok(()));
        }
    }

    #[test]
    fn malformed_tables_give_the_right_error() {
        // Declared length larger than the input.
        assert_eq!(
            FieldTable::decode(&[0, 0, 0, 10, 1, b'a', b'V']),
            Err(DecodeError::Truncated)
        );
        // A value running past the table's own declared end.
        assert_eq!(
            FieldTable::decode(&[0, 0, 0, 3, 1, b'a', b'I', 0, 0, 0, 1]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            FieldTable::decode(&[0, 0, 0, 3, 1, b'a', b'Z']),
            Err(DecodeError::BadFieldType(b'Z'))
        );
        assert_eq!(FieldTable::decode(&[0, 0]), Err(DecodeError::Truncated));
    }

    #[test]
    fn keys_that_are_not_utf8_are_kept() {
        let bytes = [0, 0, 0, 4, 2, 0xff, 0xfe, b'V'];
        let table = FieldTable::decode(&bytes).expect("a key is any short string");
        let keys: Vec<&[u8]> = table.iter().map(|(k, _)| k.as_bytes()).collect();
        assert_eq!(keys, [&b"\xff\xfe"[..]]);
        assert_eq!(&encoded(&table)[..], &bytes[..]);
    }

    #[test]
    fn tables_of_small_values_are_held_at_their_decoded_size() {
        // 40,000 voids in an array: 40,005 bytes on the wire (under the 128 KiB limit).
        let mut t = FieldTable::new();
        t.insert("", FieldValue::Array(vec![FieldValue::Void; 40_000]));
        assert!(t.check_limits().is_ok());
        let per_value = std::mem::size_of::<FieldValue>();
        assert!(t.encoded_len() < 41_000);
        assert!(
            t.held_len() >= 40_000 * per_value,
            "{} bytes held for 40,000 values of {per_value} bytes",
            t.held_len()
        );
        // A table of a few long strings is held at about its encoded size.
        let mut big = FieldTable::new();
        big.insert("k", FieldValue::LongStr(vec![7u8; 100_000].into()));
        assert!(big.held_len() < big.encoded_len() + 200);
    }

    #[test]
    fn floats_compare_by_bits() {
        assert_eq!(FieldValue::F32(f32::NAN), FieldValue::F32(f32::NAN));
        assert_ne!(FieldValue::F64(0.0), FieldValue::F64(-0.0));
        assert_ne!(FieldValue::I32(1), FieldValue::U32(1));
    }

    #[test]
    fn accessors() {
        let mut table = FieldTable::new();
        assert!(table.is_empty());
        table.insert("x-max-length", FieldValue::I16(10));
        table.insert("x-queue-type", FieldValue::LongStr(Bytes::from("quorum")));
        table.insert("flag", FieldValue::Bool(true));
        table.insert("x-max-length", FieldValue::U32(20));
        assert_eq!(table.len(), 3);
        assert_eq!(
            table.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["x-max-length", "x-queue-type", "flag"]
        );
        assert_eq!(
            table.get("x-max-length").and_then(FieldValue::as_i64),
            Some(20)
        );
        assert_eq!(
            table.get("x-queue-type").and_then(FieldValue::as_str),
            Some("quorum")
        );
        assert_eq!(table.get("flag").and_then(FieldValue::as_bool), Some(true));
        assert_eq!(FieldValue::I64(-5).as_i64(), Some(-5));
        assert_eq!(FieldValue::F64(1.0).as_i64(), None);
        assert_eq!(
            FieldValue::LongStr(Bytes::from_static(b"\xff")).as_str(),
            None
        );
        assert_eq!(table.remove("flag"), Some(FieldValue::Bool(true)));
        assert!(!table.contains_key("flag"));
        assert_eq!(table.get("missing"), None);
    }
}
