//! A windowed aggregation killed mid-window (SIGKILL, no clean shutdown, no checkpoint)
//! resumes on a new instance with an empty state directory, restored from its changelog, and
//! emits the same final results as a run that was never interrupted. Exactly-once, so the
//! records the killed instance processed without committing are neither lost nor counted
//! twice.
//!
//! The killed instance is this test binary itself, started again as a child process (the
//! test's own name, with `RESTORE_CHILD` set): a real process to kill. Needs the broker
//! (`infrastructure/up.sh kafka`); fails without it.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use topology::serdes::{SerdeRef, StringSerde};
use topology::stateful::{TimeWindows, windowed_key};
use topology::transport::KafkaTransport;
use topology::{Runtime, RuntimeConfig, Topology, TopologyBuilder, Value};

const PARTITIONS: i32 = 3;
const TEST_NAME: &str = "a_windowed_aggregation_killed_mid_window_resumes_from_its_changelog";

fn text() -> SerdeRef {
    Arc::new(StringSerde)
}

/// Clicks per user per minute (10 s grace), one final count per window, as `user@start`.
fn clicks_per_minute(input: &str, output: &str) -> Topology {
    let b = TopologyBuilder::new();
    b.source("clicks", input, text(), text())
        .group_by_key()
        .windowed_by(TimeWindows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10)))
        .count("counts")
        .suppress_until_window_closes("finals")
        .to_stream("final-counts")
        .map("label", |mut r| {
            if let Some((key, window)) = r.key.as_ref().and_then(windowed_key) {
                let user = key.as_str().map(str::to_owned).unwrap_or_default();
                r.key = Some(Value::from(format!("{user}@{}", window.start)));
            }
            r.value = r.value.map(|v| Value::from(v.to_json().to_string()));
            r
        })
        .to("out", output, text(), text());
    b.build().expect("valid")
}

fn runtime(
    bootstrap: &str,
    input: &str,
    output: &str,
    group: &str,
    state: &std::path::Path,
) -> Runtime {
    let mut config = RuntimeConfig::new(group);
    config.commit_interval = Duration::from_millis(200);
    config.exactly_once = true;
    config.state_dir = Some(state.to_owned());
    // A killed instance's open transaction blocks read_committed readers until it times out.
    let transport = KafkaTransport::new(bootstrap)
        .set("transaction.timeout.ms", "10000")
        .set("session.timeout.ms", "6000");
    Runtime::new(
        clicks_per_minute(input, output),
        Arc::new(transport),
        config,
    )
}

