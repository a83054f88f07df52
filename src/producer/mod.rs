//! The producer behind `streamq publish`: [`Producer`] appends messages to a
//! queue's stream, the payload in the `data` field and headers as further
//! fields. Batches go out as one pipeline.

use std::time::Duration;

use ::redis::aio::MultiplexedConnection;

use crate::redis::{self, keys, stream};

/// Errors of the producer.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("invalid header {0:?}: write it as name=value, with a name other than `data`")]
    InvalidHeader(String),
    #[error(transparent)]
    Connect(#[from] redis::Error),
    /// Some XADDs of a batch failed; the others went in.
    #[error("{published} of {attempted} messages published; {failed} failed: {first_error}")]
    Partial {
        published: usize,
        attempted: usize,
        failed: usize,
        first_error: String,
        /// Ids of the messages that went in.
        ids: Vec<String>,
    },
    /// The round trip failed: it is unknown which messages of the batch went in.
    #[error("XADD of {attempted} messages failed ({source}); unknown how many of them went in")]
    Unknown {
        attempted: usize,
        #[source]
        source: ::redis::RedisError,
    },
}

/// One outgoing message: payload and headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewMessage {
    fields: Vec<(String, Vec<u8>)>,
}

impl NewMessage {
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        Self {
            fields: vec![(keys::DATA_FIELD.to_owned(), data.into())],
        }
    }

    /// Adds a header (a stream field beside `data`). A header named `data`
    /// would shadow the payload and is rejected.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Result<Self, ProducerError> {
        let name = name.into();
        if name.is_empty() || name == keys::DATA_FIELD {
            return Err(ProducerError::InvalidHeader(name));
        }
        self.fields.push((name, value.into()));
        Ok(self)
    }
}

/// Publishes to one stream. Cheap to clone; clones share the connection and
/// may publish concurrently (their pipelines interleave on the wire).
///
/// ```no_run
/// use streamq::producer::{NewMessage, Producer};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let producer = Producer::connect("redis://127.0.0.1/", "orders").await?;
/// let id = producer.publish(NewMessage::new("order 42").header("tenant", "acme")?).await?;
/// println!("published {id}");
/// let ids = producer
///     .publish_batch(&[NewMessage::new("a"), NewMessage::new("b")])
///     .await?;
/// assert_eq!(ids.len(), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Producer {
    conn: MultiplexedConnection,
    stream: String,
}

impl Producer {
    pub async fn connect(redis_url: &str, stream: impl Into<String>) -> Result<Self, ProducerError> {
        let conn = stream::connect(redis_url, "streamq-publish", Duration::from_secs(30)).await?;
        Ok(Self {
            conn,
            stream: stream.into(),
        })
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Appends one message; returns its id.
    pub async fn publish(&self, message: NewMessage) -> Result<String, ProducerError> {
        let mut ids = self.publish_batch(std::slice::from_ref(&message)).await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Appends `messages` in one pipeline; returns their ids in order. When
    /// some fail, the error says how many went in (and which).
    pub async fn publish_batch(&self, messages: &[NewMessage]) -> Result<Vec<String>, ProducerError> {
        let mut conn = self.conn.clone();
        let results = stream::add_batch(&mut conn, &self.stream, messages.iter().map(|m| m.fields.as_slice()))
            .await
            .map_err(|source| ProducerError::Unknown {
                attempted: messages.len(),
                source,
            })?;
        let attempted = messages.len();
        let mut ids = Vec::with_capacity(attempted);
        let mut first_error = None;
        for r in results {
            match r {
                Ok(id) => ids.push(id),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(ids),
            Some(e) => Err(ProducerError::Partial {
                published: ids.len(),
                attempted,
                failed: attempted - ids.len(),
                first_error: e.to_string(),
                ids,
            }),
        }
    }
}
