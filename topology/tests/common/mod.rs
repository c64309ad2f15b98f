//! Helpers for the tests against the real broker. Addresses come from `KAFKA_BOOTSTRAP` or
//! `infrastructure/.env`; without them the tests fail rather than skip.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub fn setting(key: &str) -> String {
    if let Ok(v) = std::env::var(key) {
        return v;
    }
    let env = concat!(env!("CARGO_MANIFEST_DIR"), "/../infrastructure/.env");
    std::fs::read_to_string(env)
        .ok()
        .and_then(|t| {
            t.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("{key} is not set and not in {env}: run `infrastructure/up.sh`"))
}

pub fn bootstrap() -> String {
    setting("KAFKA_BOOTSTRAP")
}

pub fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let res = admin(bootstrap)
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics (is the broker up? run `infrastructure/up.sh`)");
    for r in res {
        r.expect("topic created");
    }
}

pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `(partition, key, value)` records and waits for every acknowledgement.
pub async fn produce(bootstrap: &str, topic: &str, records: &[(Option<i32>, String, String)]) {
    let p = producer(bootstrap);
    let futures: Vec<_> = records
        .iter()
        .map(|(part, k, v)| {
            let mut r = FutureRecord::to(topic).key(k).payload(v);
            if let Some(part) = part {
                r = r.partition(*part);
            }
            p.send(r, Duration::from_secs(10))
        })
        .collect();
    for f in futures {
        f.await.expect("produce");
    }
}

/// Reads `topic` from the beginning until `want` records arrived and then nothing more for
/// `settle`, or until `timeout`.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    want: usize,
    committed_only: bool,
    settle: Duration,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
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
    c.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut last = Instant::now();
    while Instant::now() < deadline {
        if out.len() >= want && last.elapsed() >= settle {
            break;
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(m.detach());
            last = Instant::now();
        }
    }
    out
}

/// The group's committed offsets per partition (-1: none), from the broker.
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    got.elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(-1))
        .collect()
}

/// Log end offsets per partition, from the broker.
pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
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

/// Values of messages as strings, counted.
pub fn value_counts(msgs: &[OwnedMessage]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for msg in msgs {
        let v = msg
            .payload()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        *m.entry(v).or_insert(0) += 1;
    }
    m
}
