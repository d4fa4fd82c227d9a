//! The `patron` binary.

use clap::Parser;

/// mimalloc: ingestion allocates and frees many small values per record, and the commit task
/// frees a whole batch at once; the system allocator spends a tenth of the writer's time there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // The configuration file sets environment variables, so it is read before any thread runs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    patron::config::apply(&args)?;
    let cli = patron::cli::Cli::parse_from(args);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            patron::telemetry::init(std::io::stderr);
            cli.run().await
        })
}
