//! Hostile and bad input, generated with proptest and applied to the real
//! kube-apiserver with the real operator running.
//!
//! Each case is a Queue or a Consumer built from per-field choices, valid and
//! not: out-of-range numbers, bad and overflowing durations, huge strings,
//! wrong JSON types, unknown fields. They are POSTed as raw JSON (kube's
//! `DynamicObject`), so the API server sees exactly what was generated. Every
//! case must end in exactly one of: rejected at admission with a message;
//! accepted and Ready (or progressing towards it); accepted and Degraded with
//! a message. Where the outcome is known from the field alone (a value the
//! schema forbids, one only the operator can refuse), it must be that one.
//! The operator must never crash.
//!
//! Deterministic: a fixed seed, 48 cases plus two regressions; no shrinking (every case costs a
//! round trip to the API server), so a failure names the case's full JSON.

mod support;

use std::{collections::BTreeMap, time::Duration};

use kube::{
    Api,
    api::{ApiResource, DynamicObject, PostParams},
    core::GroupVersionKind,
};
use proptest::{
    prelude::*,
    sample::select,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use serde_json::{Value, json};
use streamq::api::{Consumer, Queue};
use support::*;

const CASES: usize = 48;
const SEED: [u8; 32] = *b"streamq hostile input, seed 0001";
/// How long all accepted cases together may take to reach a verdict.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(150);

/// What a field's value implies for the whole object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Expect {
    /// Valid: Ready, or on its way.
    Fine,
    /// Admitted by the schema, refused by the operator: Degraded.
    Degraded,
    /// Either way is correct (e.g. an unknown field: pruned or refused).
    Any,
    /// The schema or a CEL rule forbids it.
    Rejected,
}

/// One field: its value (None: absent) and what it implies.
type Field = (Option<Value>, Expect);

fn field(value: Value, expect: Expect) -> Field {
    (Some(value), expect)
}

const ABSENT: Field = (None, Expect::Fine);
const OVERFLOW: &str = "99999999999999999999s"; // matches the duration pattern, overflows u64 milliseconds

fn big(n: usize) -> String {
    "k".repeat(n)
}

/// One field's strategy: a valid choice six times in seven, else a hostile
/// one, so most cases carry zero, one or two hostile fields and each outcome
/// can be told apart.
fn pick(name: &'static str, fine: Vec<Field>, hostile: Vec<Field>) -> BoxedStrategy<(&'static str, Field)> {
    prop_oneof![6 => select(fine), 1 => select(hostile)]
        .prop_map(move |f| (name, f))
        .boxed()
}

