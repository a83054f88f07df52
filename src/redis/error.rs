//! The one error type of streamq's Redis I/O, and the one place a Redis
//! client error is classified. Messages are phrased for the person who must
//! act on them and never hold a credential.

use ::redis::{ErrorKind, RedisError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Redis URL: {0}; expected redis://[user:password@]host:port[/db] or rediss://…")]
    InvalidUrl(String),
    #[error("Redis at {target} rejected the credentials: check the user name and password in the URL ({detail})")]
    Authentication { target: String, detail: String },
    #[error("cannot connect to Redis at {target}: {detail}")]
    Unreachable { target: String, detail: String },
    #[error(
        "Redis {version} at {target} is too old: streamq needs Redis or Valkey 7.0 or newer (consumer-group lag arrived in 7.0)"
    )]
    UnsupportedVersion { target: String, version: String },
    #[error("key {key:?} holds a {kind}, not a stream: delete it or give the Queue another streamKey")]
    WrongType { key: String, kind: String },
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

impl Error {
    /// Classifies a client error of `command`. With the server's `target`
    /// known, connection trouble is `Unreachable`; without it (a command on a
    /// connection the caller holds) it stays a transient `Command` error.
    pub fn classify(source: RedisError, command: &'static str, target: Option<&str>) -> Self {
        let auth =
            source.kind() == ErrorKind::AuthenticationFailed || matches!(source.code(), Some("WRONGPASS" | "NOAUTH"));
        if auth {
            return Self::Authentication {
                target: target.unwrap_or("the server").to_owned(),
                detail: source.to_string(),
            };
        }
        if source.code() == Some("NOPERM") {
            return Self::NoPermission {
                command,
                detail: source.detail().unwrap_or_default().to_owned(),
            };
        }
        // E.g. `rediss://…#insecure`, which streamq refuses: the URL asks for what cannot be done.
        if source.kind() == ErrorKind::InvalidClientConfig {
            return Self::InvalidUrl(source.to_string());
        }
        match target {
            Some(target) if is_connection_trouble(&source) => Self::Unreachable {
                target: target.to_owned(),
                detail: source.to_string(),
            },
            _ => Self::Command { command, source },
        }
    }

    /// Whether retrying later may help (connection trouble), as opposed to a
    /// problem only a person can fix.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Command { source, .. } => is_connection_trouble(source),
            _ => false,
        }
    }
}

fn is_connection_trouble(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_refusal() || e.is_connection_dropped()
}