/// `(user, timestamp)` clicks, each to its user's partition.
async fn produce(bootstrap: &str, topic: &str, clicks: &[(String, i64)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (user, ts) in clicks {
        let partition = (crc32fast::hash(user.as_bytes()) % PARTITIONS as u32) as i32;
        let r = FutureRecord::to(topic)
            .key(user)
            .payload("click")
            .partition(partition)
            .timestamp(*ts);
        producer
            .send(r, Duration::from_secs(10))
            .await
            .expect("produce");
    }
}

fn consumed(bootstrap: &str, group: &str, topic: &str) -> bool {
    let ends = common::end_offsets(bootstrap, topic, PARTITIONS);
    let committed = common::committed(bootstrap, group, topic, PARTITIONS);
    ends.iter().zip(&committed).all(|(e, c)| *e == 0 || c == e)
}

async fn wait_consumed(bootstrap: &str, group: &str, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !consumed(bootstrap, group, topic) {
        assert!(
            Instant::now() < deadline,
            "{group} did not consume {topic} in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The committed outputs of `topic`, last value per key, and how many records there were.
fn finals(bootstrap: &str, topic: &str, want: usize) -> (BTreeMap<String, String>, usize) {
    let records = common::read_all(
        bootstrap,
        topic,
        want,
        true,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let mut out = BTreeMap::new();
    for m in &records {
        let key = m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let value = m
            .payload()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        out.insert(key, value);
    }
    (out, records.len())
}

fn spawn_child(
    bootstrap: &str,
    input: &str,
    output: &str,
    group: &str,
    state: &std::path::Path,
) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads", "1"])
        .env(
            "RESTORE_CHILD",
            format!("{bootstrap}|{input}|{output}|{group}|{}", state.display()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("child instance")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_windowed_aggregation_killed_mid_window_resumes_from_its_changelog() {
    if let Ok(args) = std::env::var("RESTORE_CHILD") {
        // The child: one instance, run until killed.
        let parts: Vec<&str> = args.split('|').collect();
        let [bootstrap, input, output, group, state] = parts[..] else {
            panic!("RESTORE_CHILD={args}");
        };
        let runtime = runtime(bootstrap, input, output, group, std::path::Path::new(state));
        runtime
            .run(CancellationToken::new())
            .await
            .expect("child runtime");
        return;
    }
    let bootstrap = common::bootstrap();
    let input = common::unique("restore-clicks");
    let (reference_out, killed_out) = (format!("{input}-reference"), format!("{input}-killed"));
    let new: Vec<NewTopic<'_>> = [&input, &reference_out, &killed_out]
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)).set("retention.ms", "-1"))
        .collect();
    for r in common::admin(&bootstrap)
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics (is the broker up? `infrastructure/up.sh kafka`)")
    {
        r.expect("created");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let base = (now - 30 * 60_000) / 60_000 * 60_000;
    // 900 clicks of 9 users over 7.5 minutes, every seventh 8 s out of order (within grace).
    let clicks: Vec<(String, i64)> = (0..900)
        .map(|i: i64| {
            let ts = base + i * 500 - if i % 7 == 0 { 8_000 } else { 0 };
            (format!("user-{}", i % 9), ts.max(base))
        })
        .collect();
    let closers: Vec<(String, i64)> = (0..PARTITIONS)
        .map(|p| {
            let key = (0..)
                .map(|n| format!("closer-{n}"))
                .find(|k| (crc32fast::hash(k.as_bytes()) % PARTITIONS as u32) as i32 == p)
                .expect("a key per partition");
            (key, base + 3_600_000)
        })
        .collect();

    // The reference: one instance, never interrupted.
    let reference_state = tempfile::tempdir().expect("state");
    let reference_group = common::unique("restore-reference");
    let reference = runtime(
        &bootstrap,
        &input,
        &reference_out,
        &reference_group,
        reference_state.path(),
    );
    let stop_reference = CancellationToken::new();
    let reference = tokio::spawn(reference.run(stop_reference.clone()));

    // The killed one: a child process, SIGKILLed while the second third is being processed
    // (minute windows open across the kill), then a new instance on an empty state directory.
    let group = common::unique("restore-killed");
    let (first_state, second_state) = (
        tempfile::tempdir().expect("state"),
        tempfile::tempdir().expect("state"),
    );
    let mut first = spawn_child(&bootstrap, &input, &killed_out, &group, first_state.path());
    produce(&bootstrap, &input, &clicks[..300]).await;
    wait_consumed(&bootstrap, &group, &input).await;
    produce(&bootstrap, &input, &clicks[300..600]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let mut second = spawn_child(&bootstrap, &input, &killed_out, &group, second_state.path());
    produce(&bootstrap, &input, &clicks[600..]).await;
    produce(&bootstrap, &input, &closers).await;
    wait_consumed(&bootstrap, &group, &input).await;
    wait_consumed(&bootstrap, &reference_group, &input).await;

    let (expected, expected_records) = finals(&bootstrap, &reference_out, 1);
    let (got, got_records) = finals(&bootstrap, &killed_out, expected_records);
    second.kill().expect("stop the second instance");
    second.wait().expect("reaped");
    stop_reference.cancel();
    reference
        .await
        .expect("joined")
        .expect("reference stopped cleanly");

    // 9 users × 8 minutes (the last minute closes with the closers).
    assert!(expected.len() >= 70, "{expected:?}");
    let total: i64 = expected
        .values()
        .map(|v| v.parse::<i64>().expect("a count"))
        .sum();
    assert_eq!(total, 900, "every click counted once in the reference");
    assert_eq!(got, expected);
    assert_eq!(
        got_records, expected_records,
        "one final result per window, none twice"
    );
}
