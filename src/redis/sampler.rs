//! The sampler's Redis side: one pipelined round trip per Redis server reads
//! every stream and group the operator autoscales there, and a second one
//! reads the few that need more.
//!
//! Most autoscaled streams are idle: nothing undelivered, no consumers. For
//! those `XINFO GROUPS` alone answers everything the autoscaler asks, and as
//! a native command it costs Redis a few µs, where the sample script costs
//! about 23 µs even when it reads no more (Lua's per-call overhead; measured
//! with redis-benchmark on Redis 7.0). So the first round trip is `XINFO
//! GROUPS` for every stream; only streams with something undelivered,
//! consumers, or counters Redis could not give (NULL lag) go on to the script,
//! which reads them atomically with their oldest entry, consumers and stats.
//! A quiet stream whose groups have no counters yet gets its entries-added
//! from `XINFO STREAM` in that second round trip: not atomic with the first,
//! so a message in between counts as arrived one sample before it counts as
//! lag, which errs toward activity, never toward scaling to zero.
//!
//! That entries-added is then carried over ([`Carried`]) while the stream
//! stays quiet and no wanted group's last-delivered-id moves: with exact lag
//! 0 and no consumers, a new entry would show as lag, and one delivered would
//! move the id. At a thousand never-used streams that saves a thousand
//! `XINFO STREAM`s a second. Only entries added and deleted again between
//! two samples go unseen, and a re-read every [`REREAD_AFTER`] samples
//! bounds that.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use ::redis::{RedisResult, Value, aio::MultiplexedConnection};

use super::{
    Error, keys, reply,
    script::{self, Lua},
};

static SAMPLE: Lua = Lua::new(include_str!("sample.lua"));

/// What to read: each stream once, with its groups.
pub type Targets = BTreeMap<String, Vec<String>>;

/// How many samples an entries-added carried over is used before it is read again.
pub const REREAD_AFTER: u32 = 60;

/// The entries-added of quiet streams without group counters, as last read
/// (see the module's docs); one per Redis server, kept by the caller.
#[derive(Debug, Default)]
pub struct Carried(HashMap<String, CarriedCount>);

#[derive(Debug)]
struct CarriedCount {
    /// The wanted groups' last-delivered-ids when it was read.
    delivered: Vec<String>,
    entries_added: u64,
    /// Samples it has been used in since.
    used: u32,
}

impl Carried {
    /// Whether an entries-added of `stream` is held.
    pub fn holds(&self, stream: &str) -> bool {
        self.0.contains_key(stream)
    }

    /// The carried entries-added of `stream`, if the groups' ids still match and it is not due for a re-read.
    fn take(&mut self, stream: &str, delivered: &[String]) -> Option<u64> {
        let count = self.0.get_mut(stream)?;
        if count.delivered != delivered || count.used >= REREAD_AFTER {
            return None;
        }
        count.used += 1;
        Some(count.entries_added)
    }
}

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

/// Reads all `targets`: one round trip, two when some stream is busy or
/// its groups have no counters yet. Missing streams and groups are reported
/// as such, not as errors; a stream that fails otherwise is left out (the
/// autoscaler holds on no data).
pub async fn sample(
    conn: &mut MultiplexedConnection,
    targets: &Targets,
    carried: &mut Carried,
) -> Result<BTreeMap<String, StreamSample>, Error> {
    let mut pipe = ::redis::pipe();
    pipe.ignore_errors();
    for stream in targets.keys() {
        pipe.cmd("XINFO").arg("GROUPS").arg(stream);
    }
    let infos: Vec<RedisResult<Value>> = pipe
        .query_async(conn)
        .await
        .map_err(|e| Error::classify(e, "XINFO GROUPS", None))?;
    let mut samples = BTreeMap::new();
    let mut uncounted = BTreeMap::new();
    let mut busy = Targets::new();
    let mut still_carried = HashMap::new();
    for ((stream, groups), info) in targets.iter().zip(infos) {
        // An error (a missing stream, say) is the script's to report.
        let Ok(info) = info else {
            busy.insert(stream.clone(), groups.clone());
            continue;
        };
        let infos = reply::groups(info);
        let delivered = delivered_ids_if_uncounted(&infos, groups);
        match quiet(infos, groups) {
            Some(sample) if sample.entries_added.is_some() => {
                samples.insert(stream.clone(), sample);
            }
            Some(mut sample) => match carried.take(stream, &delivered) {
                Some(added) => {
                    sample.entries_added = Some(added);
                    samples.insert(stream.clone(), sample);
                    if let Some(count) = carried.0.remove(stream) {
                        still_carried.insert(stream.clone(), count);
                    }
                }
                None => {
                    let first = !carried.holds(stream);
                    uncounted.insert(stream.clone(), (sample, delivered, first));
                }
            },
            None => {
                busy.insert(stream.clone(), groups.clone());
            }
        }
    }
    // Streams no longer quiet, or no longer sampled, are forgotten.
    carried.0 = still_carried;
    if uncounted.is_empty() && busy.is_empty() {
        return Ok(samples);
    }
    let replies = SAMPLE
        .query(conn, &second_pipe(uncounted.keys(), &busy), script_missed)
        .await
        .map_err(|e| Error::classify(e, "EVALSHA sample", None))?;
    let mut replies = replies.into_iter();
    for ((stream, (mut sample, delivered, first)), reply) in uncounted.into_iter().zip(&mut replies) {
        if let Ok(info) = reply {
            sample.entries_added = entries_added(info);
            if let Some(entries_added) = sample.entries_added {
                let count = CarriedCount {
                    delivered,
                    entries_added,
                    used: if first { first_use(&stream) } else { 0 },
                };
                carried.0.insert(stream.clone(), count);
            }
            samples.insert(stream, sample);
        }
    }
    for (stream, reply) in busy.into_keys().zip(replies) {
        if let Ok(reply) = reply {
            samples.insert(stream, parse_stream(reply));
        }
    }
    Ok(samples)
}

