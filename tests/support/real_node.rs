//! The local cluster's real node (a kubelet with containerd; tests/cluster/up):
//! namespaces whose pods run there, the images those pods run, and the
//! harness port where a test serves its pods.

use std::{net::SocketAddr, process::Command, time::Duration};

use super::{TestEnv, kubectl_ok, repo_root};

/// Real pods pull nothing: the images are built from this build's binary.
pub const IMAGE_TAG: &str = "0.1.0";
/// Pods on the real node start in seconds, but a managed Redis also binds a volume.
pub const POD_TIMEOUT: Duration = Duration::from_secs(180);

/// The streamq image, distroless: what the chart and a Consumer's workers run.
pub fn streamq_image() -> String {
    format!("ghcr.io/streamq/streamq:{IMAGE_TAG}")
}

/// The same plus busybox as `/bin/sh`, for exec-mode workers and scripts.
pub fn shell_image() -> String {
    format!("ghcr.io/streamq/streamq:{IMAGE_TAG}-shell")
}

pub fn real_node() -> String {
    env_var("STREAMQ_REAL_NODE")
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is unset: the local cluster has no real node; run eval \"$(tests/cluster/up)\" with STREAMQ_REAL_NODE unset or 1"
        )
    })
}

/// Where a test listens for its pods (on this machine's loopback), and the URL
/// the pods use for it: the host forwards that one port from the node to it.
pub fn harness_endpoint() -> (SocketAddr, String) {
    let addr = env_var("STREAMQ_HARNESS_ADDR")
        .parse()
        .expect("STREAMQ_HARNESS_ADDR is host:port");
    (addr, env_var("STREAMQ_POD_HARNESS_URL"))
}

/// The shared redis-server at the address pods reach (this machine reaches it there too).
pub fn pod_redis_url() -> String {
    env_var("STREAMQ_POD_REDIS_URL")
}

/// Builds and imports the streamq images (`:<tag>` and `:<tag>-shell`) from
/// the binary under test; cached by content, so repeated calls are cheap.
pub fn build_images() {
    let out = Command::new(repo_root().join("tests/cluster/images/build"))
        .args(["--streamq", env!("CARGO_BIN_EXE_streamq"), "--tag", IMAGE_TAG])
        .output()
        .expect("run tests/cluster/images/build");
    assert!(
        out.status.success(),
        "images/build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test namespace whose pods run on the real node, with the images built.
pub async fn real_env(prefix: &str) -> TestEnv {
    let node = real_node();
    let env = TestEnv::new(prefix).await;
    env.label_namespace(&["streamq.dev/real-node=true"]);
    build_images();
    let ready = kubectl_ok(
        None,
        &[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    );
    assert_eq!(ready.trim(), "True", "node {node} is not Ready");
    env
}
