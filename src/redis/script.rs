//! The operator's Lua scripts, sent by their SHA1 (`EVALSHA`): the text of
//! one runs to kilobytes, and sending it with every call would make Redis
//! hash it each time, for every Queue at every resync and every stream every
//! second. A server that does not know a script yet (first use, a restart,
//! `SCRIPT FLUSH`) answers `NOSCRIPT`; [`Lua::query`] loads it and repeats the
//! round trip, which the scripts and the commands beside them allow: each
//! is idempotent or reads only.

use std::sync::OnceLock;

use ::redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisResult, ServerErrorKind, aio::MultiplexedConnection,
};

/// A script and its SHA1, computed on first use.
pub struct Lua {
    text: &'static str,
    sha: OnceLock<String>,
}

impl Lua {
    pub const fn new(text: &'static str) -> Self {
        Self {
            text,
            sha: OnceLock::new(),
        }
    }

    /// `EVALSHA <sha>`: the caller adds the key count, keys and arguments.
    pub fn call(&self) -> Cmd {
        let sha = self
            .sha
            .get_or_init(|| ::redis::Script::new(self.text).get_hash().to_owned());
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(sha.as_str());
        cmd
    }

    /// Runs `pipe`, which calls this script; when `missing` finds that the
    /// server did not know it, teaches the server the script and runs `pipe`
    /// once more.
    pub async fn query<T: FromRedisValue>(
        &self,
        conn: &mut MultiplexedConnection,
        pipe: &Pipeline,
        missing: impl Fn(&RedisResult<T>) -> bool,
    ) -> RedisResult<T> {
        let first = pipe.query_async(conn).await;
        if !missing(&first) {
            return first;
        }
        ::redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(self.text)
            .query_async::<String>(conn)
            .await?;
        pipe.query_async(conn).await
    }
}

/// The usual `missing` of [`Lua::query`]: the whole round trip failed with `NOSCRIPT`.
pub fn round_trip_missed<T>(reply: &RedisResult<T>) -> bool {
    reply.as_ref().is_err_and(is_missing)
}

/// Whether a reply says the server does not know the script.
pub fn is_missing(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}
