//! Clicks per user per minute: a tumbling one-minute window with ten seconds of grace, on
//! the records' own timestamps, suppressed so each window emits one final count when it
//! closes. An out-of-order click within the grace period is counted; one after it is late
//! and goes to the dead-letter topic. Runs on the embedded transport, no broker:
//!
//! `cargo run -p topology --example windowed_count`

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Result, read, run_until_done, send, text};
use topology::TopologyBuilder;
use topology::serdes::{JsonSerde, StringSerde};
use topology::stateful::TimeWindows;
use topology::transport::EmbeddedLog;

#[tokio::main]
async fn main() -> Result<()> {
    let b = TopologyBuilder::new();
    b.source(
        "clicks",
        "clicks",
        Arc::new(StringSerde),
        Arc::new(StringSerde),
    )
    .group_by_key()
    .windowed_by(TimeWindows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10)))
    .count("clicks-per-minute")
    .suppress_until_window_closes("final-counts")
    .to_stream("finals")
    .to(
        "out",
        "clicks-per-minute",
        Arc::new(JsonSerde),
        Arc::new(JsonSerde),
    );
    let topology = b.build().map_err(|e| format!("{e:?}"))?;
    println!("{}", topology.describe());

    let log = Arc::new(EmbeddedLog::temporary()?);
    log.create_topic("clicks", 1)?;
    let minute = 60_000;
    let clicks = [
        ("alice", 1_000),
        ("bob", 20_000),
        ("alice", 45_000),
        ("alice", minute + 5_000), // stream time 65 s: minute 0 still open (grace)
        ("bob", 55_000),           // out of order, within grace: counted in minute 0
        ("bob", minute + 15_000),  // stream time 75 s: minute 0 closes and is emitted
        ("alice", 30_000),         // late: dead-lettered
        ("alice", 3 * minute),     // closes minute 1
    ];
    for (user, at) in clicks {
        send(&log, "clicks", user, Some("click"), at)?;
    }
    run_until_done(topology, log.clone(), "windowed-count").await?;

    println!("final counts (one per closed window):");
    for r in read(&log, "clicks-per-minute")? {
        println!("  {} -> {}", text(&r.key), text(&r.value));
    }
    for r in read(&log, "clicks.dlq")? {
        println!(
            "dead-lettered: {} at {:?}: {}",
            text(&r.key),
            r.timestamp,
            r.headers.get_str("dlq.error.message").unwrap_or_default()
        );
    }
    Ok(())
}
