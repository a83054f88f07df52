//! Logging. Kept apart from metrics: logs are for reading one event,
//! metrics for watching many.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines on stderr.
    #[default]
    Text,
    /// One JSON object per line on stdout, for log collectors.
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default
/// `info` level, e.g. `RUST_LOG=streamq=debug,kube=info`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(fmt::layer().json().with_current_span(true)).init(),
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr)).init(),
    }
}
