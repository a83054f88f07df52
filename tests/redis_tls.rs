//! `rediss://` end to end: a private redis-server that listens ONLY on TLS
//! (`--port 0`), with a server certificate from a throw-away CA made by
//! `openssl`; the real operator provisions an external Queue on it, and
//! `streamq publish` and `streamq worker` move messages through it with the
//! URLs the operator wrote into the Queue's Secrets.
//!
//! How the CA is trusted: streamq's processes use redis's rustls backend,
//! which loads its roots with rustls-native-certs, and that honours
//! `SSL_CERT_FILE` (when set, only that file is trusted). The operator, the
//! publisher and the worker here get `SSL_CERT_FILE=<ca.crt>`; a run without it
//! must fail certificate verification, which proves the certificate is checked.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use serde_json::json;
use streamq::api::{Consumer, Queue};
use support::{hardening::*, *};

/// A CA and a server certificate for 127.0.0.1/localhost, made with openssl in `dir`.
fn make_certificates(dir: &Path) {
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "openssl failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 2 \
          -subj '/CN=streamq test CA' -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -new -nodes -newkey rsa:2048 -sha256 \
          -subj '/CN=localhost' -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\n\
keyUsage=digitalSignature,keyEncipherment\\nextendedKeyUsage=serverAuth\\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 2 \
          -extfile server.ext -out server.crt 2>/dev/null
        chmod 600 server.key");
}

/// A private redis-server with TLS only; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    password: String,
    dir: PathBuf,
}

