//! Task stores against the real broker (`infrastructure/up.sh`; `KAFKA_BOOTSTRAP` or
//! `infrastructure/.env`): what a store with a changelog costs per record, and how fast a task
//! is restored from its changelog. Prints its figures and `RESULT` lines; run with
//! `cargo bench -p topology --bench task_state` (`TASK_BENCH_KEYS`, default 100000).
//!
//! One run, same broker, same input (KEYS records, one per key, over 4 partitions):
//! 1. a stateless pass-through (the baseline);
//! 2. the same with a per-key counter in a task store, local only (`changelogs = false`);
//! 3. the same with the store's changelog (every write produced, tied to its record's offset);
//! 4. a new instance with an empty state dir: every task restored from its changelog partition
//!    (records/s and seconds until every task runs);
//! 5. the instance of run 3 again, its checkpoints current: what it reads (should be nothing);
//! 6. a scale step under load: a new group works through KEYS more records with one instance,
//!    and a second instance joins after 2 s; the records committed per 250 ms window before,
//!    around and after the join show the pause the rebalance (revoke, checkpoint, restore of
//!    the moved tasks) costs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use tokio_util::sync::CancellationToken;
use topology::serdes::StringSerde;
use topology::transport::KafkaTransport;
use topology::{
    AsyncOptions, Metrics, Ordering, ProcessError, RetryPolicy, Runtime, RuntimeConfig, StoreSpec,
    Topology, TopologyBuilder, processor_fn, processor_with_context,
};

const PARTITIONS: i32 = 4;

fn options() -> AsyncOptions {
    AsyncOptions {
        concurrency: 256,
        ordering: Ordering::Key,
        retry: RetryPolicy::none(),
    }
}

fn topology(input: &str, output: &str, stateful: bool) -> Topology {
    let b = TopologyBuilder::new();
    let source = b.source("src", input, Arc::new(StringSerde), Arc::new(StringSerde));
    let processed = if stateful {
        b.store(StoreSpec::new("counts"));
        source
            .process_async(
                "count",
                processor_with_context(|r, ctx| async move {
                    let counts = ctx
                        .store::<String, u64>("counts")
                        .map_err(|e| ProcessError::transient(e.to_string()))?;
                    let key = r
                        .key
                        .as_ref()
                        .and_then(|k| k.as_str())
                        .unwrap_or_default()
                        .to_owned();
                    counts
                        .update(&key, |n| Some(n.copied().unwrap_or(0) + 1))
                        .map_err(|e| ProcessError::transient(e.to_string()))?;
                    Ok(vec![r])
                }),
                options(),
            )
            .with_stores(&["counts"])
    } else {
        source.process_async(
            "count",
            processor_fn(|r| async move { Ok(vec![r]) }),
            options(),
        )
    };
    processed.to("out", output, Arc::new(StringSerde), Arc::new(StringSerde));
    match b.build() {
        Ok(t) => t,
        Err(errors) => panic!("topology: {errors:?}"),
    }
}

struct Run {
    seconds: f64,
    restored: u64,
}

/// Runs `topology` in group `group` until the group's lag on `input` is 0 (`until_caught_up`)
/// or until every task runs, then stops it cleanly.
async fn run(
    bootstrap: &str,
    topology: Topology,
    group: &str,
    input: &str,
    state_dir: &std::path::Path,
    changelogs: bool,
    until_caught_up: bool,
) -> Run {
    let mut config = RuntimeConfig::new(group);
    config.commit_interval = Duration::from_millis(200);
    config.state_dir = Some(state_dir.to_path_buf());
    config.changelogs = changelogs;
    let registry = prometheus::Registry::new();
    let metrics = match Metrics::new(&registry) {
        Ok(m) => m,
        Err(e) => panic!("metrics: {e}"),
    };
    let runtime = Runtime::new(topology, Arc::new(KafkaTransport::new(bootstrap)), config)
        .with_metrics(metrics.clone());
    let stores = runtime.stores();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let done = if until_caught_up {
            let (b, g, i) = (bootstrap.to_owned(), group.to_owned(), input.to_owned());
            let (ends, committed) = match tokio::task::spawn_blocking(move || {
                (
                    common::end_offsets(&b, &i, PARTITIONS),
                    common::committed(&b, &g, &i, PARTITIONS),
                )
            })
            .await
            {
                Ok(figures) => figures,
                Err(e) => panic!("broker figures: {e}"),
            };
            ends == committed
        } else {
            stores.tasks().len() == PARTITIONS as usize
        };
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not finish in time");
    }
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    match handle.await {
        Ok(Ok(_)) => {}
        other => panic!("runtime: {other:?}"),
    }
    let restored = metrics
        .restore_records
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum();
    Run { seconds, restored }
}

