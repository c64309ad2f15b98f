//! Image failures through the standalone binary (SPEC §9): an image server in the test answers
//! 404, three 500s then 200, too slowly, 50 MiB (declared and chunked), HTML as `image/png`, a
//! redirect loop and redirects to 169.254.169.254 and 10.0.0.1; `file:` and `ftp:` URLs are
//! refused at POST. Each product ends in a definite status (`failed` with a reason naming the
//! cause, or `collected`), no image file is left for failed products, the process stays up and
//! exits 0 on SIGTERM.
//!
//! The SSRF guard refuses blocked addresses before connecting, so no traffic leaves loopback:
//! the blocked cases fail on their first attempt, long before a connect timeout could pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const PNG: &[u8] = include_bytes!("../../images/tests/fixtures/pixel.png");
const FETCH_TIMEOUT_SECONDS: &str = "1.5";
const FIFTY_MIB: usize = 50 * 1024 * 1024;

#[derive(Clone, Default)]
struct Hits {
    flaky: Arc<AtomicUsize>,
    huge: Arc<AtomicUsize>,
}

fn png() -> Response {
    ([(header::CONTENT_TYPE, "image/png")], PNG).into_response()
}

fn redirect(to: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_owned())]).into_response()
}

fn huge_body() -> Body {
    // A PNG signature, then zeros, 1 MiB at a time: 50 MiB without holding them.
    let chunks = (0..50).map(|i| {
        let mut chunk = vec![0u8; 1024 * 1024];
        if i == 0 {
            chunk[..PNG.len().min(64)].copy_from_slice(&PNG[..PNG.len().min(64)]);
        }
        Ok::<_, std::io::Error>(chunk)
    });
    Body::from_stream(futures::stream::iter(chunks))
}

async fn image_server() -> (String, Hits) {
    let hits = Hits::default();
    let app = axum::Router::new()
        .route("/ok.png", get(|| async { png() }))
        .route(
            "/missing.png",
            get(|| async { (StatusCode::NOT_FOUND, "no such image").into_response() }),
        )
        .route(
            "/flaky.png",
            get(|State(hits): State<Hits>| async move {
                if hits.flaky.fetch_add(1, Ordering::SeqCst) < 3 {
                    (StatusCode::INTERNAL_SERVER_ERROR, "try again").into_response()
                } else {
                    png()
                }
            }),
        )
        .route(
            "/slow.png",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                png()
            }),
        )
        .route(
            "/huge.png",
            get(|State(hits): State<Hits>| async move {
                hits.huge.fetch_add(1, Ordering::SeqCst);
                (
                    [
                        (header::CONTENT_TYPE, "image/png".to_owned()),
                        (header::CONTENT_LENGTH, FIFTY_MIB.to_string()),
                    ],
                    huge_body(),
                )
                    .into_response()
            }),
        )
        .route(
            "/huge-chunked.png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], huge_body()).into_response() }),
        )
        .route(
            "/html.png",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    "<!doctype html><html><body>not an image</body></html>",
                )
                    .into_response()
            }),
        )
        .route("/loop", get(|| async { redirect("/loop") }))
        .route(
            "/to-metadata",
            get(|| async { redirect("http://169.254.169.254/latest/meta-data/") }),
        )
        .route(
            "/to-private",
            get(|| async { redirect("http://10.0.0.1/image.png") }),
        )
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the image server");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), hits)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

struct Process {
    child: Option<Child>,
    base: String,
    log: PathBuf,
}

impl Process {
    async fn start(data_dir: &Path) -> Self {
        let port = free_port();
        let log = data_dir.with_extension("log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_catalog-stream"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--fetch-timeout")
            .arg(FETCH_TIMEOUT_SECONDS)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn catalog-stream");
        let mut process = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(process.url("/healthz")).send().await
                && response.status().is_success()
            {
                return process;
            }
            process.assert_running();
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not healthy in 30 s: {}",
                process.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("started");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("catalog-stream exited with {status}: {}", self.log());
        }
    }

