//! What the examples share: an embedded log to write input to and read output from, and a
//! runtime over it that runs until every input record (and every repartitioned one) is
//! processed and committed.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use topology::transport::{EmbeddedLog, EmbeddedTransport};
use topology::{RawRecord, Runtime, RuntimeConfig, Topology};

pub type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// Appends a record with text key and value at `timestamp` (ms) to `topic`.
pub fn send(
    log: &EmbeddedLog,
    topic: &str,
    key: &str,
    value: Option<&str>,
    timestamp: i64,
) -> Result<()> {
    log.append(&RawRecord {
        topic: topic.into(),
        partition: -1,
        offset: -1,
        key: Some(key.as_bytes().to_vec().into()),
        value: value.map(|v| v.as_bytes().to_vec().into()),
        headers: Default::default(),
        timestamp: Some(timestamp),
    })?;
    Ok(())
}

/// Runs `topology` as `application_id` over `log` until everything its sources hold is
/// processed and committed, then stops it cleanly.
pub async fn run_until_done(
    topology: Topology,
    log: Arc<EmbeddedLog>,
    application_id: &str,
) -> Result<()> {
    let state = tempfile::tempdir()?;
    let mut config = RuntimeConfig::new(application_id);
    config.commit_interval = Duration::from_millis(20);
    config.state_dir = Some(state.path().to_owned());
    // The runtime names internal topics after the application: read the same names here.
    let sources = topology.for_application(application_id).source_topics();
    let runtime = Runtime::new(
        topology,
        Arc::new(EmbeddedTransport::new(log.clone())),
        config,
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut settled_polls = 0;
    while settled_polls < 3 {
        if running.is_finished() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut settled = true;
        for topic in &sources {
            for p in 0..log.partitions(topic)?.unwrap_or(0) as i32 {
                let end = log.end_offset(topic, p)?;
                settled &= end == 0 || log.committed(application_id, topic, p)? == Some(end);
            }
        }
        settled_polls = if settled { settled_polls + 1 } else { 0 };
    }
    shutdown.cancel();
    running.await??;
    Ok(())
}

/// Every record of `topic`, in partition then offset order.
pub fn read(log: &EmbeddedLog, topic: &str) -> Result<Vec<RawRecord>> {
    Ok(log.read_all(topic)?)
}

/// A record's key or value as text.
pub fn text(bytes: &Option<bytes::Bytes>) -> String {
    bytes
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_else(|| "null".into())
}
