//! Credentials never appear in the operator's log, in Events or in any
//! object streamq writes. A managed and an external Queue and a Consumer go
//! through a normal life, including error paths (an unparsable URL and a
//! wrong password in the admin Secret, then fixed), and deletion; then every
//! secret value is searched for, also URL-encoded and base64-encoded.

mod support;

use std::collections::BTreeSet;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{ConfigMap, Pod, Secret},
        events::v1::Event as NewEvent,
    },
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;
use streamq::api::{ConditionStatus, Consumer, Queue};
use support::{redis_server::RedisServer, *};

/// Every spelling of `value` a leak could take.
fn spellings(value: &str) -> Vec<String> {
    let percent: String = value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let base64 = {
        // Standard alphabet, as Kubernetes encodes Secret data.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let bytes = value.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    };
    let mut all = vec![value.to_owned(), percent, base64];
    all.dedup();
    all
}

/// Every secret value of every Secret in the namespace: passwords, and URLs with their passwords.
async fn secret_values(env: &TestEnv) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for s in env.api::<Secret>().list(&ListParams::default()).await.unwrap() {
        for (key, ByteString(bytes)) in s.data.unwrap_or_default() {
            let text = String::from_utf8_lossy(&bytes).trim().to_owned();
            if key == "password" || key == "url" {
                found.insert(text.clone());
            }
            if let Some(pw) = url_password(&text) {
                found.insert(pw);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_reaches_logs_events_or_status() {
    let env = TestEnv::new("leak").await;
    let port = free_port();
    let mapping = format!("{}/managed=127.0.0.1:{port}", env.namespace);
    let op = Operator::start_with(&env.namespace, &["--dev-redis-address", &mapping], &[]);
    let secrets = env.api::<Secret>();
    let queues = env.api::<Queue>();

    // External Queue, first with an unparsable URL that holds a password.
    let unparsable_password = format!("unparsable-{}", unique_name("pw"));
    let unparsable = format!("redis://default:{unparsable_password}@127.0.0.1:notaport/0");
    env.create_admin_secret_for(&unparsable).await;
    env.create(&external_queue("ext", json!({}))).await;
    wait_condition(&queues, "ext", "Degraded", ConditionStatus::True, "InvalidURL").await;

    // Then a well-formed URL with the wrong password.
    let admin_password = url_password(&env.redis_url).expect("the admin URL has a password");
    let wrong_password = format!("wrong-{}", unique_name("pw"));
    let wrong = env.redis_url.replace(&admin_password, &wrong_password);
    let set_url = |url: String| {
        let secrets = secrets.clone();
        async move {
            let patch = json!({"stringData": {"url": url}});
            secrets
                .patch("redis-admin", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    set_url(wrong.clone()).await;
    wait_condition(
        &queues,
        "ext",
        "Degraded",
        ConditionStatus::True,
        "AuthenticationFailed",
    )
    .await;
    // Fixed.
    set_url(env.redis_url.clone()).await;
    wait_provisioned(&env, "ext").await;

    // Managed Queue: waits for its Redis, which a local redis-server started
    // from the operator's own redis.conf then stands in for.
    env.create(&queue("managed", json!({"broker": {"managed": {}}}))).await;
    wait_condition(&queues, "managed", "Ready", ConditionStatus::False, "WaitingForRedis").await;
    let conf_maps = env.api::<ConfigMap>();
    let conf = wait_for(&conf_maps, "managed-redis-config", "the redis.conf", |_| true)
        .await
        .data
        .unwrap()["redis.conf"]
        .clone();
    let _managed_redis = RedisServer::stand_in(&env.namespace, &conf, port);
    wait_provisioned(&env, "managed").await;

    // A Consumer with autoscaling on the external Queue, and some traffic.
    env.create(&consumer(
        "workers",
        "ext",
        json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetLatency": "10s"}}),
    ))
    .await;
    let consumers = env.api::<Consumer>();
    let creds = QueueCredentials::read(&env, "ext").await;
    let mut producer = connect(&creds.producer_url).await;
    for i in 0..20 {
        let _: String = cmd(&mut producer, &["XADD", &creds.stream, "*", "data", &format!("m{i}")]).await;
    }
    wait_for(&consumers, "workers", "the Consumer sees the lag", |c: &Consumer| {
        c.status.as_ref().and_then(|s| s.lag) == Some(20) && c.is("Degraded", ConditionStatus::False)
    })
    .await;

    // Everything secret, read before deletion takes the Queues' Secrets away.
    let mut sensitive = secret_values(&env).await;
    sensitive.extend([unparsable.clone(), unparsable_password, wrong, wrong_password]);
    sensitive.insert(admin_password);
    let stored = serde_json::to_string(&secrets.list(&ListParams::default()).await.unwrap().items).unwrap();
    for role in ["producer", "consumer"] {
        assert!(
            sensitive.contains(&env.secret_text(&format!("ext-{role}"), "password").await),
            "the {role} password is among the values searched for"
        );
    }
    assert!(
        sensitive.contains(&env.secret_text("managed-redis-admin", "password").await),
        "the managed admin password is among the values searched for"
    );

    // Objects streamq writes or that carry its output, whole (spec and
    // status), while everything runs.
    let mut haystacks: Vec<(String, String)> = vec![];
    for (kind, objects) in [
        ("Queue", list_raw::<Queue>(&env).await),
        ("Consumer", list_raw::<Consumer>(&env).await),
        ("Deployment", list_raw::<Deployment>(&env).await),
        ("StatefulSet", list_raw::<StatefulSet>(&env).await),
        ("ConfigMap", list_raw::<ConfigMap>(&env).await),
        ("Pod", list_raw::<Pod>(&env).await),
    ] {
        assert!(!objects.is_empty(), "no {kind} to search");
        haystacks.push((kind.into(), serde_json::to_string(&objects).unwrap()));
    }

    // Deletion: the cleanup path logs and records Events too.
    consumers.delete("workers", &DeleteParams::default()).await.unwrap();
    for name in ["ext", "managed"] {
        queues.delete(name, &DeleteParams::default()).await.unwrap();
        wait_deleted(&queues, name).await;
    }

    // Then the log and every Event of the namespace.
    let log = op.logs();
    assert!(
        log.contains("queue not ready"),
        "the operator log is the real one: {log}"
    );
    haystacks.push(("operator log".into(), log));
    let core_events = env.kubectl_ok(&["get", "events", "-o", "json"]);
    assert!(core_events.contains("AuthenticationFailed"), "{core_events}");
    assert!(core_events.contains("CleanedUp"), "{core_events}");
    haystacks.push(("core/v1 Events".into(), core_events));
    let new_events: Api<NewEvent> = env.api();
    haystacks.push((
        "events.k8s.io/v1 Events".into(),
        serde_json::to_string(&new_events.list(&ListParams::default()).await.unwrap().items).unwrap(),
    ));

    let mut leaks = vec![];
    for value in &sensitive {
        for spelling in spellings(value) {
            for (where_, text) in &haystacks {
                if text.contains(&spelling) {
                    leaks.push(format!("{where_} contains {spelling:?}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "credentials leaked:\n{}", leaks.join("\n"));
    // The search can find what it looks for: the Secrets themselves hold the
    // passwords, base64-encoded as Kubernetes stores Secret data.
    let producer_password = url_password(&creds.producer_url).unwrap();
    assert!(spellings(&producer_password).iter().any(|s| stored.contains(s)));
}
