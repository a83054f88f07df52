//! The stream commands of the worker runtime and the producer.
//!
//! Everything here must work for the restricted consumer ACL user the
//! operator creates: `XREADGROUP`, `XACK`, `XAUTOCLAIM`, `XCLAIM`, `XPENDING`,
//! `XINFO`, `XGROUP CREATECONSUMER|DELCONSUMER` on the stream, `XADD` on the
//! dead-letter stream only, `HINCRBY`/`HSET`/`HGETALL` on the stats hash,
//! `MULTI`/`EXEC`, `PING`, `HELLO`, `AUTH`, `CLIENT SETNAME`. So: no
//! `XRANGE`, no `EVAL`, no `XADD` on the main stream from a worker.

use std::{collections::HashMap, time::Duration};

use ::redis::{RedisError, RedisResult, Value, aio::MultiplexedConnection};

use super::{Error, connection, keys, reply};

/// The errors of a command on `stream` for `group`: a missing group is named as such.
fn command_error(command: &'static str, stream: &str, group: &str, source: RedisError) -> Error {
    match source.code() {
        Some("NOGROUP") => Error::NoGroup {
            stream: stream.to_owned(),
            group: group.to_owned(),
        },
        _ => Error::classify(source, command, None),
    }
}

/// One stream entry: its id and its fields in stream order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl StreamEntry {
    /// The payload: the `data` field, empty when absent.
    pub fn data(&self) -> &[u8] {
        self.field(keys::DATA_FIELD).unwrap_or_default()
    }

    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    /// Every field except the payload: the message's headers.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .filter(|(k, _)| k != keys::DATA_FIELD)
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// What one `XAUTOCLAIM` call returned.
#[derive(Debug, Default)]
pub struct AutoClaimed {
    /// Where the next scan starts; `0-0` when the scan is complete.
    pub next_start: String,
    /// Entries now owned by the calling consumer, with their bodies.
    pub entries: Vec<StreamEntry>,
    /// Pending ids whose entries were trimmed away: XAUTOCLAIM lists them
    /// apart (Redis 7) or as an entry with a nil body (Redis 6.2).
    pub deleted: Vec<String>,
}

/// Opens a worker's or producer's connection named `client_name`.
/// `response_timeout` must exceed any `BLOCK` the connection will be used for.
pub async fn connect(url: &str, client_name: &str, response_timeout: Duration) -> Result<MultiplexedConnection, Error> {
    let options = connection::Options {
        client_name: Some(client_name),
        connect_timeout: Duration::from_secs(5),
        response_timeout,
    };
    Ok(connection::open(url, options).await?.0)
}

/// Fails unless `group` exists on `stream`, naming what is missing, and
/// registers `consumer` in it so that it shows in `XINFO CONSUMERS` even
/// before its first read.
pub async fn check_group(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Result<(), Error> {
    let groups: RedisResult<Value> = ::redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await;
    let groups = match groups {
        Ok(v) => v,
        Err(e) if e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("no such key")) => {
            return Err(Error::NoStream {
                stream: stream.to_owned(),
                group: group.to_owned(),
            });
        }
        Err(e) => return Err(command_error("XINFO GROUPS", stream, group, e)),
    };
    let found = reply::groups(groups).iter().any(|g| g.name == group);
    if !found {
        return Err(Error::NoGroup {
            stream: stream.to_owned(),
            group: group.to_owned(),
        });
    }
    ::redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .query_async::<()>(conn)
        .await
        .map_err(|e| command_error("XGROUP CREATECONSUMER", stream, group, e))
}

/// `XREADGROUP GROUP group consumer COUNT count BLOCK block STREAMS stream >`:
/// up to `count` never-delivered entries, waiting at most `block` for one.
pub async fn read_group(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
    block: Duration,
) -> Result<Vec<StreamEntry>, Error> {
    let reply: Value = ::redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count.max(1))
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .map_err(|e| command_error("XREADGROUP", stream, group, e))?;
    // RESP2: [[key, entries]]; RESP3: {key: entries}; nil on timeout.
    // Parsed by value: the payloads move into the entries, uncopied.
    let mut out = Vec::new();
    match reply {
        Value::Nil => {}
        Value::Map(pairs) => {
            for (_, entries) in pairs {
                parse_entries(entries, &mut out, &mut Vec::new());
            }
        }
        other => {
            for per_key in reply::seq(other) {
                if let Some(entries) = reply::seq(per_key).into_iter().nth(1) {
                    parse_entries(entries, &mut out, &mut Vec::new());
                }
            }
        }
    }
    Ok(out)
}

