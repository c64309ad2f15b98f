//! Helpers for tests that start their OWN server processes (never the shared ones of
//! `infrastructure/up.sh`, which other test runs use at the same time): a SecantusDB or a
//! moto S3 server on a free port, stopped and started again on the same port for outage tests,
//! the `catalog-stream` binary itself with its output captured to a file, and a TCP relay
//! that cuts a server off and puts it back. Generic helpers (ports, fixtures, products) are in
//! `support`, which every test binary that includes this module includes too.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::support::free_port;

/// `$CATALOG_STREAM_CACHE`, else `~/.cache/catalog-stream` (where `up.sh` installs the venv).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CATALOG_STREAM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/catalog-stream")
        })
}

/// A program of the Python venv `up.sh` installs; panics with the fix when missing.
pub fn venv_program(name: &str) -> PathBuf {
    let path = cache_dir().join("venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `infrastructure/up.sh mongo s3` once to install the venv",
        path.display()
    );
    path
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A child process with its output appended to `log`; killed when dropped.
pub struct Process {
    child: Option<Child>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    name: String,
}

impl Process {
    /// Spawns `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        Self {
            child: Some(child),
            log: log.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    /// Panics with the output when it has exited.
    pub fn assert_running(&mut self) {
        if !self.running() {
            panic!("{} exited early:\n{}", self.name, self.output());
        }
    }

    /// SIGTERM; waits at most `limit` for the exit; returns the status and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {} failed", self.name);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {limit:?} of SIGTERM:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SecantusDB (MongoDB wire protocol), in memory.
    Secantus,
    /// moto's S3 server.
    Moto,
}

/// One of our own servers on a fixed port, which can be stopped and started again there.
pub struct OwnServer {
    kind: Kind,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    process: Option<Process>,
}

impl OwnServer {
    /// Starts `kind` on a free port; logs go under `dir`.
    pub fn start(kind: Kind, dir: &Path) -> Self {
        let mut server = Self {
            kind,
            port: free_port(),
            dir: dir.to_owned(),
            process: None,
        };
        server.restart();
        server
    }

    /// `mongodb://127.0.0.1:PORT` or `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Secantus => format!("mongodb://127.0.0.1:{}", self.port),
            Kind::Moto => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// Stops it (SIGKILL: an outage, not a goodbye); the port is free again.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while port_open(self.port) {
            assert!(Instant::now() < deadline, "port {} still open", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts it (again) on its port and waits until the port accepts connections.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "already running");
        let port = self.port.to_string();
        let (name, command) = match self.kind {
            Kind::Secantus => {
                let mut command = Command::new(venv_program("secantusd-py"));
                command.args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--storage-path",
                    ":memory:",
                ]);
                ("secantusd-py", command)
            }
            Kind::Moto => {
                let mut command = Command::new(venv_program("moto_server"));
                command.args(["-H", "127.0.0.1", "-p", &port]);
                ("moto_server", command)
            }
        };
        let log = self.dir.join(format!("{name}-{port}.log"));
        let mut process = Process::spawn(name, command, &log);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_open(self.port) {
            process.assert_running();
            assert!(
                Instant::now() < deadline,
                "{name} not listening in 60 s:\n{}",
                process.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.process = Some(process);
    }
}

/// Polls `GET url` until it answers 2xx (panics after `limit`).
pub async fn wait_ok(client: &reqwest::Client, url: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer 2xx in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP relay from a fixed port to `target`, which can be stopped (listener closed, every
/// connection reset) and started again on the same port: an outage as clients see it, while the
/// server behind keeps its data.
pub struct Relay {
    /// The port clients use.
    pub port: u16,
    target: u16,
    tasks: Option<JoinSet<()>>,
}

impl Relay {
    /// Relays a free port to `target`.
    pub async fn start(target: u16) -> Self {
        let mut relay = Self {
            port: free_port(),
            target,
            tasks: None,
        };
        relay.resume().await;
        relay
    }

    /// Listens (again) on its port.
    pub async fn resume(&mut self) {
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
    pub async fn stop(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The standalone binary on `port` and `data_dir`, with `env` set; output appended to `log`.
pub fn start_standalone(data_dir: &Path, port: u16, log: &Path, env: &[(&str, &str)]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_catalog-stream"));
    command
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .envs(env.iter().copied());
    Process::spawn("catalog-stream", command, log)
}

/// The `product-collector` service on a free port, with the settings file `dir/settings.yaml`
/// (its `listen:` line, then `settings`), `MONGODB_URI` and `RUST_LOG`, output in `dir/pc.log`;
/// returns once `/readyz` answers 2xx (30 s at most), with its base URL.
pub async fn start_product_collector(
    dir: &Path,
    settings: &str,
    mongodb_uri: &str,
    rust_log: &str,
) -> (Process, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.join("settings.yaml");
    std::fs::write(&config, format!("listen: 127.0.0.1:{port}\n{settings}"))
        .expect("settings file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_catalog-stream"));
    command
        .arg("product-collector")
        .arg("--config")
        .arg(&config)
        .env("MONGODB_URI", mongodb_uri)
        .env("RUST_LOG", rust_log);
    let process = Process::spawn("product-collector", command, &dir.join("pc.log"));
    wait_ok(
        &reqwest::Client::new(),
        &format!("{base}/readyz"),
        Duration::from_secs(30),
    )
    .await;
    (process, base)
}
