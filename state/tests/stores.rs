//! Integration tests against real sled databases in temporary directories.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use state::{
    ChangelogSink, MemoryChangelog, PositionCheck, SinkError, SourcePosition, StateConfig,
    StateDir, StateError, StoreOptions,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    mall_id: String,
    product_id: String,
    price: u64,
    tags: Vec<String>,
}

fn product(id: &str, price: u64) -> Product {
    Product {
        mall_id: "m1".into(),
        product_id: id.into(),
        price,
        tags: vec!["a".into()],
    }
}

#[test]
fn typed_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::open(tmp.path()).unwrap();
    let s = dir.store::<(String, String), Product>("products").unwrap();
    let key = ("m1".to_string(), "p1".to_string());
    assert_eq!(s.get(&key).unwrap(), None);
    assert!(!s.put(&key, &product("p1", 10)).unwrap());
    assert!(s.put(&key, &product("p1", 11)).unwrap());
    assert_eq!(s.get(&key).unwrap(), Some(product("p1", 11)));
    assert!(s.contains_key(&key).unwrap());
    let all: Vec<_> = s.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(all, vec![(key.clone(), product("p1", 11))]);
    let stats = s.stats().unwrap();
    assert_eq!(stats.keys, 1);
    assert!(stats.bytes > 0 && stats.bytes == s.approximate_size_bytes().unwrap());
    assert!(s.delete(&key).unwrap());
    assert!(!s.delete(&key).unwrap());
    assert!(s.is_empty());
}

#[test]
fn borrowed_keys_match_owned() {
    let dir = StateConfig::temporary().open().unwrap();
    let s = dir.store::<String, u32>("k").unwrap();
    s.put(&"x".to_string(), &1).unwrap();
    assert_eq!(s.get("x").unwrap(), Some(1));
}

#[test]
fn wrong_type_is_a_decode_error_with_context() {
    let dir = StateConfig::temporary().open().unwrap();
    dir.store::<String, String>("t")
        .unwrap()
        .put("k", &"not a product".to_string())
        .unwrap();
    let err = dir
        .store::<String, Product>("t")
        .unwrap()
        .get("k")
        .unwrap_err();
    assert!(matches!(err, StateError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("`t`"), "{err}");
}

#[test]
fn invalid_names_are_rejected() {
    let dir = StateConfig::temporary().open().unwrap();
    assert!(matches!(
        dir.store::<String, String>(""),
        Err(StateError::InvalidName { .. })
    ));
    assert!(matches!(
        dir.store::<String, String>("a/b"),
        Err(StateError::InvalidName { .. })
    ));
}

#[test]
fn reopen_persists() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let dir = StateDir::open(tmp.path()).unwrap();
        let s = dir.store::<u64, Product>("products").unwrap();
        for i in 0..100 {
            s.put(&i, &product(&i.to_string(), i)).unwrap();
        }
        let idem = dir.idempotency::<u8>("idem").unwrap();
        assert!(idem.check_and_record("r1", &7).unwrap());
        idem.advance_position("p1", SourcePosition::new(5, 5))
            .unwrap();
        dir.flush().unwrap();
    }
    let dir = StateDir::open(tmp.path()).unwrap();
    let s = dir.store::<u64, Product>("products").unwrap();
    assert_eq!(s.len(), 100);
    assert_eq!(s.get(&42).unwrap(), Some(product("42", 42)));
    let idem = dir.idempotency::<u8>("idem").unwrap();
    assert!(!idem.check_and_record("r1", &8).unwrap());
    assert_eq!(idem.recorded("r1").unwrap().map(|r| r.outcome), Some(7));
    assert_eq!(
        idem.position("p1").unwrap(),
        Some(SourcePosition::new(5, 5))
    );
    assert_eq!(
        dir.tree_names(),
        vec!["idem.positions", "idem.record-blocks", "products"]
    );
}

