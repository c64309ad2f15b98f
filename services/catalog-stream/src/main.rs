//! `catalog-stream`: the one binary of the project. Later issues add the service subcommands.

use clap::Parser;

/// Product and image collection as an event stream.
#[derive(Debug, Parser)]
#[command(name = "catalog-stream", version, about, long_about = None)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
