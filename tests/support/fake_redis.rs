//! A server that speaks just enough RESP to pass for Redis 6.2: it answers
//! INFO with that version and +OK to everything else.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Starts the server on a free port, for as long as the test's runtime lives; returns the port.
pub async fn fake_redis_6() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                // Each command is an array: *N, then $len/arg line pairs.
                while let Ok(Some(header)) = lines.next_line().await {
                    let Some(n) = header.strip_prefix('*').and_then(|n| n.parse::<usize>().ok()) else {
                        continue;
                    };
                    let mut args = vec![];
                    for _ in 0..n {
                        let _len = lines.next_line().await;
                        args.push(lines.next_line().await.ok().flatten().unwrap_or_default());
                    }
                    let reply = if args.first().is_some_and(|a| a.eq_ignore_ascii_case("INFO")) {
                        let body = "# Server\r\nredis_version:6.2.14\r\n";
                        format!("${}\r\n{body}\r\n", body.len())
                    } else {
                        "+OK\r\n".to_owned()
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}
