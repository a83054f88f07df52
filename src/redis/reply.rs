//! Parsers of Redis replies, by value: payloads move out of the reply
//! uncopied, and positional replies are read in order with an iterator.

use ::redis::Value;

/// The items of an array or set reply; empty for anything else.
pub fn seq(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

/// The bytes of a string-like reply (numbers as their decimal text).
pub fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        Value::Double(d) => Some(d.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

/// Text from a reply; bytes that are not UTF-8 become U+FFFD.
pub fn string(value: Value) -> Option<String> {
    bytes(value).map(|b| String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// An integer reply, or a string holding one (Lua scripts return either).
pub fn int(value: Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(i),
        Value::BulkString(b) => std::str::from_utf8(&b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A non-negative integer reply.
pub fn count(value: Value) -> Option<u64> {
    int(value).and_then(|i| u64::try_from(i).ok())
}

/// Field/value pairs from a flat array (RESP2) or a map (RESP3). Values are
/// kept byte-exact; a field name that is not UTF-8 is made text with U+FFFD
/// (names are header names, and headers are text).
pub fn fields(value: Value) -> Vec<(String, Vec<u8>)> {
    let pair = |k: Value, v: Value| Some((string(k)?, bytes(v).unwrap_or_default()));
    match value {
        Value::Map(pairs) => pairs.into_iter().filter_map(|(k, v)| pair(k, v)).collect(),
        other => {
            let items = seq(other);
            let mut fields = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                fields.extend(pair(k, v));
            }
            fields
        }
    }
}

/// One entry of `XINFO GROUPS`. `entries_read` and `lag` are NULL when Redis
/// cannot tell (a group created at an arbitrary ID, entries deleted or trimmed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupInfo {
    pub name: String,
    pub consumers: u64,
    pub pending: u64,
    pub entries_read: Option<u64>,
    pub lag: Option<u64>,
    pub last_delivered_id: String,
}

/// The groups of an `XINFO GROUPS` reply.
pub fn groups(value: Value) -> Vec<GroupInfo> {
    seq(value)
        .into_iter()
        .map(|g| {
            let mut info = GroupInfo::default();
            let number = |v: &[u8]| std::str::from_utf8(v).ok()?.parse().ok();
            for (field, v) in fields(g) {
                match field.as_str() {
                    "name" => info.name = String::from_utf8_lossy(&v).into_owned(),
                    "consumers" => info.consumers = number(&v).unwrap_or(0),
                    "pending" => info.pending = number(&v).unwrap_or(0),
                    "entries-read" => info.entries_read = number(&v),
                    "lag" => info.lag = number(&v),
                    "last-delivered-id" => info.last_delivered_id = String::from_utf8_lossy(&v).into_owned(),
                    _ => {}
                }
            }
            info
        })
        .collect()
}