impl TlsRedis {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let password = format!("tls-admin-{}", unique_name("pw"));
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", "server.crt", "--tls-key-file", "server.key"])
            .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
            .args(["--requirepass", &password, "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.to_str().unwrap()])
            .current_dir(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        Self {
            child,
            port,
            password,
            dir: dir.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("rediss://default:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// An admin connection over TLS, trusting exactly the test CA through
    /// redis's `TlsCertificates` (the test process's own trust store stays untouched).
    async fn admin(&self) -> ::redis::RedisResult<::redis::aio::MultiplexedConnection> {
        streamq::redis::install_tls_provider();
        let ca = std::fs::read(self.dir.join("ca.crt")).unwrap();
        let client = ::redis::Client::build_with_tls(
            self.url(),
            ::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            },
        )?;
        let config = ::redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        client.get_multiplexed_async_connection_with_config(&config).await
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- private redis-server log ---\n{}", self.log());
        }
    }
}

fn streamq(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamq"));
    cmd.args(args)
        .env_remove("STREAMQ_REDIS_URL")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn publish(url: &str, stream: &str, messages: usize, env: &[(&str, &str)]) -> std::process::Output {
    use std::io::Write;
    let mut child = streamq(&["publish", "--url", url, "--stream", stream, "-"], env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn streamq publish");
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..messages {
            writeln!(stdin, "tls message {i}").unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

async fn int_field(conn: &mut ::redis::aio::MultiplexedConnection, args: &[&str], field: &str) -> i64 {
    let groups: Vec<std::collections::HashMap<String, ::redis::Value>> = {
        let mut c = ::redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(conn).await.unwrap()
    };
    groups
        .first()
        .and_then(|g| g.get(field))
        .and_then(|v| ::redis::from_redis_value::<i64>(v.clone()).ok())
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_queue_provisions_and_carries_messages_over_tls_only() {
    let dir = std::env::temp_dir().join(unique_name("streamq-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let ca = dir.join("ca.crt");
    let ca = ca.to_str().unwrap();
    let redis = TlsRedis::start(&dir);

    // The server is up once a verified TLS connection answers PING.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut admin = loop {
        let error = match redis.admin().await {
            Ok(mut conn) => match run(&mut conn, &["PING"]).await {
                Ok(_) => break conn,
                Err(e) => e,
            },
            Err(e) => e,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "the TLS redis-server never answered: {error}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // TLS only: nothing answers plain RESP on that port, and there is no plain port.
    let plain = format!("redis://default:{}@127.0.0.1:{}/0", redis.password, redis.port);
    let plain_client = ::redis::Client::open(plain.as_str()).unwrap();
    let plain_attempt = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = plain_client.get_multiplexed_async_connection().await?;
        run(&mut c, &["PING"]).await
    })
    .await;
    assert!(
        !matches!(plain_attempt, Ok(Ok(_))),
        "a plain-TCP client got an answer from the TLS-only server"
    );
    let config: Vec<String> = ::redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(config, ["port", "0"], "the private server must have no plain-TCP port");

    let env = TestEnv::new("tls").await;
    let _op = Operator::start(&env.namespace, &[("SSL_CERT_FILE", ca)]);
    env.api::<Secret>()
        .create(&PostParams::default(), &secret("redis-admin", "url", &redis.url()))
        .await
        .unwrap();
    env.api::<Queue>()
        .create(&PostParams::default(), &external_queue("secure", json!({})))
        .await
        .unwrap();
    let q = wait_queue_ready(&env, "secure").await;
    let ready = queue_condition(&q, "Ready").unwrap();
    assert!(
        ready.message.contains(&format!("127.0.0.1:{}", redis.port)),
        "provisioned on the TLS server: {}",
        ready.message
    );
    let creds = QueueCredentials::read(&env, "secure").await;
    for url in [&creds.producer_url, &creds.consumer_url] {
        assert!(url.starts_with("rediss://"), "the Secrets keep the rediss scheme");
    }
    // Provisioned over TLS: the stream, the dead-letter stream and both users exist there.
    for key in [&creds.stream, &creds.dead_letter] {
        let kind = run(&mut admin, &["TYPE", key]).await.unwrap();
        assert_eq!(kind, ::redis::Value::SimpleString("stream".into()), "{key}");
    }
    for role in ["producer", "consumer"] {
        let user = format!("streamq.{}.secure.{role}", env.namespace);
        let found = run(&mut admin, &["ACL", "GETUSER", &user]).await.unwrap();
        assert_ne!(found, ::redis::Value::Nil, "ACL user {user} on the TLS server");
    }

    // A Consumer: the operator creates its group over TLS.
    let consumer: Consumer = serde_json::from_value(json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Consumer",
        "metadata": {"name": "workers"},
        "spec": {"queueRef": {"name": "secure"}, "replicas": 0,
                 "template": {"spec": {"containers": [{"name": "w", "image": "example.com/w:1"}]}}},
    }))
    .unwrap();
    env.api::<Consumer>()
        .create(&PostParams::default(), &consumer)
        .await
        .unwrap();
    poll(TIMEOUT, "the group `workers` on the TLS server", || {
        let mut admin = admin.clone();
        let stream = creds.stream.clone();
        async move {
            let groups: ::redis::RedisResult<Vec<std::collections::HashMap<String, ::redis::Value>>> =
                ::redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&stream)
                    .query_async(&mut admin)
                    .await;
            groups.is_ok_and(|g| {
                g.iter()
                    .any(|g| g.get("name") == Some(&::redis::Value::BulkString(b"workers".to_vec())))
            })
        }
    })
    .await;

    // Without the CA the certificate is refused: verification is real.
    let untrusted = publish(&creds.producer_url, &creds.stream, 1, &[]);
    assert!(
        !untrusted.status.success(),
        "publishing without trusting the CA must fail"
    );
    let stderr = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(stderr.contains("certificate"), "fails on the certificate: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // With the CA: 200 messages in as the producer, all processed by the worker as the consumer.
    let out = publish(&creds.producer_url, &creds.stream, 200, &[("SSL_CERT_FILE", ca)]);
    assert!(
        out.status.success(),
        "publish over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        run(&mut admin, &["XLEN", &creds.stream]).await.unwrap(),
        ::redis::Value::Int(200)
    );
    let worker_log = dir.join("worker.log");
    let mut worker = streamq(
        &["worker", "--", "sh", "-c", "cat > /dev/null"],
        &[
            ("SSL_CERT_FILE", ca),
            ("STREAMQ_REDIS_URL", &creds.consumer_url),
            ("STREAMQ_STREAM", &creds.stream),
            ("STREAMQ_GROUP", "workers"),
            ("STREAMQ_CONSUMER", "tls-w1"),
            ("STREAMQ_CONCURRENCY", "8"),
            ("STREAMQ_DEAD_LETTER_STREAM", &creds.dead_letter),
        ],
    )
    .stdout(std::fs::File::create(&worker_log).unwrap())
    .stderr(std::fs::File::create(dir.join("worker.err")).unwrap())
    .spawn()
    .expect("spawn streamq worker");
    let stream = creds.stream.clone();
    poll(TIMEOUT, "the worker to drain the stream over TLS", || {
        let mut admin = admin.clone();
        let stream = stream.clone();
        async move {
            let lag = int_field(&mut admin, &["XINFO", "GROUPS", &stream], "lag").await;
            let pending = int_field(&mut admin, &["XINFO", "GROUPS", &stream], "pending").await;
            lag == 0 && pending == 0
        }
    })
    .await;
    signal(worker.id(), "TERM");
    let status = worker.wait().unwrap();
    assert!(
        status.success(),
        "worker exited with {status}: {}",
        std::fs::read_to_string(dir.join("worker.err")).unwrap_or_default()
    );
    let processed: Option<i64> = ::redis::cmd("HGET")
        .arg(creds.stats("workers"))
        .arg("processed:tls-w1")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(processed, Some(200), "every message processed and accounted over TLS");
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