fn queue_fields() -> Vec<BoxedStrategy<(&'static str, Field)>> {
    use Expect::*;
    let external = json!({"external": {"urlSecretRef": {"name": "redis-admin", "key": "url"}}});
    vec![
        pick(
            "broker",
            vec![field(external.clone(), Fine)],
            vec![
                // A managed Redis never runs here: waiting for it, or unreachable; both are fine.
                field(json!({"managed": {}}), Any),
                field(json!({"external": external["external"], "managed": {}}), Rejected),
                field(json!({}), Rejected),
                field(json!("redis://somewhere"), Rejected),
                field(
                    json!({"external": {"urlSecretRef": {"name": "no-such-secret", "key": "url"}}}),
                    Degraded,
                ),
                field(json!({"external": {"urlSecretRef": {"name": "redis-admin"}}}), Rejected),
            ],
        ),
        pick(
            "streamKey",
            vec![
                ABSENT,
                field(json!("sk-@CASE@"), Fine),
                field(json!("ключ-@CASE@-✓{tag}"), Fine),
            ],
            vec![
                field(json!(""), Rejected),
                field(json!(big(600)), Rejected),
                field(json!("sk-@CASE@:owner"), Degraded),
                // Redis ACL key patterns cannot hold whitespace: the operator says so.
                field(json!("key with spaces @CASE@"), Degraded),
                field(json!(7), Rejected),
            ],
        ),
        pick(
            "retention",
            vec![
                ABSENT,
                field(json!({"maxAge": "1h"}), Fine),
                field(json!({"maxLength": 9_223_372_036_854_775_807_i64}), Fine),
                field(
                    json!({"maxLength": 9_223_372_036_854_775_807_i64, "dropUnprocessed": true}),
                    Fine,
                ),
            ],
            vec![
                field(json!({"maxLength": 0}), Rejected),
                field(json!({"maxLength": -5}), Rejected),
                field(json!({"maxLength": "ten"}), Rejected),
                // Beyond int64: refused by the server's decoder or read as a u64; either is fine.
                field(json!({"maxLength": u64::MAX}), Any),
                field(json!({"maxAge": "1d"}), Rejected),
                field(json!({"maxAge": OVERFLOW}), Degraded),
                field(json!({"dropUnprocessed": "yes"}), Rejected),
            ],
        ),
        pick(
            "delivery",
            vec![
                ABSENT,
                field(json!({"maxDeliveries": 3}), Fine),
                field(json!({"visibilityTimeout": "30s"}), Fine),
            ],
            vec![
                field(json!({"maxDeliveries": 0}), Rejected),
                field(json!({"maxDeliveries": 1001}), Rejected),
                field(json!({"maxDeliveries": "3"}), Rejected),
                field(json!({"visibilityTimeout": "500ms"}), Degraded),
                field(json!({"visibilityTimeout": "abc"}), Rejected),
                field(json!({"visibilityTimeout": OVERFLOW}), Degraded),
                field(json!({"visibilityTimeout": 30}), Rejected),
            ],
        ),
        pick(
            "deadLetter",
            vec![
                ABSENT,
                field(json!({"enabled": false}), Fine),
                field(json!({"streamKey": "dlq-@CASE@"}), Fine),
            ],
            vec![
                field(json!({"enabled": "yes"}), Rejected),
                field(json!({"streamKey": ""}), Rejected),
                field(json!({"streamKey": "dead\tletters-@CASE@"}), Degraded),
            ],
        ),
        pick(
            "deletionPolicy",
            vec![ABSENT, field(json!("Delete"), Fine)],
            vec![field(json!("Destroy"), Rejected), field(json!(1), Rejected)],
        ),
        // Unknown: pruned or refused, either is fine.
        pick(
            "bogusField",
            vec![ABSENT],
            vec![field(json!({"nested": [1, 2, 3]}), Any)],
        ),
    ]
}

fn consumer_fields() -> Vec<BoxedStrategy<(&'static str, Field)>> {
    use Expect::*;
    let autoscaling = json!({"minReplicas": 0, "maxReplicas": 2, "targetLatency": "10s"});
    vec![
        pick(
            "queueRef",
            vec![field(json!({"name": "target"}), Fine)],
            vec![
                (None, Rejected),
                field(json!({"name": 5}), Rejected),
                field(json!({"name": "no-such-queue"}), Degraded),
            ],
        ),
        pick(
            "group",
            vec![ABSENT, field(json!("g-@CASE@"), Fine)],
            vec![field(json!(""), Rejected), field(json!(big(300)), Rejected)],
        ),
        pick(
            "startFrom",
            vec![ABSENT, field(json!("Latest"), Fine)],
            vec![field(json!("Middle"), Rejected)],
        ),
        pick(
            "template",
            vec![field(
                json!({"spec": {"containers": [{"name": "w", "image": "example.com/w:1"}]}}),
                Fine,
            )],
            vec![
                field(json!({"spec": {"containers": []}}), Degraded),
                (None, Rejected),
                field(json!(5), Rejected),
            ],
        ),
        pick(
            "concurrency",
            vec![ABSENT, field(json!(4), Fine)],
            vec![
                field(json!(0), Rejected),
                field(json!(10001), Rejected),
                field(json!("x"), Rejected),
            ],
        ),
        pick(
            "replicas",
            vec![field(json!(0), Fine), field(json!(1), Fine)],
            vec![
                field(json!(-1), Rejected),
                // Beyond i32: the server's int32 check or the type's; both are fine.
                field(json!(3_000_000_000_i64), Any),
            ],
        ),
        pick(
            "autoscaling",
            vec![ABSENT, field(autoscaling, Fine)],
            vec![
                field(json!({"minReplicas": 3, "maxReplicas": 1}), Rejected),
                field(json!({"maxReplicas": 0}), Rejected),
                field(json!({"maxReplicas": 2, "targetLatency": "forever"}), Rejected),
                field(json!({"maxReplicas": 2, "scaleDownDelay": OVERFLOW}), Degraded),
            ],
        ),
    ]
}

