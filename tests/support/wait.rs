//! Waiting on conditions, with a timeout: never a sleep as synchronisation.

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// How often a condition is checked again.
pub const POLL: Duration = Duration::from_millis(100);

/// Checks `check` every [`POLL`] until it yields a value. Fails the test after
/// `timeout`, with `what` and the last reason `check` gave for not yet.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll_every(POLL, timeout, what, check).await
}

/// [`poll`] at another pace, for checks that are costly to repeat.
pub async fn poll_every<T, F, Fut>(every: Duration, timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let why = match check().await {
            Ok(value) => return value,
            Err(why) => why,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}{}{why}",
            if why.is_empty() { "" } else { ": " }
        );
        tokio::time::sleep(every).await;
    }
}

/// Waits until `cond` holds; fails the test with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(timeout, what, || {
        let holds = cond();
        async move { if holds.await { Ok(()) } else { Err(String::new()) } }
    })
    .await
}
