//! Kafka Streams as the oracle of the stateful operators: the same topology runs in Kafka
//! Streams 4.1.1 (`infrastructure/kafka-streams/src/StatefulOracle.java`) and in this engine,
//! on the same input topics of a real broker (three partitions, out-of-order timestamps, input
//! in phases), and the final results per key (per key and window) must be equal. Ours runs as
//! two instances of one group: the second joins after the first phase and the first leaves
//! after the second, so its tasks move (and restore their stores from their changelogs) while
//! the input is still coming.
//!
//! Needs the broker (`infrastructure/up.sh kafka`) and the oracle's class path in
//! `KAFKA_STREAMS_CLASSPATH` (`infrastructure/test.sh` exports it; by hand:
//! `export KAFKA_STREAMS_CLASSPATH="$(infrastructure/kafka-streams/build.sh)"`); without them
//! the tests fail, never skip.
//!
//! Deliberate differences, not exercised here: late records go to the dead-letter topic here
//! (Kafka Streams drops them; the outputs are the same); stream time is kept per operator in
//! its store (Kafka Streams: per task, from the committed offsets' metadata).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use topology::serdes::{SerdeRef, StringSerde};
use topology::stateful::{JoinKind, TimeWindows, windowed_key};
use topology::transport::KafkaTransport;
use topology::{Runtime, RuntimeConfig, Topology, TopologyBuilder, Value};

const PARTITIONS: i32 = 3;

/// Keyed records with their timestamps (`None`: a tombstone).
type Records = Vec<(String, Option<String>, i64)>;
/// One phase of input: records per topic.
type Phase<'a> = Vec<(&'a str, Records)>;

/// One oracle at a time: each is a JVM, and the machines running the tests are small.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn text() -> SerdeRef {
    Arc::new(StringSerde)
}

fn as_text(v: &Value) -> String {
    v.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_json().to_string())
}

fn classpath() -> String {
    std::env::var("KAFKA_STREAMS_CLASSPATH").unwrap_or_else(|_| {
        panic!(
            "KAFKA_STREAMS_CLASSPATH is not set: run `infrastructure/test.sh`, or \
             `export KAFKA_STREAMS_CLASSPATH=\"$(infrastructure/kafka-streams/build.sh)\"`"
        )
    })
}

/// The partition a key goes to in every input topic (as the Java and librdkafka producers
/// would not agree on one, the tests place records themselves).
fn partition_of(key: &str) -> i32 {
    (crc32fast::hash(key.as_bytes()) % PARTITIONS as u32) as i32
}

/// Epoch-aligned base time half an hour ago: recent enough for the broker's retention.
fn base_time() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    (now - 30 * 60_000) / 60_000 * 60_000
}

async fn create_topics(bootstrap: &str, topics: &[&str]) {
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)).set("retention.ms", "-1"))
        .collect();
    for r in common::admin(bootstrap)
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics (is the broker up? `infrastructure/up.sh kafka`)")
    {
        r.expect("topic created");
    }
}

