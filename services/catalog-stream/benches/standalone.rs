//! Standalone-mode benchmarks (SPEC §8; issue 5). Not a test: `cargo bench -p catalog-stream
//! --bench standalone` (or `infrastructure/bench-standalone.sh`) prints a markdown table and
//! `RESULT` lines.
//!
//! - `standalone_e2e`: 200 products/s for `E2E_SECONDS` (20) against an image server with a
//!   fixed 10 ms latency; for each product the time from sending the POST until a GET of the
//!   single complete product answers 200 (polled every 2 ms), minus the image server's 10 ms.
//!   Targets: p50 20 ms, p99 100 ms.
//! - `standalone_ingest`: Debian `wrk` (`WRK_THREADS` 2, `WRK_CONNECTIONS` 32, `WRK_SECONDS`
//!   15) against `POST /api/v1/products` with a Lua script making every product distinct.
//!   Images are fetched in the background by the same process while it ingests, and compete
//!   with it for the 2 cores. Targets: ≥ 5,000 requests/s, p99 < 20 ms.
//! - `standalone_rss_100k`: a fresh process fed exactly `RSS_PRODUCTS` (100,000) products by
//!   32 concurrent clients, left to collect every image, then VmHWM and VmRSS from
//!   `/proc/PID/status`. Target ≤ 128 MiB.
//! - `standalone_rss_after_burst`: the same figures for the ingest part's process, after wrk's
//!   burst (however many products it stored, topped up to `RSS_PRODUCTS` if fewer) has been
//!   collected: what the allocator keeps after a peak at full speed.
//!
//! Each part runs its own process on its own temporary data directory. `BENCH_PARTS` (default
//! `e2e,ingest,rss`) runs only some parts, e.g. `BENCH_PARTS=ingest`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;

const IMAGE_LATENCY: Duration = Duration::from_millis(10);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn pixel_png() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../images/tests/fixtures/pixel.png"
    );
    std::fs::read(path).expect("pixel.png fixture")
}

