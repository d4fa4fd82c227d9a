//! The `patron` binary.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = patron::cli::Cli::parse();
    patron::telemetry::init(std::io::stderr);
    cli.run().await
}
