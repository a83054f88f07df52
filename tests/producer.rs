//! `streamq publish` and `streamq::producer::Producer` against the real redis-server.

mod support;

use std::collections::HashMap;

use streamq::producer::{NewMessage, Producer, ProducerError};
use support::{redis_queue::*, *};

type Entries = Vec<(String, HashMap<String, String>)>;

async fn entries(stream: &str) -> Entries {
    cmd(&mut admin().await, &["XRANGE", stream, "-", "+"]).await
}

#[tokio::test]
async fn publishes_stdin_lines_with_headers() {
    let q = TestQueue::new("pub-stdin").await;
    let url = redis_url();
    let env = [
        ("STREAMQ_REDIS_URL", url.as_str()),
        ("STREAMQ_STREAM", q.stream.as_str()),
    ];
    let out = run_streamq(
        &["publish", "--header", "tenant=acme", "--header", "kind=a=b", "-"],
        &env,
        Some(b"one\ntwo\r\n\nthree"),
    );
    let stdout = stdout_ok("streamq publish", out);
    assert!(stdout.contains("published 4 messages"), "{stdout}");
    assert!(stdout.contains("msg/s"), "{stdout}");
    let got = entries(&q.stream).await;
    let data: Vec<&str> = got.iter().map(|(_, f)| f["data"].as_str()).collect();
    assert_eq!(data, ["one", "two", "", "three"]);
    assert!(got.iter().all(|(_, f)| f["tenant"] == "acme" && f["kind"] == "a=b"));
}

#[tokio::test]
async fn publishes_data_argument_and_file() {
    let q = TestQueue::new("pub-arg").await;
    let url = redis_url();
    let stdout = stdout_ok(
        "streamq publish",
        publish(&url, &q.stream, &["single message"], &[], None),
    );
    assert!(stdout.contains("published 1 messages"), "{stdout}");

    let file = q.file("input.txt");
    let lines: String = (0..2500).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&file, lines).unwrap();
    let out = publish(
        &url,
        &q.stream,
        &["--batch", "1000", "--file", file.to_str().unwrap()],
        &[],
        None,
    );
    let stdout = stdout_ok("streamq publish", out);
    assert!(stdout.contains("published 2500 messages"), "{stdout}");
    let got = entries(&q.stream).await;
    assert_eq!(got.len(), 2501);
    assert_eq!(got[0].1["data"], "single message");
    assert_eq!(got[1].1["data"], "line 0");
    assert_eq!(got[2500].1["data"], "line 2499");
}

#[tokio::test]
async fn failed_xadd_exits_non_zero_and_says_how_many_went_in() {
    let q = TestQueue::new("pub-fail").await;
    let url = redis_url();
    // A key of the wrong type.
    let key = q.stream.clone() + "-string";
    let mut conn = admin().await;
    let _: () = cmd(&mut conn, &["SET", &key, "not a stream"]).await;
    let out = publish(&url, &key, &["-"], &[], Some(b"a\nb\nc\n"));
    assert_clean_failure(&out, "0 messages went in, 3 failed");
    assert_clean_failure(&out, "WRONGTYPE");
    let _: () = cmd(&mut conn, &["DEL", &key]).await;

    // The consumer user may not XADD to the main stream.
    let out = publish(&q.consumer_url, &q.stream, &["x"], &[], None);
    assert_clean_failure(&out, "0 of 1 messages published");
    assert_clean_failure(&out, "NoPerm");
    assert!(entries(&q.stream).await.is_empty());

    let out = publish(&url, &q.stream, &["--header", "data=x", "y"], &[], None);
    assert_clean_failure(&out, "invalid header");

    let out = publish("nope", &q.stream, &["y"], &[], None);
    assert_clean_failure(&out, "invalid Redis URL");

    let out = publish(&url, &q.stream, &["--file", "/no/such/file"], &[], None);
    assert_clean_failure(&out, "cannot open --file");
}

#[tokio::test]
async fn library_producer_publish_and_batch() {
    let q = TestQueue::new("pub-lib").await;
    let producer = Producer::connect(&redis_url(), &q.stream).await.unwrap();
    let id = producer
        .publish(NewMessage::new("one").header("tenant", "acme").unwrap())
        .await
        .unwrap();
    let ids = producer
        .publish_batch(&[NewMessage::new("two"), NewMessage::new(vec![0u8, 1, 2])])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let got = entries(&q.stream).await;
    assert_eq!(got[0].0, id);
    assert_eq!(got[0].1["tenant"], "acme");
    assert_eq!(got[1].0, ids[0]);
    assert!(matches!(
        NewMessage::new("x").header("data", "y"),
        Err(ProducerError::InvalidHeader(_))
    ));

    let denied = Producer::connect(&q.consumer_url, &q.stream).await.unwrap();
    match denied
        .publish_batch(&[NewMessage::new("a"), NewMessage::new("b")])
        .await
    {
        Err(ProducerError::Partial { published, failed, .. }) => assert_eq!((published, failed), (0, 2)),
        other => panic!("expected a partial failure, got {other:?}"),
    }
}