/// The object's spec and what the whole object should come to.
fn assemble(fields: Vec<(&'static str, Field)>, case: &str) -> (Value, Expect) {
    let mut spec = serde_json::Map::new();
    let mut verdicts = vec![];
    for (name, (value, expect)) in fields {
        verdicts.push(expect);
        if let Some(value) = value {
            let text = value.to_string().replace("@CASE@", case);
            spec.insert(name.to_owned(), serde_json::from_str(&text).unwrap());
        }
    }
    let expect = if verdicts.contains(&Expect::Rejected) {
        Expect::Rejected
    } else if verdicts.contains(&Expect::Any) {
        Expect::Any
    } else if verdicts.contains(&Expect::Degraded) {
        Expect::Degraded
    } else {
        Expect::Fine
    };
    (Value::Object(spec), expect)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Rejected(String),
    Ready,
    Progressing(String),
    Degraded(String, String),
}

impl Verdict {
    fn fits(&self, expect: Expect) -> bool {
        matches!(
            (expect, self),
            (Expect::Any, _)
                | (Expect::Rejected, Verdict::Rejected(_))
                | (Expect::Degraded, Verdict::Degraded(..))
                | (Expect::Fine, Verdict::Ready | Verdict::Progressing(_))
        )
    }
}

/// Reasons of a Ready=False that is a step under way, not a fault.
const PROGRESSING: &[&str] = &["WaitingForRedis", "ReplicasNotReady", "QueueNotReady"];

/// The verdict an accepted object's status gives, if it gives one yet.
fn verdict_of(obj: &Value) -> Option<Verdict> {
    let degraded = condition_of(obj, "Degraded");
    let ready = condition_of(obj, "Ready")?;
    if let Some(d) = &degraded
        && d.status == streamq::api::ConditionStatus::True
    {
        assert!(!d.message.trim().is_empty(), "Degraded without a message: {obj:#}");
        return Some(Verdict::Degraded(d.reason.clone(), d.message.clone()));
    }
    if ready.status == streamq::api::ConditionStatus::True {
        return Some(Verdict::Ready);
    }
    (PROGRESSING.contains(&ready.reason.as_str())
        && degraded.is_some_and(|d| d.status == streamq::api::ConditionStatus::False))
    .then(|| Verdict::Progressing(ready.reason.clone()))
}

fn api_resource<K: kube::Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&K::group(&()), &K::version(&()), &K::kind(&())),
        &K::plural(&()),
    )
}

/// Waits until the raw JSON of the named object (it may be unreadable as a
/// Queue or Consumer) satisfies `cond`.
async fn wait_raw(api: &Api<DynamicObject>, name: &str, what: &str, cond: impl Fn(&Value) -> bool) {
    wait_until(TIMEOUT, &format!("{name} {what}"), || async {
        cond(&serde_json::to_value(api.get(name).await.unwrap()).unwrap())
    })
    .await
}

