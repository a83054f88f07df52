//! Exec mode: one child process per message, payload on stdin.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::Command,
};

use super::message::{HandlerError, Message, OUTPUT_TAIL};

/// Linux's MAX_ARG_STRLEN (32 pages of 4 KiB): the longest single
/// `NAME=value\0` string `execve` accepts.
const MAX_ENV_VAR: usize = 128 * 1024;

/// Env vars of the worker that must not leak into handlers.
const SECRET_ENV: &[&str] = &["STREAMQ_REDIS_URL"];

/// Runs `argv` for messages.
#[derive(Clone, Debug)]
pub struct ExecHandler {
    argv: Arc<[String]>,
}

impl ExecHandler {
    /// Checks that the program exists now, rather than failing every message.
    pub fn new(argv: Vec<String>) -> Result<Self, String> {
        let program = argv.first().ok_or_else(|| {
            "no handler: give a command after `--` (e.g. `streamq worker -- ./handle.sh`) or --http URL".to_owned()
        })?;
        if resolve(program).is_none() {
            return Err(format!("handler command {program:?} not found (or not executable)"));
        }
        Ok(Self { argv: argv.into() })
    }

    pub async fn handle(&self, msg: Message) -> Result<(), HandlerError> {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .env("STREAMQ_MESSAGE_ID", msg.id())
            .env("STREAMQ_DELIVERY_COUNT", msg.delivery_count().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            // Dropping the future (timeout, end of grace) kills the child.
            .kill_on_drop(true);
        for name in SECRET_ENV {
            cmd.env_remove(name);
        }
        for (name, value) in msg.headers() {
            // Headers the kernel would refuse are left out rather than
            // failing the message on every delivery: an env value cannot
            // hold NUL, and one `NAME=value` is capped at MAX_ARG_STRLEN.
            let env_name = header_env_name(name);
            if value.contains(&0) {
                tracing::warn!(
                    id = msg.id(),
                    header = name,
                    "header value contains NUL; not passed to the handler"
                );
                continue;
            }
            if env_name.len() + value.len() + 2 > MAX_ENV_VAR {
                tracing::warn!(
                    id = msg.id(),
                    header = name,
                    bytes = value.len(),
                    "header value too long for an environment variable; not passed to the handler"
                );
                continue;
            }
            cmd.env(env_name, OsStr::from_bytes(value));
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| HandlerError(format!("cannot start {:?}: {e}", self.argv[0])))?;

        let mut stdin = child.stdin.take();
        // Written while stderr is drained and the child awaited (joined
        // below), so a big payload cannot deadlock against a child that
        // writes before it reads.
        let payload = msg.clone();
        let write = async move {
            if let Some(stdin) = stdin.as_mut() {
                // A handler that does not read its stdin is fine: ignore EPIPE.
                let _ = stdin.write_all(payload.data()).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin);
        };
        let mut stderr = child.stderr.take();
        let read_tail = async move {
            let mut tail = Vec::new();
            let Some(stderr) = stderr.as_mut() else {
                return tail;
            };
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        // Pass it through so it shows in the worker's logs, and keep the end.
                        let _ = std::io::Write::write_all(&mut std::io::stderr(), &buf[..n]);
                        tail.extend_from_slice(&buf[..n]);
                        if tail.len() > 2 * OUTPUT_TAIL {
                            tail.drain(..tail.len() - OUTPUT_TAIL);
                        }
                    }
                }
            }
            tail
        };
        let ((), tail, status) = tokio::join!(write, read_tail, child.wait());
        let status = status.map_err(|e| HandlerError(format!("waiting for the handler: {e}")))?;
        if status.success() {
            return Ok(());
        }
        let how = match status.code() {
            Some(code) => format!("exit code {code}"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("killed by signal {}", status.signal().unwrap_or(0))
            }
        };
        Err(HandlerError::with_output(how, "stderr", &tail))
    }
}

/// `STREAMQ_HEADER_<NAME>`: uppercase, every non-alphanumeric → `_`.
pub fn header_env_name(field: &str) -> String {
    let mut name = String::with_capacity("STREAMQ_HEADER_".len() + field.len());
    name.push_str("STREAMQ_HEADER_");
    name.extend(field.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

fn resolve(program: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names() {
        assert_eq!(header_env_name("content-type"), "STREAMQ_HEADER_CONTENT_TYPE");
        assert_eq!(header_env_name("a.b c"), "STREAMQ_HEADER_A_B_C");
        assert_eq!(header_env_name("é"), "STREAMQ_HEADER__");
    }

    #[test]
    fn missing_command_is_an_error() {
        assert!(ExecHandler::new(vec![]).unwrap_err().contains("no handler"));
        assert!(
            ExecHandler::new(vec!["/nonexistent/x".into()])
                .unwrap_err()
                .contains("not found")
        );
        assert!(ExecHandler::new(vec!["sh".into()]).is_ok());
    }
}
