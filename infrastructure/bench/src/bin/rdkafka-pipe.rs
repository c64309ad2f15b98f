//! The client ceiling: a minimal hand-written rdkafka consume → produce pipe that copies key and
//! value bytes, with the same client settings as the engine's `KafkaTransport` (cooperative-sticky,
//! manual commits every second; idempotent producer, `acks=all`, `linger.ms=5`). One thread:
//! `BaseConsumer::poll` → `BaseProducer::send`, serving delivery reports with `poll(0)`.
//! Runs until SIGTERM.
//!
//! `rdkafka-pipe --input T --output T --group G`

use std::time::{Duration, Instant};

use anyhow::Context as _;
use catalog_bench::{CONSUMER_SETTINGS, PRODUCER_SETTINGS, setting};
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[derive(Parser)]
struct Args {
    /// Input topic.
    #[arg(long)]
    input: String,
    /// Output topic.
    #[arg(long)]
    output: String,
    /// Consumer group (fresh per run).
    #[arg(long)]
    group: String,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bootstrap = setting("KAFKA_BOOTSTRAP", "127.0.0.1:9092");
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &bootstrap)
        .set("group.id", &args.group);
    for (k, v) in CONSUMER_SETTINGS {
        cc.set(*k, *v);
    }
    let consumer: BaseConsumer = cc.create().context("consumer")?;
    consumer.subscribe(&[&args.input]).context("subscribe")?;
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &bootstrap);
    for (k, v) in PRODUCER_SETTINGS {
        pc.set(*k, *v);
    }
    let producer: BaseProducer = pc.create().context("producer")?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            rt.block_on(async {
                if let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    term.recv().await;
                }
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }

    let mut last_commit = Instant::now();
    let mut copied = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Err(e)) => eprintln!("rdkafka-pipe: poll: {e}"),
            Some(Ok(m)) => {
                let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&args.output);
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(v) = m.payload() {
                    rec = rec.payload(v);
                }
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            rec = r;
                            producer.poll(Duration::from_millis(5));
                        }
                        Err((e, _)) => anyhow::bail!("send: {e}"),
                    }
                }
                copied += 1;
                // Offsets are stored only after the record was handed to the producer.
                consumer
                    .store_offset_from_message(&m)
                    .context("store offset")?;
            }
        }
        producer.poll(Duration::ZERO);
        if last_commit.elapsed() >= Duration::from_secs(1) {
            last_commit = Instant::now();
            match consumer.commit_consumer_state(CommitMode::Async) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => eprintln!("rdkafka-pipe: commit: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(10)).context("flush")?;
    eprintln!(
        "rdkafka-pipe: copied {copied} records, peak RSS {} KiB, cpu user {:.2} s sys {:.2} s",
        catalog_bench::peak_rss_kib("self").unwrap_or(0),
        catalog_bench::cpu_seconds().unwrap_or_default().0,
        catalog_bench::cpu_seconds().unwrap_or_default().1,
    );
    Ok(())
}
