//! The operator's administrative Redis work for one Queue: connect and check
//! the server, then one round trip that reads the queue's state and, when
//! its stream is there and its own, trims and dead-letters; a second round
//! trip only when something is to be created, claimed or set.

use std::time::Duration;

use ::redis::{RedisError, RedisResult, Value, aio::MultiplexedConnection};

use super::{
    Error,
    acl::{self, Role},
    connection::{self, Endpoint},
    reply,
    script::{self, Lua},
};

/// How long connecting or one command may take before Redis counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Most entries one maintenance call dead-letters or scans for trimming, so one
/// resync never blocks Redis for long; the rest waits for the next resync.
const MAINTENANCE_BUDGET: u32 = 1000;
/// The throw-away group `XGROUP CREATE … MKSTREAM` needs to create an empty
/// stream; it is destroyed in the same round trip, leaving no trace.
const MKSTREAM_GROUP: &str = "streamq.mkstream";

/// The round's script: the state, then retention and dead letters (see its header).
static QUEUE_ROUND: Lua = Lua::new(include_str!("queue_round.lua"));

/// How the operator's connections appear in `CLIENT LIST`.
pub const CLIENT_NAME: &str = "streamq-operator";

/// An administrative connection to one Redis server.
#[derive(Clone)]
pub struct Admin {
    conn: MultiplexedConnection,
    pub endpoint: Endpoint,
    pub version: String,
}

/// Connects, authenticates and checks that the server is Redis/Valkey 7.0+.
pub async fn connect(url: &str) -> Result<Admin, Error> {
    let options = connection::Options {
        client_name: Some(CLIENT_NAME),
        connect_timeout: TIMEOUT,
        response_timeout: TIMEOUT,
    };
    let (mut conn, endpoint) = connection::open(url, options).await?;
    let target = endpoint.addr();
    let info: String = ::redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .map_err(|e| Error::classify(e, "INFO", Some(&target)))?;
    let version = server_version(&info);
    if !version_at_least_7(&version) {
        return Err(Error::UnsupportedVersion { target, version });
    }
    Ok(Admin {
        conn,
        endpoint,
        version,
    })
}

/// `7.0.15`, or for Valkey `valkey 8.0.1` (Valkey also reports a compatible redis_version).
fn server_version(info: &str) -> String {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    match field("valkey_version:") {
        Some(v) => format!("valkey {v}"),
        None => field("redis_version:").unwrap_or_else(|| "unknown".into()),
    }
}

fn version_at_least_7(version: &str) -> bool {
    if version.starts_with("valkey ") {
        return true; // every Valkey release implements Redis 7.2's commands
    }
    version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|major| major >= 7)
}

/// What one Queue wants inside Redis.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub stream: String,
    pub dead_letter: Option<String>,
    /// The ownership claim written next to the stream: `<namespace>/<name>/<uid>/<created unix secs>`.
    pub owner: String,
    pub producer_user: String,
    pub producer_password: String,
    pub consumer_user: String,
    pub consumer_password: String,
    pub max_length: Option<u64>,
    pub max_age: Option<Duration>,
    pub drop_unprocessed: bool,
    pub max_deliveries: u32,
    pub visibility_timeout: Duration,
}

impl QueueSpec {
    pub fn owner_key(&self) -> String {
        owner_key(&self.stream)
    }

    /// What the ACL users are set from, hashed: a change means setting them again.
    pub fn users_digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            &self.producer_user,
            &self.producer_password,
            &self.consumer_user,
            &self.consumer_password,
            &self.stream,
        ]
        .into_iter()
        .chain(&self.dead_letter)
        {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize().into()
    }
}

/// The key holding the claim of the Queue that owns `stream`.
pub fn owner_key(stream: &str) -> String {
    format!("{stream}:owner")
}

/// The state of a Queue inside Redis, read in one round trip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub stream_type: String,
    pub length: u64,
    pub entries_added: u64,
    pub dead_letter_type: Option<String>,
    pub dead_letter_length: Option<u64>,
    pub owner: Option<String>,
    pub producer_user_exists: bool,
    pub consumer_user_exists: bool,
    /// What the round trip's retention and dead-lettering did; `None` when
    /// they could not run: the stream missing or of another type, or its
    /// claim not this Queue's.
    pub maintenance: Option<Maintenance>,
}

