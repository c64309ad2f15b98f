//! Changelog mode against the real broker: write through a store with a `KafkaChangelog`,
//! drop the local directory, restore into a fresh one. Run `infrastructure/up.sh` first.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use state::{ChangelogSink, StateConfig};
use topology::changelog::{KafkaChangelog, changelog_topic};

use common::{admin, bootstrap, unique};

fn contents(dir: &state::StateDir, store: &str) -> BTreeMap<String, String> {
    dir.store::<String, String>(store)
        .expect("store")
        .iter()
        .map(|kv| kv.expect("entry"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_changelog_restores_a_deleted_state_dir() {
    let bootstrap = bootstrap();
    let app = unique("cl-app");
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = tmp.path().join("first");

    let changelog = Arc::new(KafkaChangelog::new(&bootstrap, &app).expect("changelog"));
    let topic = changelog.ensure_topic("products").await.expect("topic");
    assert_eq!(topic, changelog_topic(&app, "products"));
    let before = {
        let dir = StateConfig::new(&first)
            .changelog(changelog.clone())
            .open()
            .expect("open");
        let s = dir.store::<String, String>("products").expect("store");
        for i in 0..500 {
            s.put(&format!("p{i}"), &format!("v{i}")).expect("put");
        }
        for i in 0..100 {
            s.put(&format!("p{i}"), &format!("v{i}-2"))
                .expect("overwrite");
        }
        for i in 400..450 {
            assert!(s.delete(&format!("p{i}")).expect("delete"));
        }
        // A store never written through the changelog name space: written directly.
        dir.transaction(&[&s], |tx| {
            tx.put(&s, "tx-key", &"tx-value".to_string())?;
            Ok::<_, state::StateError>(())
        })
        .expect("transaction");
        changelog.flush().expect("flush");
        contents(&dir, "products")
    };
    assert_eq!(before.len(), 451);
    assert!(!before.contains_key("p420"));
    std::fs::remove_dir_all(&first).expect("drop the local state dir");

    // The topic is compacted.
    let cfg = admin(&bootstrap)
        .describe_configs(&[ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let resource = cfg[0].as_ref().expect("topic config");
    let policy = resource
        .get("cleanup.policy")
        .and_then(|e| e.value.clone())
        .expect("cleanup.policy");
    assert_eq!(policy, "compact");

    // A new pod: fresh changelog client, fresh directory.
    let fresh = Arc::new(KafkaChangelog::new(&bootstrap, &app).expect("changelog"));
    let second = tmp.path().join("second");
    let dir = StateConfig::new(&second)
        .changelog(fresh.clone())
        .open()
        .expect("open");
    let stats = fresh.restore(&dir, "products").await.expect("restore");
    assert!(stats.restored);
    assert_eq!(stats.records, 500 + 100 + 50 + 1);
    assert_eq!(stats.applied, 501, "latest per key, tombstones included");
    let after = contents(&dir, "products");
    assert_eq!(after, before);
    assert_eq!(
        dir.store::<String, String>("products")
            .expect("store")
            .get("p420")
            .expect("get"),
        None,
        "a deleted key stays deleted"
    );
    // A non-empty store is left alone; a store without a changelog restores nothing.
    let again = fresh.restore(&dir, "products").await.expect("restore");
    assert!(!again.restored);
    assert_eq!(again.applied, 0);
    let none = fresh.restore(&dir, "never-written").await.expect("restore");
    assert_eq!((none.records, none.applied), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_changelog_restore_time_for_100k_entries() {
    let bootstrap = bootstrap();
    let app = unique("cl-big");
    let changelog = Arc::new(KafkaChangelog::new(&bootstrap, &app).expect("changelog"));
    changelog.ensure_topic("big").await.expect("topic");
    let n = 100_000usize;
    let written = Instant::now();
    {
        let dir = StateConfig::temporary()
            .changelog(changelog.clone())
            .open()
            .expect("open");
        let s = dir.store::<u64, String>("big").expect("store");
        for i in 0..n as u64 {
            s.put(&i, &format!("value-{i:08}-{}", "x".repeat(40)))
                .expect("put");
        }
        changelog.flush().expect("flush");
    }
    let write_secs = written.elapsed().as_secs_f64();

    let fresh = KafkaChangelog::new(&bootstrap, &app).expect("changelog");
    let dir = StateConfig::temporary().open().expect("open");
    let started = Instant::now();
    let stats = fresh.restore(&dir, "big").await.expect("restore");
    let secs = started.elapsed().as_secs_f64();
    let s = dir.store::<u64, String>("big").expect("store");
    assert_eq!(s.len(), n);
    assert_eq!(stats.applied, n);
    assert!(s.get(&99_999).expect("get").is_some());
    println!(
        "RESULT changelog: wrote {n} entries through the changelog in {write_secs:.2} s; \
         restored {} records into an empty store in {secs:.2} s ({:.0} entries/s)",
        stats.records,
        n as f64 / secs
    );
    assert!(secs < 120.0, "restore took {secs:.1} s");
}

/// A runtime restores the tasks it takes over at once, on blocking threads, through one
/// `StateLog`: each restore must read its own changelog partition, whole, and nothing else
/// (they once shared the reader's assignment: one read the other's records, the other
/// waited for its own until the restore timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_restores_each_read_their_own_partition() {
    use topology::transport::{KafkaTransport, TopicPartition, Transport};
    const PARTITIONS: i32 = 4;
    const PER_PARTITION: usize = 300;
    let bootstrap = bootstrap();
    let topic = unique("cl-concurrent");
    let log = KafkaTransport::new(&bootstrap)
        .state_log()
        .expect("state log");
    {
        let (log, topic) = (log.clone(), topic.clone());
        tokio::task::spawn_blocking(move || log.ensure_compacted(&topic, PARTITIONS))
            .await
            .expect("join")
            .expect("changelog topic");
    }
    let records: Vec<(Option<i32>, String, String)> = (0..PARTITIONS)
        .flat_map(|p| (0..PER_PARTITION).map(move |i| (Some(p), format!("{p}/{i}"), "v".into())))
        .collect();
    common::produce(&bootstrap, &topic, &records).await;

    let (done, finished) = std::sync::mpsc::channel();
    for p in 0..PARTITIONS {
        let (log, topic, done) = (log.clone(), topic.clone(), done.clone());
        std::thread::spawn(move || {
            let tp = TopicPartition::new(&topic, p);
            let result = log.bounds(&tp).and_then(|(low, high)| {
                let mut keys = Vec::new();
                log.read_range(&tp, low, high, &mut |key, _| {
                    keys.push(String::from_utf8_lossy(key).into_owned());
                    Ok(())
                })
                .map(|read| (read, keys))
            });
            let _ = done.send((p, result));
        });
    }
    for _ in 0..PARTITIONS {
        let (p, result) = finished
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("every restore finishes");
        let (read, keys) = result.unwrap_or_else(|e| panic!("restore of partition {p}: {e}"));
        assert_eq!(read as usize, PER_PARTITION, "partition {p} read whole");
        let foreign: Vec<&String> = keys
            .iter()
            .filter(|k| !k.starts_with(&format!("{p}/")))
            .collect();
        assert!(foreign.is_empty(), "partition {p} got {foreign:?}");
        assert_eq!(keys.len(), PER_PARTITION);
    }
}
