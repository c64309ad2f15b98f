//! Shared helpers of the tests against the real servers.
#![allow(dead_code, clippy::type_complexity)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connectors::mongo_source::CallbackSink;

const ENV_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../infrastructure/.env");

/// A setting from the environment, else from `infrastructure/.env`; fails (never skips) when
/// neither has it.
pub fn setting(key: &str, service: &str) -> String {
    if let Ok(v) = std::env::var(key)
        && !v.is_empty()
    {
        return v;
    }
    let text = std::fs::read_to_string(ENV_FILE).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{key} is not set and not in {ENV_FILE}: run `infrastructure/up.sh {service}` first"
            )
        })
}

/// The MongoDB URI, checked to answer.
pub async fn mongo_uri() -> String {
    let uri = setting("MONGODB_URI", "mongo");
    let probe = if uri.contains('?') {
        format!("{uri}&serverSelectionTimeoutMS=5000")
    } else {
        format!("{uri}/?serverSelectionTimeoutMS=5000")
    };
    let client = mongodb::Client::with_uri_str(&probe)
        .await
        .unwrap_or_else(|e| panic!("bad MONGODB_URI {uri}: {e}"));
    client
        .database("admin")
        .run_command(mongodb::bson::doc! {"ping": 1})
        .await
        .unwrap_or_else(|e| {
            panic!("MongoDB at {uri} does not answer ({e}): run `infrastructure/up.sh mongo`")
        });
    uri
}

/// A unique database name.
pub fn unique_db() -> String {
    format!("cs_test_{}", uuid::Uuid::new_v4().simple())
}

/// Records collected by a callback sink.
#[derive(Clone, Default)]
pub struct Collected(pub Arc<Mutex<Vec<(Vec<u8>, Option<Vec<u8>>)>>>);

impl Collected {
    pub fn sink(
        &self,
    ) -> CallbackSink<impl Fn(Vec<u8>, Option<Vec<u8>>) -> Result<(), String> + Send + Sync + use<>>
    {
        let records = self.0.clone();
        CallbackSink::new(move |k, v| {
            records.lock().map_err(|e| e.to_string())?.push((k, v));
            Ok(())
        })
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    pub fn snapshot(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.0.lock().expect("lock").clone()
    }

    /// Waits until at least `n` records arrived.
    pub async fn wait_for(&self, n: usize, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {} of {n} records",
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
