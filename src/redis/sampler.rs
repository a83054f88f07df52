//! The sampler's Redis side: one pipelined round trip per Redis server reads
//! every stream and group the operator autoscales there.

use std::{collections::BTreeMap, time::Duration};

use ::redis::{Value, aio::MultiplexedConnection};

use super::{admin::Error, keys};

const SAMPLE_LUA: &str = include_str!("sample.lua");

/// What to read: each stream once, with its groups.
pub type Targets = BTreeMap<String, Vec<String>>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamSample {
    /// Redis' clock at the sample, ms since the Unix epoch (stream IDs use it too).
    pub now_ms: u64,
    /// None when the stream does not exist.
    pub entries_added: Option<u64>,
    pub length: u64,
    pub groups: BTreeMap<String, GroupSample>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupSample {
    pub entries_read: Option<u64>,
    pub lag: u64,
    /// `exact` (Redis' own), `counted` (NULL lag; entries after last-delivered-id counted) or
    /// `estimated` (NULL lag; more than the counting bound).
    pub lag_source: &'static str,
    pub pending: u64,
    pub oldest_undelivered_ms: Option<u64>,
    pub consumers: Vec<ConsumerSample>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsumerSample {
    pub name: String,
    pub pending: u64,
    pub idle: Duration,
    pub processed: Option<u64>,
    pub busy: Option<Duration>,
}

/// Reads all `targets` in one round trip. Missing streams and groups are
/// reported as such, not as errors.
pub async fn sample(
    conn: &mut MultiplexedConnection,
    targets: &Targets,
) -> Result<BTreeMap<String, StreamSample>, Error> {
    let mut pipe = ::redis::pipe();
    for (stream, groups) in targets {
        let mut eval = ::redis::cmd("EVAL");
        eval.arg(SAMPLE_LUA).arg(1 + groups.len()).arg(stream);
        for g in groups {
            eval.arg(keys::stats_key(stream, g));
        }
        eval.arg(groups);
        pipe.add_command(eval);
    }
    let replies: Vec<Value> = pipe
        .query_async(conn)
        .await
        .map_err(|e| Error::Command(e.to_string()))?;
    Ok(targets.keys().cloned().zip(replies.iter().map(parse_stream)).collect())
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

fn items(v: Option<&Value>) -> &[Value] {
    match v {
        Some(Value::Array(a)) => a,
        _ => &[],
    }
}

fn non_negative(v: Option<i64>) -> Option<u64> {
    v.and_then(|i| u64::try_from(i).ok())
}

fn parse_stream(reply: &Value) -> StreamSample {
    let top = items(Some(reply));
    let mut sample = StreamSample {
        now_ms: non_negative(int(top.first())).unwrap_or(0),
        entries_added: non_negative(int(top.get(1))),
        length: non_negative(int(top.get(2))).unwrap_or(0),
        groups: BTreeMap::new(),
    };
    for g in top.iter().skip(3) {
        let g = items(Some(g));
        if int(g.get(1)) != Some(1) {
            continue;
        }
        let stats: BTreeMap<String, i64> = items(g.get(8))
            .chunks(2)
            .filter_map(|kv| Some((text(kv.first()), int(kv.get(1))?)))
            .collect();
        let consumers = items(g.get(7))
            .iter()
            .map(|c| {
                let c = items(Some(c));
                let name = text(c.first());
                ConsumerSample {
                    pending: non_negative(int(c.get(1))).unwrap_or(0),
                    idle: Duration::from_millis(non_negative(int(c.get(2))).unwrap_or(0)),
                    processed: stats
                        .get(&keys::stats_processed_field(&name))
                        .and_then(|v| u64::try_from(*v).ok()),
                    busy: stats
                        .get(&keys::stats_busy_field(&name))
                        .and_then(|v| u64::try_from(*v).ok())
                        .map(Duration::from_micros),
                    name,
                }
            })
            .collect();
        let source = match text(g.get(4)).as_str() {
            "counted" => "counted",
            "estimated" => "estimated",
            _ => "exact",
        };
        sample.groups.insert(
            text(g.first()),
            GroupSample {
                entries_read: non_negative(int(g.get(2))),
                lag: non_negative(int(g.get(3))).unwrap_or(0),
                lag_source: source,
                pending: non_negative(int(g.get(5))).unwrap_or(0),
                oldest_undelivered_ms: non_negative(int(g.get(6))),
                consumers,
            },
        );
    }
    sample
}
