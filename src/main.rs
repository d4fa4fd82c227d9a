//! The `patron` binary.

use clap::Parser;

/// mimalloc: ingestion allocates and frees many small values per record, and the commit task
/// frees a whole batch at once; the system allocator spends a tenth of the writer's time there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = patron::cli::Cli::parse();
    patron::telemetry::init(std::io::stderr);
    cli.run().await
}
