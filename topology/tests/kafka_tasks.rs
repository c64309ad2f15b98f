//! Task-owned state stores against the real broker: an application scaled 1 → 3 → 1 across
//! OS processes (one SIGKILLed, one SIGTERMed) while keys are updated, restores of a deleted
//! and of a stale state directory, and exactly-once state after a kill between the changelog
//! write and the commit. Run `infrastructure/up.sh` first; these fail rather than skip
//! without a broker.
//!
//! Instances that must die by a signal run in child processes: the test binary runs itself
//! with `--exact kafka_tasks_child` and the instance's settings in `KAFKA_TASKS_CHILD_ROLE`
//! (the child test is a no-op without it). `KT_LOG=<filter>` (e.g. `info`) shows the child
//! runtimes' logs.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use topology::changelog::changelog_topic;
use topology::serdes::StringSerde;
use topology::transport::KafkaTransport;
use topology::{
    AsyncOptions, Metrics, ProcessError, Record, Runtime, RuntimeConfig, StoreReader, StoreSpec,
    TopologyBuilder, Value,
};

use common::{bootstrap, committed, create_topics, end_offsets, unique};

/// The store every test's processor keeps: key → (last seq applied, updates applied).
const STORE: &str = "latest";
const CHILD_ENV: &str = "KAFKA_TASKS_CHILD_ROLE";
const VIOLATION: &str = "VIOLATION";

type State = BTreeMap<String, (u64, u64)>;

// ---------------------------------------------------------------------------------------------
// The topology
// ---------------------------------------------------------------------------------------------

/// How the processor treats a record whose seq is not the next one for its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Mode {
    /// At-least-once: a replayed record (seq at or below the stored one) is skipped; a gap
    /// (seq more than one past the stored one) is a violation: the task's state was missing
    /// or stale when it processed the record.
    Idempotent,
    /// Exactly-once: anything but the next seq is a violation (a gap, or a record applied
    /// twice).
    Exact,
}

/// Source (string key, value = the key's seq) → per key `(last seq, count)` in store
/// `latest`, emitting `key=seq,count` → output; violations (see [`Mode`]) go to their own
/// topic.
fn latest_topology(input: &str, output: &str, violations: &str, mode: Mode) -> topology::Topology {
    let processor = topology::processor_with_context(move |record: Record, ctx| async move {
        let store = ctx
            .store::<String, (u64, u64)>(STORE)
            .map_err(|e| ProcessError::transient(e.to_string()))?;
        let key = record
            .key
            .as_ref()
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let seq: u64 = record
            .value
            .as_ref()
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ProcessError::permanent("value is not a seq"))?;
        let (last, count) = store
            .get(key.as_str())
            .map_err(|e| ProcessError::transient(e.to_string()))?
            .unwrap_or((0, 0));
        if mode == Mode::Idempotent && seq <= last {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if seq != last + 1 {
            out.push(Record::new(
                Some(Value::from(key.clone())),
                Some(Value::from(format!(
                    "{VIOLATION} task {:?}: {key} stored ({last}, {count}), got seq {seq}",
                    ctx.task_id()
                ))),
            ));
        }
        store
            .put(key.as_str(), &(seq, count + 1))
            .map_err(|e| ProcessError::transient(e.to_string()))?;
        out.push(record.with_value(Some(Value::from(format!("{key}={seq},{}", count + 1)))));
        Ok(out)
    });
    let is_violation = |r: &Record| {
        r.value
            .as_ref()
            .and_then(|v| v.as_str())
            .is_some_and(|v| v.starts_with(VIOLATION))
    };
    let b = TopologyBuilder::new();
    b.store(StoreSpec::new(STORE));
    let routes = b
        .source("src", input, Arc::new(StringSerde), Arc::new(StringSerde))
        .process_async("latest", processor, AsyncOptions::default())
        .with_stores(&[STORE])
        .branch(
            "route",
            vec![
                ("violations", Arc::new(is_violation)),
                ("updates", Arc::new(move |r: &Record| !is_violation(r))),
            ],
        );
    routes[0].to(
        "violations-out",
        violations,
        Arc::new(StringSerde),
        Arc::new(StringSerde),
    );
    routes[1].to(
        "updates-out",
        output,
        Arc::new(StringSerde),
        Arc::new(StringSerde),
    );
    b.build().expect("valid topology")
}