/// `XAUTOCLAIM stream group consumer min_idle start COUNT count`: takes over
/// entries other (probably dead) consumers left idle for `min_idle`.
/// Each claimed entry's delivery count goes up by one.
pub async fn auto_claim(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    start: &str,
    count: usize,
) -> Result<AutoClaimed, Error> {
    let reply: Value = ::redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg(start)
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(conn)
        .await
        .map_err(|e| command_error("XAUTOCLAIM", stream, group, e))?;
    let mut parts = reply::seq(reply).into_iter();
    let Some(next_start) = parts.next().and_then(reply::string) else {
        return Err(Error::Reply {
            command: "XAUTOCLAIM",
            detail: "no cursor where the reply begins".into(),
        });
    };
    let mut claimed = AutoClaimed {
        next_start,
        ..AutoClaimed::default()
    };
    if let Some(entries) = parts.next() {
        parse_entries(entries, &mut claimed.entries, &mut claimed.deleted);
    }
    if let Some(deleted) = parts.next() {
        claimed
            .deleted
            .extend(reply::seq(deleted).into_iter().filter_map(reply::string));
    }
    Ok(claimed)
}

/// The delivery count of each of `ids` in `consumer`'s pending list, from
/// one pipeline of `XPENDING stream group id id 1 consumer` (XAUTOCLAIM does
/// not report them). Ids no longer pending for `consumer` are absent.
pub async fn delivery_counts(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
    ids: &[&str],
) -> Result<HashMap<String, u64>, Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut pipe = ::redis::pipe();
    for id in ids {
        pipe.cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg(*id)
            .arg(*id)
            .arg(1)
            .arg(consumer);
    }
    let replies: Vec<Value> = pipe
        .query_async(conn)
        .await
        .map_err(|e| command_error("XPENDING", stream, group, e))?;
    let mut counts = HashMap::with_capacity(ids.len());
    for pending in replies.into_iter().flat_map(reply::seq) {
        // [id, consumer, idle ms, delivery count]
        let mut row = reply::seq(pending).into_iter();
        if let (Some(id), Some(n)) = (row.next().and_then(reply::string), row.nth(2).and_then(reply::int)) {
            counts.insert(id, n.max(0) as u64);
        }
    }
    Ok(counts)
}

/// Per-consumer accounting that rides along with the acks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub processed: u64,
    pub busy_us: u64,
}

/// Ids per `XACK` command: long enough to amortise the command, short
/// enough not to stall the server for other clients.
const MAX_IDS_PER_XACK: usize = 1024;

/// Acknowledges `ids` and adds `stats` to the consumer's fields of the stats
/// hash, in one round trip: `XACK stream group ids…` (one per 1024 ids);
/// `HINCRBY processed; HINCRBY busy_us`. Returns how many ids were still
/// pending (the rest were acked already, e.g. by a consumer that took them
/// over).
pub async fn ack_with_stats(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
    ids: &[&str],
    stats: Stats,
) -> Result<u64, Error> {
    let mut pipe = ::redis::pipe();
    for chunk in ids.chunks(MAX_IDS_PER_XACK) {
        pipe.cmd("XACK").arg(stream).arg(group).arg(chunk);
    }
    let stats_key = keys::stats_key(stream, group);
    if stats.processed > 0 {
        pipe.cmd("HINCRBY")
            .arg(&stats_key)
            .arg(keys::stats_processed_field(consumer))
            .arg(stats.processed)
            .ignore();
    }
    if stats.busy_us > 0 {
        pipe.cmd("HINCRBY")
            .arg(&stats_key)
            .arg(keys::stats_busy_field(consumer))
            .arg(stats.busy_us)
            .ignore();
    }
    if pipe.is_empty() {
        return Ok(0);
    }
    let replies: Vec<Value> = pipe
        .query_async(conn)
        .await
        .map_err(|e| command_error("XACK/HINCRBY", stream, group, e))?;
    // Only the XACK replies are kept (the HINCRBYs are ignored).
    Ok(replies
        .iter()
        .map(|r| match r {
            Value::Int(n) => (*n).max(0) as u64,
            _ => 0,
        })
        .sum())
}

