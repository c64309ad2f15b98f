//! Word count, the "hello world" of Kafka Streams: split lines into words, group by word
//! (through a repartition topic), count, and write the counts to a topic (a table's change
//! stream). Runs on the embedded transport, no broker:
//!
//! `cargo run -p topology --example word_count`

mod common;

use std::sync::Arc;

use common::{Result, read, run_until_done, send, text};
use topology::serdes::{LongSerde, StringSerde, SyncSerde};
use topology::transport::EmbeddedLog;
use topology::{Record, TopologyBuilder, Value};

#[tokio::main]
async fn main() -> Result<()> {
    let b = TopologyBuilder::new();
    b.source(
        "lines",
        "sentences",
        Arc::new(StringSerde),
        Arc::new(StringSerde),
    )
    .flat_map("split-words", |line: Record| {
        let text = line
            .value
            .as_ref()
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_lowercase();
        text.split_whitespace()
            .map(|word| line.clone().with_value(Some(Value::from(word))))
            .collect()
    })
    .group_by("by-word", |word| word.value.clone())
    .count("word-counts")
    .to_stream("count-changes")
    .to(
        "counts",
        "word-counts",
        Arc::new(StringSerde),
        Arc::new(LongSerde),
    );
    let topology = b.build().map_err(|e| format!("{e:?}"))?;
    println!("{}", topology.describe());

    let log = Arc::new(EmbeddedLog::temporary()?);
    log.create_topic("sentences", 2)?;
    let lines = [
        "the quick brown fox",
        "jumps over the lazy dog",
        "The dog barks",
    ];
    for (i, line) in lines.iter().enumerate() {
        send(
            &log,
            "sentences",
            &format!("line-{i}"),
            Some(line),
            1_000 * i as i64,
        )?;
    }
    run_until_done(topology, log.clone(), "word-count").await?;

    // The last count per word is the table; earlier records are its history.
    let mut counts = std::collections::BTreeMap::new();
    for r in read(&log, "word-counts")? {
        let count = match &r.value {
            Some(bytes) => LongSerde.decode("word-counts", false, bytes)?.to_json(),
            None => serde_json::Value::Null,
        };
        counts.insert(text(&r.key), count);
    }
    println!("word counts:");
    for (word, count) in &counts {
        println!("  {word:<6} {count}");
    }
    Ok(())
}
