//! The stream commands of the worker runtime and the producer.
//!
//! Everything here must work for the restricted consumer ACL user the
//! operator creates: `XREADGROUP`, `XACK`, `XAUTOCLAIM`, `XCLAIM`, `XPENDING`,
//! `XINFO`, `XGROUP CREATECONSUMER|DELCONSUMER` on the stream, `XADD` on the
//! dead-letter stream only, `HINCRBY`/`HSET`/`HGETALL` on the stats hash,
//! `MULTI`/`EXEC`, `PING`, `HELLO`, `AUTH`, `CLIENT SETNAME`. So: no
//! `XRANGE`, no `EVAL`, no `XADD` on the main stream from a worker.

use std::{collections::HashMap, time::Duration};

use ::redis::{AsyncConnectionConfig, ErrorKind, RedisError, RedisResult, Value, aio::MultiplexedConnection};

use super::keys;

/// Errors of the stream commands, phrased for the person running the worker.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    #[error("cannot connect to Redis at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: RedisError,
    },
    #[error("Redis at {target} rejected the credentials (wrong user name or password?): {detail}")]
    Auth { target: String, detail: String },
    #[error("consumer group {group} does not exist on stream {stream}; is the Consumer reconciled?")]
    NoGroup { stream: String, group: String },
    #[error(
        "stream {stream} does not exist, so consumer group {group} does not either; is the Queue and Consumer reconciled?"
    )]
    NoStream { stream: String, group: String },
    #[error("Redis ACL denied {command}: {detail}")]
    NoPermission { command: &'static str, detail: String },
    #[error("Redis {command} failed: {source}")]
    Command {
        command: &'static str,
        #[source]
        source: RedisError,
    },
    #[error("unexpected reply to {command}: {detail}")]
    Reply { command: &'static str, detail: String },
}

impl StreamError {
    /// Whether retrying later may help (connection trouble), as opposed to a
    /// configuration problem that only a person can fix.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Command { source, .. } => {
                source.is_io_error() || source.is_connection_dropped() || source.is_timeout()
            }
            _ => false,
        }
    }

    fn from_command(command: &'static str, stream: &str, group: &str, source: RedisError) -> Self {
        match source.code() {
            Some("NOGROUP") => Self::NoGroup {
                stream: stream.to_owned(),
                group: group.to_owned(),
            },
            Some("NOPERM") => Self::NoPermission {
                command,
                detail: source.detail().unwrap_or_default().to_owned(),
            },
            _ => Self::Command { command, source },
        }
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

/// Where a URL points, without credentials, for error messages and logs.
pub fn redacted_target(url: &str) -> String {
    match ::redis::parse_redis_url(url) {
        Some(parsed) => {
            let host = parsed.host_str().unwrap_or("?");
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}{}", parsed.scheme(), parsed.path())
        }
        None => "<invalid URL>".to_owned(),
    }
}

/// Opens a multiplexed connection named `client_name` (`CLIENT SETNAME`, so
/// operators can tell workers apart in `CLIENT LIST`). `response_timeout`
/// must exceed any `BLOCK` the connection will be used for.
pub async fn connect(
    url: &str,
    client_name: &str,
    response_timeout: Duration,
) -> Result<MultiplexedConnection, StreamError> {
    let target = redacted_target(url);
    super::install_tls_provider();
    let client = ::redis::Client::open(url).map_err(|e| StreamError::InvalidUrl(format!("{target}: {e}")))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|source| classify_connect_error(&target, source))?;
    let name = sanitize_client_name(client_name);
    ::redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(&name)
        .query_async::<()>(&mut conn)
        .await
        .map_err(|source| match source.code() {
            Some("NOPERM") => StreamError::NoPermission {
                command: "CLIENT SETNAME",
                detail: source.detail().unwrap_or_default().to_owned(),
            },
            _ => classify_connect_error(&target, source),
        })?;
    Ok(conn)
}

fn classify_connect_error(target: &str, source: RedisError) -> StreamError {
    let auth = source.kind() == ErrorKind::AuthenticationFailed
        || matches!(source.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
    if auth {
        StreamError::Auth {
            target: target.to_owned(),
            detail: source.to_string(),
        }
    } else {
        StreamError::Connect {
            target: target.to_owned(),
            source,
        }
    }
}

/// Client names may not contain spaces or newlines.
fn sanitize_client_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '-' })
        .collect()
}

