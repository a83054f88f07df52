//! The operator, `streamq run`, as a child process of the test.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus},
    time::Duration,
};

use super::{
    env::TIMEOUT,
    process::{STREAMQ, free_port, log_file, signal, wait_exit},
    wait::poll,
};

/// A `streamq run` child process, killed when dropped; its log is printed if the test failed.
pub struct Operator {
    child: Child,
    pub metrics_addr: String,
    log: PathBuf,
}

impl Operator {
    pub fn start(namespace: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::start_with(namespace, &[], extra_env)
    }

    pub fn start_with(namespace: &str, extra_args: &[&str], extra_env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("streamq-operator-{namespace}-{port}.log"));
        let (stdout, stderr) = log_file(&log);
        // Tests resync every 2 s unless they choose otherwise.
        let resync: &[&str] = if extra_args.contains(&"--resync-interval") {
            &[]
        } else {
            &["--resync-interval", "2s"]
        };
        let child = Command::new(STREAMQ)
            .args(["run", "--namespace", namespace, "--metrics-addr", &metrics_addr])
            .args(resync)
            .args(extra_args)
            .env("RUST_LOG", "info,streamq=debug")
            .envs(extra_env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start streamq run");
        Self {
            child,
            metrics_addr,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs a path of the operator's HTTP endpoint, retrying until it answers.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let what = format!("the operator to answer on {}", self.metrics_addr);
        poll(TIMEOUT, &what, || async {
            http_get(&self.metrics_addr, path).await.map_err(|e| e.to_string())
        })
        .await
    }

    /// Waits until /readyz answers 200: the process has started (signal
    /// handlers included) and, with leader election, takes part in it.
    pub async fn wait_ready(&self) {
        poll(TIMEOUT, "the operator to be ready", || async {
            match self.get("/readyz").await {
                (200, _) => Ok(()),
                (code, body) => Err(format!("/readyz answers {code} {body}")),
            }
        })
        .await
    }

    /// Waits until the operator's log has a line with `needle`.
    pub async fn wait_log(&self, needle: &str) {
        poll(TIMEOUT, &format!("{needle:?} in the operator log"), || async {
            if self.logs().contains(needle) {
                Ok(())
            } else {
                Err(String::new())
            }
        })
        .await
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        wait_exit(&mut self.child, within, "the operator to exit").await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self, within: Duration) -> ExitStatus {
        signal(self.child.id(), "TERM");
        wait_exit(&mut self.child, within, "the operator to exit on SIGTERM").await
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- operator log ({}) ---\n{}", self.log.display(), self.logs());
        }
    }
}

/// A minimal HTTP/1.0 GET, enough for the operator's own endpoints.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await?;
    let status = buf.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
