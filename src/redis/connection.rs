//! The one way streamq opens a Redis connection, for the operator, the
//! worker and the producer alike.

use std::time::Duration;

use ::redis::{AsyncConnectionConfig, Client, ConnectionAddr, aio::MultiplexedConnection};

use super::Error;

/// Where a Redis server is, without credentials: what per-queue URLs are built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: i64,
}

impl Endpoint {
    /// A URL for `user`, e.g. `redis://streamq.ns.q.consumer:pw@host:6379/0`.
    pub fn url_for(&self, user: &str, password: &str) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{user}:{password}@{host}:{}/{}", self.port, self.db)
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// How to open a connection.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// `CLIENT SETNAME`, so operators can tell clients apart in `CLIENT LIST`.
    pub client_name: Option<&'a str>,
    pub connect_timeout: Duration,
    /// Must exceed any `BLOCK` the connection will be used for.
    pub response_timeout: Duration,
}

/// Parses a URL without connecting. The error never repeats the URL: it may hold a password.
pub fn parse_url(url: &str) -> Result<(Client, Endpoint), Error> {
    super::install_tls_provider();
    let client =
        Client::open(url.trim()).map_err(|e| Error::InvalidUrl(e.detail().unwrap_or("unparsable").to_owned()))?;
    let info = client.get_connection_info();
    let (tls, host, port) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => (false, host.clone(), *port),
        ConnectionAddr::TcpTls { host, port, .. } => (true, host.clone(), *port),
        other => {
            return Err(Error::InvalidUrl(format!(
                "unsupported address {other:?}; use a TCP address"
            )));
        }
    };
    let db = info.redis_settings().db();
    Ok((client, Endpoint { tls, host, port, db }))
}

/// Opens a multiplexed connection to `url`, authenticated, and named when
/// asked. Returns where it points, for messages.
pub async fn open(url: &str, options: Options<'_>) -> Result<(MultiplexedConnection, Endpoint), Error> {
    let (client, endpoint) = parse_url(url)?;
    let target = endpoint.addr();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.response_timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| Error::classify(e, "AUTH", Some(&target)))?;
    if let Some(name) = options.client_name {
        ::redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(sanitize_client_name(name))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| Error::classify(e, "CLIENT SETNAME", Some(&target)))?;
    }
    Ok((conn, endpoint))
}

/// Client names may not contain spaces or newlines.
fn sanitize_client_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '-' })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        let t = redacted_target("redis://user:secret@example.com:6380/2");
        assert!(!t.contains("secret"), "{t}");
        assert!(t.contains("example.com:6380"), "{t}");
    }

    #[test]
    fn malformed_urls_are_refused_without_echoing_them() {
        for bad in ["http://u:secret@host", "not a url", "redis://u:secret@:0/x"] {
            let err = parse_url(bad).err().map(|e| e.to_string()).unwrap_or_default();
            if !err.is_empty() {
                assert!(!err.contains("secret"), "{err}");
            }
        }
        assert!(parse_url("http://u:secret@host").is_err());
    }

    #[test]
    fn endpoint_urls_round_trip() {
        let (_, ep) = parse_url("redis://admin:pw@redis.example:6380/2").unwrap();
        assert_eq!(
            ep,
            Endpoint {
                tls: false,
                host: "redis.example".into(),
                port: 6380,
                db: 2
            }
        );
        let url = ep.url_for("streamq.ns.q.producer", "abc");
        assert_eq!(url, "redis://streamq.ns.q.producer:abc@redis.example:6380/2");
        assert_eq!(parse_url(&url).unwrap().1, ep);
    }
}
