//! The async-step benchmark (SPEC §8, issue 7 `async`): the real `image-collector` processor
//! (`ImageCollector` with the guarded fetcher, `images::S3ObjectStore` on the real S3 of
//! `infrastructure/up.sh` and the sled pipeline state) in the engine on the embedded log,
//! fed 5,000 upsert change events (Avro, Debezium envelope) over 1,000 product keys. The image
//! host answers every request after a fixed 50 ms with a ~20 KiB PNG whose bytes differ per
//! (product, version), so every event stores a new object and deletes the product's previous
//! one (as the collector does when an image changes).
//!
//! Runs, each in its own process (so each peak RSS is that of one pipeline):
//! - `key`: concurrency 256, ordering `key` (the default);
//! - `unordered`: concurrency 256, ordering `unordered`;
//! - `sequential`: concurrency 1, one record at a time, the way a Kafka Streams processor calls
//!   a blocking client (on fewer events: its rate does not depend on the count);
//! - `key-localdir`: `key`, with the images written to a local directory (on tmpfs where
//!   `/dev/shm` exists) instead of S3: the engine and collector without the store's cost;
//! - `key-s3s`: `key` against `s3s-fs` (a second S3 server, in Rust, checking signatures) when
//!   `ASYNC_S3S_ENDPOINT` names one (`infrastructure/bench-async.sh` starts it);
//! - `moto` and `s3s`: each S3 server alone, the same puts and deletes at concurrency 256
//!   without the engine, for the store's own ceiling.
//!
//! Every run reports the CPU time its process used (user + system), so the pipeline's own cost
//! per record can be told apart from the S3 server's and the image host's, which share the
//! machine's cores with it here; `ASYNC_S3S_PID` lets the table show the s3s-fs server's too.
//!
//! The figure is throughput ÷ (concurrency ÷ latency) = records/s ÷ 5,120 (target ≥ 70%).
//! Per-key order is checked: the versions the collector applied for each key must be
//! increasing. Prints a markdown table, then `RESULT async_key …`, `RESULT async_unordered …`,
//! `RESULT async_sequential …` and `RESULT async_moto …`.
//!
//! `infrastructure/bench-async.sh` builds and runs it in release. Arguments (after `--`):
//! `--events N --keys N --concurrency N --sequential-events N --latency-ms N --image-kib N`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use catalog_stream::pipeline::{ImageCollector, ImageMetrics, ImageWork, PRODUCT_IMAGES_STORE};
use connectors::debezium::{ChangeEvent, Op, SourceInfo};
use connectors::mongo_source::ChangeEncoder;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::{Value as Json, json};
use topology::serdes::{AvroSerde, JsonSerde, MemorySchemaRegistry, SchemaRegistry, StringSerde};
use topology::{
    AsyncOptions, Headers, Ordering, ProcessError, Processor, ProcessorContext, Record,
    RetryPolicy, RuntimeConfig, StoreSpec, TopologyBuilder, TopologyTestDriver,
};

const TOPIC: &str = "bench.catalog.products";
const OUT: &str = "image-events";

#[derive(Debug, Clone)]
struct Params {
    events: usize,
    keys: usize,
    concurrency: usize,
    sequential_events: usize,
    latency_ms: u64,
    image_kib: usize,
}

impl Params {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut p = Params {
            events: 5000,
            keys: 1000,
            concurrency: 256,
            sequential_events: 200,
            latency_ms: 50,
            image_kib: 20,
        };
        for pair in args.chunks(2) {
            let [flag, value] = pair else {
                bail!("{} needs a value", pair[0]);
            };
            let v: usize = value
                .parse()
                .with_context(|| format!("{flag} {value}: not a number"))?;
            match flag.as_str() {
                "--events" => p.events = v,
                "--keys" => p.keys = v,
                "--concurrency" => p.concurrency = v,
                "--sequential-events" => p.sequential_events = v,
                "--latency-ms" => p.latency_ms = v as u64,
                "--image-kib" => p.image_kib = v,
                other => bail!("unknown argument {other}"),
            }
        }
        Ok(p)
    }
}