/// Whether the second round trip met a server that did not know the script.
fn script_missed(reply: &RedisResult<Vec<RedisResult<Value>>>) -> bool {
    match reply {
        Ok(items) => items.iter().any(|r| r.as_ref().is_err_and(script::is_missing)),
        Err(e) => script::is_missing(e),
    }
}

/// `XINFO STREAM`'s entries-added: what a group without counters (created
/// at an ID, nothing read since) cannot give.
fn entries_added(info: Value) -> Option<u64> {
    let (_, value) = reply::fields(info).into_iter().find(|(k, _)| k == "entries-added")?;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Where in its [`REREAD_AFTER`] samples a stream's first carried count
/// starts: spread by its name, so that streams first read together (all of
/// them, at start) are not all read again in one sample.
fn first_use(stream: &str) -> u32 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    stream.hash(&mut h);
    u32::try_from(h.finish() % u64::from(REREAD_AFTER)).unwrap_or(0)
}

/// The last-delivered-ids of the `wanted` groups that exist, in Redis'
/// order; read only when none of them keeps counters (the one case that
/// carries a count over), empty otherwise.
fn delivered_ids_if_uncounted(infos: &[reply::GroupInfo], wanted: &[String]) -> Vec<String> {
    let wanted_infos = infos.iter().filter(|g| wanted.contains(&g.name));
    if wanted_infos.clone().any(|g| g.entries_read.is_some()) {
        return Vec::new();
    }
    wanted_infos.map(|g| g.last_delivered_id.clone()).collect()
}

/// The sample of a stream from its `XINFO GROUPS` alone, when every wanted
/// group that exists is quiet: exact lag 0 and no consumers, so nothing is
/// undelivered or pending. Its entries-added is the first group's counters
/// (entries-read + 0), or `None` when no group has them yet (Redis keeps a
/// group's entries-read NULL until it reads). Not quiet: `None`.
fn quiet(infos: Vec<reply::GroupInfo>, wanted: &[String]) -> Option<StreamSample> {
    let mut sample = StreamSample::default();
    for info in infos.into_iter().filter(|g| wanted.contains(&g.name)) {
        if info.lag != Some(0) || info.consumers > 0 {
            return None;
        }
        sample.entries_added = sample.entries_added.or(info.entries_read);
        let group = GroupSample {
            entries_read: info.entries_read,
            lag: 0,
            lag_source: "exact",
            pending: info.pending,
            ..GroupSample::default()
        };
        sample.groups.insert(info.name, group);
    }
    Some(sample)
}

/// `XINFO STREAM` of each `uncounted` stream, then the sample script of each `busy` one.
fn second_pipe<'a>(uncounted: impl Iterator<Item = &'a String>, busy: &Targets) -> ::redis::Pipeline {
    let mut pipe = ::redis::pipe();
    pipe.ignore_errors();
    for stream in uncounted {
        pipe.cmd("XINFO").arg("STREAM").arg(stream);
    }
    for (stream, groups) in busy {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::reply::GroupInfo;

    fn info(name: &str, read: Option<u64>, lag: Option<u64>, consumers: u64) -> GroupInfo {
        GroupInfo {
            name: name.into(),
            consumers,
            pending: 0,
            entries_read: read,
            lag,
            last_delivered_id: "0-0".into(),
        }
    }

    fn wanted(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn an_idle_group_is_answered_by_its_counters() {
        let sample = quiet(vec![info("g", Some(42), Some(0), 0)], &wanted(&["g"])).expect("quiet");
        assert_eq!(sample.entries_added, Some(42));
        assert_eq!(sample.now_ms, None);
        let g = &sample.groups["g"];
        assert_eq!((g.entries_read, g.lag, g.lag_source), (Some(42), 0, "exact"));
        assert!(g.consumers.is_empty() && g.oldest_undelivered_ms.is_none());
    }

    #[test]
    fn anything_undelivered_consumed_or_uncounted_goes_to_the_script() {
        let w = wanted(&["g"]);
        assert_eq!(quiet(vec![info("g", Some(40), Some(2), 0)], &w), None, "lag");
        assert_eq!(quiet(vec![info("g", Some(42), Some(0), 1)], &w), None, "consumers");
        assert_eq!(quiet(vec![info("g", None, None, 0)], &w), None, "NULL lag");
    }

    #[test]
    fn a_quiet_group_without_counters_leaves_entries_added_to_be_read() {
        let w = wanted(&["g"]);
        let sample = quiet(vec![info("g", None, Some(0), 0)], &w).expect("quiet");
        assert_eq!(sample.entries_added, None);
        assert_eq!(sample.groups["g"].entries_read, None);
        assert_eq!(
            quiet(vec![], &w).map(|s| s.groups.len()),
            Some(0),
            "no group: only entries-added to read"
        );
    }

    #[test]
    fn groups_not_asked_for_are_ignored_and_missing_ones_left_out() {
        let infos = vec![info("g", Some(7), Some(0), 0), info("other", Some(1), Some(6), 3)];
        let sample = quiet(infos, &wanted(&["g", "gone"])).expect("quiet");
        assert_eq!(sample.groups.keys().collect::<Vec<_>>(), ["g"]);
    }
}