/// What one run of retention and dead-lettering did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub trimmed: u64,
    pub dead_lettered: u64,
    /// Entries that were due for the dead-letter stream but had been trimmed or deleted; acked.
    pub vanished: u64,
}

/// What a maintenance round changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub stream_created: bool,
    pub dead_letter_created: bool,
    pub producer_user_created: bool,
    pub consumer_user_created: bool,
    pub maintenance: Maintenance,
}

impl Admin {
    fn err(&self, command: &'static str) -> impl FnOnce(RedisError) -> Error + '_ {
        move |e| Error::classify(e, command, Some(&self.endpoint.addr()))
    }

    /// Round trip 1: everything the reconciler decides from, and the
    /// maintenance when the stream is there and this Queue's.
    pub async fn snapshot(&mut self, q: &QueueSpec) -> Result<Snapshot, Error> {
        type Replies = (RedisResult<Vec<Value>>, RedisResult<Value>, RedisResult<Value>);
        let replies: Replies = QUEUE_ROUND
            .query(
                &mut self.conn,
                &snapshot_pipe(q),
                |r: &RedisResult<Replies>| matches!(r, Ok((Err(e), ..)) if script::is_missing(e)),
            )
            .await
            .map_err(self.err("EVALSHA round/ACL DRYRUN"))?;
        let (round, producer, consumer) = replies;
        let round = round.map_err(self.err("EVALSHA round"))?;
        Ok(Snapshot {
            producer_user_exists: user_exists(&producer),
            consumer_user_exists: user_exists(&consumer),
            ..parse_round(round)
        })
    }

    /// The ownership claim on the Queue's stream, if any.
    pub async fn owner(&mut self, q: &QueueSpec) -> Result<Option<String>, Error> {
        ::redis::cmd("GET")
            .arg(q.owner_key())
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("GET owner"))
    }

    /// Round trip 2, only when needed: creates what is missing, writes the
    /// ownership claim when `claim`, and then maintains if round trip 1
    /// could not. A missing ACL user is created; existing ones are put back
    /// as they should be only with `refresh_users` (`ACL SETUSER` is among
    /// the dearest commands of a round).
    pub async fn provision(
        &mut self,
        q: &QueueSpec,
        snap: &Snapshot,
        claim: bool,
        refresh_users: bool,
    ) -> Result<Changes, Error> {
        check_types(q, snap)?;
        let mut changes = Changes {
            stream_created: snap.stream_type == "none",
            dead_letter_created: snap.dead_letter_type.as_deref() == Some("none"),
            producer_user_created: !snap.producer_user_exists,
            consumer_user_created: !snap.consumer_user_exists,
            maintenance: snap.maintenance.unwrap_or_default(),
        };
        let mut pipe = provision_pipe(q, snap, &changes, claim, refresh_users);
        match snap.maintenance {
            Some(_) if pipe.is_empty() => {}
            Some(_) => pipe
                .query_async::<()>(&mut self.conn)
                .await
                .map_err(self.err("XGROUP/SET/ACL SETUSER"))?,
            None => {
                pipe.add_command(round_call(q));
                let replies = QUEUE_ROUND
                    .query(&mut self.conn, &pipe, script::round_trip_missed::<(Vec<Value>,)>)
                    .await;
                let (round,) = replies.map_err(self.err("XGROUP/SET/ACL SETUSER/EVALSHA round"))?;
                changes.maintenance = parse_round(round).maintenance.unwrap_or_default();
            }
        }
        Ok(changes)
    }

    /// One round trip reading every stream and group in `targets` (see [`super::sampler`]).
    pub async fn sample(
        &mut self,
        targets: &super::sampler::Targets,
        carried: &mut super::sampler::Carried,
    ) -> Result<std::collections::BTreeMap<String, super::sampler::StreamSample>, Error> {
        super::sampler::sample(&mut self.conn, targets, carried).await
    }

