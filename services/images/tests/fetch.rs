//! The fetcher against a real image server on 127.0.0.1 (axum, started by each test): real PNG,
//! JPEG, WebP, GIF and AVIF bytes and every failure case of SPEC §9 "Image failures".
//!
//! The server itself is on loopback, so fetchers here either allow exactly `127.0.0.1` or the
//! name `localhost`; redirects to other blocked addresses (169.254.169.254, 10.0.0.1, …) must be
//! refused before any connection is attempted. Nothing here connects to a non-loopback address.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use images::{FetchConfig, FetchError, ImageFetcher, ImageFormat, RetryPolicy};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

const PNG: &[u8] = include_bytes!("fixtures/pixel.png");
const JPEG: &[u8] = include_bytes!("fixtures/pixel.jpg");
const WEBP: &[u8] = include_bytes!("fixtures/pixel.webp");
const GIF: &[u8] = include_bytes!("fixtures/pixel.gif");
const AVIF: &[u8] = include_bytes!("fixtures/pixel.avif");

const HUGE: u64 = 50 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[derive(Default)]
struct Counters {
    /// Every request the server answered.
    hits: AtomicU32,
    /// Requests to /flaky.
    flaky: AtomicU32,
    /// Bytes of the 50 MiB bodies actually produced.
    huge_produced: AtomicU64,
}

struct ImageServer {
    base: String,
    port: u16,
    counters: Arc<Counters>,
}

fn image(content_type: &'static str, bytes: &'static [u8]) -> Response {
    ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
}

/// A 50 MiB body that starts like a PNG, produced lazily chunk by chunk.
fn huge_body(counters: Arc<Counters>) -> Body {
    let stream = futures::stream::unfold(0u64, move |sent| {
        let counters = counters.clone();
        async move {
            if sent >= HUGE {
                return None;
            }
            let mut chunk = vec![0u8; CHUNK];
            if sent == 0 {
                chunk[..PNG.len()].copy_from_slice(PNG);
            }
            counters
                .huge_produced
                .fetch_add(CHUNK as u64, Ordering::SeqCst);
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)),
                sent + CHUNK as u64,
            ))
        }
    });
    Body::from_stream(stream)
}

async fn start_server() -> ImageServer {
    let counters = Arc::new(Counters::default());
    let app = Router::new()
        .route("/png", get(|| async { image("image/png", PNG) }))
        .route("/jpg", get(|| async { image("image/jpeg", JPEG) }))
        .route("/webp", get(|| async { image("image/webp", WEBP) }))
        .route("/gif", get(|| async { image("image/gif", GIF) }))
        .route("/avif", get(|| async { image("image/avif", AVIF) }))
        .route(
            "/mislabelled",
            get(|| async { image("image/png; charset=binary", JPEG) }),
        )
        .route(
            "/html-as-png",
            get(|| async {
                image(
                    "image/png",
                    b"<!DOCTYPE html><html><body>not an image at all</body></html>",
                )
            }),
        )
        .route(
            "/svg",
            get(|| async {
                image(
                    "image/svg+xml",
                    b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
                )
            }),
        )
        .route(
            "/octet",
            get(|| async { image("application/octet-stream", PNG) }),
        )
        .route("/untyped", get(|| async { PNG.into_response() }))
        .route("/tiny", get(|| async { image("image/png", b"\x89PNG") }))
        .route("/empty", get(|| async { image("image/png", b"") }))
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/gone", get(|| async { StatusCode::GONE }))
        .route("/forbidden", get(|| async { StatusCode::FORBIDDEN }))
        .route("/busy", get(|| async { StatusCode::TOO_MANY_REQUESTS }))
        .route(
            "/flaky",
            get(|State(c): State<Arc<Counters>>| async move {
                if c.flaky.fetch_add(1, Ordering::SeqCst) < 3 {
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                } else {
                    image("image/png", PNG)
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                image("image/png", PNG)
            }),
        )
        .route(
            "/slow-body",
            get(|| async {
                let stream = futures::stream::unfold(0u32, |n| async move {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    (n < 2).then(|| {
                        (
                            Ok::<_, std::io::Error>(bytes::Bytes::from_static(PNG)),
                            n + 1,
                        )
                    })
                });
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    Body::from_stream(stream),
                )
            }),
        )
        .route(
            "/huge",
            get(|State(c): State<Arc<Counters>>| async move {
                ([(header::CONTENT_TYPE, "image/png")], huge_body(c))
            }),
        )
        .route(
            "/huge-declared",
            get(|State(c): State<Arc<Counters>>| async move {
                let mut response =
                    ([(header::CONTENT_TYPE, "image/png")], huge_body(c)).into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(HUGE));
                response
            }),
        )
        .route("/loop-a", get(|| async { Redirect::temporary("/loop-b") }))
        .route("/loop-b", get(|| async { Redirect::temporary("/loop-a") }))
        .route(
            "/chain/{n}",
            get(|Path(n): Path<u32>| async move {
                if n == 0 {
                    image("image/webp", WEBP)
                } else {
                    Redirect::permanent(&format!("/chain/{}", n - 1)).into_response()
                }
            }),
        )
        .route(
            "/redirect",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                match q.get("to") {
                    Some(to) => Redirect::to(to).into_response(),
                    None => StatusCode::BAD_REQUEST.into_response(),
                }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            counters.clone(),
            |State(c): State<Arc<Counters>>,
             request: axum::extract::Request,
             next: axum::middleware::Next| async move {
                c.hits.fetch_add(1, Ordering::SeqCst);
                next.run(request).await
            },
        ))
        .with_state(counters.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the image server");
    let port = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("image server");
    });
    ImageServer {
        base: format!("http://127.0.0.1:{port}"),
        port,
        counters,
    }
}

