//! What the workers' handlers saw, and the fault table's row made from it:
//! - [`Sink`]: the HTTP endpoint `streamq worker --http` POSTs to; counts
//!   deliveries per message id, fails poison messages;
//! - [`Tally`]: published, acked, dead-lettered, lost and duplicated messages.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::task::JoinHandle;

/// What the handlers saw.
#[derive(Clone, Debug, Default)]
pub struct Deliveries {
    /// Successful handler runs per message id (a count above 1 is a duplicate).
    pub handled: HashMap<String, u32>,
    /// Deliveries with a delivery count above 1: messages redelivered after a
    /// worker died, failed, or gave them up.
    pub redelivered: u64,
    /// Handler runs that failed on purpose (poison messages).
    pub failed: u64,
}

impl Deliveries {
    /// Records one delivery; `Err` for a poison message (its payload starts with "poison").
    pub fn record(&mut self, id: &str, delivery_count: u64, data: &[u8]) -> Result<(), ()> {
        if delivery_count > 1 {
            self.redelivered += 1;
        }
        if data.starts_with(b"poison") {
            self.failed += 1;
            return Err(());
        }
        *self.handled.entry(id.to_owned()).or_default() += 1;
        Ok(())
    }
}

/// The HTTP endpoint `streamq worker --http` POSTs every message to. It
/// takes `delay` per message (so that workers have messages in flight),
/// answers 500 to poison messages and 200 to the rest.
pub struct Sink {
    pub url: String,
    pub deliveries: Arc<Mutex<Deliveries>>,
    server: JoinHandle<()>,
}

impl Sink {
    pub async fn start(delay: Duration) -> Self {
        use axum::{Router, body::Bytes, http::HeaderMap, http::StatusCode, routing::post};
        let deliveries: Arc<Mutex<Deliveries>> = Arc::default();
        let seen = deliveries.clone();
        let app = Router::new().route(
            "/",
            post(move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let id = header("x-streamq-message-id");
                    let count = header("x-streamq-delivery-count").parse().unwrap_or(0);
                    match seen.lock().unwrap().record(&id, count, &body) {
                        Ok(()) => StatusCode::OK,
                        Err(()) => StatusCode::INTERNAL_SERVER_ERROR,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the sink serves");
        });
        Self {
            url,
            deliveries,
            server,
        }
    }

    pub fn snapshot(&self) -> Deliveries {
        self.deliveries.lock().unwrap().clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One row of the fault table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    pub fault: String,
    pub published: usize,
    pub acked: usize,
    pub dead_lettered: usize,
    pub lost: usize,
    pub duplicates: u64,
}

impl Tally {
    /// `published`: ids Redis acknowledged to the producer; `dead`: original
    /// ids found in the dead-letter stream.
    pub fn new(fault: &str, published: &[String], seen: &Deliveries, dead: &HashSet<String>) -> Self {
        let mut t = Self {
            fault: fault.to_owned(),
            published: published.len(),
            acked: 0,
            dead_lettered: 0,
            lost: 0,
            duplicates: 0,
        };
        for id in published {
            let handled = seen.handled.get(id).copied().unwrap_or(0);
            t.duplicates += u64::from(handled.saturating_sub(1));
            if dead.contains(id) {
                t.dead_lettered += 1;
            } else if handled > 0 {
                t.acked += 1;
            } else {
                t.lost += 1;
            }
        }
        t
    }

    /// Prints the table row (grep `chaos-row`).
    pub fn print(&self) {
        println!("chaos-row: | fault | published | acked | dead-lettered | lost | duplicates |");
        println!(
            "chaos-row: | {} | {} | {} | {} | {} | {} |",
            self.fault, self.published, self.acked, self.dead_lettered, self.lost, self.duplicates
        );
    }

    /// Prints the row and fails the test if a message was lost.
    pub fn report_and_assert_none_lost(&self) {
        self.print();
        assert!(self.published > 0, "nothing was published: the scenario proves nothing");
        assert_eq!(self.lost, 0, "messages lost: {self:?}");
        assert_eq!(self.acked + self.dead_lettered, self.published, "{self:?}");
    }
}
