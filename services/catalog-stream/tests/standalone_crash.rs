//! Crash safety of the standalone mode (SPEC §5, §9; issue 5): `kill -9` in the middle of a
//! burst of 1,000 POSTs, restart on the same data directory, finish the burst. Every product
//! acknowledged with 2xx is there and ends `collected`, exactly one stored image per product
//! (no duplicates, no orphans, no temporary files left), no image uploaded twice for the same
//! bytes, and every consumer lag settles at 0.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::standalone::{Standalone, metrics};
use support::{ImageServer, files_under, metric_sum, product};

const CLIENTS: usize = 4;
/// Creates per client; every fourth create is followed by an update of an earlier product of
/// the same client (same image), so 250 requests per client, 1,000 in all.
const CREATES_PER_CLIENT: usize = 200;
const MALL: &str = "crash-mall";
/// Acknowledged POSTs after which the process is killed.
const KILL_AFTER: usize = 450;

/// A client whose requests fail after 20 s instead of hanging the test.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client")
}

#[derive(Clone, Debug)]
struct Post {
    product_id: String,
    title: String,
}

fn client_posts(client: usize) -> Vec<Post> {
    let id = |index: usize| format!("p{:04}", client + CLIENTS * index);
    let mut posts = Vec::new();
    for index in 0..CREATES_PER_CLIENT {
        posts.push(Post {
            product_id: id(index),
            title: format!("created {}", id(index)),
        });
        if index % 4 == 3 {
            posts.push(Post {
                product_id: id(index - 2),
                title: format!("updated {}", id(index - 2)),
            });
        }
    }
    posts
}

/// Posts `posts[from..]` in order; stops at the first failure (connection error or non-2xx)
/// and returns where it stopped (`posts.len()` when all were acknowledged).
async fn run_client(
    client: reqwest::Client,
    base: String,
    image_base: String,
    posts: Arc<Vec<Post>>,
    from: usize,
    acked: Arc<AtomicUsize>,
) -> (usize, Option<String>) {
    for (index, post) in posts.iter().enumerate().skip(from) {
        let body = product(
            MALL,
            &post.product_id,
            &post.title,
            &format!("{image_base}/images/{}.png", post.product_id),
        );
        match client
            .post(format!("{base}/api/v1/products"))
            .json(&body)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                eprintln!("POST {} answered {status}: {text}", post.product_id);
                return (index, Some(format!("{status}: {text}")));
            }
            Err(error) => {
                return (index, Some(format!("{error:?}")));
            }
        }
    }
    (posts.len(), None)
}

