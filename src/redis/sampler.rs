//! The sampler's Redis side: one pipelined round trip per Redis server reads
//! every stream and group the operator autoscales there.

use std::{collections::BTreeMap, time::Duration};

use ::redis::{Value, aio::MultiplexedConnection};

use super::{
    Error, keys, reply,
    script::{self, Lua},
};

static SAMPLE: Lua = Lua::new(include_str!("sample.lua"));

/// What to read: each stream once, with its groups.
pub type Targets = BTreeMap<String, Vec<String>>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamSample {
    /// Redis' clock at the sample, ms since the Unix epoch (stream IDs use
    /// it too); read only when some group has an undelivered entry to age.
    pub now_ms: Option<u64>,
    /// None when the stream does not exist.
    pub entries_added: Option<u64>,
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
    let replies = SAMPLE
        .query(conn, &sample_pipe(targets), script::round_trip_missed)
        .await;
    let replies: Vec<Value> = replies.map_err(|e| Error::classify(e, "EVALSHA sample", None))?;
    Ok(targets
        .keys()
        .cloned()
        .zip(replies.into_iter().map(parse_stream))
        .collect())
}

fn sample_pipe(targets: &Targets) -> ::redis::Pipeline {
    let mut pipe = ::redis::pipe();
    for (stream, groups) in targets {
        let mut eval = SAMPLE.call();
        eval.arg(1 + groups.len()).arg(stream);
        for g in groups {
            eval.arg(keys::stats_key(stream, g));
        }
        eval.arg(groups);
        pipe.add_command(eval);
    }
    pipe
}

/// Reads the sample script's reply: `[now_ms, entries_added, group…]`.
fn parse_stream(value: Value) -> StreamSample {
    let mut top = reply::seq(value).into_iter();
    let mut sample = StreamSample {
        now_ms: top.next().and_then(reply::count),
        entries_added: top.next().and_then(reply::count),
        groups: BTreeMap::new(),
    };
    for group in top {
        if let Some((name, g)) = parse_group(group) {
            sample.groups.insert(name, g);
        }
    }
    sample
}

/// `[name, exists, entries_read, lag, lag_source, pending, oldest_ms, consumers, stats]`;
/// `None` for a group that does not exist (`[name, 0]`).
fn parse_group(value: Value) -> Option<(String, GroupSample)> {
    let text = |v: Option<Value>| v.and_then(reply::string).unwrap_or_default();
    let mut g = reply::seq(value).into_iter();
    let name = text(g.next());
    if g.next().and_then(reply::int) != Some(1) {
        return None;
    }
    let entries_read = g.next().and_then(reply::count);
    let lag = g.next().and_then(reply::count).unwrap_or(0);
    let lag_source = match text(g.next()).as_str() {
        "counted" => "counted",
        "estimated" => "estimated",
        _ => "exact",
    };
    let pending = g.next().and_then(reply::count).unwrap_or(0);
    let oldest_undelivered_ms = g.next().and_then(reply::count);
    let consumers = g.next().map(reply::seq).unwrap_or_default();
    let stats: BTreeMap<String, u64> = g
        .next()
        .map(reply::fields)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, std::str::from_utf8(&v).ok()?.parse().ok()?)))
        .collect();
    let consumers = consumers
        .into_iter()
        .map(|c| {
            let mut c = reply::seq(c).into_iter();
            let name = text(c.next());
            ConsumerSample {
                pending: c.next().and_then(reply::count).unwrap_or(0),
                idle: Duration::from_millis(c.next().and_then(reply::count).unwrap_or(0)),
                processed: stats.get(&keys::stats_processed_field(&name)).copied(),
                busy: stats
                    .get(&keys::stats_busy_field(&name))
                    .copied()
                    .map(Duration::from_micros),
                name,
            }
        })
        .collect();
    let group = GroupSample {
        entries_read,
        lag,
        lag_source,
        pending,
        oldest_undelivered_ms,
        consumers,
    };
    Some((name, group))
}
