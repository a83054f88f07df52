//! All Redis I/O of streamq lives under this module: one connect path
//! (`connection`), one error type with one classification (`Error`), one
//! family of reply parsers (`reply`), and the commands of the operator's
//! provisioning (`admin`, `acl`) and sampling (`sampler`), with their Lua
//! scripts sent by SHA1 (`script`), and of the worker runtime and producer
//! (`stream`).

pub mod acl;
pub mod admin;
pub mod connection;
mod error;
pub mod keys;
pub mod pool;
pub mod reply;
pub mod sampler;
mod script;
pub mod stream;

pub use error::Error;

/// Makes `rediss://` URLs usable: redis's rustls backend takes the process-wide
/// crypto provider and fails without one.
///
/// Which CAs are trusted: redis's rustls backend loads the roots with
/// rustls-native-certs, i.e. the system store (`/etc/ssl/certs`), or only the
/// PEM file in `SSL_CERT_FILE` (or the directories in `SSL_CERT_DIR`) when set.
/// That holds for every streamq process alike (operator, `worker`, `publish`),
/// so a private CA is trusted by mounting it and setting `SSL_CERT_FILE` in
/// the operator's and the worker pods' environment; tests/redis_tls.rs proves
/// it, and that a process without the CA is refused. There is deliberately no
/// per-Queue CA field: the operator could use it, but the workers, which run
/// the user's pod template, would still need the file, so one mechanism for all
/// is the less surprising contract. Certificates are always verified:
/// `rediss://…#insecure` is refused (redis is built without
/// `tls-rustls-insecure`). streamq uses ring, like its
/// Kubernetes client. Idempotent and cheap, so every place that opens a Redis
/// client calls it, and the library works without any set-up by its user.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means a provider is installed already (by the embedding program), which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