    async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no exit within 60 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn product(mall: &str, id: &str, image_url: &str) -> serde_json::Value {
    serde_json::json!({
        "mallId": mall, "productId": id, "title": format!("Product {id}"),
        "content": "An image that may not arrive.", "price": "9.99", "imageUrl": image_url,
    })
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

struct Case {
    id: &'static str,
    path: String,
    /// `None`: collected; `Some(code)`: failed with a reason starting with this code.
    failure: Option<&'static str>,
    /// A fragment the reason must contain.
    names: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn every_image_failure_ends_in_a_definite_status() {
    let (images, hits) = image_server().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let mut process = Process::start(&data_dir).await;
    let client = reqwest::Client::new();
    let mall = "mall-failures";

    // `file:` and `ftp:` never get in: 400 naming `imageUrl`.
    for url in ["file:///etc/passwd", "ftp://127.0.0.1/image.png"] {
        let response = client
            .post(process.url("/api/v1/products"))
            .json(&product(mall, "scheme", url))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 400, "{url}");
        let body: serde_json::Value = response.json().await.expect("JSON error");
        assert_eq!(body["field"], "imageUrl", "{url}: {body}");
        println!(
            "{url:<32} -> 400 field=imageUrl message={}",
            body["message"]
        );
    }

    let cases = vec![
        Case {
            id: "ok",
            path: format!("{images}/ok.png"),
            failure: None,
            names: "",
        },
        Case {
            id: "not-found",
            path: format!("{images}/missing.png"),
            failure: Some("not_found"),
            names: "404",
        },
        Case {
            id: "flaky",
            path: format!("{images}/flaky.png"),
            failure: None,
            names: "",
        },
        Case {
            id: "slow",
            path: format!("{images}/slow.png"),
            failure: Some("timeout"),
            names: "time",
        },
        Case {
            id: "huge",
            path: format!("{images}/huge.png"),
            failure: Some("too_large"),
            names: "10485760",
        },
        Case {
            id: "huge-chunked",
            path: format!("{images}/huge-chunked.png"),
            failure: Some("too_large"),
            names: "10485760",
        },
        Case {
            id: "html",
            path: format!("{images}/html.png"),
            failure: Some("not_an_image"),
            names: "image",
        },
        Case {
            id: "redirect-loop",
            path: format!("{images}/loop"),
            failure: Some("too_many_redirects"),
            names: "redirect",
        },
        Case {
            id: "to-metadata",
            path: format!("{images}/to-metadata"),
            failure: Some("blocked_address"),
            names: "169.254.169.254",
        },
        Case {
            id: "to-private",
            path: format!("{images}/to-private"),
            failure: Some("blocked_address"),
            names: "10.0.0.1",
        },
        Case {
            id: "direct-metadata",
            path: "http://169.254.169.254/latest/meta-data/".to_owned(),
            failure: Some("blocked_address"),
            names: "169.254.169.254",
        },
        Case {
            id: "direct-private",
            path: "http://10.0.0.1/image.png".to_owned(),
            failure: Some("blocked_address"),
            names: "10.0.0.1",
        },
    ];
    let started = Instant::now();
    for case in &cases {
        let response = client
            .post(process.url("/api/v1/products"))
            .json(&product(mall, case.id, &case.path))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 201, "{}", case.id);
    }

    // Every product reaches a definite state.
    let mut outcomes = std::collections::BTreeMap::new();
    while outcomes.len() < cases.len() {
        for case in &cases {
            if outcomes.contains_key(case.id) {
                continue;
            }
            let response = client
                .get(process.url(&format!(
                    "/api/v1/products/{}/status?mallId={mall}",
                    case.id
                )))
                .send()
                .await
                .expect("GET status");
            assert_eq!(response.status(), 200, "{}", case.id);
            let body: serde_json::Value = response.json().await.expect("JSON");
            let state = body["data"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if state == "collected" || state == "failed" {
                let reason = body["data"]["reason"].as_str().map(str::to_owned);
                outcomes.insert(case.id, (state, reason, started.elapsed()));
            }
        }
        process.assert_running();
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not every product settled in 120 s: {outcomes:?}\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for case in &cases {
        let (state, reason, after) = &outcomes[case.id];
        println!(
            "{:<16} {:<10} after {:>5.1}s reason={}",
            case.id,
            state,
            after.as_secs_f64(),
            reason.as_deref().unwrap_or("-")
        );
        let stored = files_under(&data_dir.join(format!("images/products/{mall}/{}", case.id)));
        match case.failure {
            None => {
                assert_eq!(state, "collected", "{}: {reason:?}", case.id);
                assert_eq!(stored.len(), 1, "{}: one stored image: {stored:?}", case.id);
            }
            Some(code) => {
                assert_eq!(state, "failed", "{}", case.id);
                let reason = reason.as_deref().unwrap_or_default();
                assert!(
                    reason.starts_with(code) && reason.contains(case.names),
                    "{}: reason `{reason}` should start with `{code}` and name `{}`",
                    case.id,
                    case.names
                );
                assert!(stored.is_empty(), "{}: leaked {stored:?}", case.id);
            }
        }
    }
    assert_eq!(
        hits.flaky.load(Ordering::SeqCst),
        4,
        "three 500s, then the 200"
    );
    // The blocked ones fail at once: the guard refuses before connecting, no connect timeout.
    for id in [
        "to-metadata",
        "to-private",
        "direct-metadata",
        "direct-private",
    ] {
        assert!(
            outcomes[id]
                .1
                .as_deref()
                .is_some_and(|r| !r.contains("timeout")),
            "{id}"
        );
    }
    // Nothing stored outside the two collected products.
    let all = files_under(&data_dir.join("images"));
    assert_eq!(all.len(), 2, "{all:?}");

    // The process is up, answers, and exits cleanly.
    process.assert_running();
    let health = client
        .get(process.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let status = process.terminate().await;
    assert!(status.success(), "exit {status}: {}", process.log());
}