fn dotenv(name: &str) -> anyhow::Result<String> {
    if let Ok(value) = std::env::var(name) {
        return Ok(value);
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infrastructure/.env");
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{path}: start the servers with infrastructure/up.sh"))?;
    text.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().to_owned())
        .with_context(|| format!("{name} is not in {path}"))
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) used so far by process `pid` ("self" for this one), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ, fixed at 100 on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks_per_second)
        })
        .unwrap_or(0.0)
}

/// The S3 endpoint of a run: `infrastructure/up.sh`'s (moto), or the s3s-fs server.
fn s3_endpoint(server: &str) -> anyhow::Result<String> {
    match server {
        "s3s" => std::env::var("ASYNC_S3S_ENDPOINT")
            .context("ASYNC_S3S_ENDPOINT: start s3s-fs (infrastructure/bench-async.sh does)"),
        _ => dotenv("S3_ENDPOINT"),
    }
}

fn s3_config(bucket: &str, endpoint: String) -> anyhow::Result<images::S3Config> {
    Ok(images::S3Config {
        bucket: bucket.to_owned(),
        region: Some(dotenv("AWS_REGION")?),
        endpoint: Some(endpoint),
        access_key_id: Some(dotenv("AWS_ACCESS_KEY_ID")?),
        secret_access_key: Some(dotenv("AWS_SECRET_ACCESS_KEY")?),
        create_bucket: true,
        ..Default::default()
    })
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// ~`kib` KiB of PNG-signed bytes, distinct per `path`.
fn image_bytes(path: &str, kib: usize) -> Vec<u8> {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        state = (state ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    while bytes.len() < kib * 1024 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes
}

// --- the image host (its own process) ------------------------------------------------------------

async fn serve_images(p: &Params) -> anyhow::Result<()> {
    use axum::http::header;
    use axum::routing::get;
    let latency = Duration::from_millis(p.latency_ms);
    let kib = p.image_kib;
    let app = axum::Router::new().route(
        "/img/{*path}",
        get(
            move |axum::extract::Path(path): axum::extract::Path<String>| async move {
                tokio::time::sleep(latency).await;
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    image_bytes(&path, kib),
                )
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("PORT {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    axum::serve(listener, app).await?;
    Ok(())
}

// --- one pipeline run (its own process) ---------------------------------------------------------

/// Wraps the collector and records, per key, the versions it applied, in the order it did.
struct Recording {
    inner: ImageCollector,
    applied: Arc<Mutex<HashMap<String, Vec<i64>>>>,
}

impl Processor for Recording {
    fn process(
        &self,
        record: Record,
        ctx: ProcessorContext,
    ) -> BoxFuture<'_, Result<Vec<Record>, ProcessError>> {
        Box::pin(async move {
            let out = self.inner.process(record, ctx).await?;
            for r in &out {
                if let Some(event) = r.value.as_ref().map(topology::Value::to_json) {
                    let key = format!("{}/{}", event["mallId"], event["productId"]);
                    let version = event["version"].as_i64().unwrap_or(-1);
                    if let Ok(mut applied) = self.applied.lock() {
                        applied.entry(key).or_default().push(version);
                    }
                }
            }
            Ok(out)
        })
    }
}

fn change(key: usize, version: usize, image_url: String) -> ChangeEvent {
    let product_id = format!("p{key:05}");
    let id = json!({"mallId": "bench", "productId": product_id});
    let after = json!({"_id": id, "mallId": "bench", "productId": product_id, "title": "Mug",
                       "content": "A mug", "price": "12000", "imageUrl": image_url,
                       "version": version});
    let ts_ms = 1_700_000_000_000 + (version as i64) * 1000;
    let mut event = ChangeEvent::tombstone(id);
    event.op = if version == 1 { Op::Create } else { Op::Update };
    event.db = Some("catalog".into());
    event.collection = Some("products".into());
    event.after = Some(after);
    event.source = Some(SourceInfo {
        version: "2.7.0.Final".into(),
        connector: "mongodb".into(),
        name: "bench".into(),
        ts_ms,
        snapshot: Some("false".into()),
        db: "catalog".into(),
        rs: None,
        sequence: None,
        ts_us: None,
        ts_ns: None,
        collection: "products".into(),
        ord: i32::try_from(key).unwrap_or(0),
        lsid: None,
        txn_number: None,
        wall_time: Some(ts_ms),
    });
    event.ts_ms = Some(ts_ms);
    event
}

async fn run_pipeline(mode: &str, port: u16, p: &Params) -> anyhow::Result<Json> {
    let (ordering, concurrency, events) = match mode {
        "key" => (Ordering::Key, p.concurrency, p.events),
        "unordered" => (Ordering::Unordered, p.concurrency, p.events),
        "sequential" => (Ordering::Key, 1, p.sequential_events),
        "key-localdir" | "key-s3s" => (Ordering::Key, p.concurrency, p.events),
        other => bail!("unknown mode {other}"),
    };
    let registry: Arc<dyn SchemaRegistry> = Arc::new(MemorySchemaRegistry::default());
    let state_dir = tempfile::tempdir()?;
    let bucket = unique("bench-async");
    // Kept until the run ends (the directory is removed on drop).
    let mut images_dir = None;
    let objects: Arc<dyn images::ObjectStore> = match mode {
        "key-localdir" => {
            // On tmpfs where there is one: on a disk, thousands of files created, renamed and
            // removed in one directory tree measure the file system's directory locks, not
            // the pipeline.
            let dir = images_dir.insert(if Path::new("/dev/shm").is_dir() {
                tempfile::tempdir_in("/dev/shm")?
            } else {
                tempfile::tempdir()?
            });
            Arc::new(images::LocalDirObjectStore::new(
                dir.path(),
                "http://127.0.0.1:8080",
            )?)
        }
        "key-s3s" => {
            Arc::new(images::S3ObjectStore::new(s3_config(&bucket, s3_endpoint("s3s")?)?).await?)
        }
        _ => Arc::new(images::S3ObjectStore::new(s3_config(&bucket, s3_endpoint("moto")?)?).await?),
    };
    let fetch = images::FetchConfig {
        allowlist: vec!["127.0.0.1/32".into()],
        ..Default::default()
    };
    let metrics_registry = prometheus::Registry::new();
    let work = ImageWork {
        fetcher: images::ImageFetcher::new(fetch)
            .map_err(|e| anyhow::anyhow!("fetch config: {e}"))?,
        fetch_retry: images::RetryPolicy::default(),
        objects,
        metrics: ImageMetrics::new(&metrics_registry)?,
    };
    let applied = Arc::new(Mutex::new(HashMap::new()));
    let processor = Arc::new(Recording {
        inner: ImageCollector(work.clone()),
        applied: applied.clone(),
    });
    let builder = TopologyBuilder::new();
    builder.store(StoreSpec::new(PRODUCT_IMAGES_STORE));
    builder
        .source(
            "upserts-source",
            TOPIC,
            Arc::new(AvroSerde::new(registry.clone())),
            Arc::new(AvroSerde::new(registry.clone())),
        )
        .process_async(
            "image-collector",
            processor,
            AsyncOptions {
                ordering,
                concurrency,
                retry: RetryPolicy {
                    max_attempts: 8,
                    initial_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(30),
                    jitter: 0.2,
                },
            },
        )
        .with_stores(&[PRODUCT_IMAGES_STORE])
        .to(
            "collected-events",
            OUT,
            Arc::new(StringSerde),
            Arc::new(JsonSerde),
        );
    let topology = builder
        .build()
        .map_err(|errors| anyhow::anyhow!("topology: {errors:?}"))?;

    // Encode every input before the clock starts: versions 1..=n of every key, round-robin,
    // so each key's changes are spread over the input in order.
    let encoder = ChangeEncoder::avro(registry.clone(), "bench", "catalog", "products")?;
    // As many versions per key in every run (the sequential run has fewer events).
    let keys = (p.keys * events / p.events.max(1)).clamp(1, events.max(1));
    let versions = events.div_ceil(keys);
    let mut inputs = Vec::with_capacity(events);
    'outer: for version in 1..=versions {
        for key in 0..keys {
            if inputs.len() == events {
                break 'outer;
            }
            let url = format!("http://127.0.0.1:{port}/img/p{key:05}/v{version}.png");
            let (k, v) = encoder.encode(TOPIC, &change(key, version, url)).await?;
            inputs.push((k, v));
        }
    }
    let rss_before = peak_rss_kib();

    let mut config = RuntimeConfig::new("async-bench");
    config.commit_interval = Duration::from_millis(100);
    config.state_dir = Some(state_dir.path().to_path_buf());
    config.changelogs = false;
    let driver = TopologyTestDriver::with_config(topology, 4, config)?;
    let cpu_before = cpu_seconds("self");
    let started = Instant::now();
    for (k, v) in inputs {
        driver.pipe_raw(TOPIC, Some(k), v, Headers::default())?;
    }
    driver.settle_within(Duration::from_secs(3600)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self") - cpu_before;
    let outputs = driver.read_raw(OUT)?.len();
    let summary = driver.close().await?;

    let applied = applied
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let in_order = applied
        .values()
        .all(|versions| versions.windows(2).all(|w| w[0] < w[1]));
    let applied_total: usize = applied.values().map(Vec::len).sum();
    let rate = events as f64 / elapsed;
    let bound = p.concurrency as f64 * 1000.0 / p.latency_ms as f64;
    Ok(json!({
        "mode": mode,
        "events": events,
        "keys": keys,
        "concurrency": concurrency,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "rate": rate,
        "fraction": rate / bound,
        "outputs": outputs,
        "applied": applied_total,
        "stale": work.metrics.stale.get(),
        "uploads": work.metrics.uploads.get(),
        "deletes": work.metrics.objects_deleted.get(),
        "collected": work.metrics.collected.get(),
        "per_key_order_kept": in_order,
        "consumed": summary.consumed,
        "peak_rss_kib": peak_rss_kib(),
        "rss_before_run_kib": rss_before,
    }))
}

// --- S3 alone (its own process) ------------------------------------------------------------------

/// `server`: "moto" or "s3s".
async fn run_store_alone(server: &str, p: &Params) -> anyhow::Result<Json> {
    let config = s3_config(&unique("bench-alone"), s3_endpoint(server)?)?;
    let store = Arc::new(images::S3ObjectStore::new(config).await?);
    let keys = p.keys.min(p.events);
    let jobs: Vec<(usize, usize)> = (0..p.events).map(|i| (i % keys, i / keys + 1)).collect();
    // Puts alone.
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(jobs.iter().copied())
        .map(|(key, version)| {
            let store = store.clone();
            async move {
                let path = format!("p{key:05}/v{version}.png");
                let bytes = image_bytes(&path, p.image_kib);
                images::ObjectStore::put(
                    &*store,
                    &format!("put/{path}"),
                    bytes.into(),
                    "image/png",
                )
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(p.concurrency)
        .collect()
        .await;
    let puts_seconds = started.elapsed().as_secs_f64();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    // The collector's pattern: put the new object, delete the previous version's.
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(jobs.iter().copied())
        .map(|(key, version)| {
            let store = store.clone();
            async move {
                let path = format!("p{key:05}/v{version}.png");
                let bytes = image_bytes(&path, p.image_kib);
                images::ObjectStore::put(
                    &*store,
                    &format!("pair/{path}"),
                    bytes.into(),
                    "image/png",
                )
                .await?;
                if version > 1 {
                    let old = format!("pair/p{key:05}/v{}.png", version - 1);
                    images::ObjectStore::delete(&*store, &old).await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(p.concurrency)
        .collect()
        .await;
    let pairs_seconds = started.elapsed().as_secs_f64();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let events = p.events as f64;
    Ok(json!({
        "mode": server,
        "events": p.events,
        "puts_per_s": events / puts_seconds,
        "put_delete_per_s": events / pairs_seconds,
        "peak_rss_kib": peak_rss_kib(),
    }))
}

// --- the orchestrator ----------------------------------------------------------------------------

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn child(args: &[String]) -> anyhow::Result<Json> {
    let exe = std::env::current_exe()?;
    let output = Command::new(exe)
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        bail!("{args:?} failed: {}", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("MEASURE "))
        .with_context(|| format!("{args:?} printed no MEASURE line"))?;
    Ok(serde_json::from_str(line)?)
}

fn orchestrate(raw: &[String], p: &Params) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut server = Killed(
        Command::new(&exe)
            .arg("serve-images")
            .args(raw)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let stdout = server.0.stdout.take().context("image server stdout")?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let port: u16 = first
        .trim()
        .strip_prefix("PORT ")
        .context("the image server printed no port")?
        .parse()?;
    let image_host_pid = server.0.id().to_string();
    eprintln!(
        "image host on 127.0.0.1:{port}: {} ms, {} KiB; {} events over {} keys, concurrency {}",
        p.latency_ms, p.image_kib, p.events, p.keys, p.concurrency
    );
    let s3s = std::env::var("ASYNC_S3S_ENDPOINT").is_ok();
    let s3s_pid = std::env::var("ASYNC_S3S_PID").ok();
    let mut modes = vec!["key", "unordered", "sequential", "key-localdir"];
    if s3s {
        modes.push("key-s3s");
    } else {
        eprintln!("ASYNC_S3S_ENDPOINT is not set: no s3s-fs runs (bench-async.sh starts one)");
    }
    let mut runs = Vec::new();
    for mode in modes {
        let mut args = vec!["run".to_owned(), mode.to_owned(), port.to_string()];
        args.extend(raw.iter().cloned());
        eprintln!("running {mode} …");
        let (image_host_before, s3s_before) = (
            cpu_seconds(&image_host_pid),
            s3s_pid.as_deref().map(cpu_seconds),
        );
        let mut run = child(&args)?;
        run["image_host_cpu_seconds"] = json!(cpu_seconds(&image_host_pid) - image_host_before);
        if let (Some(pid), Some(before)) = (s3s_pid.as_deref(), s3s_before)
            && mode == "key-s3s"
        {
            run["s3_server_cpu_seconds"] = json!(cpu_seconds(pid) - before);
        }
        eprintln!("  {run}");
        runs.push(run);
    }
    let mut alone = Vec::new();
    for store in if s3s {
        vec!["moto", "s3s"]
    } else {
        vec!["moto"]
    } {
        let mut args = vec!["store-alone".to_owned(), store.to_owned()];
        args.extend(raw.iter().cloned());
        eprintln!("running {store} alone …");
        let measured = child(&args)?;
        eprintln!("  {measured}");
        alone.push(measured);
    }
    drop(server);

    let bound = p.concurrency as f64 * 1000.0 / p.latency_ms as f64;
    let sequential_rate = runs
        .iter()
        .find(|run| run["mode"] == "sequential")
        .and_then(|run| run["rate"].as_f64())
        .unwrap_or(0.0);
    println!(
        "\n## async step: {} events over {} keys, image host {} ms / {} KiB, S3 = {}{}\n",
        p.events,
        p.keys,
        p.latency_ms,
        p.image_kib,
        dotenv("S3_ENDPOINT")?,
        if s3s { " (moto) and s3s-fs" } else { " (moto)" },
    );
    println!(
        "| run | concurrency | events | records/s | of bound {bound:.0}/s | × sequential | per-key order | stale | uploads | deletes | CPU ms per record: pipeline / image host / S3 server | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let per_record_ms = |run: &Json, field: &str| {
        run[field]
            .as_f64()
            .map(|cpu| {
                format!(
                    "{:.2}",
                    1000.0 * cpu / run["events"].as_f64().unwrap_or(1.0)
                )
            })
            .unwrap_or_else(|| "–".to_owned())
    };
    for run in &runs {
        let rate = run["rate"].as_f64().unwrap_or(0.0);
        println!(
            "| {} | {} | {} | {:.0} | {:.1}% | {:.1}× | {} | {} | {} | {} | {} / {} / {} | {:.1} MiB |",
            run["mode"].as_str().unwrap_or("?"),
            run["concurrency"],
            run["events"],
            rate,
            100.0 * rate / bound,
            rate / sequential_rate.max(f64::MIN_POSITIVE),
            match (
                run["per_key_order_kept"] == true,
                run["mode"] == "unordered"
            ) {
                (true, _) => "kept",
                // Unordered promises no order: the collector's source-position check drops
                // a change older than what it already applied (counted as stale).
                (false, true) => "not promised",
                (false, false) => "NOT kept",
            },
            run["stale"],
            run["uploads"],
            run["deletes"],
            per_record_ms(run, "cpu_seconds"),
            per_record_ms(run, "image_host_cpu_seconds"),
            per_record_ms(run, "s3_server_cpu_seconds"),
            run["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        );
    }
    for store in &alone {
        let name = store["mode"].as_str().unwrap_or("?");
        for (what, field) in [("puts", "puts_per_s"), ("put + delete", "put_delete_per_s")] {
            let rate = store[field].as_f64().unwrap_or(0.0);
            println!(
                "| {name} alone (no engine, no fetch): {what} | {} | {} | {rate:.0} | {:.1}% | | | | | | | {:.1} MiB |",
                p.concurrency,
                p.events,
                100.0 * rate / bound,
                store["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            );
        }
    }
    println!();
    for run in &runs {
        let rate = run["rate"].as_f64().unwrap_or(0.0);
        println!(
            "RESULT async_{} rate={:.1} fraction={:.3} target=0.70 ratio_sequential={:.2} order_kept={} peak_rss_mib={:.1} cpu_ms_per_record={} events={} concurrency={}",
            run["mode"].as_str().unwrap_or("?").replace('-', "_"),
            rate,
            rate / bound,
            rate / sequential_rate.max(f64::MIN_POSITIVE),
            run["per_key_order_kept"],
            run["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            per_record_ms(run, "cpu_seconds"),
            run["events"],
            run["concurrency"],
        );
    }
    for store in &alone {
        println!(
            "RESULT async_{}_alone puts_per_s={:.1} put_delete_per_s={:.1} fraction_puts={:.3}",
            store["mode"].as_str().unwrap_or("?"),
            store["puts_per_s"].as_f64().unwrap_or(0.0),
            store["put_delete_per_s"].as_f64().unwrap_or(0.0),
            store["puts_per_s"].as_f64().unwrap_or(0.0) / bound,
        );
    }
    if let Some(run) = runs
        .iter()
        .find(|run| run["per_key_order_kept"] != true && run["mode"] != "unordered")
    {
        bail!("per-key order was not kept in `{}` mode", run["mode"]);
    }
    Ok(())
}

/// The pipeline's allocator and settings, as in the `catalog-stream` binary, so the peak RSS
/// is the one an image-pipeline pod would see.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    catalog_stream::allocator::keep_memory_near_use();
    // `cargo bench` passes `--bench`; nothing else is expected from it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("serve-images") => runtime.block_on(serve_images(&Params::parse(&args[1..])?)),
        Some("run") => {
            let mode = args.get(1).context("run MODE PORT")?;
            let port: u16 = args.get(2).context("run MODE PORT")?.parse()?;
            let p = Params::parse(&args[3..])?;
            let measured = runtime.block_on(run_pipeline(mode, port, &p))?;
            println!("MEASURE {measured}");
            Ok(())
        }
        Some("store-alone") => {
            let store = args.get(1).context("store-alone moto|s3s")?;
            let p = Params::parse(&args[2..])?;
            let measured = runtime.block_on(run_store_alone(store, &p))?;
            println!("MEASURE {measured}");
            Ok(())
        }
        _ => {
            let p = Params::parse(&args)?;
            if !Path::new("/proc/self/status").exists() {
                eprintln!("no /proc: peak RSS will read 0");
            }
            orchestrate(&args, &p)
        }
    }
}
