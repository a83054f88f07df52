//! Child processes: the `streamq` binary, signals, liveness, and processes
//! that die with the test.

use std::{
    ffi::OsStr,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use super::wait::poll;

pub const STREAMQ: &str = env!("CARGO_BIN_EXE_streamq");

/// `streamq <args>` with none of the caller's Redis settings or trust store:
/// what the child needs, the test gives it.
pub fn streamq_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(STREAMQ);
    cmd.args(args)
        .env_remove("STREAMQ_REDIS_URL")
        .env_remove("STREAMQ_STREAM")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env("NO_COLOR", "1");
    cmd
}

/// Starts `streamq <args>` with `env`, logging at info to `log`, in a
/// process group of its own: killing the group takes its handlers down too.
pub fn spawn_worker<K, V>(args: &[&str], env: impl IntoIterator<Item = (K, V)>, log: &Path) -> Child
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let (stdout, stderr) = log_file(log);
    streamq_cmd(args)
        .envs(env)
        .env("RUST_LOG", "streamq=info")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .expect("spawn streamq worker")
}

/// Runs `streamq` to completion with `env`, stdin from `input`.
pub fn run_streamq(args: &[&str], env: &[(&str, &str)], input: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = streamq_cmd(args)
        .envs(env.iter().copied())
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn streamq");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("wait for streamq")
}

/// `streamq publish --url <url> --stream <stream> <args>` to completion, with
/// `env`, stdin from `input`.
pub fn publish(url: &str, stream: &str, args: &[&str], env: &[(&str, &str)], input: Option<&[u8]>) -> Output {
    let mut all = vec!["publish", "--url", url, "--stream", stream];
    all.extend_from_slice(args);
    run_streamq(&all, env, input)
}

pub fn assert_clean_failure(out: &Output, expect_in_stderr: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    assert!(
        stderr.contains(expect_in_stderr),
        "stderr should contain {expect_in_stderr:?}:\n{stderr}"
    );
}

/// The stdout of a command that must have succeeded; `what` names it in the failure.
#[track_caller]
pub fn stdout_ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn signal(pid: u32, sig: &str) {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
}

/// Stdout and stderr for a child process, both appended to the file at `path`.
pub fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    (file.try_clone().unwrap().into(), file.into())
}

/// Whether a process is alive (a zombie, or one being reaped, is not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(|c| c != 'Z' && c != 'X'))
        })
        .unwrap_or(false)
}

/// Waits until `child` exits; fails the test with `what` after `within`.
pub async fn wait_exit(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    poll(within, what, || {
        let exited = child.try_wait().expect("try_wait");
        async move { exited.ok_or_else(String::new) }
    })
    .await
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
