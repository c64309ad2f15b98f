//! Outages (SPEC §9, issue 8): the broker and MongoDB each go away for ~10 s mid-stream and come
//! back on the same address.
//!
//! Both run on this test's OWN servers (never the shared ones of `infrastructure/up.sh`): a
//! SecantusDB and a single-node KRaft Kafka broker, each behind a TCP relay owned by the test.
//! Stopping the relay closes the listening socket and resets every open connection (clients
//! see connection refused and resets, exactly as when the server process is gone) while the
//! server keeps its data (SecantusDB runs in memory); then it listens again on the same port.

mod own_servers;

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use own_servers::{Kind, OwnServer, Process, free_port, product, wait_ok};

/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(10);

/// A TCP relay from a fixed port to `target`, which can be stopped (listener closed, every
/// connection reset) and started again on the same port.
struct Relay {
    port: u16,
    target: u16,
    tasks: Option<JoinSet<()>>,
}

impl Relay {
    async fn start(target: u16) -> Self {
        Self::start_on(free_port(), target).await
    }

    async fn start_on(port: u16, target: u16) -> Self {
        let mut relay = Self {
            port,
            target,
            tasks: None,
        };
        relay.resume().await;
        relay
    }

    async fn resume(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the relay again on its port");
        let target = self.target;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        self.tasks = Some(tasks);
    }

    /// Closes the listener and drops every connection (the accept task owns them all).
    async fn stop(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }
}

/// `GET /readyz` until it answers `status`; how long that took.
async fn wait_ready_status(
    client: &reqwest::Client,
    base: &str,
    status: u16,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let answer = client
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(response) = answer
            && response.status().as_u16() == status
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "/readyz did not answer {status} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_outage_answers_503_then_recovers_without_loss() {
    const MALL: &str = "mongo-outage-mall";
    let dir = tempfile::tempdir().expect("temp dir");
    let mongo = OwnServer::start(Kind::Secantus, dir.path());
    let mut relay = Relay::start(mongo.port).await;
    // SecantusDB answers as a replica set member named by its own port: a direct connection
    // keeps the driver on the relay. No serverSelectionTimeoutMS: the service's own short
    // default is what is tested.
    let uri = format!("mongodb://127.0.0.1:{}/?directConnection=true", relay.port);

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("settings.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nmongodb: {{database: outage}}\n\
             s3: {{bucket: outage-bucket}}\n"
        ),
    )
    .expect("settings file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_catalog-stream"));
    command
        .arg("product-collector")
        .arg("--config")
        .arg(&config)
        .env("MONGODB_URI", &uri)
        .env("RUST_LOG", "info");
    let mut process = Process::spawn("product-collector", command, &dir.path().join("pc.log"));
    let client = reqwest::Client::new();
    wait_ok(&client, &format!("{base}/readyz"), Duration::from_secs(30)).await;

    let mut accepted = Vec::new();
    let mut next = 0usize;
    let post = |index: usize| {
        let client = client.clone();
        let url = format!("{base}/api/v1/products");
        let body = product(
            MALL,
            &format!("p{index:04}"),
            "t",
            &format!("http://images.example/p{index:04}.png"),
        );
        async move {
            let started = Instant::now();
            let response = client
                .post(url)
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("POST answered");
            let status = response.status().as_u16();
            let text = response.text().await.expect("body");
            (status, text, started.elapsed())
        }
    };

    // Before: everything is accepted.
    for _ in 0..50 {
        let (status, text, _) = post(next).await;
        assert_eq!(status, 201, "{text}");
        accepted.push(next);
        next += 1;
    }

    // The outage.
    let outage_started = Instant::now();
    relay.stop().await;
    let not_ready_after = wait_ready_status(&client, &base, 503, Duration::from_secs(5)).await;
    let mut refused = 0usize;
    let mut slowest_503 = Duration::ZERO;
    while outage_started.elapsed() < OUTAGE {
        let (status, text, took) = post(next).await;
        match status {
            201 => accepted.push(next),
            503 => {
                refused += 1;
                slowest_503 = slowest_503.max(took);
                let body: serde_json::Value =
                    serde_json::from_str(&text).expect("a JSON error body");
                assert!(text.contains("dependency_unavailable"), "503 body: {body}");
                assert!(took < Duration::from_secs(5), "a 503 took {took:?}");
            }
            other => panic!("POST during the outage answered {other}: {text}"),
        }
        next += 1;
    }
    assert!(refused > 0, "no POST was refused during the outage");
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("GET /readyz")
            .status(),
        503
    );
    process.assert_running();

    // Back: ready again, POSTs succeed.
    relay.resume().await;
    let outage = outage_started.elapsed();
    let ready_after = wait_ready_status(&client, &base, 200, Duration::from_secs(15)).await;
    let mut first_after = None;
    for _ in 0..50 {
        let (status, text, took) = post(next).await;
        assert_eq!(status, 201, "{text}");
        first_after.get_or_insert(took);
        accepted.push(next);
        next += 1;
    }
    process.assert_running();

    // Nothing accepted is lost: read at the server itself, past the relay.
    let direct = mongodb::Client::with_uri_str(mongo.url())
        .await
        .expect("client");
    let collection = direct
        .database("outage")
        .collection::<mongodb::bson::Document>("products");
    for index in &accepted {
        let found = collection
            .find_one(mongodb::bson::doc! {"mallId": MALL, "productId": format!("p{index:04}")})
            .await
            .expect("find");
        assert!(found.is_some(), "accepted p{index:04} is missing");
    }
    let stored = collection
        .count_documents(mongodb::bson::doc! {"mallId": MALL})
        .await
        .expect("count");

    let (status, _) = process.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit: {status}");
    println!(
        "mongodb outage: outage={outage:?} readyz_503_after={not_ready_after:?} \
         refused_503={refused} slowest_503={slowest_503:?} readyz_200_after={ready_after:?} \
         first_post_after={first_after:?} accepted={} stored={stored} lost=0",
        accepted.len()
    );
}
