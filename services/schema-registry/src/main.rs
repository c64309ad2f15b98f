//! `schema-registry`: serves the Confluent-compatible registry over HTTP.
//!
//! `schema-registry --listen 127.0.0.1:8081 [--data-dir DIR]`; in memory without a data
//! directory. Logs go to stderr (`RUST_LOG` overrides the default `info` filter).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use schema_registry::{Registry, serve_with_shutdown};
use tracing_subscriber::EnvFilter;

/// A small Confluent-compatible Schema Registry (Avro only).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SCHEMA_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// Directory for the sled store; in memory when absent.
    #[arg(long, env = "SCHEMA_REGISTRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let registry = match &args.data_dir {
        Some(dir) => Registry::open(dir)
            .with_context(|| format!("opening the registry store in {}", dir.display()))?,
        None => Registry::in_memory(),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, data_dir = ?args.data_dir, "schema registry listening");
    serve_with_shutdown(listener, Arc::new(registry), shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("schema registry stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
