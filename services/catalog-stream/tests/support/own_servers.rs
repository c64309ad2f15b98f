//! Helpers for tests that start their OWN server processes (never the shared ones of
//! `infrastructure/up.sh`, which other test runs use at the same time): a SecantusDB or a
//! moto S3 server or a Kafka broker on a free port, each with its data on disk, killed and
//! started again on the same port for outage tests, and the `catalog-stream` binary itself with
//! its output captured to a file. Generic helpers (ports, fixtures, products) are in
//! this module's parent, `support`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

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
    /// SecantusDB (MongoDB wire protocol), its WiredTiger files under the server's directory.
    Secantus,
    /// moto's S3 server, its state replayed from a request recording under the server's
    /// directory (see `moto_persistent.py`).
    Moto,
    /// A single-node KRaft Kafka broker, its log under the server's directory.
    Kafka,
}

/// One of our own servers on a fixed port, with its data on disk under its own directory: it
/// can be killed and started again there, and comes back with what it had acknowledged, as the
/// production servers do.
pub struct OwnServer {
    kind: Kind,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    process: Option<Process>,
    /// How long the last (re)start took until the server answered.
    pub last_start: Duration,
    starts: usize,
}

impl OwnServer {
    /// Starts `kind` on a free port; data and logs go under `dir`.
    pub fn start(kind: Kind, dir: &Path) -> Self {
        let dir = dir.join(format!("{kind:?}").to_lowercase());
        std::fs::create_dir_all(&dir).expect("server directory");
        let port = free_port();
        if kind == Kind::Kafka {
            kafka_configure(&dir, port);
        }
        let mut server = Self {
            kind,
            port,
            dir,
            process: None,
            last_start: Duration::ZERO,
            starts: 0,
        };
        server.restart();
        server
    }

    /// `mongodb://127.0.0.1:PORT`, `http://127.0.0.1:PORT` or `127.0.0.1:PORT` (Kafka).
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Secantus => format!("mongodb://127.0.0.1:{}", self.port),
            Kind::Moto => format!("http://127.0.0.1:{}", self.port),
            Kind::Kafka => format!("127.0.0.1:{}", self.port),
        }
    }

    /// Everything the current process wrote so far.
    pub fn output(&self) -> String {
        self.process
            .as_ref()
            .map(Process::output)
            .unwrap_or_default()
    }

    /// Stops it with SIGKILL (an outage, not a goodbye: nothing is flushed on the way out);
    /// the port is free again.
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

    /// Starts it (again) on its port, over its data, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "already running");
        let started = Instant::now();
        let port = self.port.to_string();
        let (name, command) = match self.kind {
            Kind::Secantus => {
                let mut command = Command::new(venv_program("secantusd-py"));
                // On disk, not `:memory:` as CI's shared server: `:memory:` is a temporary
                // directory removed on exit, so a restart would come back empty. Without
                // `--sync-on-commit` (as mongod) only `j: true` writes are on disk when
                // acknowledged; the services ask for it, so the SIGKILL of `stop` loses
                // nothing they were told was written. Change-stream resume tokens survive the
                // restart too (tried by hand with pymongo: `resume_after` a token taken before
                // the kill returns the next change).
                command
                    .args(["--host", "127.0.0.1", "--port", &port, "--storage-path"])
                    .arg(self.dir.join("data"));
                ("secantusd-py", command)
            }
            Kind::Moto => {
                let mut command = Command::new(venv_program("python"));
                command
                    .arg(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/tests/support/moto_persistent.py"
                    ))
                    .args(["127.0.0.1", &port])
                    .arg(self.dir.join("recording.jsonl"));
                ("moto_server", command)
            }
            Kind::Kafka => ("kafka", kafka_command(&self.dir, "kafka.Kafka")),
        };
        // One log per start, so waiting for "started" reads this start's lines only.
        self.starts += 1;
        let log = self.dir.join(format!("{name}-{port}-{}.log", self.starts));
        let mut process = Process::spawn(name, command, &log);
        let limit = match self.kind {
            Kind::Kafka => Duration::from_secs(120),
            _ => Duration::from_secs(60),
        };
        let deadline = Instant::now() + limit;
        loop {
            let up = match self.kind {
                Kind::Kafka => process.output().contains("Kafka Server started"),
                _ => port_open(self.port),
            };
            if up {
                break;
            }
            process.assert_running();
            assert!(
                Instant::now() < deadline,
                "{name} not up in {limit:?}:\n{}",
                process.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.last_start = started.elapsed();
        self.process = Some(process);
    }
}

/// The jars `up.sh` fetched.
fn kafka_lib() -> PathBuf {
    let lib = cache_dir().join("kafka-4.1.1/lib");
    assert!(
        lib.exists(),
        "{} is missing: run `infrastructure/up.sh kafka` once to fetch the jars",
        lib.display()
    );
    lib
}

/// A JVM running `main` from the Kafka jars with the broker's logging settings in `dir`.
fn kafka_command(dir: &Path, main: &str) -> Command {
    let mut command = Command::new("java");
    command
        .args(["-Xms256m", "-Xmx512m", "-XX:+UseG1GC"])
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", kafka_lib().display()))
        .arg(main);
    if main == "kafka.Kafka" {
        command.arg(dir.join("server.properties"));
    }
    command
}

/// Writes `server.properties` (from `infrastructure/kafka/`, client listener on `port`, log in
/// `dir/data`) and formats the storage once; restarts reuse both.
fn kafka_configure(dir: &Path, port: u16) {
    let controller = free_port();
    let infra = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infrastructure/kafka/");
    let template =
        std::fs::read_to_string(format!("{infra}server.properties.in")).expect("template");
    let properties = template
        .replace("@PORT@", &port.to_string())
        .replace("@DATA_DIR@", &dir.join("data").display().to_string())
        .replace("@CONTROLLER_PORT@", &controller.to_string());
    assert!(
        !properties.contains('@'),
        "unfilled template:\n{properties}"
    );
    let config = dir.join("server.properties");
    std::fs::write(&config, properties).expect("server.properties");
    let log4j = std::fs::read_to_string(format!("{infra}log4j2.properties"))
        .expect("log4j2")
        .replace("@LOG_DIR@", &dir.display().to_string());
    std::fs::write(dir.join("log4j2.properties"), log4j).expect("log4j2.properties");
    let format = kafka_command(dir, "kafka.tools.StorageTool")
        .args([
            "format",
            "--standalone",
            "--cluster-id=MkU3OEVBNTcwNTJENDM2Qk",
        ])
        .arg(format!("--config={}", config.display()))
        .output()
        .expect("StorageTool");
    assert!(format.status.success(), "format: {format:?}");
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
