//! The CRD contract and the operator skeleton, against the real local
//! kube-apiserver (tests/cluster/up) and redis-server.

mod support;

use std::time::Duration;

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use streamq::api::{Consumer, Queue};
use support::*;

/// The message of an admission rejection, or a failure if it was admitted.
async fn rejection<K>(api: &Api<K>, obj: &K) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => panic!("the API server admitted {obj:?}"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn kubectl_apply_crds_client_side_and_server_side_is_idempotent() {
    let _env = TestEnv::new("crd-apply").await;
    for _ in 0..2 {
        kubectl_ok(None, &["apply", "-f", "crds/"]);
    }
    let second = kubectl_ok(None, &["apply", "-f", "crds/"]);
    assert!(
        second.lines().all(|l| l.ends_with("unchanged")),
        "client-side re-apply changed something:\n{second}"
    );
    for _ in 0..2 {
        kubectl_ok(None, &["apply", "--server-side", "--force-conflicts", "-f", "crds/"]);
    }
    // Client-side apply stored the last-applied annotation, which must fit.
    let annotation = kubectl_ok(
        None,
        &[
            "get",
            "crd",
            "consumers.streamq.dev",
            "-o",
            r#"jsonpath={.metadata.annotations.kubectl\.kubernetes\.io/last-applied-configuration}"#,
        ],
    );
    println!(
        "last-applied annotation of consumers.streamq.dev: {} bytes",
        annotation.len()
    );
    assert!(annotation.len() > 1000, "annotation missing");
    assert!(annotation.len() < 256 * 1024);
}

#[tokio::test]
async fn kubectl_get_shows_printer_columns_and_category() {
    let env = TestEnv::new("columns").await;
    env.create(&external_queue("orders", json!({}))).await;
    env.create(&consumer("billing", "orders", json!({"replicas": 2}))).await;

    let out = env.kubectl_ok(&["get", "sq,sqc"]);
    // The header line of a kind, told by a column only it has.
    let header = |kind: &str, own: &str, columns: &[&str]| {
        let header = out
            .lines()
            .find(|l| l.starts_with("NAME") && l.contains(own))
            .expect(&out);
        for col in columns {
            assert!(header.contains(col), "{kind} column {col} missing in {header}");
        }
        header
    };
    header("queue", "BROKER", &["READY", "BROKER", "LENGTH", "RATE", "DLQ", "AGE"]);
    let consumer_header = header(
        "consumer",
        "QUEUE",
        &["QUEUE", "REPLICAS", "DESIRED", "LAG", "PENDING", "AGE"],
    );
    assert!(
        !consumer_header.contains("PROCESSING"),
        "Processing belongs to -o wide only"
    );
    assert!(
        out.contains("queue.streamq.dev/orders") && out.contains("consumer.streamq.dev/billing"),
        "{out}"
    );

    let wide = env.kubectl_ok(&["get", "sqc", "-o", "wide"]);
    assert!(wide.contains("RATE") && wide.contains("PROCESSING"), "{wide}");

    let category = env.kubectl_ok(&["get", "streamq"]);
    assert!(category.contains("queue.streamq.dev/orders"), "{category}");
    assert!(category.contains("consumer.streamq.dev/billing"), "{category}");
}

#[tokio::test]
async fn cel_rules_reject_bad_objects_with_actionable_messages() {
    let env = TestEnv::new("cel").await;
    let queues = env.api::<Queue>();
    let consumers = env.api::<Consumer>();

    let mut both = serde_json::to_value(external_queue("both", json!({}))).unwrap();
    both["spec"]["broker"]["managed"] = json!({});
    let mut neither = serde_json::to_value(external_queue("neither", json!({}))).unwrap();
    neither["spec"]["broker"] = json!({});
    for broker in [both, neither] {
        let msg = raw_create_rejection(&env, "queues", &broker).await;
        assert!(
            msg.contains("spec.broker must set exactly one of external or managed"),
            "{msg}"
        );
    }

    for (name, autoscaling, expected) in [
        (
            "minmax",
            json!({"minReplicas": 5, "maxReplicas": 2}),
            "autoscaling.minReplicas must not be greater than autoscaling.maxReplicas",
        ),
        (
            "max0",
            json!({"minReplicas": 0, "maxReplicas": 0}),
            "autoscaling.maxReplicas must be at least 1",
        ),
    ] {
        let msg = rejection(&consumers, &consumer(name, "q", json!({"autoscaling": autoscaling}))).await;
        assert!(msg.contains(expected), "{msg}");
    }

    // Immutable fields: each change is refused on update.
    env.create(&external_queue("keyed", json!({"streamKey": "a"}))).await;
    let msg = replace_rejection(&queues, "keyed", |q| q.spec.stream_key = Some("b".into())).await;
    assert!(msg.contains("spec.streamKey is immutable"), "{msg}");
    let msg = replace_rejection(&queues, "keyed", |q| q.spec.stream_key = None).await;
    assert!(msg.contains("spec.streamKey is immutable"), "{msg}");

    env.create(&consumer("c", "q", json!({"group": "g"}))).await;
    let msg = replace_rejection(&consumers, "c", |c| c.spec.queue_ref.name = "other".into()).await;
    assert!(msg.contains("spec.queueRef is immutable"), "{msg}");
    let msg = replace_rejection(&consumers, "c", |c| c.spec.group = Some("h".into())).await;
    assert!(msg.contains("spec.group is immutable"), "{msg}");

    // A good object still passes, so the rules are not simply rejecting everything.
    env.create(&consumer(
        "good",
        "q",
        json!({"autoscaling": {"minReplicas": 0, "maxReplicas": 3}}),
    ))
    .await;
}

/// Creates an arbitrary JSON object (one our Rust types cannot express) and
/// returns the rejection message.
async fn raw_create_rejection(env: &TestEnv, plural: &str, obj: &serde_json::Value) -> String {
    let out = kubectl_stdin(Some(&env.namespace), &["create", "-f", "-"], &obj.to_string());
    assert!(!out.status.success(), "the API server admitted {plural} {obj}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn replace_rejection<K>(api: &Api<K>, name: &str, change: impl FnOnce(&mut K)) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let mut obj = api.get(name).await.unwrap();
    change(&mut obj);
    match api.replace(name, &PostParams::default(), &obj).await {
        Ok(_) => panic!("the API server accepted the change to {name}"),
        Err(kube::Error::Api(status)) => status.message,
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn kubectl_scale_sets_spec_replicas() {
    let env = TestEnv::new("scale").await;
    let consumers = env.api::<Consumer>();
    env.create(&consumer("workers", "q", json!({"replicas": 1}))).await;
    env.kubectl_ok(&["scale", "consumer", "workers", "--replicas=3"]);
    assert_eq!(consumers.get("workers").await.unwrap().spec.replicas, Some(3));
    env.kubectl_ok(&["scale", "sqc", "workers", "--replicas=0"]);
    assert_eq!(consumers.get("workers").await.unwrap().spec.replicas, Some(0));
}

#[tokio::test]
async fn reconcilers_set_observed_generation_and_operator_serves_health_and_metrics() {
    let env = TestEnv::new("reconcile").await;
    let queues = env.api::<Queue>();
    let consumers = env.api::<Consumer>();
    env.create(&external_queue("orders", json!({}))).await;
    env.create(&consumer("billing", "orders", json!({"replicas": 1}))).await;

    let operator = env.start_operator();
    let observed = |g: i64| move |o: &Queue| o.status.as_ref().and_then(|s| s.observed_generation) == Some(g);
    let q = wait_for(&queues, "orders", "observedGeneration 1", observed(1)).await;
    let status = q.status.unwrap();
    assert_eq!(status.broker.as_deref(), Some("external"));
    assert_eq!(status.stream_key, Some(format!("streamq:{{{}.orders}}", env.namespace)));
    assert!(
        status.conditions.iter().any(|c| c.type_ == "Ready"),
        "{:?}",
        status.conditions
    );

    wait_for(&consumers, "billing", "observedGeneration 1", |c: &Consumer| {
        c.status.as_ref().and_then(|s| s.observed_generation) == Some(1)
    })
    .await;

    // A spec change bumps the generation, and the reconciler catches up.
    // A merge patch, not get-and-replace: the operator writes status concurrently, and a
    // replace carrying a stale resourceVersion would be refused with a Conflict.
    consumers
        .patch(
            "billing",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"concurrency": 4}})),
        )
        .await
        .unwrap();
    wait_for(&consumers, "billing", "observedGeneration 2", |c: &Consumer| {
        c.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await;

    let (code, body) = operator.get("/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    operator.wait_ready().await;
    let (code, metrics) = operator.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"streamq_reconciliations_total{controller="queue"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"streamq_reconciliations_total{controller="consumer"}"#),
        "{metrics}"
    );

    let status = operator.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "operator exited with {status} on SIGTERM");
}

#[tokio::test]
async fn harness_reaches_redis_7_or_newer() {
    let env = TestEnv::new("redis").await;
    let mut redis = env.redis().await;
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut redis).await.unwrap();
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .expect("redis_version in INFO");
    let major: u32 = version.split('.').next().unwrap().trim().parse().unwrap();
    assert!(
        major >= 7,
        "streamq needs Redis 7.0+, the test redis-server is {version}"
    );
}

