//! Our contender of the stateful benchmark (`infrastructure/bench.sh stateful`): the same two
//! topologies as the Kafka Streams contender (`infrastructure/kafka-streams/src/StatefulBench.java`)
//! on string keys and values:
//!
//! - `count`: `group_by_key().count()` → the counts' change stream, values as 8-byte longs;
//! - `windowed-count`: one-minute tumbling windows, no grace, counted per key, the changes
//!   keyed `<key>@<window start ms>`, values as 8-byte longs.
//!
//! Runs until SIGTERM or Ctrl-C. `stateful-bench --scenario count --input T --output T --group G`

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use catalog_bench::setting;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use topology::serdes::{LongSerde, StringSerde};
use topology::stateful::{TimeWindows, windowed_key};
use topology::transport::KafkaTransport;
use topology::{Runtime, RuntimeConfig, TopologyBuilder, Value};

#[derive(Parser)]
struct Args {
    /// `count` or `windowed-count`.
    #[arg(long)]
    scenario: String,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    #[arg(long)]
    group: String,
    /// Where task stores live (default: a temporary directory).
    #[arg(long)]
    state_dir: Option<std::path::PathBuf>,
    /// Keep stores local (no changelog topics): what the changelog costs.
    #[arg(long)]
    no_changelog: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let b = TopologyBuilder::new();
    let grouped = b
        .source(
            "in",
            &args.input,
            Arc::new(StringSerde),
            Arc::new(StringSerde),
        )
        .group_by_key();
    let changes = match args.scenario.as_str() {
        "count" => grouped.count("counts").to_stream("changes"),
        "windowed-count" => grouped
            .windowed_by(TimeWindows::tumbling(Duration::from_secs(60)))
            .count("counts")
            .to_stream("changes")
            .map("label", |mut r| {
                if let Some((key, window)) = r.key.as_ref().and_then(windowed_key) {
                    let key = key
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| key.to_json().to_string());
                    r.key = Some(Value::from(format!("{key}@{}", window.start)));
                }
                r
            }),
        other => anyhow::bail!("unknown scenario {other} (count, windowed-count)"),
    };
    changes.to(
        "out",
        &args.output,
        Arc::new(StringSerde),
        Arc::new(LongSerde),
    );
    let topology = b
        .build()
        .map_err(|e| anyhow::anyhow!("invalid topology: {e:?}"))?;

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    let state = tempfile_dir(args.state_dir)?;
    let mut config = RuntimeConfig::new(&args.group);
    config.drain_timeout = Duration::from_secs(5);
    config.state_dir = Some(state.clone());
    config.changelogs = !args.no_changelog;
    let transport = KafkaTransport::new(&setting("KAFKA_BOOTSTRAP", "127.0.0.1:9092"));
    let summary = Runtime::new(topology, Arc::new(transport), config)
        .run(shutdown)
        .await
        .context("runtime")?;
    eprintln!("stateful-bench: {summary:?}");
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// `dir`, or a new directory under the system's temporary directory.
fn tempfile_dir(dir: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("stateful-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
