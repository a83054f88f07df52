//! Talking to a redis-server as a client: connections, raw commands, ACL
//! refusals, credentials in URLs, and what a stream and its groups hold.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use ::redis::{AsyncConnectionConfig, FromRedisValue, RedisResult, Value, aio::MultiplexedConnection};

use super::wait::wait_until;

/// Connection settings for test clients. redis-rs defaults to a 1 s connect and a
/// 500 ms response timeout, which a loaded 2-core CI box running a 100,000-message
/// test beside this one can exceed without anything being wrong.
pub fn patient_redis() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(30)))
}

pub async fn connect(url: &str) -> MultiplexedConnection {
    ::redis::Client::open(url)
        .unwrap_or_else(|e| panic!("a Redis URL: {e}"))
        .get_multiplexed_async_connection_with_config(&patient_redis())
        .await
        .unwrap_or_else(|e| panic!("connect to Redis: {e}"))
}

fn command(args: &[&str]) -> ::redis::Cmd {
    let mut c = ::redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// Sends one raw command; fails the test if Redis refuses it.
pub async fn cmd<T: FromRedisValue>(conn: &mut MultiplexedConnection, args: &[&str]) -> T {
    command(args)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Sends one raw command, whatever Redis answers.
pub async fn try_cmd(conn: &mut MultiplexedConnection, args: &[&str]) -> RedisResult<Value> {
    command(args).query_async(conn).await
}

/// The command was refused by the ACL: the server's NOPERM, nothing else.
#[track_caller]
pub fn assert_noperm(result: &RedisResult<Value>, what: &str) {
    match result {
        Err(e) => assert_eq!(
            e.kind(),
            ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoPerm),
            "{what}: expected NOPERM, got {e}"
        ),
        Ok(v) => panic!("{what}: expected NOPERM, but it was allowed and returned {v:?}"),
    }
}

#[track_caller]
pub fn assert_allowed(result: &RedisResult<Value>, what: &str) {
    if let Err(e) = result {
        panic!("{what}: expected to be allowed, got {e}");
    }
}

/// `redis://[old creds@]host...` → `redis://user:password@host...`.
pub fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

/// The user in a `redis[s]://user:password@host` URL.
pub fn url_user(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    Some(rest.split_once(':')?.0.to_owned())
}

/// The password in a `redis[s]://user:password@host` URL.
pub fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.rsplit_once('@')?.0;
    Some(userinfo.split_once(':')?.1.to_owned())
}

/// XADDs `data` 0, 1, … `n - 1` in one pipeline; returns the ids.
pub async fn xadd_n(conn: &mut MultiplexedConnection, stream: &str, n: usize) -> Vec<String> {
    let mut pipe = ::redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD").arg(stream).arg("*").arg("data").arg(i);
    }
    pipe.query_async(conn).await.expect("XADD")
}

/// Plays a worker of `group`: reads and acknowledges everything undelivered.
pub async fn read_and_ack_all(conn: &mut MultiplexedConnection, stream: &str, group: &str, consumer: &str) {
    loop {
        let read: ::redis::streams::StreamReadReply = cmd(
            conn,
            &[
                "XREADGROUP",
                "GROUP",
                group,
                consumer,
                "COUNT",
                "1000",
                "STREAMS",
                stream,
                ">",
            ],
        )
        .await;
        let ids: Vec<&str> = read
            .keys
            .iter()
            .flat_map(|k| k.ids.iter().map(|e| e.id.as_str()))
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut ack = vec!["XACK", stream, group];
        ack.extend(ids);
        let _: i64 = cmd(conn, &ack).await;
    }
}

/// The `XINFO GROUPS` entry of `group`, if the stream and the group exist.
pub async fn group_info(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> Option<HashMap<String, Value>> {
    let groups: Vec<HashMap<String, Value>> = command(&["XINFO", "GROUPS", stream]).query_async(conn).await.ok()?;
    groups
        .into_iter()
        .find(|g| matches!(g.get("name"), Some(Value::BulkString(n)) if n == group.as_bytes()))
}

/// An integer field of an `XINFO` entry.
pub fn int_field(info: &HashMap<String, Value>, field: &str) -> Option<i64> {
    match info.get(field) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    }
}

/// `(lag, pending)` of a consumer group.
pub async fn backlog_on(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> Option<(i64, i64)> {
    let g = group_info(conn, stream, group).await?;
    Some((int_field(&g, "lag")?, int_field(&g, "pending")?))
}

/// `(lag, pending)` of a consumer group, on a connection of its own; `None`
/// while Redis does not answer (short timeouts: it may be stopped on purpose).
pub async fn group_backlog(url: &str, stream: &str, group: &str) -> Option<(i64, i64)> {
    let mut conn = ::redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2))),
        )
        .await
        .ok()?;
    backlog_on(&mut conn, stream, group).await
}

/// Waits until the group has read and acknowledged everything in the stream.
pub async fn wait_drained(url: &str, stream: &str, group: &str, timeout: Duration) {
    wait_until(timeout, "the group to read and ack everything", || async {
        group_backlog(url, stream, group).await == Some((0, 0))
    })
    .await;
}

/// [`wait_drained`] on a connection of the caller's (e.g. one that trusts a private CA).
pub async fn wait_drained_on(conn: &MultiplexedConnection, stream: &str, group: &str, timeout: Duration) {
    wait_until(timeout, "the group to read and ack everything", || {
        let mut conn = conn.clone();
        async move { backlog_on(&mut conn, stream, group).await == Some((0, 0)) }
    })
    .await;
}

/// The original ids of the entries in a dead-letter stream.
pub async fn dead_letter_ids(url: &str, dead_letter_stream: &str) -> HashSet<String> {
    let mut conn = connect(url).await;
    let entries: Vec<(String, HashMap<String, String>)> =
        cmd(&mut conn, &["XRANGE", dead_letter_stream, "-", "+"]).await;
    entries
        .into_iter()
        .filter_map(|(_, f)| f.get("streamq.original-id").cloned())
        .collect()
}

/// The ids in a stream.
pub async fn stream_ids(url: &str, stream: &str) -> HashSet<String> {
    let mut conn = connect(url).await;
    let mut ids = HashSet::new();
    let mut from = "-".to_owned();
    loop {
        let page: Vec<(String, HashMap<String, Value>)> =
            cmd(&mut conn, &["XRANGE", stream, &from, "+", "COUNT", "10000"]).await;
        let Some((last, _)) = page.last() else { break };
        from = format!("({last}");
        ids.extend(page.into_iter().map(|(id, _)| id));
    }
    ids
}