/// An image server on 127.0.0.1 answering every path with the PNG after `delay`.
async fn image_server(delay: Duration) -> String {
    let png = Arc::new(pixel_png());
    let app = Router::new().fallback(move || {
        let png = png.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            ([(header::CONTENT_TYPE, "image/png")], png.as_ref().clone()).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the image server");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(data_dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_catalog-stream"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn catalog-stream");
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .map(|response| !response.status().is_success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "catalog-stream did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// (VmHWM, VmRSS) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = match client.get(format!("{}/metrics", self.base)).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?;
                let value = if rest.starts_with('{') {
                    rest.split_once('}')?.1
                } else {
                    rest
                };
                value.trim().parse::<f64>().ok()
            })
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn product_body(mall: &str, id: &str, image_base: &str) -> serde_json::Value {
    serde_json::json!({
        "mallId": mall,
        "productId": id,
        "title": format!("title of {id}"),
        "content": "a product posted by the benchmark",
        "price": "12.50",
        "imageUrl": format!("{image_base}/img/{id}.png"),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// (p50, p99, samples, failures) in ms beyond the image server's latency.
async fn end_to_end(seconds: u64) -> (f64, f64, usize, usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let images = image_server(IMAGE_LATENCY).await;
    let server = Server::start(&dir.path().join("data")).await;
    let base = Arc::new(server.base.clone());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    let rate = 200u64;
    let total = rate * seconds;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for index in 0..total {
        ticker.tick().await;
        let client = client.clone();
        let base = base.clone();
        let body = product_body("e2e", &format!("e2e-{index}"), &images);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let posted = client
                .post(format!("{base}/api/v1/products"))
                .json(&body)
                .send()
                .await
                .ok()
                .is_some_and(|response| response.status().is_success());
            if !posted {
                return None;
            }
            let url = format!(
                "{base}/api/v1/complete-products/{}?mallId=e2e",
                body["productId"].as_str().unwrap_or_default()
            );
            let deadline = started + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(response) = client.get(&url).send().await
                    && response.status().as_u16() == 200
                {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        match task.await.ok().flatten() {
            Some(latency) => latencies
                .push(latency.as_secs_f64() * 1000.0 - IMAGE_LATENCY.as_secs_f64() * 1000.0),
            None => failures += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.len(),
        failures,
    )
}

/// wrk's request generator, shared with `infrastructure/bench_distributed.py`.
const WRK_SCRIPT: &str = include_str!("../../../infrastructure/bench/products.lua");

/// Parses a wrk latency like `1.23ms`, `812.00us` or `1.02s` into ms.
fn wrk_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Some(value) = text.strip_suffix("us") {
        return value.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    if let Some(value) = text.strip_suffix("ms") {
        return value.parse().ok();
    }
    if let Some(value) = text.strip_suffix('s') {
        return value.parse::<f64>().ok().map(|v| v * 1000.0);
    }
    None
}

struct Ingest {
    rps: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn run_wrk(base: &str, image_base: &str, script: &Path) -> Ingest {
    let threads: u32 = env_or("WRK_THREADS", 2);
    let connections: u32 = env_or("WRK_CONNECTIONS", 32);
    let seconds: u32 = env_or("WRK_SECONDS", 15);
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(format!("{base}/api/v1/products"))
        .env("IMAGE_BASE", image_base)
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{text}");
    let rps = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0);
    let p99_ms = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("99%"))
        .and_then(wrk_ms)
        .unwrap_or(f64::NAN);
    let non_2xx = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    Ingest {
        rps,
        p99_ms,
        non_2xx,
    }
}

/// Posts products `from..to` with `concurrency` clients.
async fn post_range(base: &str, image_base: &str, from: usize, to: usize, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let client = reqwest::Client::new();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let client = client.clone();
        let base = base.to_owned();
        let image_base = image_base.to_owned();
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                if index >= to {
                    return;
                }
                let body = product_body("rss", &format!("rss-{index}"), &image_base);
                let _ = client
                    .post(format!("{base}/api/v1/products"))
                    .json(&body)
                    .send()
                    .await;
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let e2e_seconds: u64 = env_or("E2E_SECONDS", 20);
    let rss_products: usize = env_or("RSS_PRODUCTS", 100_000);

    // `BENCH_PARTS`: the parts to run, comma-separated (`rss` measures the ingest part's
    // process, so it needs `ingest`).
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "e2e,ingest,rss".to_owned());
    let part = |name: &str| parts.split(',').any(|part| part.trim() == name);

    let (p50, p99, samples, failures) = if part("e2e") {
        eprintln!("== end to end: 200 products/s for {e2e_seconds} s, image server latency 10 ms");
        end_to_end(e2e_seconds).await
    } else {
        (f64::NAN, f64::NAN, 0, 0)
    };

    if !part("ingest") {
        println!("RESULT standalone_e2e p50_ms={p50:.2} p99_ms={p99:.2}");
        return;
    }
    eprintln!("== ingest: wrk against POST /api/v1/products, then {rss_products} products for RSS");
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("products.lua");
    std::fs::write(&script, WRK_SCRIPT).expect("write the wrk script");
    let images = image_server(Duration::ZERO).await;
    let server = Server::start(&dir.path().join("data")).await;
    let client = reqwest::Client::new();
    let ingest = run_wrk(&server.base, &images, &script);
    if !part("rss") {
        println!(
            "RESULT standalone_ingest rps={:.0} p99_ms={:.2} non_2xx={}",
            ingest.rps, ingest.p99_ms, ingest.non_2xx
        );
        return;
    }
    // Top up to `rss_products` (wrk's products count), then let every image be collected.
    let stored_by_wrk = count_products(&server, &client).await;
    if stored_by_wrk < rss_products {
        post_range(&server.base, &images, stored_by_wrk, rss_products, 32).await;
    }
    let burst = settled_memory(&server, &client).await;
    drop(server);

    eprintln!("== memory: a fresh process fed exactly {rss_products} products");
    let server = Server::start(&dir.path().join("data-fresh")).await;
    post_range(&server.base, &images, 0, rss_products, 32).await;
    let fresh = settled_memory(&server, &client).await;

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!("| benchmark | figure | target |");
    println!("|---|---|---|");
    println!(
        "| end to end (200/s, {samples} products, {failures} failed), beyond the image server's 10 ms | p50 {p50:.1} ms, p99 {p99:.1} ms | p50 ≤ 20 ms, p99 ≤ 100 ms |"
    );
    println!(
        "| ingest (wrk, {} non-2xx; images collected in the background) | {:.0} requests/s, p99 {:.2} ms | ≥ 5,000/s, p99 < 20 ms |",
        ingest.non_2xx, ingest.rps, ingest.p99_ms
    );
    for (what, memory) in [
        ("memory, a fresh process fed", &fresh),
        ("memory after the ingest burst,", &burst),
    ] {
        println!(
            "| {what} {} products ({:.0} images collected, settled in {:.0} s) | VmHWM {:.1} MiB, VmRSS {:.1} MiB | ≤ 128 MiB |",
            memory.products,
            memory.collected,
            memory.settled_after.as_secs_f64(),
            mib(memory.hwm_kib),
            mib(memory.rss_kib)
        );
    }
    println!();
    println!("RESULT standalone_e2e p50_ms={p50:.2} p99_ms={p99:.2}");
    println!(
        "RESULT standalone_ingest rps={:.0} p99_ms={:.2}",
        ingest.rps, ingest.p99_ms
    );
    println!(
        "RESULT standalone_rss_100k mib={:.1} hwm_mib={:.1} products={}",
        mib(fresh.rss_kib),
        mib(fresh.hwm_kib),
        fresh.products
    );
    println!(
        "RESULT standalone_rss_after_burst mib={:.1} hwm_mib={:.1} products={}",
        mib(burst.rss_kib),
        mib(burst.hwm_kib),
        burst.products
    );
}

/// A process's memory once every stored product's image is collected and the lag is 0.
struct SettledMemory {
    products: usize,
    collected: f64,
    settled_after: Duration,
    hwm_kib: u64,
    rss_kib: u64,
}

async fn settled_memory(server: &Server, client: &reqwest::Client) -> SettledMemory {
    let products = count_products(server, client).await;
    let settle = Instant::now();
    let mut collected = 0.0;
    while settle.elapsed() < Duration::from_secs(600) {
        collected = server
            .metric(client, "catalog_images_collected_total")
            .await;
        let lag = server.metric(client, "topology_consumer_lag").await;
        if collected >= products as f64 && lag == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled_after = settle.elapsed();
    let (hwm_kib, rss_kib) = server.memory_kib();
    SettledMemory {
        products,
        collected,
        settled_after,
        hwm_kib,
        rss_kib,
    }
}

/// Products created so far (`catalog_products_posted_total{outcome="created"}`).
async fn count_products(server: &Server, client: &reqwest::Client) -> usize {
    server
        .metric(
            client,
            r#"catalog_products_posted_total{outcome="created"}"#,
        )
        .await as usize
}