impl ImageServer {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self) -> u32 {
        self.counters.hits.load(Ordering::SeqCst)
    }

    fn redirect_to(&self, target: &str) -> String {
        let mut url = reqwest::Url::parse(&self.url("/redirect")).expect("url");
        url.query_pairs_mut().append_pair("to", target);
        url.to_string()
    }
}

/// Loopback stays blocked; only the server's own address 127.0.0.1 is allowlisted.
fn config() -> FetchConfig {
    FetchConfig {
        allowlist: vec!["127.0.0.1".to_owned()],
        total_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..FetchConfig::default()
    }
}

fn fetcher(config: FetchConfig) -> ImageFetcher {
    ImageFetcher::new(config).expect("fetcher")
}

fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        jitter: 0.5,
    }
}

#[tokio::test]
async fn fetches_real_images_and_recognises_them_by_their_bytes() {
    let server = start_server().await;
    let fetcher = fetcher(config());
    for (path, bytes, format, ext) in [
        ("/png", PNG, ImageFormat::Png, "png"),
        ("/jpg", JPEG, ImageFormat::Jpeg, "jpg"),
        ("/webp", WEBP, ImageFormat::Webp, "webp"),
        ("/gif", GIF, ImageFormat::Gif, "gif"),
        ("/avif", AVIF, ImageFormat::Avif, "avif"),
        // Labelled PNG, but the bytes are a JPEG: the bytes win.
        ("/mislabelled", JPEG, ImageFormat::Jpeg, "jpg"),
    ] {
        let image = fetcher.fetch(&server.url(path)).await.expect(path);
        assert_eq!(image.bytes.as_ref(), bytes, "{path}");
        assert_eq!(image.format, format, "{path}");
        assert_eq!(image.extension, ext, "{path}");
        assert_eq!(image.content_type, format.mime(), "{path}");
        assert_eq!(image.sha256, hex::encode(Sha256::digest(bytes)), "{path}");
        assert_eq!(image.redirects, 0);
    }
}

