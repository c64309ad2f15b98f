//! SIGTERM under load (SPEC §3 "SIGTERM", §9; issue 8): the standalone binary takes POSTs from
//! four clients posting continuously (creates and updates) while its image collector fetches
//! from a slow image server; SIGTERM arrives mid-load. It exits 0 within 10 s. Restarted on the
//! same data directory: every product acknowledged with 2xx is there and ends collected with
//! its last acknowledged title, each product has exactly one stored image file, and the upload
//! counters show no image uploaded twice.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::own_servers::{start_standalone, wait_ok};
use support::{ImageServer, files_under, free_port, metric_sum, product};

const CLIENTS: usize = 4;
const MALL: &str = "sigterm-mall";
/// Acknowledged POSTs after which SIGTERM is sent.
const TERM_AFTER: usize = 400;
/// The image server's latency: keeps collections in flight when SIGTERM comes.
const IMAGE_LATENCY: Duration = Duration::from_millis(40);

/// What a client saw: per product, the last acknowledged title, and the title of a POST whose
/// answer never came (it may or may not have been applied).
#[derive(Default, Debug)]
struct Seen {
    acked: BTreeMap<String, String>,
    uncertain: BTreeMap<String, String>,
}

/// Posts until the server stops answering: creates `c{client}-{n}`, and after every third
/// create an update of an earlier product of this client (same image, new title).
async fn client(
    id: usize,
    base: String,
    images: String,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Seen {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut seen = Seen::default();
    let mut created = 0usize;
    let mut attempt = 0usize;
    while !stop.load(Ordering::SeqCst) {
        attempt += 1;
        let (product_id, title) = if attempt.is_multiple_of(4) && created > 1 {
            let earlier = (attempt * 7) % created;
            (format!("c{id}-{earlier:05}"), format!("update {attempt}"))
        } else {
            created += 1;
            (
                format!("c{id}-{:05}", created - 1),
                format!("create {attempt}"),
            )
        };
        let body = product(
            MALL,
            &product_id,
            &title,
            &format!("{images}/images/{product_id}.png"),
        );
        match http
            .post(format!("{base}/api/v1/products"))
            .json(&body)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                seen.acked.insert(product_id, title);
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(response) => {
                // Shutting down: a refusal is a definite "not applied".
                assert!(
                    response.status().is_server_error(),
                    "unexpected {}",
                    response.status()
                );
                break;
            }
            Err(_) => {
                seen.uncertain.insert(product_id, title);
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let log = dir.path().join("catalog-stream.log");
    let image_server = ImageServer::slow_pixel_png(IMAGE_LATENCY).await;
    let (images, image_requests) = (image_server.base.clone(), image_server.requests.clone());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let mut process = start_standalone(&data_dir, port, &log, &[("RUST_LOG", "info")]);
    wait_ok(&http, &format!("{base}/healthz"), Duration::from_secs(30)).await;

    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client(
                id,
                base.clone(),
                images.clone(),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let load_started = Instant::now();
    let mut last_uploads = 0.0;
    while acked.load(Ordering::SeqCst) < TERM_AFTER {
        assert!(
            load_started.elapsed() < Duration::from_secs(60),
            "only {} POSTs acknowledged in 60 s:\n{}",
            acked.load(Ordering::SeqCst),
            process.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Ok(response) = http.get(format!("{base}/metrics")).send().await
        && let Ok(text) = response.text().await
    {
        last_uploads = metric_sum(&text, "catalog_image_uploads_total", &[]);
    }
    let acked_at_term = acked.load(Ordering::SeqCst);
    let term = tokio::task::spawn_blocking(move || {
        let result = process.terminate(Duration::from_secs(10));
        (process, result)
    });
    let (process, (status, took)) = term.await.expect("terminate");
    stop.store(true, Ordering::SeqCst);
    assert!(
        status.success(),
        "SIGTERM exit {status}:\n{}",
        process.output()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    drop(process);

    let mut acked_titles: BTreeMap<String, String> = BTreeMap::new();
    let mut uncertain: BTreeMap<String, String> = BTreeMap::new();
    for handle in clients {
        let seen = handle.await.expect("client");
        acked_titles.extend(seen.acked);
        uncertain.extend(seen.uncertain);
    }
    let acked_total = acked.load(Ordering::SeqCst);
    let images_dir = data_dir.join("images");
    let stored_at_restart = files_under(&images_dir);
    assert!(
        stored_at_restart
            .iter()
            .all(|file| file.starts_with("products/") && !file.contains(".tmp")),
        "stray files: {stored_at_restart:?}"
    );

    // Restart on the same data directory; every acknowledged product ends collected.
    let mut process = start_standalone(&data_dir, port, &log, &[("RUST_LOG", "info")]);
    wait_ok(&http, &format!("{base}/healthz"), Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<String> = acked_titles.keys().cloned().collect();
    while !pending.is_empty() {
        process.assert_running();
        let mut still = Vec::new();
        for product_id in pending {
            let response = http
                .get(format!(
                    "{base}/api/v1/complete-products/{product_id}?mallId={MALL}"
                ))
                .send()
                .await
                .expect("GET");
            if response.status() != 200 {
                still.push(product_id);
                continue;
            }
            let body: serde_json::Value = response.json().await.expect("JSON");
            let title = body["data"]["title"].as_str().unwrap_or_default();
            let expected = &acked_titles[&product_id];
            let maybe = uncertain.get(&product_id);
            if title != expected && Some(&title.to_owned()) != maybe {
                // An older title: its last update is still on its way.
                still.push(product_id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} acknowledged products not collected with their last title after restart, e.g. {:?}",
                pending.len(),
                &pending[..pending.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Settled: lag 0, then count uploads and files.
    let settle = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics");
        let lag = metric_sum(&text, "topology_consumer_lag", &[]);
        let in_flight = metric_sum(&text, "topology_in_flight", &[]);
        if lag == 0.0 && in_flight == 0.0 {
            break text;
        }
        assert!(Instant::now() < settle, "lag {lag}, in flight {in_flight}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let uploads_after_restart = metric_sum(&text, "catalog_image_uploads_total", &[]);
    let files = files_under(&images_dir);
    let mut per_product: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let product_dir = file.rsplit_once('/').map_or(file.as_str(), |(dir, _)| dir);
        *per_product.entry(product_dir.to_owned()).or_default() += 1;
    }
    let duplicates: Vec<_> = per_product.iter().filter(|(_, n)| **n != 1).collect();
    assert!(duplicates.is_empty(), "more than one file: {duplicates:?}");
    let products_total = acked_titles.len()
        + uncertain
            .keys()
            .filter(|id| !acked_titles.contains_key(*id))
            .count();
    assert!(
        files.len() >= acked_titles.len() && files.len() <= products_total,
        "{} files for {} acknowledged products ({} in all)",
        files.len(),
        acked_titles.len(),
        products_total
    );
    // Each upload after the restart stored an image nobody had stored before it: the images
    // stored before SIGTERM were not uploaded again.
    let missing_at_restart = files.len() - stored_at_restart.len();
    assert_eq!(
        uploads_after_restart as usize, missing_at_restart,
        "uploads after the restart vs images missing at restart"
    );
    assert!(
        last_uploads as usize <= stored_at_restart.len(),
        "uploads seen before SIGTERM ({last_uploads}) exceed the stored images ({})",
        stored_at_restart.len()
    );
    let (status, took_second) = process.terminate(Duration::from_secs(10));
    assert!(status.success());
    println!(
        "sigterm: acknowledged={acked_total} (at SIGTERM {acked_at_term}) products={} exit=0 in {took:?} \
         stored_at_restart={} uploads_after_restart={uploads_after_restart} files={} \
         duplicate_uploads=0 lost=0 image_requests={} second_exit_in={took_second:?}",
        acked_titles.len(),
        stored_at_restart.len(),
        files.len(),
        image_requests.load(Ordering::SeqCst)
    );
}
