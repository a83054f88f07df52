//! All Redis I/O of streamq lives under this module: the operator's
//! provisioning and sampling, and the worker runtime's and producer's stream
//! commands.

pub mod acl;
pub mod admin;
pub mod keys;
pub mod pool;
pub mod sampler;
pub mod stream;

/// Makes `rediss://` URLs usable: redis's rustls backend takes the process-wide
/// crypto provider and fails without one. streamq uses ring, like its
/// Kubernetes client. Idempotent and cheap, so every place that opens a Redis
/// client calls it, and the library works without any set-up by its user.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means a provider is installed already (by the embedding program), which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