/// The topics of one application.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct App {
    id: String,
    input: String,
    output: String,
    violations: String,
    partitions: i32,
}

impl App {
    async fn create(prefix: &str, partitions: i32) -> App {
        let app = App {
            id: unique(&format!("{prefix}-app")),
            input: unique(&format!("{prefix}-in")),
            output: unique(&format!("{prefix}-out")),
            violations: unique(&format!("{prefix}-violations")),
            partitions,
        };
        create_topics(
            &bootstrap(),
            &[
                (&app.input, partitions),
                (&app.output, partitions),
                (&app.violations, 1),
            ],
        )
        .await;
        app
    }

    fn changelog(&self) -> String {
        changelog_topic(&self.id, STORE)
    }

    fn topology(&self, mode: Mode) -> topology::Topology {
        latest_topology(&self.input, &self.output, &self.violations, mode)
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// What a child instance runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChildRole {
    bootstrap: String,
    app: App,
    state_dir: PathBuf,
    mode: Mode,
    exactly_once: bool,
    commit_ms: u64,
    /// Extra librdkafka settings.
    kafka: Vec<(String, String)>,
}

/// One instance of an application in a child process, until SIGTERM (clean stop) or SIGKILL.
/// It prints `KT tasks <task,…>` whenever its running tasks change and `KT stopped` after a
/// clean stop. A no-op in the parent's own test run.
#[test]
fn kafka_tasks_child() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let role: ChildRole = serde_json::from_str(&role).expect("child role");
    if let Ok(filter) = std::env::var("KT_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run_child(role));
}

async fn run_child(role: ChildRole) {
    let mut transport = KafkaTransport::new(&role.bootstrap);
    for (k, v) in &role.kafka {
        transport = transport.set(k, v);
    }
    let mut config = RuntimeConfig::new(&role.app.id);
    config.state_dir = Some(role.state_dir.clone());
    config.commit_interval = Duration::from_millis(role.commit_ms);
    config.exactly_once = role.exactly_once;
    let runtime = Runtime::new(role.app.topology(role.mode), Arc::new(transport), config);
    let stores = runtime.stores();
    let shutdown = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let on_term = shutdown.clone();
    tokio::spawn(async move {
        term.recv().await;
        println!("KT sigterm");
        on_term.cancel();
    });
    let reporting = shutdown.clone();
    tokio::spawn(async move {
        let mut last: Option<Vec<String>> = None;
        while !reporting.is_cancelled() {
            let tasks: Vec<String> = stores.tasks().iter().map(ToString::to_string).collect();
            if last.as_ref() != Some(&tasks) {
                println!("KT tasks {}", tasks.join(","));
                last = Some(tasks);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let summary = runtime.run(shutdown).await.expect("the instance's runtime");
    println!("KT stopped consumed={}", summary.consumed);
}

/// A child instance, seen from the test: its running tasks as it last printed them.
struct Instance {
    name: &'static str,
    child: Child,
    tasks: Arc<Mutex<Vec<String>>>,
    stopped: Arc<AtomicBool>,
    state_dir: PathBuf,
}

impl Instance {
    fn spawn(name: &'static str, role: &ChildRole) -> Instance {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "kafka_tasks_child", "--nocapture"])
            .env(CHILD_ENV, serde_json::to_string(role).expect("role"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn an instance");
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let stdout = child.stdout.take().expect("child stdout");
        let (t, s) = (tasks.clone(), stopped.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(list) = line.strip_prefix("KT tasks ") {
                    *t.lock().expect("tasks") = list
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                } else if line.starts_with("KT stopped") {
                    s.store(true, AtomicOrdering::SeqCst);
                }
                eprintln!("[{name}] {line}");
            }
        });
        Instance {
            name,
            child,
            tasks,
            stopped,
            state_dir: role.state_dir.clone(),
        }
    }

    fn tasks(&self) -> Vec<String> {
        self.tasks.lock().expect("tasks").clone()
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn sigkill(&mut self) {
        eprintln!("[{}] SIGKILL", self.name);
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    fn sigterm(&self) {
        eprintln!("[{}] SIGTERM", self.name);
        let status = Command::new("kill")
            .args(["-TERM", &self.pid()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    /// Waits for the process to exit after a SIGTERM.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] still running {timeout:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A clean stop: SIGTERM, a zero exit status after the runtime said it stopped.
    fn stop(&mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "[{}] exited with {status}", self.name);
        assert!(
            self.stopped.load(AtomicOrdering::SeqCst),
            "[{}] exited without a clean stop",
            self.name
        );
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Broker helpers
// ---------------------------------------------------------------------------------------------

fn idempotent_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `(key, seq)` records, keyed, in order, and waits for every acknowledgement.
async fn produce_seqs(producer: &FutureProducer, topic: &str, records: &[(String, u64)]) {
    let values: Vec<String> = records.iter().map(|(_, seq)| seq.to_string()).collect();
    let sends: Vec<_> = records
        .iter()
        .zip(&values)
        .map(|((k, _), value)| {
            producer.send(
                FutureRecord::to(topic).key(k).payload(value),
                Duration::from_secs(10),
            )
        })
        .collect();
    for send in sends {
        send.await.expect("produce");
    }
}

/// One round of updates: every key `k0..k<keys>` gets `seq`.
fn round(keys: usize, seq: u64) -> Vec<(String, u64)> {
    (0..keys).map(|k| (format!("k{k}"), seq)).collect()
}

/// Every record of `topic` from the beginning up to the high watermarks taken at the start,
/// partition by partition in offset order (`committed_only`: `read_committed`, which waits for
/// open transactions to end).
fn read_to_end(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    committed_only: bool,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("kt-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set(
            "isolation.level",
            if committed_only {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .expect("reader");
    // Up to the high watermark even when reading committed records only: the last stable
    // offset stops short of open transactions and of whatever was committed after them.
    let ends = log_ends(bootstrap, topic, partitions, false);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("assignment");
    }
    c.assign(&tpl).expect("assign");
    let mut by_partition: Vec<Vec<OwnedMessage>> = (0..partitions).map(|_| Vec::new()).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let positions = c.position().expect("position");
        let done = (0..partitions).all(|p| {
            ends[p as usize] == 0
                || positions
                    .find_partition(topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .is_some_and(|o| o >= ends[p as usize])
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} not read to its end {ends:?} within {timeout:?} (at {positions:?})"
        );
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.offset() < ends[m.partition() as usize] => {
                by_partition[m.partition() as usize].push(m.detach());
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
    by_partition.into_iter().flatten().collect()
}

/// Per-partition end offsets: the last stable offset (`committed_only`: what a
/// `read_committed` reader reaches, short of open transactions) or the high watermark.
/// (librdkafka asks in the client's isolation level, `read_committed` by default.)
fn log_ends(bootstrap: &str, topic: &str, partitions: i32, committed_only: bool) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "isolation.level",
            if committed_only {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

fn text(bytes: Option<&[u8]>) -> String {
    String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned()
}

/// The state a changelog holds: its records applied in order to an empty store, decoded with
/// the `state` crate's own codec.
fn changelog_state(msgs: &[OwnedMessage]) -> State {
    let dir = state::StateConfig::temporary().open().expect("scratch dir");
    dir.apply_changelog(
        STORE,
        msgs.iter()
            .filter_map(|m| Some((m.key()?.to_vec(), m.payload().map(<[u8]>::to_vec)))),
    )
    .expect("apply the changelog");
    store_contents(&dir)
}

fn store_contents(dir: &state::StateDir) -> State {
    dir.store::<String, (u64, u64)>(STORE)
        .expect("store")
        .iter()
        .map(|kv| kv.expect("entry"))
        .collect()
}

/// The stores of every task in `state_dir/<app>/` (the instance must have stopped).
fn state_dir_contents(state_dir: &Path, app: &str) -> (State, Vec<String>) {
    let mut state = State::new();
    let mut tasks = Vec::new();
    let root = state_dir.join(app);
    for entry in std::fs::read_dir(&root).expect("the application's state dir") {
        let entry = entry.expect("entry");
        let sled = entry.path().join("sled");
        if !sled.exists() {
            continue;
        }
        tasks.push(entry.file_name().to_string_lossy().into_owned());
        let dir = state::StateDir::open(&sled).expect("open a task's stores");
        for (k, v) in store_contents(&dir) {
            assert!(
                state.insert(k.clone(), v).is_none(),
                "{k} in two tasks' stores"
            );
        }
    }
    tasks.sort();
    (state, tasks)
}

/// Outputs `key=seq,count` parsed, in partition order.
fn parse_outputs(msgs: &[OwnedMessage]) -> Vec<(String, u64, u64)> {
    msgs.iter()
        .map(|m| {
            let value = text(m.payload());
            let (key, rest) = value.split_once('=').expect("key=seq,count");
            let (seq, count) = rest.split_once(',').expect("seq,count");
            assert_eq!(key, text(m.key()), "output key");
            (
                key.to_owned(),
                seq.parse().expect("seq"),
                count.parse().expect("count"),
            )
        })
        .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Waits until the group's committed offsets reach the input's end offsets.
async fn wait_committed(app: &App, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (b, a) = (bootstrap(), app.clone());
        let (done, ends) = blocking(move || {
            (
                committed(&b, &a.id, &a.input, a.partitions),
                end_offsets(&b, &a.input, a.partitions),
            )
        })
        .await;
        if done == ends {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: committed {done:?}, input ends {ends:?}",
            app.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_tasks(partitions: i32) -> Vec<String> {
    (0..partitions).map(|p| format!("0_{p}")).collect()
}

/// Whether `instances` hold every task between them, each exactly once, each instance some.
fn balanced(instances: &[&Instance], partitions: i32) -> bool {
    let held: Vec<Vec<String>> = instances.iter().map(|i| i.tasks()).collect();
    let mut all: Vec<String> = held.iter().flatten().cloned().collect();
    all.sort();
    all == all_tasks(partitions) && held.iter().all(|h| !h.is_empty())
}

// ---------------------------------------------------------------------------------------------
// In-process instances
// ---------------------------------------------------------------------------------------------

struct InProcess {
    stores: StoreReader,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<topology::RunSummary, topology::RuntimeError>>,
}

impl InProcess {
    fn start(app: &App, state_dir: &Path, mode: Mode) -> InProcess {
        let mut config = RuntimeConfig::new(&app.id);
        config.state_dir = Some(state_dir.to_owned());
        config.commit_interval = Duration::from_millis(200);
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).expect("metrics");
        let runtime = Runtime::new(
            app.topology(mode),
            Arc::new(KafkaTransport::new(&bootstrap())),
            config,
        )
        .with_metrics(metrics);
        let stores = runtime.stores();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(runtime.run(shutdown.clone()));
        InProcess {
            stores,
            registry,
            shutdown,
            handle,
        }
    }

    async fn wait_running(&mut self, partitions: i32) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tasks: Vec<String> = self.stores.tasks().iter().map(|t| t.to_string()).collect();
            if tasks == all_tasks(partitions) {
                return;
            }
            if self.handle.is_finished() {
                panic!(
                    "the runtime stopped while its tasks were starting: {:?}",
                    (&mut self.handle).await
                );
            }
            assert!(Instant::now() < deadline, "tasks running: {tasks:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every running task's store, merged.
    fn contents(&self) -> State {
        let mut state = State::new();
        for task in self.stores.tasks() {
            let store = self
                .stores
                .store::<String, (u64, u64)>(task, STORE)
                .expect("open")
                .expect("a store of a running task");
            for kv in store.iter() {
                let (k, v) = kv.expect("entry");
                assert!(state.insert(k.clone(), v).is_none(), "{k} in two tasks");
            }
        }
        state
    }

    /// `topology_restore_records_total` per task label, from the registry.
    fn restore_records(&self) -> BTreeMap<String, u64> {
        let mut per_task = BTreeMap::new();
        for family in self.registry.gather() {
            if family.name() != "topology_restore_records_total" {
                continue;
            }
            for m in family.get_metric() {
                let task = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "task")
                    .map(|l| l.value().to_owned())
                    .expect("task label");
                *per_task.entry(task).or_insert(0) += m.get_counter().get_value() as u64;
            }
        }
        per_task
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("join").expect("a clean stop");
    }
}

/// Per-partition high watermarks of the application's changelog (records of open
/// transactions included).
async fn changelog_ends(app: &App) -> Vec<i64> {
    let (b, topic, n) = (bootstrap(), app.changelog(), app.partitions);
    blocking(move || log_ends(&b, &topic, n, false)).await
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Three instances of one application on six partitions, scaled 1 → 3 → 1 (one member
/// SIGKILLed, one SIGTERMed) while 60 keys are updated in rounds: no task ever processes a
/// record with its state missing or stale (no violations, and every output's count equals its
/// seq), and every key's final state — in the changelog and in the last instance's state
/// directory — equals a single-instance run's over the same input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tasks_scaled_one_to_three_to_one_keep_every_keys_state() {
    const KEYS: usize = 60;
    let started = Instant::now();
    let bootstrap = bootstrap();
    let app = App::create("kt-scale", 6).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let role = |name: &str| ChildRole {
        bootstrap: bootstrap.clone(),
        app: app.clone(),
        state_dir: tmp.path().join(name),
        mode: Mode::Idempotent,
        exactly_once: false,
        commit_ms: 200,
        kafka: vec![
            ("session.timeout.ms".into(), "6000".into()),
            ("heartbeat.interval.ms".into(), "1000".into()),
        ],
    };

    // Rounds of updates, produced continuously across every step below.
    let rounds = Arc::new(AtomicU64::new(0));
    let stop_producing = CancellationToken::new();
    let producing = {
        let (rounds, stop, topic) = (rounds.clone(), stop_producing.clone(), app.input.clone());
        let producer = idempotent_producer(&bootstrap);
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let seq = rounds.load(AtomicOrdering::SeqCst) + 1;
                produce_seqs(&producer, &topic, &round(KEYS, seq)).await;
                rounds.store(seq, AtomicOrdering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let progress = |step: &str| {
        eprintln!(
            "[test] {:>5.1} s: {step} (round {})",
            started.elapsed().as_secs_f64(),
            rounds.load(AtomicOrdering::SeqCst)
        );
    };

    let mut a = Instance::spawn("a", &role("a"));
    wait_for(
        "instance a runs all six tasks",
        Duration::from_secs(60),
        || balanced(&[&a], 6),
    )
    .await;
    progress("a runs all tasks");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut b = Instance::spawn("b", &role("b"));
    let mut c = Instance::spawn("c", &role("c"));
    wait_for(
        "a, b and c share the six tasks",
        Duration::from_secs(60),
        || balanced(&[&a, &b, &c], 6),
    )
    .await;
    progress(&format!(
        "scaled to 3: a {:?} b {:?} c {:?}",
        a.tasks(),
        b.tasks(),
        c.tasks()
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    b.sigkill();
    progress("b killed");
    wait_for(
        "a and c take over b's tasks",
        Duration::from_secs(60),
        || balanced(&[&a, &c], 6),
    )
    .await;
    progress(&format!("scaled to 2: a {:?} c {:?}", a.tasks(), c.tasks()));
    tokio::time::sleep(Duration::from_secs(3)).await;

    c.stop();
    progress("c stopped");
    wait_for(
        "a runs all six tasks again",
        Duration::from_secs(60),
        || balanced(&[&a], 6),
    )
    .await;
    progress("scaled to 1");
    tokio::time::sleep(Duration::from_secs(3)).await;

    stop_producing.cancel();
    producing.await.expect("producer");
    let n = rounds.load(AtomicOrdering::SeqCst);
    progress("production stopped");
    assert!(n >= 20, "only {n} rounds produced");
    wait_committed(&app, Duration::from_secs(60)).await;
    progress("a committed every input");
    a.stop();
    progress("a stopped");

    // A single instance over the same input, from scratch (with outputs of its own).
    let reference_app = App {
        input: app.input.clone(),
        ..App::create("kt-scale-ref", 6).await
    };
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let mut reference = InProcess::start(&reference_app, reference_dir.path(), Mode::Idempotent);
    reference.wait_running(6).await;
    wait_committed(&reference_app, Duration::from_secs(60)).await;
    let single = reference.contents();
    reference.stop().await;
    progress("reference run done");

    let expected: State = (0..KEYS).map(|k| (format!("k{k}"), (n, n))).collect();
    assert_eq!(single, expected, "the single-instance run");

    let (b2, topic) = (bootstrap.clone(), app.changelog());
    let changelog =
        blocking(move || read_to_end(&b2, &topic, 6, false, Duration::from_secs(60))).await;
    assert_eq!(
        changelog_state(&changelog),
        single,
        "the scaled application's changelog"
    );
    let (in_a, a_tasks) = state_dir_contents(&a.state_dir, &app.id);
    assert_eq!(a_tasks, all_tasks(6));
    assert_eq!(in_a, single, "the last instance's state directory");

    let (b2, topic) = (bootstrap.clone(), app.violations.clone());
    let violations =
        blocking(move || read_to_end(&b2, &topic, 1, false, Duration::from_secs(30))).await;
    let violations: Vec<String> = violations.iter().map(|m| text(m.payload())).collect();
    assert!(violations.is_empty(), "violations: {violations:#?}");

    let (b2, topic) = (bootstrap.clone(), app.output.clone());
    let outputs = parse_outputs(
        &blocking(move || read_to_end(&b2, &topic, 6, false, Duration::from_secs(60))).await,
    );
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    for (key, seq, count) in &outputs {
        assert_eq!(seq, count, "{key}: an update counted once per seq");
        last.insert(key.clone(), (*seq, *count));
    }
    let last: State = last.into_iter().collect();
    assert_eq!(last, expected, "every key's last output");
    println!(
        "scaling: {n} rounds × {KEYS} keys, {} outputs, {} changelog records, {:.1} s",
        outputs.len(),
        changelog.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A deleted state directory is restored from the changelog: the stores hold what they held,
/// and `topology_restore_records_total` counts every changelog record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tasks_a_deleted_state_dir_is_restored_from_the_changelog() {
    let bootstrap = bootstrap();
    let app = App::create("kt-deleted", 2).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("instance");
    let producer = idempotent_producer(&bootstrap);

    let mut first = InProcess::start(&app, &dir, Mode::Exact);
    first.wait_running(2).await;
    for seq in 1..=5 {
        produce_seqs(&producer, &app.input, &round(40, seq)).await;
    }
    wait_committed(&app, Duration::from_secs(60)).await;
    let before = first.contents();
    first.stop().await;
    assert_eq!(
        before,
        (0..40)
            .map(|k| (format!("k{k}"), (5, 5)))
            .collect::<State>()
    );
    let ends = changelog_ends(&app).await;
    assert_eq!(
        ends.iter().sum::<i64>(),
        200,
        "one changelog record a write"
    );

    std::fs::remove_dir_all(&dir).expect("delete the state dir");
    let mut second = InProcess::start(&app, &dir, Mode::Exact);
    second.wait_running(2).await;
    let restored = second.restore_records();
    let after = second.contents();
    second.stop().await;
    assert_eq!(after, before, "restored contents");
    let expected: BTreeMap<String, u64> = ends
        .iter()
        .enumerate()
        .map(|(p, end)| (format!("0_{p}"), *end as u64))
        .collect();
    assert_eq!(restored, expected, "records restored per task");
}

/// A state directory kept but behind its changelog (another instance ran the tasks
/// meanwhile) reads only the tail: exactly the records the other instance added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tasks_a_stale_state_dir_reads_only_the_changelog_tail() {
    let bootstrap = bootstrap();
    let app = App::create("kt-stale", 2).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let producer = idempotent_producer(&bootstrap);

    let mut a = InProcess::start(&app, &dir_a, Mode::Exact);
    a.wait_running(2).await;
    for seq in 1..=3 {
        produce_seqs(&producer, &app.input, &round(40, seq)).await;
    }
    wait_committed(&app, Duration::from_secs(60)).await;
    a.stop().await;
    let ends_a = changelog_ends(&app).await;

    // B, on a directory of its own, restores everything and grows the changelog: updates of
    // half the keys and ten new keys.
    let mut b = InProcess::start(&app, &dir_b, Mode::Exact);
    b.wait_running(2).await;
    let b_restored: u64 = b.restore_records().values().sum();
    assert_eq!(
        b_restored,
        ends_a.iter().sum::<i64>() as u64,
        "b restores all"
    );
    for seq in 4..=6 {
        produce_seqs(&producer, &app.input, &round(20, seq)).await;
    }
    let new_keys: Vec<(String, u64)> = (40..50).map(|k| (format!("k{k}"), 1)).collect();
    produce_seqs(&producer, &app.input, &new_keys).await;
    wait_committed(&app, Duration::from_secs(60)).await;
    let b_contents = b.contents();
    b.stop().await;
    let ends_b = changelog_ends(&app).await;
    let added: Vec<i64> = ends_b.iter().zip(&ends_a).map(|(b, a)| b - a).collect();
    assert_eq!(
        added.iter().sum::<i64>(),
        70,
        "b wrote one record an update"
    );

    // A again, on its old directory.
    let mut a = InProcess::start(&app, &dir_a, Mode::Exact);
    a.wait_running(2).await;
    let restored = a.restore_records();
    let contents = a.contents();
    a.stop().await;
    let expected: BTreeMap<String, u64> = added
        .iter()
        .enumerate()
        .map(|(p, n)| (format!("0_{p}"), *n as u64))
        .collect();
    assert_eq!(restored, expected, "only the tail is read");
    assert_eq!(contents, b_contents);
    let mut want: State = (0..20).map(|k| (format!("k{k}"), (6, 6))).collect();
    want.extend((20..40).map(|k| (format!("k{k}"), (3, 3))));
    want.extend((40..50).map(|k| (format!("k{k}"), (1, 1))));
    assert_eq!(contents, want);
}

/// Exactly-once: an instance killed after its changelog records of a batch were written but
/// before its transaction committed leaves no trace of that batch. The next instance (same
/// state directory) restores the committed changelog only, processes the batch again and
/// commits; a third one restores everything committed, the second instance's transaction
/// (written after the killed one's, which stays open on the broker until it times out)
/// included. Every instance's state matches the committed outputs, each seq counted once.
///
/// (A restore once stopped at the last stable offset, i.e. short of the open transaction:
/// the third instance, started before the broker aborted it, came up without batch 2.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tasks_exactly_once_state_after_a_kill_matches_the_committed_outputs() {
    const KEYS: usize = 10;
    let started = Instant::now();
    let bootstrap = bootstrap();
    let app = App::create("kt-eos", 2).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let role = ChildRole {
        bootstrap: bootstrap.clone(),
        app: app.clone(),
        state_dir: tmp.path().join("instance"),
        mode: Mode::Exact,
        exactly_once: true,
        commit_ms: 5_000,
        kafka: vec![
            ("session.timeout.ms".into(), "6000".into()),
            ("heartbeat.interval.ms".into(), "1000".into()),
            // The killed instance's transaction stays open until the broker aborts it after
            // this long (librdkafka's default is 60 s); the third instance below starts well
            // before that.
            ("transaction.timeout.ms".into(), "20000".into()),
        ],
    };
    let progress = |step: &str| {
        eprintln!("[test] {:>5.1} s: {step}", started.elapsed().as_secs_f64());
    };
    let producer = idempotent_producer(&bootstrap);
    let expected: State = (0..KEYS).map(|k| (format!("k{k}"), (5, 5))).collect();

    let mut first = Instance::spawn("eos-1", &role);
    wait_for("the first instance runs", Duration::from_secs(60), || {
        balanced(&[&first], 2)
    })
    .await;
    for seq in 1..=3 {
        produce_seqs(&producer, &app.input, &round(KEYS, seq)).await;
    }
    // Right after a commit: the next one is ~5 s away.
    wait_committed(&app, Duration::from_secs(30)).await;
    progress("batch 1 committed");
    let (b2, a2) = (bootstrap.clone(), app.clone());
    let committed_before = blocking(move || committed(&b2, &a2.id, &a2.input, 2)).await;
    let changelog_before: i64 = changelog_ends(&app).await.iter().sum();
    for seq in 4..=5 {
        produce_seqs(&producer, &app.input, &round(KEYS, seq)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now: i64 = changelog_ends(&app).await.iter().sum();
        if now >= changelog_before + 2 * KEYS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "batch 2 not in the changelog: {now} of {}",
            changelog_before + 2 * KEYS as i64
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.sigkill();
    let killed = Instant::now();
    progress("first instance killed with batch 2 in its open transaction");
    let (b2, a2) = (bootstrap.clone(), app.clone());
    let committed_at_kill = blocking(move || committed(&b2, &a2.id, &a2.input, 2)).await;
    assert_eq!(
        committed_at_kill, committed_before,
        "killed before batch 2 was committed"
    );
    let (b2, topic) = (bootstrap.clone(), app.changelog());
    let uncommitted =
        blocking(move || read_to_end(&b2, &topic, 2, false, Duration::from_secs(30))).await;
    assert_eq!(
        changelog_state(&uncommitted),
        expected,
        "the killed instance's open transaction holds batch 2's writes"
    );

    let mut second = Instance::spawn("eos-2", &role);
    wait_for("the second instance runs", Duration::from_secs(120), || {
        balanced(&[&second], 2)
    })
    .await;
    progress("second instance runs");
    wait_committed(&app, Duration::from_secs(60)).await;
    progress("batch 2 committed again");
    second.stop();
    let (stored_second, tasks) = state_dir_contents(&role.state_dir, &app.id);
    assert_eq!(tasks, all_tasks(2));
    assert_eq!(stored_second, expected, "the second instance's state");
    progress("second instance stopped");

    let mut third = Instance::spawn("eos-3", &role);
    wait_for("the third instance runs", Duration::from_secs(120), || {
        balanced(&[&third], 2)
    })
    .await;
    progress(&format!(
        "third instance runs, {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    ));
    third.stop();
    let (stored, tasks) = state_dir_contents(&role.state_dir, &app.id);
    assert_eq!(tasks, all_tasks(2));
    progress("third instance stopped");

    let (b2, topic) = (bootstrap.clone(), app.output.clone());
    let outputs = parse_outputs(
        &blocking(move || read_to_end(&b2, &topic, 2, true, Duration::from_secs(90))).await,
    );
    let mut seen: HashMap<(String, u64), u64> = HashMap::new();
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    for (key, seq, count) in &outputs {
        assert_eq!(seq, count, "{key}: each seq counted once");
        *seen.entry((key.clone(), *seq)).or_insert(0) += 1;
        last.insert(key.clone(), (*seq, *count));
    }
    assert_eq!(outputs.len(), 5 * KEYS, "one committed output a record");
    assert!(seen.values().all(|n| *n == 1), "no committed duplicates");
    let last: State = last.into_iter().collect();
    assert_eq!(last, expected, "the committed outputs");
    assert_eq!(stored, last, "the restored state = the committed outputs");
    let (b2, topic) = (bootstrap.clone(), app.changelog());
    let changelog =
        blocking(move || read_to_end(&b2, &topic, 2, true, Duration::from_secs(90))).await;
    assert_eq!(changelog_state(&changelog), last, "the committed changelog");
    let (b2, topic) = (bootstrap.clone(), app.violations.clone());
    let violations =
        blocking(move || read_to_end(&b2, &topic, 1, true, Duration::from_secs(60))).await;
    let violations: Vec<String> = violations.iter().map(|m| text(m.payload())).collect();
    assert!(violations.is_empty(), "violations: {violations:#?}");
    println!(
        "exactly-once after a kill: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