/// Why an entry is being dead-lettered, recorded beside its fields.
#[derive(Clone, Debug)]
pub struct DeadLetter<'a> {
    pub dead_letter_stream: &'a str,
    pub deliveries: u64,
    pub error: &'a str,
}

/// Moves `entry` to the dead-letter stream atomically: `MULTI; XADD dlq *
/// <original fields> streamq.original-id … streamq.error …; XACK; EXEC`.
/// The fields come from the read or claim reply, since the consumer user may
/// not `XRANGE` and may not `EVAL`.
pub async fn dead_letter(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    entry: &StreamEntry,
    why: &DeadLetter<'_>,
) -> Result<String, Error> {
    let mut xadd = ::redis::cmd("XADD");
    xadd.arg(why.dead_letter_stream).arg("*");
    for (k, v) in &entry.fields {
        // A re-dead-lettered entry (replayed from a DLQ) gets fresh metadata.
        if is_dead_letter_field(k) {
            continue;
        }
        xadd.arg(k).arg(v.as_slice());
    }
    xadd.arg(keys::DLQ_ORIGINAL_ID)
        .arg(&entry.id)
        .arg(keys::DLQ_DELIVERIES)
        .arg(why.deliveries)
        .arg(keys::DLQ_GROUP)
        .arg(group)
        .arg(keys::DLQ_ERROR)
        .arg(why.error);
    let mut pipe = ::redis::pipe();
    pipe.atomic()
        .add_command(xadd)
        .cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(&entry.id)
        .ignore();
    let (dead_id,): (String,) = pipe
        .query_async(conn)
        .await
        .map_err(|e| command_error("MULTI/XADD dead-letter/XACK/EXEC", stream, group, e))?;
    Ok(dead_id)
}

fn is_dead_letter_field(name: &str) -> bool {
    [
        keys::DLQ_ORIGINAL_ID,
        keys::DLQ_DELIVERIES,
        keys::DLQ_GROUP,
        keys::DLQ_ERROR,
    ]
    .contains(&name)
}

/// `XADD stream * field value…` for every message in one pipeline. One
/// result per message, in order: its new id or the error Redis gave; an
/// `Err` overall only when the round trip itself failed (then nothing is
/// known about which went in).
pub async fn add_batch<'a, I>(
    conn: &mut MultiplexedConnection,
    stream: &str,
    messages: I,
) -> RedisResult<Vec<RedisResult<String>>>
where
    I: IntoIterator<Item = &'a [(String, Vec<u8>)]>,
{
    let mut pipe = ::redis::pipe();
    for fields in messages {
        let cmd = pipe.cmd("XADD").arg(stream).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v.as_slice());
        }
    }
    if pipe.is_empty() {
        return Ok(Vec::new());
    }
    pipe.ignore_errors().query_async(conn).await
}

/// Parses `[[id, [f, v, …]], …]`. An entry with a nil body (its data was
/// trimmed away) goes to `deleted`; a nil in place of a whole entry carries
/// no id and is dropped.
fn parse_entries(value: Value, out: &mut Vec<StreamEntry>, deleted: &mut Vec<String>) {
    let entries = reply::seq(value);
    out.reserve(entries.len());
    for entry in entries {
        let mut parts = reply::seq(entry).into_iter();
        let Some(id) = parts.next().and_then(reply::string) else {
            continue;
        };
        match parts.next() {
            None | Some(Value::Nil) => deleted.push(id),
            Some(body) => out.push(StreamEntry {
                id,
                fields: reply::fields(body),
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
        parse_entries(reply, &mut out, &mut deleted);
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
        parse_entries(reply, &mut out, &mut deleted);
        assert!(deleted.is_empty());
        assert_eq!(out[0].data(), payload.as_slice());
        assert_eq!(out[0].headers().collect::<Vec<_>>(), vec![("h\u{fffd}", &b"v"[..])]);
        assert_eq!(out[1].data(), b"");
        assert_eq!(out[1].field("data"), None);
        assert_eq!(out[1].headers().collect::<Vec<_>>(), vec![("only", &b"header"[..])]);
        assert_eq!(out[2].data(), b"m");
    }
}
