//! HTTP mode: POST each message to a local endpoint (the sidecar pattern).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri, header::HeaderValue};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::message::{HandlerError, Message};

/// POSTs messages to one URL. Headers: `X-Streamq-Message-Id`,
/// `X-Streamq-Delivery-Count`, and `X-Streamq-Header-<field>` per message
/// field. A 2xx response acks.
#[derive(Clone, Debug)]
pub struct HttpHandler {
    uri: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpHandler {
    pub fn new(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("invalid --http URL {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "invalid --http URL {url:?}: scheme {other:?} not supported; the handler is a local sidecar, use http://"
                ));
            }
            None => return Err(format!("invalid --http URL {url:?}: give it as http://host:port/path")),
        }
        if uri.host().is_none() {
            return Err(format!("invalid --http URL {url:?}: no host"));
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self { uri, client })
    }

    pub async fn handle(&self, msg: Message) -> Result<(), HandlerError> {
        let mut req = Request::post(self.uri.clone())
            .header("content-type", "application/octet-stream")
            .header("x-streamq-message-id", msg.id())
            .header("x-streamq-delivery-count", msg.delivery_count());
        for (name, value) in msg.headers() {
            let Ok(value) = HeaderValue::from_bytes(value) else {
                tracing::warn!(id = msg.id(), header = name, "header value not valid in HTTP; not sent");
                continue;
            };
            req = req.header(format!("x-streamq-header-{}", header_token(name)), value);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(msg.data())))
            .map_err(|e| HandlerError(format!("cannot build the request: {e}")))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| HandlerError(format!("POST {}: {e:#}", self.uri)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            return Ok(());
        }
        Err(HandlerError::with_output(
            format!("HTTP status {status}"),
            "body",
            &body,
        ))
    }
}

/// A field name as an HTTP header token: lowercase alphanumerics and `-`.
fn header_token(field: &str) -> String {
    field
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_urls() {
        assert!(HttpHandler::new("https://x/").unwrap_err().contains("http://"));
        assert!(HttpHandler::new("not a url").is_err());
        assert!(HttpHandler::new("http://127.0.0.1:8080/work").is_ok());
        assert_eq!(header_token("Trace_ID"), "trace-id");
    }
}