fn start_instance(
    bootstrap: &str,
    topology: Topology,
    group: &str,
    state_dir: &std::path::Path,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<topology::RunSummary, topology::RuntimeError>>,
) {
    let mut config = RuntimeConfig::new(group);
    config.commit_interval = Duration::from_millis(200);
    config.state_dir = Some(state_dir.to_path_buf());
    let transport = KafkaTransport::new(bootstrap).set("session.timeout.ms", "6000");
    let runtime = Runtime::new(topology, Arc::new(transport), config);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    (shutdown, handle)
}

/// Records/s committed by the group before a second instance joins, in the worst 250 ms
/// window after, and once both run (the last two seconds before the input is done).
async fn scale_step(bootstrap: &str, input: &str, output: &str, keys: usize) -> (f64, f64, f64) {
    let group = common::unique("task-bench-scale");
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        })
        .collect();
    // Twice the input: the second half arrives while the step happens.
    produce_keys(bootstrap, input, keys).await;
    let committed = |bootstrap: String, group: String, input: String| async move {
        match tokio::task::spawn_blocking(move || {
            common::committed(&bootstrap, &group, &input, PARTITIONS)
                .iter()
                .map(|c| (*c).max(0))
                .sum::<i64>()
        })
        .await
        {
            Ok(n) => n,
            Err(e) => panic!("committed: {e}"),
        }
    };
    let total = (2 * keys) as i64;
    let first = start_instance(
        bootstrap,
        topology(input, output, true),
        &group,
        dirs[0].path(),
    );
    let mut samples: Vec<(f64, i64)> = Vec::new();
    let started = Instant::now();
    let mut joined_at = None;
    let mut second = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = committed(bootstrap.to_owned(), group.clone(), input.to_owned()).await;
        let t = started.elapsed().as_secs_f64();
        samples.push((t, n));
        if second.is_none()
            && n > 0
            && joined_at.is_none()
            && samples.iter().filter(|(_, c)| *c > 0).count() >= 8
        {
            joined_at = Some(t);
            second = Some(start_instance(
                bootstrap,
                topology(input, output, true),
                &group,
                dirs[1].path(),
            ));
        }
        if n >= total || t > 600.0 {
            break;
        }
    }
    for (shutdown, handle) in [Some(first), second].into_iter().flatten() {
        shutdown.cancel();
        if let Err(e) = handle.await {
            panic!("runtime: {e}");
        }
    }
    let rate = |w: &[(f64, i64)]| (w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0);
    let joined = joined_at.unwrap_or(f64::MAX);
    let windows: Vec<(f64, f64)> = samples.windows(2).map(|w| (w[0].0, rate(w))).collect();
    let mean = |ws: Vec<f64>| ws.iter().sum::<f64>() / ws.len().max(1) as f64;
    let before = mean(
        windows
            .iter()
            .filter(|(t, r)| *t < joined && *r > 0.0)
            .map(|(_, r)| *r)
            .collect(),
    );
    let end = samples.last().map_or(0.0, |(t, _)| *t);
    let worst = windows
        .iter()
        .filter(|(t, _)| *t >= joined && *t < end - 0.5)
        .map(|(_, r)| *r)
        .fold(f64::MAX, f64::min);
    let after = mean(
        windows
            .iter()
            .filter(|(t, _)| *t >= end - 2.25 && *t < end - 0.25)
            .map(|(_, r)| *r)
            .collect(),
    );
    for (t, r) in &windows {
        println!(
            "  t={t:5.2}s {r:8.0} records/s{}",
            if (*t - joined).abs() < 0.2 {
                "  <- second instance starts"
            } else {
                ""
            }
        );
    }
    (before, if worst == f64::MAX { 0.0 } else { worst }, after)
}