/// Fails unless `group` exists on `stream`, naming what is missing, and
/// registers `consumer` in it so that it shows in `XINFO CONSUMERS` even
/// before its first read.
pub async fn check_group(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Result<(), StreamError> {
    let groups: RedisResult<Value> = ::redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await;
    let groups = match groups {
        Ok(v) => v,
        Err(e) if e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("no such key")) => {
            return Err(StreamError::NoStream {
                stream: stream.to_owned(),
                group: group.to_owned(),
            });
        }
        Err(e) => return Err(StreamError::from_command("XINFO GROUPS", stream, group, e)),
    };
    let found = as_seq(&groups).iter().any(|g| {
        fields_of(g)
            .iter()
            .any(|(k, v)| k == "name" && v.as_slice() == group.as_bytes())
    });
    if !found {
        return Err(StreamError::NoGroup {
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
        .map_err(|e| StreamError::from_command("XGROUP CREATECONSUMER", stream, group, e))
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
) -> Result<Vec<StreamEntry>, StreamError> {
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
        .map_err(|e| StreamError::from_command("XREADGROUP", stream, group, e))?;
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
            for per_key in into_seq(other) {
                if let Some(entries) = into_seq(per_key).into_iter().nth(1) {
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
) -> Result<AutoClaimed, StreamError> {
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
        .map_err(|e| StreamError::from_command("XAUTOCLAIM", stream, group, e))?;
    let Some(next_start) = as_seq(&reply).first().and_then(as_string) else {
        return Err(StreamError::Reply {
            command: "XAUTOCLAIM",
            detail: format!("no cursor in {reply:?}"),
        });
    };
    let mut claimed = AutoClaimed {
        next_start,
        ..AutoClaimed::default()
    };
    let mut parts = into_seq(reply).into_iter().skip(1);
    if let Some(entries) = parts.next() {
        parse_entries(entries, &mut claimed.entries, &mut claimed.deleted);
    }
    if let Some(deleted) = parts.next() {
        claimed
            .deleted
            .extend(into_seq(deleted).into_iter().filter_map(into_string));
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
) -> Result<HashMap<String, u64>, StreamError> {
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
        .map_err(|e| StreamError::from_command("XPENDING", stream, group, e))?;
    let mut counts = HashMap::with_capacity(ids.len());
    for reply in &replies {
        for pending in as_seq(reply) {
            // [id, consumer, idle ms, delivery count]
            let row = as_seq(pending);
            if let (Some(id), Some(Value::Int(n))) = (row.first().and_then(as_string), row.get(3)) {
                counts.insert(id, (*n).max(0) as u64);
            }
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
) -> Result<u64, StreamError> {
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
        .map_err(|e| StreamError::from_command("XACK/HINCRBY", stream, group, e))?;
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
) -> Result<String, StreamError> {
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
        .map_err(|e| StreamError::from_command("MULTI/XADD dead-letter/XACK/EXEC", stream, group, e))?;
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

fn as_seq(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

fn as_string(value: &Value) -> Option<String> {
    as_bytes(value).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn as_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        Value::Double(d) => Some(d.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

/// Field/value pairs from a flat array (RESP2) or a map (RESP3).
fn fields_of(value: &Value) -> Vec<(String, Vec<u8>)> {
    match value {
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(k, v)| Some((as_string(k)?, as_bytes(v).unwrap_or_default())))
            .collect(),
        other => as_seq(other)
            .chunks_exact(2)
            .filter_map(|kv| Some((as_string(&kv[0])?, as_bytes(&kv[1]).unwrap_or_default())))
            .collect(),
    }
}

fn into_seq(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        other => as_bytes(&other),
    }
}

/// Text from a reply; bytes that are not UTF-8 become U+FFFD.
fn into_string(value: Value) -> Option<String> {
    into_bytes(value)
        .map(|b| String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Field/value pairs, by value, from a flat array (RESP2) or a map (RESP3).
/// Values are kept byte-exact; a field name that is not UTF-8 is made text
/// with U+FFFD (names are header names, and headers are text).
fn into_fields(value: Value) -> Vec<(String, Vec<u8>)> {
    let pair = |k: Value, v: Value| Some((into_string(k)?, into_bytes(v).unwrap_or_default()));
    match value {
        Value::Map(pairs) => pairs.into_iter().filter_map(|(k, v)| pair(k, v)).collect(),
        other => {
            let items = into_seq(other);
            let mut fields = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                fields.extend(pair(k, v));
            }
            fields
        }
    }
}

/// Parses `[[id, [f, v, …]], …]`, by value. An entry with a nil body (its
/// data was trimmed away) goes to `deleted`; a nil in place of a whole entry
/// carries no id and is dropped.
fn parse_entries(value: Value, out: &mut Vec<StreamEntry>, deleted: &mut Vec<String>) {
    let entries = into_seq(value);
    out.reserve(entries.len());
    for entry in entries {
        let mut parts = into_seq(entry).into_iter();
        let Some(id) = parts.next().and_then(into_string) else {
            continue;
        };
        match parts.next() {
            None | Some(Value::Nil) => deleted.push(id),
            Some(body) => out.push(StreamEntry {
                id,
                fields: into_fields(body),
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

    #[test]
    fn redacts_credentials() {
        let t = redacted_target("redis://user:secret@example.com:6380/2");
        assert!(!t.contains("secret"), "{t}");
        assert!(t.contains("example.com:6380"), "{t}");
    }
}
