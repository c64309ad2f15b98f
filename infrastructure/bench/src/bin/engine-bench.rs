//! Our contender: the stateless topology (Avro envelope → filter `op` in c/r/u → map to the
//! product → Avro sink) on the engine's `Runtime` over `KafkaTransport`. Runs until SIGTERM /
//! SIGINT; `bench-harness measure` watches its output topic from the outside.
//!
//! `engine-bench --input T --output T --group G`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use futures::future::BoxFuture;

use anyhow::Context as _;
use catalog_bench::{PRODUCT_SCHEMA, op_of_compact, setting, to_product_compact};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use topology::avro::RecordShape;
use topology::serdes::{
    AvroSerde, BytesSerde, HttpSchemaRegistry, RegistryError, SchemaRegistry, StringSerde,
};
use topology::transport::KafkaTransport;
use topology::{Runtime, RuntimeConfig, TopologyBuilder, Value};

#[derive(Parser)]
struct Args {
    /// Input topic (Avro envelopes).
    #[arg(long)]
    input: String,
    /// Output topic (Avro products).
    #[arg(long)]
    output: String,
    /// Consumer group (fresh per run).
    #[arg(long)]
    group: String,
    /// `RuntimeConfig::max_in_flight_per_partition` (default: the engine's, 1,000).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// `RuntimeConfig::max_unacked_per_partition` (default: the engine's, 20,000).
    #[arg(long)]
    max_unacked: Option<usize>,
    /// `RuntimeConfig::poll_timeout` in ms (default: the engine's, 50 ms).
    #[arg(long)]
    poll_timeout_ms: Option<u64>,
    /// Wraps the registry so `register` is answered from a per-subject cache (the engine's
    /// `HttpSchemaRegistry::register` computes the schema's canonical form on every record).
    #[arg(long)]
    cache_register: bool,
    /// Runs on tokio's current-thread runtime instead of the multi-thread one.
    #[arg(long)]
    current_thread: bool,
    /// Runs a pass-through topology instead (source → sink, key and value as bytes): the
    /// raw pipe's work on the engine, to separate the engine's own cost per record from the
    /// Avro work of the benchmark's topology.
    #[arg(long)]
    passthrough: bool,
    /// A librdkafka property for the transport, `NAME=VALUE` (repeatable; experiments only:
    /// bench.sh runs the defaults).
    #[arg(long = "kafka", value_name = "NAME=VALUE")]
    kafka: Vec<String>,
}

/// Answers `register` from a per-subject cache (one schema per subject in this benchmark).
#[derive(Debug)]
struct SubjectIdCache {
    inner: Arc<dyn SchemaRegistry>,
    ids: Mutex<HashMap<String, u32>>,
}

impl SchemaRegistry for SubjectIdCache {
    fn schema_by_id(&self, id: u32) -> BoxFuture<'_, Result<Arc<Schema>, RegistryError>> {
        self.inner.schema_by_id(id)
    }

    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a Schema,
    ) -> BoxFuture<'a, Result<u32, RegistryError>> {
        Box::pin(async move {
            let cached = self.ids.lock().ok().and_then(|m| m.get(subject).copied());
            if let Some(id) = cached {
                return Ok(id);
            }
            let id = self.inner.register(subject, schema).await?;
            if let Ok(mut m) = self.ids.lock() {
                m.insert(subject.to_owned(), id);
            }
            Ok(id)
        })
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bootstrap = setting("KAFKA_BOOTSTRAP", "127.0.0.1:9092");
    let registry = setting("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081");
    let mut sr: Arc<dyn SchemaRegistry> = Arc::new(HttpSchemaRegistry::new(registry));
    if args.cache_register {
        sr = Arc::new(SubjectIdCache {
            inner: sr,
            ids: Mutex::new(HashMap::new()),
        });
    }
    let product = apache_avro::Schema::parse_str(PRODUCT_SCHEMA).context("product schema")?;

    let b = TopologyBuilder::new();
    if args.passthrough {
        b.source(
            "cdc",
            &args.input,
            Arc::new(BytesSerde),
            Arc::new(BytesSerde),
        )
        .to(
            "copy",
            &args.output,
            Arc::new(BytesSerde),
            Arc::new(BytesSerde),
        );
    } else {
        stateless_avro(&b, &args, sr, product)?;
    }
    let topology = b
        .build()
        .map_err(|e| anyhow::anyhow!("invalid topology: {e:?}"))?;

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    let mut config = RuntimeConfig::new(&args.group);
    config.drain_timeout = std::time::Duration::from_secs(5);
    // Tuning knobs (public RuntimeConfig fields); bench.sh runs the defaults and reports a tuned
    // run separately.
    if let Some(n) = args.max_in_flight {
        config.max_in_flight_per_partition = n;
    }
    if let Some(n) = args.max_unacked {
        config.max_unacked_per_partition = n;
    }
    if let Some(ms) = args.poll_timeout_ms {
        config.poll_timeout = std::time::Duration::from_millis(ms);
    }
    let mut transport = KafkaTransport::new(&bootstrap);
    for prop in &args.kafka {
        let (k, v) = prop
            .split_once('=')
            .with_context(|| format!("--kafka {prop}: expected NAME=VALUE"))?;
        transport = transport.set(k, v);
    }
    let summary = Runtime::new(topology, Arc::new(transport), config)
        .run(shutdown)
        .await?;
    eprintln!(
        "engine-bench: consumed {} records, peak RSS {} KiB, cpu user {:.2} s sys {:.2} s",
        summary.consumed,
        catalog_bench::peak_rss_kib("self").unwrap_or(0),
        catalog_bench::cpu_seconds().unwrap_or_default().0,
        catalog_bench::cpu_seconds().unwrap_or_default().1,
    );
    Ok(())
}

/// The SPEC §8 stateless topology: Avro envelope → filter `op` in c/r/u → map to the product →
/// Avro sink.
fn stateless_avro(
    b: &TopologyBuilder,
    args: &Args,
    sr: Arc<dyn SchemaRegistry>,
    product: Schema,
) -> anyhow::Result<()> {
    let product_shape = RecordShape::of(&product).context("product is a record")?;
    b.source(
        "cdc",
        &args.input,
        Arc::new(StringSerde),
        // Compact values: field names shared per schema, strings sliced from the message
        // (the apache_avro value tree was most of the engine's decoding and freeing work).
        Arc::new(AvroSerde::new(sr.clone()).compact()),
    )
    .filter(
        "upserts",
        |r| matches!(&r.value, Some(Value::AvroCompact(v)) if matches!(op_of_compact(v), Some("c" | "r" | "u"))),
    )
    .map("to-product", move |mut r| {
        r.value = match r.value.take() {
            Some(Value::AvroCompact(v)) => {
                to_product_compact(&product_shape, v).map(Value::AvroCompact)
            }
            other => other,
        };
        r
    })
    .to(
        "products",
        &args.output,
        Arc::new(StringSerde),
        Arc::new(AvroSerde::new(sr).with_schema(product)),
    );
    Ok(())
}
