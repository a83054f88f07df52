//! Parsers of Redis replies, by value: payloads move out of the reply
//! uncopied, and positional replies are read in order with an iterator.

use ::redis::Value;

use super::stream::StreamEntry;

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

/// Parses `[[id, [f, v, …]], …]`. An entry with a nil body (its data was
/// trimmed away) goes to `deleted`; a nil in place of a whole entry carries
/// no id and is dropped.
pub fn entries(value: Value, out: &mut Vec<StreamEntry>, deleted: &mut Vec<String>) {
    let entries = seq(value);
    out.reserve(entries.len());
    for entry in entries {
        let mut parts = seq(entry).into_iter();
        let Some(id) = parts.next().and_then(string) else {
            continue;
        };
        match parts.next() {
            None | Some(Value::Nil) => deleted.push(id),
            Some(body) => out.push(StreamEntry {
                id,
                fields: fields(body),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_entries_with_nil_bodies_as_deleted() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("data"), bulk("x"), bulk("h"), bulk("y")]),
            ]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
            Value::Nil,
        ]);
        let (mut out, mut deleted) = (Vec::new(), Vec::new());
        entries(reply, &mut out, &mut deleted);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data(), b"x");
        assert_eq!(out[0].headers().collect::<Vec<_>>(), vec![("h", &b"y"[..])]);
        assert_eq!(deleted, vec!["2-0".to_owned()]);
    }

    #[test]
    fn keeps_values_byte_exact_and_makes_names_text() {
        let payload: Vec<u8> = vec![0xff, 0x00, 0xc3, 0x28, b'\n'];
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![
                    bulk("data"),
                    Value::BulkString(payload.clone()),
                    Value::BulkString(b"h\xff".to_vec()),
                    bulk("v"),
                ]),
            ]),
            // No data field at all.
            Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("only"), bulk("header")])]),
            // RESP3 shape.
            Value::Array(vec![bulk("3-0"), Value::Map(vec![(bulk("data"), bulk("m"))])]),
        ]);
        let (mut out, mut deleted) = (Vec::new(), Vec::new());
        entries(reply, &mut out, &mut deleted);
        assert!(deleted.is_empty());
        assert_eq!(out[0].data(), payload.as_slice());
        assert_eq!(out[0].headers().collect::<Vec<_>>(), vec![("h\u{fffd}", &b"v"[..])]);
        assert_eq!(out[1].data(), b"");
        assert_eq!(out[1].field("data"), None);
        assert_eq!(out[1].headers().collect::<Vec<_>>(), vec![("only", &b"header"[..])]);
        assert_eq!(out[2].data(), b"m");
    }
}