    /// Creates a consumer group unless it exists. `from` is `0` (every entry
    /// still in the stream) or `$` (only new ones).
    pub async fn ensure_group(&mut self, stream: &str, group: &str, from: &str) -> Result<bool, Error> {
        let created: Result<(), RedisError> = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg(from)
            .query_async(&mut self.conn)
            .await;
        match created {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
            Err(e) => Err(self.err("XGROUP CREATE")(e)),
        }
    }

    /// Removes a consumer name from a group, only while it holds nothing:
    /// `XGROUP DELCONSUMER` would drop its pending entries with it.
    pub async fn delete_idle_consumer(&mut self, stream: &str, group: &str, consumer: &str) -> Result<bool, Error> {
        // Checked and deleted in one script, so a message delivered in between is never dropped.
        let script = "local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) \
                      if #p > 0 then return -1 end \
                      return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])";
        let removed: i64 = ::redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("EVAL XGROUP DELCONSUMER"))?;
        Ok(removed == 0)
    }

    /// Removes a Queue from Redis: always its ACL users; its ownership claim
    /// when it holds it (`owns_claim`); with `delete_data` also the streams and
    /// the worker stats.
    pub async fn remove(&mut self, q: &QueueSpec, owns_claim: bool, delete_data: bool) -> Result<(), Error> {
        let mut keys: Vec<String> = owns_claim.then(|| q.owner_key()).into_iter().collect();
        if delete_data {
            keys.push(q.stream.clone());
            keys.extend(q.dead_letter.clone());
            let pattern = super::keys::stats_key(&q.stream, "*");
            let mut cursor = 0u64;
            loop {
                let (next, found): (u64, Vec<String>) = ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut self.conn)
                    .await
                    .map_err(self.err("SCAN"))?;
                keys.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let mut pipe = ::redis::pipe();
        pipe.cmd("ACL")
            .arg("DELUSER")
            .arg(&q.producer_user)
            .arg(&q.consumer_user)
            .ignore();
        if !keys.is_empty() {
            pipe.cmd("DEL").arg(keys).ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(self.err("ACL DELUSER/DEL"))
    }
}

/// Refuses keys that exist with another type than stream.
fn check_types(q: &QueueSpec, snap: &Snapshot) -> Result<(), Error> {
    for (key, kind) in [
        (Some(&q.stream), Some(&snap.stream_type)),
        (q.dead_letter.as_ref(), snap.dead_letter_type.as_ref()),
    ] {
        if let (Some(key), Some(kind)) = (key, kind)
            && kind != "stream"
            && kind != "none"
        {
            return Err(Error::WrongType {
                key: key.clone(),
                kind: kind.clone(),
            });
        }
    }
    Ok(())
}

/// The round's script call for `q` (see `queue_round.lua`).
fn round_call(q: &QueueSpec) -> ::redis::Cmd {
    let mut call = QUEUE_ROUND.call();
    call.arg(3)
        .arg(&q.stream)
        .arg(q.dead_letter.as_deref().unwrap_or(&q.stream))
        .arg(q.owner_key())
        .arg(q.max_length.map(|n| n.to_string()).unwrap_or_default())
        .arg(q.max_age.map(|d| d.as_millis().to_string()).unwrap_or_default())
        .arg(if q.drop_unprocessed { "1" } else { "0" })
        .arg(q.max_deliveries)
        .arg(u64::try_from(q.visibility_timeout.as_millis()).unwrap_or(u64::MAX))
        .arg(if q.dead_letter.is_some() { "1" } else { "0" })
        .arg(MAINTENANCE_BUDGET)
        .arg(&q.owner);
    call
}

/// Reads the round script's reply (see `queue_round.lua`); the users are the DRYRUNs' to tell.
fn parse_round(reply: Vec<Value>) -> Snapshot {
    let mut fields = reply.into_iter();
    let mut next = || fields.next().unwrap_or(Value::Nil);
    let text = |v: Value| reply::string(v).filter(|s| !s.is_empty());
    let int = |v: Value| reply::count(v);
    let stream_type = text(next()).unwrap_or_default();
    let length = int(next()).unwrap_or(0);
    let entries_added = int(next()).unwrap_or(0);
    let dead_letter_type = text(next());
    let dead_letter_length = int(next());
    let owner = text(next());
    let maintained = int(next()) == Some(1);
    let maintenance = Maintenance {
        trimmed: int(next()).unwrap_or(0),
        dead_lettered: int(next()).unwrap_or(0),
        vanished: int(next()).unwrap_or(0),
    };
    Snapshot {
        stream_type,
        length,
        entries_added,
        dead_letter_type,
        dead_letter_length,
        owner,
        producer_user_exists: true,
        consumer_user_exists: true,
        maintenance: maintained.then_some(maintenance),
    }
}

/// Round trip 1: the round script and whether each user exists.
fn snapshot_pipe(q: &QueueSpec) -> ::redis::Pipeline {
    let mut pipe = ::redis::pipe();
    // Errors come back per command, so a missing user's DRYRUN error (or
    // NOSCRIPT) is an answer, not a failed round trip.
    pipe.ignore_errors().add_command(round_call(q));
    for user in [&q.producer_user, &q.consumer_user] {
        pipe.cmd("ACL").arg("DRYRUN").arg(user).arg("PING");
    }
    pipe
}

/// Round trip 2's commands before the script: creations, the claim, the users.
fn provision_pipe(
    q: &QueueSpec,
    snap: &Snapshot,
    changes: &Changes,
    claim: bool,
    refresh_users: bool,
) -> ::redis::Pipeline {
    let mut pipe = ::redis::pipe();
    for (key, create) in [
        (Some(&q.stream), changes.stream_created),
        (q.dead_letter.as_ref(), changes.dead_letter_created),
    ] {
        if let (Some(key), true) = (key, create) {
            pipe.cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(MKSTREAM_GROUP)
                .arg("$")
                .arg("MKSTREAM")
                .ignore();
            pipe.cmd("XGROUP").arg("DESTROY").arg(key).arg(MKSTREAM_GROUP).ignore();
        }
    }
    if claim {
        pipe.cmd("SET").arg(q.owner_key()).arg(&q.owner).ignore();
    }
    for (role, user, password, exists) in [
        (
            Role::Producer,
            &q.producer_user,
            &q.producer_password,
            snap.producer_user_exists,
        ),
        (
            Role::Consumer,
            &q.consumer_user,
            &q.consumer_password,
            snap.consumer_user_exists,
        ),
    ] {
        if exists && !refresh_users {
            continue;
        }
        pipe.cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg(acl::setuser_rules(role, password, &q.stream, q.dead_letter.as_deref()))
            .ignore();
    }
    pipe
}

/// Whether an `ACL DRYRUN <user> PING` reply says the user exists: any
/// answer (OK, or why PING is denied) does; only "User '…' not found" does
/// not. DRYRUN rather than GETUSER, which describes every command rule: on
/// Redis 7.0.15 here GETUSER took 300–400 µs a call and DRYRUN under 1 µs, and
/// this runs for two users of every Queue at every resync. Any other error
/// counts as existing: `provision` sets the user either way, and only the
/// "created" Event depends on this.
fn user_exists(reply: &RedisResult<Value>) -> bool {
    !matches!(reply, Err(e) if e.detail().is_some_and(|d| d.contains("not found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_below_7_are_refused() {
        assert!(version_at_least_7("7.0.15"));
        assert!(version_at_least_7("8.2.0"));
        assert!(version_at_least_7("valkey 8.0.1"));
        assert!(!version_at_least_7("6.2.14"));
        assert!(!version_at_least_7("unknown"));
    }

    #[test]
    fn valkey_is_named_as_such() {
        assert_eq!(
            server_version("redis_version:7.2.4\r\nvalkey_version:8.0.1\r\n"),
            "valkey 8.0.1"
        );
        assert_eq!(server_version("# Server\r\nredis_version:7.0.15\r\n"), "7.0.15");
    }
}