/// Every `enum` list of a schema, by its JSON path.
fn enums(value: &serde_json::Value, path: &str, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "enum" {
                    out.push((path.to_owned(), v.clone()));
                } else {
                    enums(v, &format!("{path}/{k}"), out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| enums(v, path, out)),
        _ => {}
    }
}

/// kubectl reads YAML 1.1, where an unquoted `no` is a boolean: the CRD as
/// the API server holds it must keep every enum value the code generates
/// (`appendfsync: "no"` was once rejected as `supported values: … "false"`).
#[tokio::test]
async fn crds_applied_by_kubectl_keep_every_enum_value() {
    let env = TestEnv::new("crd-enums").await;
    kubectl_ok(None, &["apply", "-f", "crds/"]);
    let applied =
        Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(
            env.client.clone(),
        );
    for generated in streamq::api::crdgen::crds() {
        let name = generated.metadata.name.clone().unwrap_or_default();
        let live = applied.get(&name).await.unwrap();
        let (mut want, mut got) = (vec![], vec![]);
        enums(&serde_json::to_value(&generated.spec).unwrap(), "", &mut want);
        enums(&serde_json::to_value(&live.spec).unwrap(), "", &mut got);
        assert!(
            !want.is_empty() || name.starts_with("consumers"),
            "{name} has enums to check"
        );
        assert_eq!(
            got, want,
            "{name}: enums as applied by kubectl differ from the generated schema"
        );
    }
    let queues: Api<Queue> = Api::namespaced(env.client.clone(), &env.namespace);
    let q: Queue = serde_json::from_value(json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Queue",
        "metadata": {"name": "fsync-no"},
        "spec": {"broker": {"managed": {"appendfsync": "no"}}},
    }))
    .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    queues
        .create(&dry_run, &q)
        .await
        .expect("appendfsync \"no\" is admitted");
}