async fn burst(
    server: &Standalone,
    images: &ImageServer,
    posts: &[Arc<Vec<Post>>],
    from: &[usize],
    acked: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<(usize, Option<String>)>> {
    posts
        .iter()
        .zip(from)
        .map(|(posts, from)| {
            tokio::spawn(run_client(
                http_client(),
                server.base.clone(),
                images.base.clone(),
                posts.clone(),
                *from,
                acked.clone(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_burst_loses_nothing_and_uploads_nothing_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let images = ImageServer::pixel_png().await;
    let client = http_client();
    let posts: Vec<Arc<Vec<Post>>> = (0..CLIENTS).map(|c| Arc::new(client_posts(c))).collect();
    let total: usize = posts.iter().map(|p| p.len()).sum();
    assert_eq!(total, 1000);
    // The last title posted for each product.
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for post in posts.iter().flat_map(|p| p.iter()) {
        expected.insert(post.product_id.clone(), post.title.clone());
    }
    let distinct = expected.len();
    assert_eq!(distinct, CLIENTS * CREATES_PER_CLIENT);

    // Run 1: the burst, killed in the middle.
    let mut server = Standalone::start(&data_dir).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let clients = burst(&server, &images, &posts, &[0; CLIENTS], &acked).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} POSTs acknowledged in 30 s: {}",
            acked.load(Ordering::SeqCst),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill9();
    let mut resume = Vec::new();
    for handle in clients {
        let (stopped_at, _) = handle.await.expect("client task");
        resume.push(stopped_at);
    }
    let acked_in_first_run = acked.load(Ordering::SeqCst);
    assert!(
        acked_in_first_run < total,
        "the burst ended before the kill; nothing was tested"
    );
    // What the first run stored for good (temporary files of interrupted writes aside: they
    // live under `.incoming/`, which the restart clears).
    let stored_by_first_run = files_under(&data_dir.join("images"))
        .iter()
        .filter(|file| !file.split('/').any(|part| part.starts_with('.')))
        .count();

    // Run 2: restart on the same directory and finish the burst, resending what was not
    // acknowledged (in order, per client).
    let server = Standalone::start(&data_dir).await;
    let clients = burst(&server, &images, &posts, &resume, &acked).await;
    for handle in clients {
        let (stopped_at, error) = handle.await.expect("client task");
        assert!(
            error.is_none(),
            "after the restart a POST failed: {error:?}; server log: {}",
            server.log()
        );
        assert!(stopped_at > 0);
    }

    // Settle: every product collected with its last title, lag 0 everywhere.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut pending: Vec<String> = expected.keys().cloned().collect();
    let mut last_problem = String::new();
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} products never ended collected (e.g. {last_problem}): {}",
            pending.len(),
            server.log()
        );
        let mut still = Vec::new();
        for product_id in pending {
            let response = client
                .get(server.url(&format!(
                    "/api/v1/products/{product_id}/status?mallId={MALL}"
                )))
                .send()
                .await
                .expect("GET status");
            let status = response.status();
            let body: serde_json::Value = response.json().await.expect("status body");
            if status.as_u16() != 200 || body["data"]["state"] != "collected" {
                last_problem = format!("{product_id}: {status} {body}");
                still.push(product_id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The view: every product listed once, with its last title and its image.
    let mut listed: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = server.url(&format!(
            "/api/v1/complete-products?mallId={MALL}&limit=500"
        ));
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: serde_json::Value = client
            .get(url)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list body");
        for item in page["data"].as_array().expect("data is a list") {
            let id = item["productId"].as_str().expect("productId").to_owned();
            assert!(
                listed.insert(id.clone(), item.clone()).is_none(),
                "{id} listed twice"
            );
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(listed.len(), distinct, "complete products listed");
    for (product_id, title) in &expected {
        let item = &listed[product_id];
        assert_eq!(
            &item["title"], title,
            "{product_id} ends with its last title"
        );
        assert_eq!(item["image"]["contentType"], "image/png");
    }

    // Exactly one stored image per product, nothing else in the image directory.
    let files = files_under(&data_dir.join("images"));
    assert_eq!(
        files.len(),
        distinct,
        "one image file per product and nothing else; extra files: {:?}",
        files
            .iter()
            .filter(|file| file.rsplit('/').next().unwrap_or("").starts_with('.'))
            .take(10)
            .collect::<Vec<_>>()
    );
    for item in listed.values() {
        let uri = item["image"]["uri"].as_str().expect("uri");
        let relative = uri
            .split_once("/images/")
            .map(|(_, relative)| relative)
            .expect("a file under images/");
        assert!(
            files.iter().any(|file| file == relative),
            "{uri} is not on disk"
        );
    }

    // No image uploaded twice for the same bytes: what the first run stored plus what the
    // second run uploaded is exactly one upload per product.
    let settled_deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(&client, &server).await;
        let lags = support::samples(&text, "topology_consumer_lag");
        let uploads = metric_sum(&text, "catalog_image_uploads_total", &[]);
        let settled = !lags.is_empty() && lags.iter().all(|(_, lag)| *lag == 0.0);
        if settled {
            assert_eq!(
                stored_by_first_run as f64 + uploads,
                distinct as f64,
                "{stored_by_first_run} images stored before the kill + {uploads} uploaded \
                 after the restart != {distinct} products: an image was uploaded twice"
            );
            assert!(
                metric_sum(&text, "catalog_image_uploads_skipped_total", &[]) > 0.0,
                "the same-image updates after the restart skipped no upload"
            );
            break;
        }
        assert!(
            Instant::now() < settled_deadline,
            "consumer lag never settled at 0: {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(images.requests.load(Ordering::SeqCst) >= distinct);
}