#[test]
fn check_and_record_first_true_then_false() {
    let dir = StateConfig::temporary().open().unwrap();
    let idem = dir.idempotency::<String>("idem").unwrap();
    assert!(!idem.is_recorded("a").unwrap());
    assert!(idem.check_and_record("a", &"first".into()).unwrap());
    assert!(!idem.check_and_record("a", &"second".into()).unwrap());
    assert!(!idem.check_and_record("a", &"third".into()).unwrap());
    let r = idem.recorded("a").unwrap().unwrap();
    assert_eq!(r.outcome, "first");
    assert!(r.recorded_at_ms > 1_600_000_000_000);
    assert!(idem.check_and_record("b", &"other".into()).unwrap());
    assert_eq!(idem.records_len(), 2);
    assert!(idem.forget("a").unwrap());
    assert!(idem.check_and_record("a", &"again".into()).unwrap());
}

#[test]
fn check_and_record_is_atomic_across_threads() {
    let dir = StateConfig::temporary().open().unwrap();
    let idem = dir.idempotency::<u32>("idem").unwrap();
    let winners: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u32)
            .map(|t| {
                let idem = idem.clone();
                s.spawn(move || {
                    (0..500)
                        .filter(|i| idem.check_and_record(format!("id{i}"), &t).unwrap())
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(winners, 500);
}

#[test]
fn stale_positions_are_rejected() {
    let dir = StateConfig::temporary().open().unwrap();
    let idem = dir.idempotency::<()>("idem").unwrap();
    let p = |a, b| SourcePosition::new(a, b);
    assert_eq!(
        idem.advance_position("k", p(10, 1)).unwrap(),
        PositionCheck::Accepted { previous: None }
    );
    // equal: a redelivery
    assert_eq!(
        idem.advance_position("k", p(10, 1)).unwrap(),
        PositionCheck::Stale { current: p(10, 1) }
    );
    // older: a replay
    assert_eq!(
        idem.advance_position("k", p(9, 99)).unwrap(),
        PositionCheck::Stale { current: p(10, 1) }
    );
    assert_eq!(
        idem.advance_position("k", p(10, 2)).unwrap(),
        PositionCheck::Accepted {
            previous: Some(p(10, 1))
        }
    );
    assert_eq!(idem.position("k").unwrap(), Some(p(10, 2)));
    // other keys are independent
    assert!(idem.advance_position("j", p(1, 0)).unwrap().is_accepted());
}

#[test]
fn concurrent_position_updates_keep_the_newest() {
    let dir = StateConfig::temporary().open().unwrap();
    let idem = dir.idempotency::<()>("idem").unwrap();
    std::thread::scope(|s| {
        for t in 0..4i64 {
            let idem = idem.clone();
            s.spawn(move || {
                for i in 0..300i64 {
                    idem.advance_position("k", SourcePosition::offset(i * 4 + t))
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(
        idem.position("k").unwrap(),
        Some(SourcePosition::offset(299 * 4 + 3))
    );
}

#[test]
fn concurrent_updates_through_a_cache_lose_nothing_and_are_logged() {
    let log = Arc::new(MemoryChangelog::default());
    let dir = StateConfig::temporary()
        .changelog(log.clone())
        .open()
        .unwrap();
    let counters = dir
        .store_with::<String, u64>("counters", StoreOptions::cached(16))
        .unwrap();
    // Every thread reads through the cache, so most first attempts see a stale value and the
    // compare-and-swap has to retry with the stored one.
    std::thread::scope(|s| {
        for _ in 0..4 {
            let counters = counters.clone();
            s.spawn(move || {
                for _ in 0..300 {
                    let (now, written) = counters
                        .update("hits", |current| Some(current.copied().unwrap_or(0) + 1))
                        .unwrap();
                    assert!(written && now.is_some());
                }
            });
        }
    });
    assert_eq!(counters.get("hits").unwrap(), Some(1200));
    let logged: Vec<_> = log
        .records()
        .into_iter()
        .filter(|r| r.store == "counters")
        .collect();
    assert_eq!(logged.len(), 1200, "one changelog record per write");
    // Declining leaves the value and the changelog untouched.
    assert_eq!(
        counters.update("hits", |_| None).unwrap(),
        (Some(1200), false)
    );
    assert_eq!(log.records().len(), 1200);
    assert_eq!(counters.update("absent", |_| None).unwrap(), (None, false));
    assert_eq!(counters.get("absent").unwrap(), None);
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("boom")]
    Boom,
}

#[test]
fn transaction_error_leaves_nothing_written() {
    let log = Arc::new(MemoryChangelog::default());
    let dir = StateConfig::temporary()
        .changelog(log.clone())
        .open()
        .unwrap();
    let products = dir
        .store_with::<String, Product>("products", StoreOptions::cached(100))
        .unwrap();
    let idem = dir.idempotency::<String>("idem").unwrap();
    products.put("p0", &product("p0", 1)).unwrap();
    assert_eq!(products.get("p0").unwrap(), Some(product("p0", 1))); // cached
    let before = log.len();

    let r: Result<(), AppError> = dir.transaction(&[&products, &idem], |tx| {
        assert!(tx.check_and_record(&idem, "rec-1", &"done".into())?);
        tx.advance_position(&idem, "p1", SourcePosition::new(3, 0))?;
        tx.put(&products, "p1", &product("p1", 5))?;
        tx.put(&products, "p0", &product("p0", 2))?;
        // reads see the transaction's own writes
        assert_eq!(tx.get(&products, "p1")?, Some(product("p1", 5)));
        Err(AppError::Boom)
    });
    assert!(matches!(r, Err(AppError::Boom)));
    assert_eq!(products.get("p1").unwrap(), None);
    assert_eq!(products.get("p0").unwrap(), Some(product("p0", 1)));
    assert!(!idem.is_recorded("rec-1").unwrap());
    assert_eq!(idem.position("p1").unwrap(), None);
    assert_eq!(
        log.len(),
        before,
        "aborted writes never reach the changelog"
    );

    // The same transaction without the error commits everything.
    let r: Result<bool, AppError> = dir.transaction(&[&products, &idem], |tx| {
        let fresh = tx.check_and_record(&idem, "rec-1", &"done".into())?;
        tx.advance_position(&idem, "p1", SourcePosition::new(3, 0))?;
        tx.put(&products, "p1", &product("p1", 5))?;
        tx.put(&products, "p0", &product("p0", 2))?;
        Ok(fresh)
    });
    assert!(r.unwrap());
    assert_eq!(products.get("p1").unwrap(), Some(product("p1", 5)));
    // the cached p0 was invalidated by the commit
    assert_eq!(products.get("p0").unwrap(), Some(product("p0", 2)));
    assert!(idem.is_recorded("rec-1").unwrap());
    assert_eq!(
        idem.position("p1").unwrap(),
        Some(SourcePosition::new(3, 0))
    );
    assert_eq!(log.len(), before + 4);

    // A replay of the same record is a duplicate and an older position is stale.
    let r: Result<(bool, bool), StateError> = dir.transaction(&[&products, &idem], |tx| {
        Ok((
            tx.check_and_record(&idem, "rec-1", &"again".into())?,
            tx.advance_position(&idem, "p1", SourcePosition::new(2, 0))?
                .is_accepted(),
        ))
    });
    assert_eq!(r.unwrap(), (false, false));
}

#[test]
fn transaction_rejects_unlisted_store() {
    let dir = StateConfig::temporary().open().unwrap();
    let a = dir.store::<String, u8>("a").unwrap();
    let b = dir.store::<String, u8>("b").unwrap();
    let r: Result<(), StateError> = dir.transaction(&[&a], |tx| {
        tx.put(&a, "k", &1)?;
        tx.put(&b, "k", &1)?;
        Ok(())
    });
    assert!(matches!(r, Err(StateError::NotInTransaction { .. })));
    assert_eq!(a.get("k").unwrap(), None);
}

#[test]
fn concurrent_transactions_are_serializable() {
    let dir = StateConfig::temporary().open().unwrap();
    let counter = dir.store::<String, u64>("counter").unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (dir, counter) = (dir.clone(), counter.clone());
            s.spawn(move || {
                for _ in 0..100 {
                    let r: Result<(), StateError> = dir.transaction(&[&counter], |tx| {
                        let n = tx.get(&counter, "n")?.unwrap_or(0);
                        tx.put(&counter, "n", &(n + 1))?;
                        Ok(())
                    });
                    r.unwrap();
                }
            });
        }
    });
    assert_eq!(counter.get("n").unwrap(), Some(400));
}

#[test]
fn changelog_sees_every_write_and_restore_reproduces() {
    let log = Arc::new(MemoryChangelog::default());
    let dir = StateConfig::temporary()
        .changelog(log.clone())
        .open()
        .unwrap();
    let s = dir.store::<u32, Product>("products").unwrap();
    let local = dir
        .store_with::<u32, u32>("local", StoreOptions::default().without_changelog())
        .unwrap();
    let idem = dir.idempotency::<u8>("idem").unwrap();
    for i in 0..50u32 {
        s.put(&i, &product(&i.to_string(), i.into())).unwrap();
    }
    for i in 0..50u32 {
        s.put(&i, &product(&i.to_string(), u64::from(i) * 2))
            .unwrap();
    }
    for i in 0..10u32 {
        assert!(s.delete(&i).unwrap());
    }
    assert!(!s.delete(&0).unwrap()); // no-op delete is not logged
    local.put(&1, &1).unwrap();
    idem.check_and_record("r", &1).unwrap();
    idem.check_and_record("r", &2).unwrap(); // duplicate: no write
    idem.advance_position("k", SourcePosition::offset(3))
        .unwrap();
    idem.advance_position("k", SourcePosition::offset(2))
        .unwrap(); // stale: no write

    let recs = log.records();
    assert_eq!(recs.iter().filter(|r| r.store == "products").count(), 110);
    assert_eq!(recs.iter().filter(|r| r.store == "local").count(), 0);
    assert_eq!(
        recs.iter()
            .filter(|r| r.store == "idem.record-blocks")
            .count(),
        1
    );
    assert_eq!(
        recs.iter().filter(|r| r.store == "idem.positions").count(),
        1
    );
    assert_eq!(
        recs.iter().filter(|r| r.value.is_none()).count(),
        10,
        "one tombstone per delete"
    );

    // A new pod restores every tree from the compacted changelog.
    let tmp = tempfile::tempdir().unwrap();
    let fresh = StateDir::open(tmp.path()).unwrap();
    let restored = fresh.store::<u32, Product>("products").unwrap();
    assert_eq!(
        restored.restore_from(log.compacted("products")).unwrap(),
        50
    );
    for tree in ["idem.record-blocks", "idem.positions"] {
        fresh.restore(tree, log.compacted(tree)).unwrap();
    }
    let original: Vec<_> = s.iter().collect::<Result<_, _>>().unwrap();
    let copy: Vec<_> = restored.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(original.len(), 40);
    assert_eq!(original, copy);
    let idem2 = fresh.idempotency::<u8>("idem").unwrap();
    assert!(!idem2.check_and_record("r", &9).unwrap());
    assert!(
        !idem2
            .advance_position("k", SourcePosition::offset(3))
            .unwrap()
            .is_accepted()
    );

    // Restoring into a non-empty store is refused.
    let err = restored
        .restore_from(log.compacted("products"))
        .unwrap_err();
    assert!(matches!(err, StateError::RestoreNotEmpty { len: 40, .. }));
}

struct FailingSink;
impl ChangelogSink for FailingSink {
    fn append(&self, _: &str, _: &[u8], _: Option<&[u8]>) -> Result<(), SinkError> {
        Err("broker unreachable".into())
    }
}

#[test]
fn failing_sink_is_reported_after_local_commit() {
    let dir = StateConfig::temporary()
        .changelog(Arc::new(FailingSink))
        .open()
        .unwrap();
    let s = dir.store::<String, u8>("s").unwrap();
    let err = s.put("k", &1).unwrap_err();
    assert!(matches!(err, StateError::Changelog { .. }));
    assert!(err.to_string().contains("broker unreachable"), "{err}");
    assert_eq!(s.get("k").unwrap(), Some(1));
}

#[test]
fn cache_is_bounded_and_invalidated_by_writes() {
    let dir = StateConfig::temporary().open().unwrap();
    let s = dir
        .store_with::<u32, u32>("hot", StoreOptions::cached(100))
        .unwrap();
    for i in 0..1000 {
        s.put(&i, &i).unwrap();
        assert_eq!(s.get(&i).unwrap(), Some(i));
    }
    assert!(s.cache_stats().unwrap().entries <= 100);
    assert_eq!(s.get(&999).unwrap(), Some(999));
    assert_eq!(s.get(&999).unwrap(), Some(999));
    s.put(&999, &7).unwrap();
    assert_eq!(s.get(&999).unwrap(), Some(7));
    s.delete(&999).unwrap();
    assert_eq!(s.get(&999).unwrap(), None);
    assert_eq!(s.get(&5000).unwrap(), None); // absent keys are cached as absent
    s.put(&5000, &1).unwrap();
    assert_eq!(s.get(&5000).unwrap(), Some(1));
    let st = s.cache_stats().unwrap();
    assert!(st.hits >= 2 && st.misses >= 1000, "{st:?}");
    // a second handle to the same store shares the cache
    let again = dir.store::<u32, u32>("hot").unwrap();
    again.put(&5000, &2).unwrap();
    assert_eq!(s.get(&5000).unwrap(), Some(2));
}

#[test]
fn retain_and_expiry_remove_obsolete_entries() {
    let log = Arc::new(MemoryChangelog::default());
    let dir = StateConfig::temporary()
        .changelog(log.clone())
        .open()
        .unwrap();
    let s = dir.store::<u32, u32>("s").unwrap();
    for i in 0..100 {
        s.put(&i, &i).unwrap();
    }
    assert_eq!(s.retain(|_, v| v % 2 == 0).unwrap(), 50);
    assert_eq!(s.len(), 50);
    assert_eq!(
        log.compacted("s")
            .iter()
            .filter(|(_, v)| v.is_none())
            .count(),
        50
    );

    let idem = dir.idempotency::<()>("idem").unwrap();
    idem.check_and_record("old", &()).unwrap();
    idem.advance_position("a", SourcePosition::offset(1))
        .unwrap();
    idem.advance_position("b", SourcePosition::offset(100))
        .unwrap();
    assert_eq!(idem.expire_records_before(0).unwrap(), 0);
    assert_eq!(idem.expire_records_before(u64::MAX).unwrap(), 1);
    assert_eq!(
        idem.retain_positions(|_, p| p >= SourcePosition::offset(50))
            .unwrap(),
        1
    );
    assert_eq!(idem.positions_len(), 1);
    assert_eq!(s.clear().unwrap(), 50);
    assert!(s.is_empty());
}

#[test]
fn stats_and_compaction_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::open(tmp.path().join("a")).unwrap();
    let s = dir.store::<u32, String>("s").unwrap();
    for round in 0..5 {
        for i in 0..200u32 {
            s.put(&i, &format!("value-{round}-{i}")).unwrap();
        }
    }
    let stats = dir.stats().unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].1.keys, 200);
    let copy = dir
        .compact_into(StateConfig::new(tmp.path().join("b")))
        .unwrap();
    let c = copy.store::<u32, String>("s").unwrap();
    assert_eq!(c.len(), 200);
    assert_eq!(c.get(&7).unwrap(), Some("value-4-7".to_string()));
}

#[test]
fn batch_check_and_record_and_record_ids() {
    let dir = StateConfig::temporary().open().unwrap();
    let idem = dir.idempotency::<u8>("idem").unwrap();
    let id = |o| state::record_id("t", 0, o);
    assert!(idem.check_and_record(id(1), &1).unwrap());
    let fresh = idem
        .check_and_record_batch([(id(0), &1), (id(1), &1), (id(2), &1), (id(2), &1)])
        .unwrap();
    assert_eq!(fresh, vec![true, false, true, false]);
    assert_eq!(idem.records_len(), 3);
    assert!(state::record_id("t", 0, 255) < state::record_id("t", 0, 256));
    assert!(state::record_id("t", 0, i64::MAX) < state::record_id("t", 1, 0));
}

#[test]
fn ids_sharing_a_block_are_independent() {
    let tmp = tempfile::tempdir().unwrap();
    let id = |o| state::record_id("t", 0, o);
    {
        let dir = StateDir::open(tmp.path()).unwrap();
        let idem = dir.idempotency::<u64>("idem").unwrap();
        // Offsets 0..40 span three blocks of 16; record every other one, out of order.
        for o in (0..40).rev().step_by(2) {
            assert!(idem.check_and_record(id(o), &(o as u64 * 10)).unwrap());
        }
        for o in 0..40 {
            assert_eq!(idem.is_recorded(id(o)).unwrap(), o % 2 == 1, "offset {o}");
        }
        assert!(idem.forget(id(17)).unwrap());
        assert!(!idem.forget(id(17)).unwrap());
        assert!(!idem.forget(id(16)).unwrap()); // never recorded, its block exists
        let done = dir
            .transaction(&[&idem], |tx| {
                Ok::<_, StateError>((
                    tx.check_and_record(&idem, id(16), &160)?,
                    tx.check_and_record(&idem, id(16), &161)?,
                    tx.check_and_record(&idem, id(19), &190)?,
                ))
            })
            .unwrap();
        assert_eq!(done, (true, false, false));
        assert_eq!(idem.records_len(), 20);
        assert_eq!(idem.stats().unwrap().keys, 20);
        dir.flush().unwrap();
    }
    let dir = StateDir::open(tmp.path()).unwrap();
    let idem = dir.idempotency::<u64>("idem").unwrap();
    for o in 0..40 {
        let want = match o {
            16 => Some(160),
            17 => None,
            o if o % 2 == 1 => Some(o as u64 * 10),
            _ => None,
        };
        assert_eq!(
            idem.recorded(id(o)).unwrap().map(|r| r.outcome),
            want,
            "offset {o}"
        );
    }
    assert!(!idem.check_and_record(id(39), &0).unwrap());
    assert!(idem.check_and_record(id(38), &0).unwrap());
    assert!(idem.check_and_record("", &1).unwrap()); // the empty id has its own block
    assert!(!idem.check_and_record("", &1).unwrap());
    assert!(idem.check_and_record("\u{0}", &1).unwrap());
    assert_eq!(idem.expire_records_before(u64::MAX).unwrap(), 23);
    assert_eq!(idem.records_len(), 0);
    assert!(idem.check_and_record(id(39), &0).unwrap());
}

#[test]
fn concurrent_check_and_record_in_shared_blocks_is_atomic() {
    let dir = StateConfig::temporary().open().unwrap();
    let idem = dir.idempotency::<u8>("idem").unwrap();
    let wins: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let idem = idem.clone();
                s.spawn(move || {
                    (0..512)
                        .filter(|o| {
                            idem.check_and_record(state::record_id("t", 0, *o), &t)
                                .unwrap()
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(wins, 512);
    assert_eq!(idem.records_len(), 512);
}
