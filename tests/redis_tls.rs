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

use std::{path::Path, process::Command, time::Duration};

use serde_json::json;
use support::{redis_server::RedisServer, *};

/// A CA and a server certificate for 127.0.0.1/localhost, made with openssl in `dir`.
fn make_certificates(dir: &Path) {
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("run sh");
        stdout_ok("openssl", out);
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

/// A private redis-server with TLS only.
struct TlsRedis {
    server: RedisServer,
    port: u16,
    password: String,
}

impl TlsRedis {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let password = format!("tls-admin-{}", unique_name("pw"));
        let args = [
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            "no",
            "--requirepass",
            &password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        Self {
            server: RedisServer::start(dir.to_owned(), args),
            port,
            password,
        }
    }

    fn url(&self) -> String {
        format!("rediss://default:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    /// An admin connection over TLS, trusting exactly the test CA through
    /// redis's `TlsCertificates` (the test process's own trust store stays untouched).
    async fn admin(&self) -> ::redis::RedisResult<::redis::aio::MultiplexedConnection> {
        streamq::redis::install_tls_provider();
        let ca = std::fs::read(self.server.dir.join("ca.crt")).unwrap();
        let client = ::redis::Client::build_with_tls(
            self.url(),
            ::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            },
        )?;
        client
            .get_multiplexed_async_connection_with_config(&patient_redis())
            .await
    }
}

/// `streamq publish` of `messages` lines to `stream`.
fn publish_lines(url: &str, stream: &str, messages: usize, env: &[(&str, &str)]) -> std::process::Output {
    let lines: String = (0..messages).map(|i| format!("tls message {i}\n")).collect();
    publish(url, stream, &["-"], env, Some(lines.as_bytes()))
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
    let mut admin = poll(Duration::from_secs(20), "the TLS redis-server to answer", || async {
        let mut conn = redis.admin().await.map_err(|e| e.to_string())?;
        try_cmd(&mut conn, &["PING"]).await.map_err(|e| e.to_string())?;
        Ok(conn)
    })
    .await;
    // TLS only: nothing answers plain RESP on that port, and there is no plain port.
    let plain = format!("redis://default:{}@127.0.0.1:{}/0", redis.password, redis.port);
    let plain_client = ::redis::Client::open(plain.as_str()).unwrap();
    let plain_attempt = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = plain_client.get_multiplexed_async_connection().await?;
        try_cmd(&mut c, &["PING"]).await
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
    env.create_admin_secret_for(&redis.url()).await;
    env.create(&external_queue("secure", json!({}))).await;
    let q = wait_provisioned(&env, "secure").await;
    let ready = q.condition("Ready").unwrap();
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
        let kind = try_cmd(&mut admin, &["TYPE", key]).await.unwrap();
        assert_eq!(kind, ::redis::Value::SimpleString("stream".into()), "{key}");
    }
    for role in ["producer", "consumer"] {
        let user = format!("streamq.{}.secure.{role}", env.namespace);
        let found = try_cmd(&mut admin, &["ACL", "GETUSER", &user]).await.unwrap();
        assert_ne!(found, ::redis::Value::Nil, "ACL user {user} on the TLS server");
    }

    // A Consumer: the operator creates its group over TLS.
    env.create(&consumer("workers", "secure", json!({"replicas": 0}))).await;
    wait_until(TIMEOUT, "the group `workers` on the TLS server", || {
        let mut admin = admin.clone();
        let stream = creds.stream.clone();
        async move { group_info(&mut admin, &stream, "workers").await.is_some() }
    })
    .await;

    // Without the CA the certificate is refused: verification is real.
    let untrusted = publish_lines(&creds.producer_url, &creds.stream, 1, &[]);
    assert!(
        !untrusted.status.success(),
        "publishing without trusting the CA must fail"
    );
    let stderr = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(stderr.contains("certificate"), "fails on the certificate: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // With the CA: 200 messages in as the producer, all processed by the worker as the consumer.
    let out = publish_lines(&creds.producer_url, &creds.stream, 200, &[("SSL_CERT_FILE", ca)]);
    stdout_ok("streamq publish over TLS", out);
    assert_eq!(
        try_cmd(&mut admin, &["XLEN", &creds.stream]).await.unwrap(),
        ::redis::Value::Int(200)
    );
    let worker_log = dir.join("worker.log");
    let mut worker = streamq_cmd(&["worker", "--", "sh", "-c", "cat > /dev/null"])
        .envs([
            ("SSL_CERT_FILE", ca),
            ("STREAMQ_REDIS_URL", &creds.consumer_url),
            ("STREAMQ_STREAM", &creds.stream),
            ("STREAMQ_GROUP", "workers"),
            ("STREAMQ_CONSUMER", "tls-w1"),
            ("STREAMQ_CONCURRENCY", "8"),
            ("STREAMQ_DEAD_LETTER_STREAM", &creds.dead_letter),
        ])
        .stdout(std::fs::File::create(&worker_log).unwrap())
        .stderr(std::fs::File::create(dir.join("worker.err")).unwrap())
        .spawn()
        .expect("spawn streamq worker");
    wait_drained_on(&admin, &creds.stream, "workers", TIMEOUT).await;
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
}
