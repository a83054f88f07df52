//! The HTTP endpoints every long-running streamq process serves: /metrics,
//! /healthz and /readyz (the operator, and `streamq worker --metrics-addr`).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

#[derive(Clone)]
struct AppState {
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    ready: Arc<AtomicBool>,
}

/// Serves until `shutdown` resolves. `ready` turns /readyz green once the
/// controllers' caches are filled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx_metrics: impl Fn() -> String + Send + Sync + 'static,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState {
        metrics: Arc::new(ctx_metrics),
        ready,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (state.metrics)(),
    )
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not yet synced")
    }
}
