//! Helpers for the tests that run the standalone binary as a child process: spawn it on a data
//! directory and a free port, kill it (SIGKILL) or stop it (SIGTERM), an in-test image server,
//! and readers for `/metrics` and the image directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// `services/images/tests/fixtures/{name}`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/tests/fixtures/");
    std::fs::read(format!("{path}{name}")).expect("fixture")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The standalone binary, running.
pub struct Standalone {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl Standalone {
    /// Starts `catalog-stream --listen 127.0.0.1:<free port> --data-dir <data_dir>` and waits
    /// until `/healthz` answers.
    pub async fn start(data_dir: &Path) -> Self {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_catalog-stream"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn catalog-stream");
        let mut server = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_owned(),
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(format!("{}/healthz", self.base)).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "catalog-stream exited at start with {status}: {}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "catalog-stream not healthy in 30 s: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// SIGTERM; waits at most `limit` for the exit and returns its status and how long it took.
    pub async fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM failed");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("catalog-stream did not exit within {limit:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An image server on 127.0.0.1 serving fixed bytes: `paths` by exact path, `fallback` for any
/// other path, counting requests, after an optional fixed delay.
#[derive(Clone)]
pub struct ImageServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Requests answered.
    pub requests: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Served {
    paths: Arc<Vec<(String, Vec<u8>, &'static str)>>,
    fallback: Arc<(Vec<u8>, &'static str)>,
    delay: Duration,
    requests: Arc<AtomicUsize>,
}

async fn serve(State(served): State<Served>, uri: Uri) -> Response {
    if !served.delay.is_zero() {
        tokio::time::sleep(served.delay).await;
    }
    served.requests.fetch_add(1, Ordering::SeqCst);
    let (bytes, content_type) = served
        .paths
        .iter()
        .find(|(path, _, _)| path == uri.path())
        .map(|(_, bytes, content_type)| (bytes.clone(), *content_type))
        .unwrap_or_else(|| (served.fallback.0.clone(), served.fallback.1));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        bytes,
    )
        .into_response()
}

impl ImageServer {
    /// Serves `services/images/tests/fixtures/pixel.png` for every path.
    pub async fn pixel_png() -> Self {
        Self::start(
            Vec::new(),
            (fixture("pixel.png"), "image/png"),
            Duration::ZERO,
        )
        .await
    }

    /// Starts the server.
    pub async fn start(
        paths: Vec<(String, Vec<u8>, &'static str)>,
        fallback: (Vec<u8>, &'static str),
        delay: Duration,
    ) -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let served = Served {
            paths: Arc::new(paths),
            fallback: Arc::new(fallback),
            delay,
            requests: requests.clone(),
        };
        let app = Router::new().fallback(serve).with_state(served);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the image server");
        let address = listener.local_addr().expect("image server address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base: format!("http://{address}"),
            requests,
        }
    }

    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Every sample of `name` in a Prometheus text exposition, with its label text.
pub fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, value) = rest.split_once('}')?;
                (labels.to_owned(), value)
            } else if rest.starts_with(' ') {
                (String::new(), rest)
            } else {
                return None;
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of `name` (0 when absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    samples(text, name).iter().map(|(_, value)| value).sum()
}

/// `GET /metrics`.
pub async fn metrics(client: &reqwest::Client, server: &Standalone) -> String {
    client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// Every file under `dir`, recursively, relative to it (empty when `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A product body.
pub fn product(mall: &str, id: &str, title: &str, image_url: &str) -> serde_json::Value {
    serde_json::json!({
        "mallId": mall,
        "productId": id,
        "title": title,
        "content": format!("content of {id}"),
        "price": "9.90",
        "imageUrl": image_url,
    })
}