/// `(key, value or tombstone, timestamp)` records, each to its key's partition.
async fn produce(bootstrap: &str, topic: &str, records: &[(String, Option<String>, i64)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (key, value, ts) in records {
        let mut r = FutureRecord::to(topic)
            .key(key)
            .partition(partition_of(key))
            .timestamp(*ts);
        if let Some(v) = value {
            r = r.payload(v);
        }
        // One at a time: the order of a key's records is the test's.
        producer
            .send(r, Duration::from_secs(10))
            .await
            .expect("produce");
    }
}

/// Waits until every group committed every input topic to its end.
async fn wait_consumed(bootstrap: &str, groups: &[&str], topics: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut done = true;
        for topic in topics {
            let ends = common::end_offsets(bootstrap, topic, PARTITIONS);
            for group in groups {
                let committed = common::committed(bootstrap, group, topic, PARTITIONS);
                done &= ends
                    .iter()
                    .zip(&committed)
                    .all(|(end, c)| *end == 0 || c == end);
            }
        }
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{groups:?} did not consume {topics:?} in 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every record of `topic` as `(key, value)`, `None` for tombstones, once the topic stopped
/// growing for 3 s.
fn read(bootstrap: &str, topic: &str) -> Vec<(String, Option<String>)> {
    let mut last_size = usize::MAX;
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let size: i64 = common::end_offsets(bootstrap, topic, PARTITIONS)
            .iter()
            .sum();
        if size as usize != last_size {
            last_size = size as usize;
            stable_since = Instant::now();
        }
        if stable_since.elapsed() > Duration::from_secs(3) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    common::read_all(
        bootstrap,
        topic,
        last_size,
        false,
        Duration::from_millis(500),
        Duration::from_secs(30),
    )
    .iter()
    .map(|m| {
        let key = m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let value = m.payload().map(|v| String::from_utf8_lossy(v).into_owned());
        (key, value)
    })
    .collect()
}

/// The last value per key (a tombstone removes the key).
fn last_per_key(records: &[(String, Option<String>)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in records {
        match v {
            Some(v) => out.insert(k.clone(), v.clone()),
            None => out.remove(k),
        };
    }
    out
}

/// Kafka Streams running one scenario of the oracle program.
struct Oracle {
    child: tokio::process::Child,
    _state: tempfile::TempDir,
}

impl Oracle {
    async fn start(bootstrap: &str, scenario: &str, application_id: &str, topics: &[&str]) -> Self {
        let state = tempfile::tempdir().expect("state dir");
        let mut child = tokio::process::Command::new("java")
            .args([
                "-Xmx512m",
                "-cp",
                &classpath(),
                "StatefulOracle",
                scenario,
                bootstrap,
                application_id,
            ])
            .arg(state.path())
            .args(topics)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("java runs (Java 17 is installed by infrastructure/system-deps.sh)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let running = tokio::time::timeout(Duration::from_secs(90), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "RUNNING" {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            running,
            Ok(true),
            "the Kafka Streams oracle ({scenario}) did not start"
        );
        Oracle {
            child,
            _state: state,
        }
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "the oracle did not stop cleanly: {status:?}"
        );
    }
}

/// One instance of ours.
struct Instance {
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<topology::RunSummary, topology::RuntimeError>>,
    _state: tempfile::TempDir,
}

impl Instance {
    fn start(bootstrap: &str, topology: Topology, application_id: &str) -> Self {
        let state = tempfile::tempdir().expect("state dir");
        let mut config = RuntimeConfig::new(application_id);
        config.commit_interval = Duration::from_millis(100);
        config.state_dir = Some(state.path().to_owned());
        let transport = KafkaTransport::new(bootstrap).set("session.timeout.ms", "6000");
        let runtime = Runtime::new(topology, Arc::new(transport), config);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(runtime.run(shutdown.clone()));
        Instance {
            shutdown,
            running,
            _state: state,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.running
            .await
            .expect("joined")
            .expect("our runtime stopped cleanly");
    }
}

/// Runs the phases through both: ours starts with one instance, a second joins after the
/// first phase, the first leaves after the second.
async fn run_both(
    bootstrap: &str,
    ours: impl Fn() -> Topology,
    oracle: (&str, &[&str]),
    inputs: &[&str],
    phases: Vec<Phase<'_>>,
) {
    let ks_app = common::unique("ks-oracle");
    let our_app = common::unique("ours-oracle");
    let ks = Oracle::start(bootstrap, oracle.0, &ks_app, oracle.1).await;
    let mut first = Some(Instance::start(bootstrap, ours(), &our_app));
    let mut second = None;
    for (i, phase) in phases.into_iter().enumerate() {
        match i {
            1 => second = Some(Instance::start(bootstrap, ours(), &our_app)),
            2 => {
                if let Some(first) = first.take() {
                    first.stop().await;
                }
            }
            _ => {}
        }
        for (topic, records) in phase {
            produce(bootstrap, topic, &records).await;
        }
        wait_consumed(bootstrap, &[&ks_app, &our_app], inputs).await;
    }
    ks.stop().await;
    for instance in [first, second].into_iter().flatten() {
        instance.stop().await;
    }
}

/// A small deterministic generator (the inputs are the same on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suppressed_windowed_count_gives_kafka_streams_final_counts() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let bootstrap = common::bootstrap();
    let input = common::unique("oracle-clicks");
    let (ks_out, our_out) = (format!("{input}-ks"), format!("{input}-ours"));
    create_topics(&bootstrap, &[&input, &ks_out, &our_out]).await;
    let base = base_time();
    // 300 clicks of 7 users over 10 minutes, a fifth of them up to 25 s out of order (some
    // past the 10 s grace: late for both), in three phases; then one record per partition an
    // hour later closes every window.
    let mut rng = Lcg(7);
    let mut phases = vec![Vec::new(), Vec::new(), Vec::new()];
    for i in 0..300u64 {
        let user = format!("user-{}", rng.next(7));
        let mut ts = base + (i as i64) * 2_000;
        if rng.next(5) == 0 {
            ts -= rng.next(25_000) as i64;
        }
        phases[(i / 100) as usize].push((user, Some("click".to_owned()), ts));
    }
    for p in 0..PARTITIONS {
        let key = (0..)
            .map(|n| format!("closer-{n}"))
            .find(|k| partition_of(k) == p)
            .expect("a key for each partition");
        phases[2].push((key, Some("click".to_owned()), base + 3_600_000));
    }
    let (source, out) = (input.clone(), our_out.clone());
    let ours = move || {
        let b = TopologyBuilder::new();
        b.source("clicks", &source, text(), text())
            .group_by_key()
            .windowed_by(
                TimeWindows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10)),
            )
            .count("counts")
            .suppress_until_window_closes("finals")
            .to_stream("final-counts")
            .map("label", |mut r| {
                if let Some((key, window)) = r.key.as_ref().and_then(windowed_key) {
                    r.key = Some(Value::from(format!("{}@{}", as_text(&key), window.start)));
                }
                r.value = r.value.as_ref().map(|v| Value::from(as_text(v)));
                r
            })
            .to("out", &out, text(), text());
        b.build().expect("valid")
    };
    let phases = phases
        .into_iter()
        .map(|records| vec![(input.as_str(), records)])
        .collect();
    run_both(
        &bootstrap,
        ours,
        ("windowed-count", &[&input, &ks_out]),
        &[&input],
        phases,
    )
    .await;
    let theirs = read(&bootstrap, &ks_out);
    let mine = read(&bootstrap, &our_out);
    assert!(
        theirs.len() > 30,
        "Kafka Streams emitted {} windows",
        theirs.len()
    );
    // Suppression: one final result per window, from both.
    assert_eq!(last_per_key(&theirs).len(), theirs.len(), "{theirs:?}");
    assert_eq!(last_per_key(&mine).len(), mine.len(), "{mine:?}");
    assert_eq!(last_per_key(&mine), last_per_key(&theirs));
    let late = common::end_offsets(&bootstrap, &format!("{input}.dlq"), 1);
    assert!(
        late[0] > 0,
        "some clicks were late (dead-lettered here, dropped there)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_table_join_gives_kafka_streams_pairs() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let bootstrap = common::bootstrap();
    let (clicks, regions) = (
        common::unique("oracle-views"),
        common::unique("oracle-regions"),
    );
    let outs = ["ks-inner", "ks-left", "ours-inner", "ours-left"].map(|o| format!("{clicks}-{o}"));
    let mut topics = vec![clicks.as_str(), regions.as_str()];
    topics.extend(outs.iter().map(String::as_str));
    create_topics(&bootstrap, &topics).await;
    let base = base_time();
    let row = |user: &str, region: Option<&str>, t: i64| {
        (user.to_owned(), region.map(str::to_owned), base + t)
    };
    let click = |user: usize, page: usize, t: i64| {
        (format!("u{user}"), Some(format!("page-{page}")), base + t)
    };
    let phases = vec![
        vec![(
            regions.as_str(),
            (0..10)
                .map(|u| row(&format!("u{u}"), Some(["eu", "us", "asia"][u % 3]), 0))
                .collect(),
        )],
        vec![(
            clicks.as_str(),
            (0..15).map(|u| click(u, u, 1_000)).collect(),
        )],
        vec![(
            regions.as_str(),
            vec![
                row("u1", Some("africa"), 2_000),
                row("u2", None, 2_000),
                row("u12", Some("eu"), 2_000),
            ],
        )],
        vec![(
            clicks.as_str(),
            (0..15).map(|u| click(u, 100 + u, 3_000)).collect(),
        )],
    ];
    let (inner, left) = (outs[2].clone(), outs[3].clone());
    let (views, rows) = (clicks.clone(), regions.clone());
    let ours = move || {
        let b = TopologyBuilder::new();
        let table = b.table("regions", &rows, text(), text());
        let stream = b.source("views", &views, text(), text());
        let pair = |l: Option<&Value>, r: Option<&Value>| {
            Value::from(format!(
                "{}|{}",
                l.map(as_text).unwrap_or_default(),
                r.map(as_text).unwrap_or("null".into())
            ))
        };
        stream
            .join_table("inner", &table, JoinKind::Inner, pair)
            .to("inner-out", &inner, text(), text());
        stream.join_table("left", &table, JoinKind::Left, pair).to(
            "left-out",
            &left,
            text(),
            text(),
        );
        b.build().expect("valid")
    };
    // Phases of four: ours gets its second instance after the first, loses the first after
    // the second; the run helper takes three phases' worth of moves, the fourth runs on one.
    run_both(
        &bootstrap,
        ours,
        (
            "stream-table-join",
            &[&clicks, &regions, &outs[0], &outs[1]],
        ),
        &[&clicks, &regions],
        phases,
    )
    .await;
    for (theirs, mine) in [(&outs[0], &outs[2]), (&outs[1], &outs[3])] {
        let mut theirs = read(&bootstrap, theirs);
        let mut mine = read(&bootstrap, mine);
        theirs.sort();
        mine.sort();
        assert!(theirs.len() >= 20, "{theirs:?}");
        assert_eq!(mine, theirs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_aggregation_with_a_subtractor_gives_kafka_streams_counts() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let bootstrap = common::bootstrap();
    let users = common::unique("oracle-users");
    let (ks_out, our_out) = (format!("{users}-ks"), format!("{users}-ours"));
    create_topics(&bootstrap, &[&users, &ks_out, &our_out]).await;
    let base = base_time();
    let mut rng = Lcg(11);
    let regions = ["eu", "us", "asia", "africa"];
    let phases: Vec<Phase<'_>> = (0..3)
        .map(|phase| {
            let records = (0..60)
                .map(|i| {
                    let user = format!("user-{}", rng.next(25));
                    // A tenth are deletions, some of users never written.
                    let region =
                        (rng.next(10) != 0).then(|| regions[rng.next(4) as usize].to_owned());
                    (user, region, base + phase * 60_000 + i)
                })
                .collect();
            vec![(users.as_str(), records)]
        })
        .collect();
    let (input, out) = (users.clone(), our_out.clone());
    let ours = move || {
        let b = TopologyBuilder::new();
        b.table("users", &input, text(), text())
            .group_by("by-region", |_, region| region.clone())
            .aggregate(
                "users-per-region",
                || Value::Json(0.into()),
                |_, _, n| Value::Json((n.to_json().as_i64().unwrap_or(0) + 1).into()),
                |_, _, n| Value::Json((n.to_json().as_i64().unwrap_or(0) - 1).into()),
            )
            .to_stream("changes")
            .map("as-text", |mut r| {
                r.value = r.value.as_ref().map(|v| Value::from(as_text(v)));
                r
            })
            .to("out", &out, text(), text());
        b.build().expect("valid")
    };
    run_both(
        &bootstrap,
        ours,
        ("table-aggregate", &[&users, &ks_out]),
        &[&users],
        phases,
    )
    .await;
    let theirs = last_per_key(&read(&bootstrap, &ks_out));
    let mine = last_per_key(&read(&bootstrap, &our_out));
    assert_eq!(theirs.len(), 4, "{theirs:?}");
    assert_eq!(mine, theirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn table_table_joins_give_kafka_streams_rows() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let bootstrap = common::bootstrap();
    let (left, right) = (
        common::unique("oracle-left"),
        common::unique("oracle-right"),
    );
    let outs = [
        "ks-inner",
        "ks-left",
        "ks-outer",
        "ours-inner",
        "ours-left",
        "ours-outer",
    ]
    .map(|o| format!("{left}-{o}"));
    let mut topics = vec![left.as_str(), right.as_str()];
    topics.extend(outs.iter().map(String::as_str));
    create_topics(&bootstrap, &topics).await;
    let base = base_time();
    let mut rng = Lcg(23);
    let phases: Vec<Phase<'_>> = (0..3)
        .map(|phase| {
            let mut side = |name: &str, tag: &str| -> Records {
                (0..25)
                    .map(|i| {
                        let key = format!("k{}", rng.next(12));
                        let value = (rng.next(6) != 0).then(|| format!("{tag}{}", rng.next(100)));
                        let _ = name;
                        (key, value, base + phase * 60_000 + i)
                    })
                    .collect()
            };
            let (l, r) = (side("left", "l"), side("right", "r"));
            vec![(left.as_str(), l), (right.as_str(), r)]
        })
        .collect();
    let (l_topic, r_topic) = (left.clone(), right.clone());
    let our_outs = [outs[3].clone(), outs[4].clone(), outs[5].clone()];
    let ours = move || {
        let b = TopologyBuilder::new();
        let l = b.table("left", &l_topic, text(), text());
        let r = b.table("right", &r_topic, text(), text());
        let pair = |a: Option<&Value>, b: Option<&Value>| {
            Value::from(format!(
                "{}|{}",
                a.map(as_text).unwrap_or("null".into()),
                b.map(as_text).unwrap_or("null".into())
            ))
        };
        for ((name, kind), out) in [
            ("inner", JoinKind::Inner),
            ("left-join", JoinKind::Left),
            ("outer", JoinKind::Outer),
        ]
        .into_iter()
        .zip(&our_outs)
        {
            l.join(name, &r, kind, pair)
                .to_stream(&format!("{name}-changes"))
                .to(&format!("{name}-out"), out, text(), text());
        }
        b.build().expect("valid")
    };
    run_both(
        &bootstrap,
        ours,
        (
            "table-table-join",
            &[&left, &right, &outs[0], &outs[1], &outs[2]],
        ),
        &[&left, &right],
        phases,
    )
    .await;
    for i in 0..3 {
        let theirs = last_per_key(&read(&bootstrap, &outs[i]));
        let mine = last_per_key(&read(&bootstrap, &outs[i + 3]));
        assert!(!theirs.is_empty(), "{}", outs[i]);
        assert_eq!(mine, theirs, "{} vs {}", outs[i], outs[i + 3]);
    }
}
