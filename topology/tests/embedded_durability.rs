//! The embedded transport across a restart: records, committed offsets and a changelog
//! survive reopening the sled directory, and a second run resumes without re-processing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use state::StateConfig;
use tokio_util::sync::CancellationToken;
use topology::changelog::EmbeddedChangelog;
use topology::serdes::StringSerde;
use topology::transport::{EmbeddedLog, EmbeddedTransport};
use topology::{AsyncOptions, RawRecord, Runtime, RuntimeConfig, TopologyBuilder, processor_fn};

fn append(log: &EmbeddedLog, topic: &str, from: usize, to: usize) {
    for i in from..to {
        log.append(&RawRecord {
            topic: topic.into(),
            partition: -1,
            key: Some(format!("k{i}").into()),
            value: Some(format!("v{i}").into()),
            ..Default::default()
        })
        .expect("append");
    }
}

/// Runs a topology that copies `in` to `out` and counts records per key in a changelogged
/// store, until `out` holds `want` records.
async fn run_until(log: Arc<EmbeddedLog>, state_dir: &std::path::Path, want: usize) {
    let changelog = Arc::new(EmbeddedChangelog::new(log.clone(), "app"));
    let dir = StateConfig::new(state_dir)
        .changelog(changelog.clone())
        .open()
        .expect("state");
    changelog.restore(&dir, "seen").expect("restore");
    let seen = dir.store::<String, u32>("seen").expect("store");
    let proc = processor_fn(move |rec: topology::Record| {
        let seen = seen.clone();
        async move {
            let key = rec
                .key
                .as_ref()
                .and_then(|k| k.as_str().map(str::to_owned))
                .unwrap_or_default();
            let n = seen
                .get(&key)
                .map_err(|e| topology::ProcessError::permanent(e.to_string()))?;
            seen.put(&key, &(n.unwrap_or(0) + 1))
                .map_err(|e| topology::ProcessError::permanent(e.to_string()))?;
            Ok(vec![rec])
        }
    });
    let b = TopologyBuilder::new();
    b.source("src", "in", Arc::new(StringSerde), Arc::new(StringSerde))
        .process_async("count", proc, AsyncOptions::default())
        .to("sink", "out", Arc::new(StringSerde), Arc::new(StringSerde));
    let topology = b.build().expect("valid");
    let mut config = RuntimeConfig::new("app");
    config.commit_interval = Duration::from_millis(50);
    let runtime = Runtime::new(
        topology,
        Arc::new(EmbeddedTransport::new(log.clone())),
        config,
    )
    .with_changelog(changelog)
    .with_state_dir(dir);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.read_all("out").map(|v| v.len()).unwrap_or(0) < want {
        assert!(Instant::now() < deadline, "outputs not produced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let summary = handle.await.expect("join").expect("runtime");
    assert_eq!(summary.abandoned, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_survives_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log_dir = tmp.path().join("log");
    let state_dir = tmp.path().join("state");
    {
        let log = Arc::new(EmbeddedLog::open(&log_dir).expect("open"));
        log.create_topic("in", 2).expect("topic");
        append(&log, "in", 0, 50);
        log.flush().await.expect("flush");
        run_until(log.clone(), &state_dir, 50).await;
        // Everything dropped here: the log, the transport, the state directory.
    }
    // Reopen: records and committed offsets are still there.
    let log = Arc::new(EmbeddedLog::open(&log_dir).expect("reopen"));
    assert_eq!(log.partitions("in").expect("partitions"), Some(2));
    assert_eq!(log.read_all("in").expect("in").len(), 50);
    assert_eq!(log.read_all("out").expect("out").len(), 50);
    let mut committed = 0;
    for p in 0..2 {
        let end = log.end_offset("in", p).expect("end");
        let c = log.committed("app", "in", p).expect("committed");
        assert_eq!(c, Some(end), "partition {p} committed to its end");
        committed += end;
    }
    assert_eq!(committed, 50);
    let changelog = log.read_all("app-seen-changelog").expect("changelog");
    assert_eq!(changelog.len(), 50, "one changelog record per state write");

    // Lose the state directory: a second run restores it from the changelog, processes only
    // the new input and counts every key once.
    std::fs::remove_dir_all(&state_dir).expect("drop state");
    append(&log, "in", 50, 60);
    log.flush().await.expect("flush");
    run_until(log.clone(), &state_dir, 60).await;
    let out = log.read_all("out").expect("out");
    assert_eq!(out.len(), 60, "nothing re-processed after the restart");
    let dir = StateConfig::new(&state_dir).open().expect("state");
    let seen = dir.store::<String, u32>("seen").expect("store");
    assert_eq!(seen.len(), 60);
    for (k, n) in seen.iter().map(|e| e.expect("entry")) {
        assert_eq!(n, 1, "{k} counted once");
    }
}

/// A topic with a retention policy drops what every named group has committed past (never the
/// partition's last record, which carries its end offset), keeps the rest, and appends go on
/// at the right offset after a reopen; a topic without a policy keeps everything.
#[test]
fn consumed_records_are_dropped_only_when_every_group_committed_past_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let partition = |topic: &str| topology::transport::TopicPartition::new(topic, 0);
    {
        let log = EmbeddedLog::open(dir.path()).expect("open");
        log.create_topic("events", 1).expect("topic");
        log.create_topic("kept", 1).expect("topic");
        log.retain_until_committed_by("events", "first");
        log.retain_until_committed_by("events", "second");
        append(&log, "events", 0, 10);
        append(&log, "kept", 0, 10);

        log.commit("first", &[(partition("events"), 6)])
            .expect("commit");
        assert_eq!(
            log.start_offset("events", 0).expect("start"),
            0,
            "second never committed"
        );

        log.commit("second", &[(partition("events"), 4)])
            .expect("commit");
        assert_eq!(log.start_offset("events", 0).expect("start"), 4);
        let first = log.read("events", 0, 0, 100).expect("read");
        assert_eq!(first.first().map(|r| r.offset), Some(4));
        assert_eq!(first.len(), 6);

        log.commit(
            "first",
            &[(partition("events"), 10), (partition("kept"), 10)],
        )
        .expect("commit");
        log.commit(
            "second",
            &[(partition("events"), 10), (partition("kept"), 10)],
        )
        .expect("commit");
        assert_eq!(log.start_offset("events", 0).expect("start"), 9);
        assert_eq!(log.end_offset("events", 0).expect("end"), 10);
        assert_eq!(log.read_all("kept").expect("kept").len(), 10);
        log.flush_blocking().expect("flush");
    }
    let log = EmbeddedLog::open(dir.path()).expect("reopen");
    assert_eq!(log.start_offset("events", 0).expect("start"), 9);
    append(&log, "events", 10, 11);
    let tail = log.read("events", 0, 0, 100).expect("read");
    assert_eq!(
        tail.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![9, 10]
    );
}