struct Case {
    name: String,
    kind: &'static str,
    body: Value,
    expect: Expect,
    verdict: Option<Verdict>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_specs_are_rejected_ready_or_degraded_never_a_crash() {
    let env = TestEnv::new("hostile").await;
    let op = env.start_operator();
    // The Queue the Consumer cases point at.
    env.ready_queue("target").await;

    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let queues = queue_fields();
    let consumers = consumer_fields();
    let mut cases = vec![];
    for i in 0..CASES {
        let name = format!("case-{i:02}");
        let (kind, fields) = if i % 2 == 0 {
            ("Queue", queues.new_tree(&mut runner).unwrap().current())
        } else {
            ("Consumer", consumers.new_tree(&mut runner).unwrap().current())
        };
        // Keys unique to this run: the shared redis-server outlives namespaces.
        let (spec, expect) = assemble(fields, &format!("{}-{name}", env.namespace));
        let mut body = json!({
            "apiVersion": "streamq.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name}, "spec": spec,
        });
        if i % 12 == 5 {
            // An unknown top-level field as well: pruned or refused, never a crash.
            body["unexpected"] = json!({"x": 1});
        }
        let expect = if i % 12 == 5 { expect.max(Expect::Any) } else { expect };
        cases.push(Case {
            name,
            kind,
            body,
            expect,
            verdict: None,
        });
    }
    // Regressions: what earlier seeds found, kept whatever the seed draws now.
    let external = json!({"external": {"urlSecretRef": {"name": "redis-admin", "key": "url"}}});
    for (name, spec, expect) in [
        // ACL SETUSER refused the key pattern and the Queue retried a RedisError forever.
        (
            "regression-space",
            json!({"broker": external, "streamKey": format!("a key {}", env.namespace)}),
            Expect::Degraded,
        ),
        // XTRIM MAXLEN got 9.2233720368548e+18 from Lua and refused it.
        (
            "regression-maxlen",
            json!({"broker": external, "retention": {"maxLength": i64::MAX, "dropUnprocessed": true}}),
            Expect::Fine,
        ),
    ] {
        cases.push(Case {
            name: name.into(),
            kind: "Queue",
            body: json!({"apiVersion": "streamq.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": spec}),
            expect,
            verdict: None,
        });
    }

    let queue_api: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &api_resource::<Queue>());
    let consumer_api: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &api_resource::<Consumer>());
    let api_for = |kind: &str| if kind == "Queue" { &queue_api } else { &consumer_api };
    for case in &mut cases {
        let obj: DynamicObject = serde_json::from_value(case.body.clone()).unwrap();
        match api_for(case.kind).create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
                assert!(
                    !status.message.trim().is_empty(),
                    "{}: rejected without a message",
                    case.name
                );
                case.verdict = Some(Verdict::Rejected(status.message.clone()));
            }
            Err(other) => panic!("{}: unexpected error creating {:#}: {other}", case.name, case.body),
        }
    }

    // Poll every accepted case until its verdict fits what was expected.
    let deadline = tokio::time::Instant::now() + VERDICT_TIMEOUT;
    loop {
        assert!(alive(op.pid()), "the operator died; log:\n{}", op.logs());
        let mut seen: BTreeMap<String, Value> = BTreeMap::new();
        for (kind, api) in [("Queue", &queue_api), ("Consumer", &consumer_api)] {
            for o in api.list(&Default::default()).await.unwrap() {
                let key = format!("{kind}/{}", o.metadata.name.clone().unwrap_or_default());
                seen.insert(key, serde_json::to_value(&o).unwrap());
            }
        }
        let mut open = 0;
        for case in cases
            .iter_mut()
            .filter(|c| !matches!(c.verdict, Some(Verdict::Rejected(_))))
        {
            let key = format!("{}/{}", case.kind, case.name);
            let obj = seen
                .get(&key)
                .unwrap_or_else(|| panic!("{key} was accepted but is gone"));
            case.verdict = verdict_of(obj);
            if !case.verdict.as_ref().is_some_and(|v| v.fits(case.expect)) {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let report: Vec<String> = cases
                .iter()
                .filter(|c| !c.verdict.as_ref().is_some_and(|v| v.fits(c.expect)))
                .map(|c| {
                    format!(
                        "{} expected {:?}, got {:?}\n  {:#}",
                        c.name, c.expect, c.verdict, c.body
                    )
                })
                .collect();
            panic!(
                "cases without the right verdict after {VERDICT_TIMEOUT:?}:\n{}",
                report.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The operator lived through it all and never panicked.
    assert!(alive(op.pid()), "the operator died; log:\n{}", op.logs());
    let log = op.logs();
    assert!(!log.contains("panicked"), "the operator panicked:\n{log}");

    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cases {
        let class = match case.verdict.as_ref().unwrap() {
            Verdict::Rejected(_) => "rejected",
            Verdict::Ready | Verdict::Progressing(_) => "ready/progressing",
            Verdict::Degraded(..) => "degraded",
        };
        *tally.entry(class).or_default() += 1;
        eprintln!(
            "{} {:<8} expected {:<8?} → {:?}",
            case.name,
            case.kind,
            case.expect,
            case.verdict.as_ref().unwrap()
        );
    }
    eprintln!("outcomes: {tally:?}");
    for class in ["rejected", "ready/progressing", "degraded"] {
        assert!(
            tally.get(class).copied().unwrap_or(0) > 0,
            "the seed produced no {class} case: {tally:?}"
        );
    }
}

/// Objects the API server admits but streamq's types cannot read (a
/// duration that matches the schema's pattern and overflows) are reported on
/// themselves and in an Event, and do not stall the other Queues and
/// Consumers; fixed, they are reconciled; deleted, they do not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_objects_are_reported_and_do_not_stall_the_others() {
    use kube::api::{DeleteParams, Patch, PatchParams};
    let env = TestEnv::new("guard").await;
    env.create_admin_secret().await;
    let queue_api: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &api_resource::<Queue>());
    let consumer_api: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &api_resource::<Consumer>());
    let external = json!({"external": {"urlSecretRef": {"name": "redis-admin", "key": "url"}}});
    let create = |api: &Api<DynamicObject>, body: Value| {
        let api = api.clone();
        async move {
            let obj: DynamicObject = serde_json::from_value(body).unwrap();
            api.create(&PostParams::default(), &obj).await.unwrap()
        }
    };
    // Unreadable from the start, before the operator's first list.
    create(
        &queue_api,
        json!({
            "apiVersion": "streamq.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "broken"},
            "spec": {"broker": external, "delivery": {"visibilityTimeout": OVERFLOW}},
        }),
    )
    .await;
    create(
        &consumer_api,
        json!({
            "apiVersion": "streamq.dev/v1alpha1", "kind": "Consumer", "metadata": {"name": "broken-c"},
            "spec": {"queueRef": {"name": "fine"}, "replicas": 0,
                     "template": {"spec": {"containers": [{"name": "w", "image": "example.com/w:1"}]}},
                     "autoscaling": {"maxReplicas": 2, "scaleDownDelay": OVERFLOW}},
        }),
    )
    .await;
    let op = env.start_operator();

    // The readable ones are reconciled regardless.
    env.create(&external_queue("fine", json!({}))).await;
    env.create(&consumer("fine-c", "fine", json!({"replicas": 0}))).await;
    wait_provisioned(&env, "fine").await;
    wait_ready(&env.api::<Consumer>(), "fine-c").await;

    // The unreadable ones say why, on themselves.
    for (api, name) in [(&queue_api, "broken"), (&consumer_api, "broken-c")] {
        wait_raw(api, name, "Degraded with InvalidObject", |obj| {
            condition_of(obj, "Degraded").is_some_and(|d| {
                d.status == streamq::api::ConditionStatus::True
                    && d.reason == "InvalidObject"
                    && d.message.contains(OVERFLOW)
            })
        })
        .await;
    }
    let events = env.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=InvalidObject",
        "-o",
        "json",
    ]);
    for name in ["broken", "broken-c"] {
        assert!(
            events.contains(&format!("\"name\": \"{name}\"")),
            "an InvalidObject Event for {name}: {events}"
        );
    }

    // Fixed, the Queue is reconciled like any other.
    queue_api
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"delivery": {"visibilityTimeout": "30s"}}})),
        )
        .await
        .unwrap();
    wait_provisioned(&env, "broken").await;

    // A provisioned Queue (it holds the Redis-cleanup finalizer) that becomes
    // unreadable is still deleted, with an Event saying what was left behind.
    queue_api
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"retention": {"maxAge": OVERFLOW}}})),
        )
        .await
        .unwrap();
    wait_raw(&queue_api, "broken", "unreadable again", |obj| {
        condition_of(obj, "Degraded").is_some_and(|d| d.reason == "InvalidObject")
    })
    .await;
    let finalizers = queue_api
        .get("broken")
        .await
        .unwrap()
        .metadata
        .finalizers
        .unwrap_or_default();
    assert!(
        finalizers.contains(&streamq::queue::FINALIZER.to_owned()),
        "{finalizers:?}"
    );
    queue_api.delete("broken", &DeleteParams::default()).await.unwrap();
    wait_deleted(&queue_api, "broken").await;
    let abandoned = env.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=CleanupAbandoned",
        "-o",
        "json",
    ]);
    assert!(abandoned.contains("cannot be read"), "{abandoned}");
    // What the Event says remains, the test removes from the shared server.
    let mut admin = env.redis().await;
    for role in ["producer", "consumer"] {
        let user = format!("streamq.{}.broken.{role}", env.namespace);
        let _: () = cmd(&mut admin, &["ACL", "DELUSER", &user]).await;
    }
    let stream = format!("streamq:{{{}.broken}}", env.namespace);
    for key in [stream.clone(), format!("{stream}:dlq"), format!("{stream}:owner")] {
        let _: () = cmd(&mut admin, &["DEL", &key]).await;
    }

    assert!(alive(op.pid()), "the operator died; log:\n{}", op.logs());
    assert!(!op.logs().contains("panicked"), "{}", op.logs());
}