#[tokio::test]
async fn not_found_and_other_client_errors_are_permanent() {
    let server = start_server().await;
    let fetcher = fetcher(config());
    for (path, code, status) in [
        ("/missing", "not_found", 404),
        ("/gone", "not_found", 410),
        ("/forbidden", "http_status", 403),
    ] {
        let failure = fetcher
            .fetch_with_retry(&server.url(path), &quick_retries(4))
            .await
            .expect_err(path);
        assert_eq!(failure.code(), code, "{path}");
        assert_eq!(
            failure.attempts, 1,
            "{path}: permanent errors are not retried"
        );
        assert!(!failure.error.is_transient());
        assert!(
            matches!(failure.error, FetchError::NotFound { status: s } | FetchError::HttpStatus { status: s } if s == status)
        );
    }
    let failure = fetcher
        .fetch_with_retry(&server.url("/missing"), &quick_retries(4))
        .await
        .expect_err("404");
    assert_eq!(failure.to_string(), "not found (HTTP 404)");
    assert_eq!(server.hits(), 4);
}

#[tokio::test]
async fn three_500s_then_200_succeeds_on_the_fourth_attempt() {
    let server = start_server().await;
    let fetched = fetcher(config())
        .fetch_with_retry(&server.url("/flaky"), &quick_retries(5))
        .await
        .expect("4th attempt succeeds");
    assert_eq!(fetched.attempts, 4);
    assert_eq!(fetched.image.bytes.as_ref(), PNG);
    assert_eq!(server.counters.flaky.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn retries_are_bounded_and_reported() {
    let server = start_server().await;
    let failure = fetcher(config())
        .fetch_with_retry(&server.url("/flaky"), &quick_retries(3))
        .await
        .expect_err("only 3 attempts");
    assert_eq!(failure.attempts, 3);
    assert_eq!(failure.code(), "http_status");
    assert_eq!(failure.to_string(), "HTTP status 500 (after 3 attempts)");

    let failure = fetcher(config())
        .fetch_with_retry(&server.url("/busy"), &quick_retries(2))
        .await
        .expect_err("429");
    assert_eq!(failure.attempts, 2, "429 is transient");
}

#[tokio::test]
async fn a_response_slower_than_the_timeout_times_out() {
    let server = start_server().await;
    let fetcher = fetcher(FetchConfig {
        total_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..config()
    });
    let started = Instant::now();
    let failure = fetcher
        .fetch_with_retry(&server.url("/slow"), &quick_retries(3))
        .await
        .expect_err("slow");
    assert_eq!(failure.code(), "timeout");
    assert_eq!(failure.attempts, 3);
    assert_eq!(failure.to_string(), "timed out after 3 attempts");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Headers arrive at once but the body stalls: the total timeout covers the body too.
    let err = fetcher
        .fetch(&server.url("/slow-body"))
        .await
        .expect_err("slow body");
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn a_50_mib_body_is_refused_while_streaming() {
    let server = start_server().await;
    let fetcher = fetcher(config());
    let limit = fetcher.config().max_bytes;
    assert_eq!(limit, 10 * 1024 * 1024);

    let err = fetcher
        .fetch(&server.url("/huge"))
        .await
        .expect_err("chunked 50 MiB");
    assert!(
        matches!(err, FetchError::TooLarge { declared: None, .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), "too_large");
    assert!(!err.is_transient());
    // Give the server a moment to notice the closed connection, then check it was not drained.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let produced = server.counters.huge_produced.load(Ordering::SeqCst);
    eprintln!("server produced {produced} of {HUGE} bytes before the fetcher stopped reading");
    assert!(
        produced < HUGE / 2,
        "the server produced {produced} bytes: the body was read far beyond the cap"
    );

    let err = fetcher
        .fetch(&server.url("/huge-declared"))
        .await
        .expect_err("declared 50 MiB");
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                declared: Some(HUGE),
                ..
            }
        ),
        "{err:?}"
    );

    // The cap is inclusive: a body of exactly max_bytes is accepted, a bigger one is not.
    let small = self::fetcher(FetchConfig {
        max_bytes: PNG.len() as u64,
        ..config()
    });
    assert!(
        small.fetch(&server.url("/png")).await.is_ok(),
        "69 bytes fit"
    );
    let err = small
        .fetch(&server.url("/jpg"))
        .await
        .expect_err("632 bytes");
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn responses_that_are_not_images_are_refused() {
    let server = start_server().await;
    let fetcher = fetcher(config());
    for path in [
        "/html-as-png",
        "/svg",
        "/octet",
        "/untyped",
        "/tiny",
        "/empty",
    ] {
        let failure = fetcher
            .fetch_with_retry(&server.url(path), &quick_retries(3))
            .await
            .expect_err(path);
        assert_eq!(failure.code(), "not_an_image", "{path}: {failure}");
        assert_eq!(failure.attempts, 1, "{path}");
    }
    let err = fetcher
        .fetch(&server.url("/html-as-png"))
        .await
        .expect_err("html");
    assert!(err.to_string().contains("image/png"), "{err}");
}

#[tokio::test]
async fn redirects_are_followed_up_to_the_limit_and_loops_refused() {
    let server = start_server().await;
    let fetcher = fetcher(config());
    let image = fetcher
        .fetch(&server.url("/chain/5"))
        .await
        .expect("5 redirects are allowed");
    assert_eq!(image.redirects, 5);
    assert_eq!(image.bytes.as_ref(), WEBP);
    assert!(image.final_url.ends_with("/chain/0"));

    let err = fetcher
        .fetch(&server.url("/chain/6"))
        .await
        .expect_err("6 redirects");
    assert!(
        matches!(err, FetchError::TooManyRedirects { max: 5 }),
        "{err:?}"
    );

    let before = server.hits();
    let failure = fetcher
        .fetch_with_retry(&server.url("/loop-a"), &quick_retries(3))
        .await
        .expect_err("loop");
    assert_eq!(failure.code(), "too_many_redirects");
    assert_eq!(failure.attempts, 1);
    assert_eq!(
        server.hits() - before,
        2,
        "the loop is noticed on its first repeat"
    );
}

#[tokio::test]
async fn redirects_to_blocked_addresses_are_refused_before_connecting() {
    let server = start_server().await;
    let fetcher = fetcher(config());
    let port = server.port;
    for target in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_owned(),
        "http://10.0.0.1/image.png".to_owned(),
        "http://192.168.1.1/image.png".to_owned(),
        "http://100.64.0.1/image.png".to_owned(),
        "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
        "http://[::ffff:10.0.0.1]/image.png".to_owned(),
        "http://0.0.0.0/image.png".to_owned(),
        // Other loopback addresses are not the allowlisted 127.0.0.1.
        format!("http://127.0.0.2:{port}/png"),
        format!("http://[::1]:{port}/png"),
        // Decimal IPv4 notation is still 169.254.169.254.
        "http://2852039166/".to_owned(),
    ] {
        let before = server.hits();
        let started = Instant::now();
        let err = fetcher
            .fetch(&server.redirect_to(&target))
            .await
            .expect_err(&target);
        assert!(
            matches!(err, FetchError::BlockedAddress { .. }),
            "{target}: {err:?}"
        );
        assert_eq!(err.code(), "blocked_address");
        assert!(!err.is_transient());
        assert_eq!(
            server.hits() - before,
            1,
            "{target}: only the redirect was served"
        );
        // Refused by the guard, not by a failed connection attempt.
        assert!(started.elapsed() < Duration::from_secs(1), "{target}");
    }
    // The same addresses given directly are refused without any request at all.
    let before = server.hits();
    for url in [
        "http://169.254.169.254/",
        "http://10.0.0.1/",
        "https://[fe80::1]/",
    ] {
        let err = fetcher.fetch(url).await.expect_err(url);
        assert_eq!(err.code(), "blocked_address", "{url}: {err}");
    }
    assert_eq!(server.hits(), before);
}

#[tokio::test]
async fn a_redirect_from_an_allowed_host_to_127_0_0_1_is_blocked_when_loopback_is_not_allowed() {
    let server = start_server().await;
    let port = server.port;
    // Only the *name* localhost is allowlisted; the literal 127.0.0.1 is not.
    let by_name = fetcher(FetchConfig {
        allowlist: vec!["localhost".to_owned()],
        ..config()
    });
    let image = by_name
        .fetch(&format!("http://localhost:{port}/png"))
        .await
        .expect("allowlisted host name");
    assert_eq!(image.bytes.as_ref(), PNG);

    let before = server.hits();
    let target = format!("http://127.0.0.1:{port}/png");
    let mut start = reqwest::Url::parse(&format!("http://localhost:{port}/redirect")).expect("url");
    start.query_pairs_mut().append_pair("to", &target);
    let err = by_name
        .fetch(start.as_str())
        .await
        .expect_err("to 127.0.0.1");
    assert!(matches!(err, FetchError::BlockedAddress { .. }), "{err:?}");
    assert!(err.to_string().contains("loopback"), "{err}");
    assert_eq!(
        server.hits() - before,
        1,
        "the image behind the redirect was never requested"
    );

    // With allow_loopback (the standalone mode) the same redirect is followed.
    let dev = fetcher(FetchConfig {
        allowlist: vec!["localhost".to_owned()],
        allow_loopback: true,
        ..config()
    });
    let image = dev.fetch(start.as_str()).await.expect("loopback allowed");
    assert_eq!(image.redirects, 1);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_by_the_resolver() {
    let server = start_server().await;
    let strict = fetcher(FetchConfig::default());
    for url in [
        format!("http://localhost:{}/png", server.port),
        server.url("/png"),
    ] {
        let err = strict.fetch(&url).await.expect_err(&url);
        assert!(
            matches!(err, FetchError::BlockedAddress { .. }),
            "{url}: {err:?}"
        );
    }
    assert_eq!(server.hits(), 0, "no request reached the server");

    let dev = fetcher(FetchConfig {
        allow_loopback: true,
        ..FetchConfig::default()
    });
    let image = dev
        .fetch(&format!("http://localhost:{}/png", server.port))
        .await
        .expect("loopback allowed in dev mode");
    assert_eq!(image.bytes.as_ref(), PNG);
}

#[tokio::test]
async fn non_http_schemes_are_refused() {
    let server = start_server().await;
    let fetcher = fetcher(config());
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/image.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "gopher://127.0.0.1:70/",
        "javascript:alert(1)",
    ] {
        let failure = fetcher
            .fetch_with_retry(url, &quick_retries(3))
            .await
            .expect_err(url);
        assert_eq!(failure.code(), "unsupported_scheme", "{url}: {failure}");
        assert_eq!(failure.attempts, 1);
    }
    // A redirect to file: is refused the same way.
    let err = fetcher
        .fetch(&server.redirect_to("file:///etc/passwd"))
        .await
        .expect_err("redirect to file:");
    assert!(
        matches!(err, FetchError::UnsupportedScheme { ref scheme } if scheme == "file"),
        "{err:?}"
    );
    for url in ["not a url", "/relative.png", "http://"] {
        let err = fetcher.fetch(url).await.expect_err(url);
        assert_eq!(err.code(), "invalid_url", "{url}: {err}");
    }
}

/// A TCP server that answers each connection with `reply` and then closes it.
async fn raw_server(reply: &'static [u8]) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
            let _ = socket.write_all(reply).await;
            let _ = socket.shutdown().await;
        }
    });
    port
}

#[tokio::test]
async fn resets_and_truncated_bodies_are_transient_connection_errors() {
    let fetcher = fetcher(config());
    let closed = raw_server(b"").await;
    let err = fetcher
        .fetch(&format!("http://127.0.0.1:{closed}/png"))
        .await
        .expect_err("closed without a response");
    assert_eq!(err.code(), "connection", "{err:?}");
    assert!(err.is_transient());

    let truncated = raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n\x89PNG\r\n\x1a\n",
    )
    .await;
    let failure = fetcher
        .fetch_with_retry(
            &format!("http://127.0.0.1:{truncated}/png"),
            &quick_retries(2),
        )
        .await
        .expect_err("truncated body");
    assert_eq!(failure.code(), "connection", "{failure}");
    assert_eq!(failure.attempts, 2, "retried as transient");
}