/// Produces `k0..k{keys}` (values `v…`), queueing every record before awaiting the
/// acknowledgements (the tests' helper sends one at a time).
async fn produce_keys(bootstrap: &str, topic: &str, keys: usize) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
    {
        Ok(p) => p,
        Err(e) => panic!("producer: {e}"),
    };
    let mut acks = Vec::with_capacity(keys);
    for i in 0..keys {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        match producer.send_result(FutureRecord::to(topic).key(&key).payload(&value)) {
            Ok(ack) => acks.push(ack),
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
    for ack in acks {
        match ack.await {
            Ok(Ok(_)) => {}
            other => panic!("produce: {other:?}"),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let keys: usize = std::env::var("TASK_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let bootstrap = common::bootstrap();
    let input = common::unique("task-bench-in");
    let output = common::unique("task-bench-out");
    common::create_topics(&bootstrap, &[(&input, PARTITIONS), (&output, PARTITIONS)]).await;
    produce_keys(&bootstrap, &input, keys).await;
    println!("{keys} records (one per key) over {PARTITIONS} partitions of {input}");

    let dirs: Vec<tempfile::TempDir> = (0..4)
        .map(|_| match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        })
        .collect();
    let stateless = run(
        &bootstrap,
        topology(&input, &output, false),
        &common::unique("task-bench-stateless"),
        &input,
        dirs[0].path(),
        true,
        true,
    )
    .await;
    let local = run(
        &bootstrap,
        topology(&input, &output, true),
        &common::unique("task-bench-local"),
        &input,
        dirs[1].path(),
        false,
        true,
    )
    .await;
    let group = common::unique("task-bench-changelog");
    let logged = run(
        &bootstrap,
        topology(&input, &output, true),
        &group,
        &input,
        dirs[2].path(),
        true,
        true,
    )
    .await;
    let rate = |r: &Run| keys as f64 / r.seconds;
    println!(
        "processing, records/s (seconds to lag 0, from the start of the runtime):\n  \
         stateless {:.0} ({:.1} s)\n  store, local only {:.0} ({:.1} s) = {:.2}x of stateless\n  \
         store + changelog {:.0} ({:.1} s) = {:.2}x of stateless",
        rate(&stateless),
        stateless.seconds,
        rate(&local),
        local.seconds,
        rate(&local) / rate(&stateless),
        rate(&logged),
        logged.seconds,
        rate(&logged) / rate(&stateless),
    );
    let fresh = run(
        &bootstrap,
        topology(&input, &output, true),
        &group,
        &input,
        dirs[3].path(),
        true,
        false,
    )
    .await;
    println!(
        "restore into an empty state dir: {} records in {:.2} s = {:.0} records/s (until all {PARTITIONS} tasks run)",
        fresh.restored,
        fresh.seconds,
        fresh.restored as f64 / fresh.seconds
    );
    let warm = run(
        &bootstrap,
        topology(&input, &output, true),
        &group,
        &input,
        dirs[2].path(),
        true,
        false,
    )
    .await;
    println!(
        "restart with current checkpoints: {} records read, {:.2} s until all tasks run",
        warm.restored, warm.seconds
    );
    let (before, worst, after) = scale_step(&bootstrap, &input, &output, keys).await;
    println!(
        "scale step 1 → 2 instances under load, records committed per second: before the join \
         {before:.0}, worst 250 ms window after it {worst:.0}, once both run {after:.0}"
    );
    println!("RESULT task_scale_step before={before:.0} worst={worst:.0} after={after:.0}");
    println!(
        "RESULT task_store_overhead local={:.2} changelog={:.2}",
        rate(&local) / rate(&stateless),
        rate(&logged) / rate(&stateless)
    );
    println!(
        "RESULT task_restore records={} seconds={:.2} rate={:.0} warm_records={} warm_seconds={:.2}",
        fresh.restored,
        fresh.seconds,
        fresh.restored as f64 / fresh.seconds,
        warm.restored,
        warm.seconds
    );
}
