//! kubectl, run against the local control plane (KUBECONFIG from tests/cluster/up).

use std::process::{Command, Output, Stdio};

use super::{env::repo_root, process::stdout_ok};

fn command(namespace: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new("kubectl");
    if let Some(ns) = namespace {
        cmd.args(["-n", ns]);
    }
    cmd.args(args).current_dir(repo_root());
    cmd
}

pub fn kubectl(namespace: Option<&str>, args: &[&str]) -> Output {
    command(namespace, args)
        .output()
        .expect("run kubectl (is tests/cluster/up's PATH exported?)")
}

/// Runs kubectl and fails the test unless it succeeds; returns its stdout.
pub fn kubectl_ok(namespace: Option<&str>, args: &[&str]) -> String {
    stdout_ok(&format!("kubectl {args:?}"), kubectl(namespace, args))
}

/// Runs kubectl with `stdin` as its input.
pub fn kubectl_stdin(namespace: Option<&str>, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = command(namespace, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}
