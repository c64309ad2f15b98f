//! `catalog-stream`: the one binary. With no subcommand it runs the whole system in one process
//! on embedded defaults (`standalone`); each distributed service is a subcommand.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use catalog_stream::settings::Settings;
use catalog_stream::system::Roles;
use catalog_stream::{allocator, app, pipeline, standalone};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// mimalloc returns freed memory to the system where glibc's arenas keep it (see Cargo.toml),
/// with the options [`allocator::keep_memory_near_use`] sets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Product and image collection as an event stream.
///
/// Without a subcommand, runs everything in one process (the standalone mode): HTTP API on
/// 127.0.0.1:8080, data under ./data, images stored in ./data/images and served by the process.
/// Standalone is a local development mode: it allows image URLs on loopback addresses
/// (127.0.0.1, localhost) so that images served from the same machine can be collected; the
/// distributed services refuse them unless allow-listed.
#[derive(Debug, Parser)]
#[command(name = "catalog-stream", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    standalone: StandaloneArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process on embedded defaults (the default).
    Standalone(StandaloneArgs),
    /// `POST /api/v1/products` over MongoDB.
    ProductCollector(ServiceArgs),
    /// The diff-checker, image collector and image remover over Kafka and S3.
    ImagePipeline(ServiceArgs),
    /// The image-events sink and the complete-products API over MongoDB.
    CompleteProducts(ServiceArgs),
    /// The native MongoDB change-stream source, emitting Debezium envelopes to Kafka.
    CdcSource(ServiceArgs),
    /// The project's Confluent-compatible Schema Registry.
    SchemaRegistry(RegistryArgs),
    /// Change-data-capture tools.
    #[command(subcommand)]
    Cdc(CdcCommand),
    /// Topology tools.
    #[command(subcommand)]
    Topology(TopologyCommand),
}

#[derive(Debug, Args)]
struct StandaloneArgs {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8080", env = "CATALOG_LISTEN")]
    listen: SocketAddr,
    /// Where products, state, the event log and images are kept.
    #[arg(long, default_value = "data", env = "CATALOG_DATA_DIR")]
    data_dir: PathBuf,
    /// Total time allowed to fetch one image (every redirect hop plus the body), in seconds;
    /// a slower fetch fails with `timeout` and is retried as transient. Default 30.
    #[arg(long, env = "CATALOG_FETCH_TIMEOUT", value_name = "SECONDS", value_parser = parse_seconds)]
    fetch_timeout: Option<std::time::Duration>,
    /// When given, `POST /api/v1/products` and `DELETE /api/v1/complete-products/{id}` require
    /// `Authorization: Bearer <token>`; reads stay open. Prefer the environment variable: a
    /// command line is visible to every user of the machine.
    #[arg(
        long,
        env = "CATALOG_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    api_token: Option<String>,
}

impl StandaloneArgs {
    async fn run(self) -> anyhow::Result<()> {
        let fetch = standalone::fetch_config(self.fetch_timeout);
        let token = self
            .api_token
            .as_deref()
            .and_then(catalog_stream::http::ApiToken::new);
        standalone::run(self.listen, self.data_dir, fetch, token).await
    }
}

fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!(
            "`{text}`: expected more than 0 and at most 86400 seconds"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[derive(Debug, Args)]
struct ServiceArgs {
    /// Settings file (YAML); environment variables override it.
    #[arg(long, env = "CATALOG_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RegistryArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Keep schemas in sled under this directory (in memory when absent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum CdcCommand {
    /// Decodes one Debezium MongoDB change event (JSON-converter output) and prints the
    /// normalized event as one JSON object.
    Decode {
        /// The record key (JSON).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The record value (JSON); `-` or absent reads standard input.
        value: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DescribeFormat {
    Text,
    Mermaid,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BuiltIn {
    ImagePipeline,
    CompleteProducts,
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Prints a topology in Kafka Streams' shape or as a Mermaid flowchart.
    Describe {
        /// A topology file; the built-in one when absent.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Which built-in topology.
        #[arg(long, value_enum, default_value = "image-pipeline")]
        topology: BuiltIn,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: DescribeFormat,
    },
    /// Checks a topology file and reports every problem with its place; runs nothing.
    Validate {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    allocator::keep_memory_near_use();
    // rustls on ring for every HTTPS client in the process (reqwest has no provider of its own).
    images::install_tls_provider();
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn settings(args: &ServiceArgs) -> anyhow::Result<Settings> {
    let settings = Settings::load(args.config.as_deref())?;
    // `Settings`' Debug redacts every secret.
    tracing::debug!(?settings, "settings loaded");
    Ok(settings)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => cli.standalone.run().await,
        Some(Command::Standalone(args)) => args.run().await,
        Some(Command::ProductCollector(args)) => service(&args, Roles::PRODUCT_COLLECTOR).await,
        Some(Command::ImagePipeline(args)) => service(&args, Roles::IMAGE_PIPELINE).await,
        Some(Command::CompleteProducts(args)) => service(&args, Roles::COMPLETE_PRODUCTS).await,
        Some(Command::CdcSource(args)) => service(&args, Roles::CDC_SOURCE).await,
        Some(Command::SchemaRegistry(args)) => schema_registry(args).await,
        Some(Command::Cdc(CdcCommand::Decode { key, value })) => cdc_decode(key, value),
        Some(Command::Topology(command)) => topology(command),
    }
}

async fn service(args: &ServiceArgs, roles: Roles) -> anyhow::Result<()> {
    app::run_service(settings(args)?, roles).await
}

async fn schema_registry(args: RegistryArgs) -> anyhow::Result<()> {
    let registry = match &args.data_dir {
        Some(dir) => schema_registry::Registry::open(dir)
            .with_context(|| format!("cannot open the registry in {}", dir.display()))?,
        None => schema_registry::Registry::in_memory(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = app::shutdown_on_signals();
    schema_registry::serve_with_shutdown(listener, std::sync::Arc::new(registry), async move {
        shutdown.cancelled().await
    })
    .await
    .context("schema registry failed")
}

fn read_input(path: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    match path {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        }
        _ => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read standard input")?;
            Ok(bytes)
        }
    }
}

fn cdc_decode(key: Option<PathBuf>, value: Option<PathBuf>) -> anyhow::Result<()> {
    let key = key
        .map(|path| std::fs::read(&path).with_context(|| format!("cannot read {}", path.display())))
        .transpose()?;
    // With a key and no value file, the record is a tombstone (a key with a null value).
    let value = match (&key, &value) {
        (Some(_), None) => None,
        _ => Some(read_input(value.as_ref())?),
    };
    let event = connectors::debezium::decode_cli_input(key.as_deref(), value.as_deref())
        .context("not a Debezium MongoDB change event")?;
    println!("{event}");
    Ok(())
}

fn topology(command: TopologyCommand) -> anyhow::Result<()> {
    // Describing and validating need the processor names, not working processors: register
    // every name with a factory that is never called to run anything.
    let registry = pipeline::registry_for_validation();
    let topics = Settings::default().topics;
    match command {
        TopologyCommand::Describe {
            file,
            topology,
            format,
        } => {
            let (template, origin) = match (&file, topology) {
                (Some(path), _) => (
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                    path.display().to_string(),
                ),
                (None, BuiltIn::ImagePipeline) => (
                    pipeline::IMAGE_PIPELINE_TOPOLOGY.to_owned(),
                    "built-in image-pipeline topology".to_owned(),
                ),
                (None, BuiltIn::CompleteProducts) => (
                    pipeline::COMPLETE_PRODUCTS_TOPOLOGY.to_owned(),
                    "built-in complete-products topology".to_owned(),
                ),
            };
            let (topology, _) = pipeline::load(&template, &origin, &topics, &registry)?;
            match format {
                DescribeFormat::Text => print!("{}", topology.describe()),
                DescribeFormat::Mermaid => print!("{}", topology.describe_mermaid()),
            }
            Ok(())
        }
        TopologyCommand::Validate { file } => {
            let template = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let (topology, application_id) =
                pipeline::load(&template, &file.display().to_string(), &topics, &registry)?;
            let application_id = match &application_id {
                Some(id) => format!("application id `{id}`"),
                None => "no application id (the service's default group)".to_owned(),
            };
            println!(
                "{}: valid; {application_id}, {} nodes",
                file.display(),
                topology.nodes().len()
            );
            Ok(())
        }
    }
}
