//! The control plane's kube-apiserver, found through
//! `$STREAMQ_CLUSTER_DIR/pids`, killed and restarted with its own command line.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use super::{
    env::cluster_dir,
    kubectl::kubectl,
    process::{log_file, signal},
    wait::wait_until,
};

fn apiserver_pid_file() -> PathBuf {
    cluster_dir().join("pids/kube-apiserver.pid")
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// SIGKILLs the control plane's kube-apiserver (the pid tests/cluster/up
/// recorded) and waits until it is gone; returns its command line.
pub async fn kill_apiserver() -> Vec<String> {
    let pid: u32 = std::fs::read_to_string(apiserver_pid_file())
        .expect("the kube-apiserver pid file")
        .trim()
        .parse()
        .expect("a pid");
    let argv = cmdline(pid);
    assert!(
        argv.first().is_some_and(|a| a.ends_with("kube-apiserver")),
        "pid {pid} is not kube-apiserver: {argv:?}"
    );
    signal(pid, "KILL");
    // Gone, or a zombie (empty cmdline) waiting for its reaper.
    wait_until(Duration::from_secs(30), "kube-apiserver to die", || async move {
        cmdline(pid).is_empty()
    })
    .await;
    argv
}

/// Starts kube-apiserver with `argv`, detached and logging where
/// tests/cluster/up has it log, records its pid for tests/cluster/down, and
/// waits for /readyz.
pub async fn start_apiserver(argv: &[String]) {
    let (stdout, stderr) = log_file(&cluster_dir().join("logs/kube-apiserver.log"));
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .expect("restart kube-apiserver");
    std::fs::write(apiserver_pid_file(), format!("{}\n", child.id())).expect("write the pid file");
    // Reaped here should it die while the tests run; it outlives them otherwise,
    // like the one tests/cluster/up started (tests/cluster/down stops it by pid).
    let mut child = child;
    std::thread::spawn(move || child.wait());
    wait_until(Duration::from_secs(120), "kube-apiserver /readyz", || async {
        kubectl(None, &["get", "--raw", "/readyz"]).status.success()
    })
    .await;
}
