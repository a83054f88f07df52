//! Administrative connections, one per Redis URL, reused across resyncs so a
//! resync costs its round trips and not a fresh connection each time.

use std::collections::HashMap;

use tokio::sync::Mutex;

use super::{
    Error,
    admin::{self, Admin},
};

#[derive(Default)]
pub struct AdminPool {
    // Keyed by the full URL, credentials included: a rotated password is a new entry.
    connections: Mutex<HashMap<String, Admin>>,
}

impl AdminPool {
    pub async fn get(&self, url: &str) -> Result<Admin, Error> {
        if let Some(admin) = self.connections.lock().await.get(url) {
            return Ok(admin.clone());
        }
        // Boxed: a connect is rare, and inline its future would enlarge every caller's.
        let admin = Box::pin(admin::connect(url)).await?;
        self.connections.lock().await.insert(url.to_owned(), admin.clone());
        Ok(admin)
    }

    /// Drops a connection after an error, so the next use reconnects (and re-checks the server).
    pub async fn forget(&self, url: &str) {
        self.connections.lock().await.remove(url);
    }
}
