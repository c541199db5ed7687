//! keel-memds: a MemDS server (`keel_router::memds`).

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use keel_router::daemon;
use keel_router::memds::{Memds, follow};

/// Keel MemDS server: all routing metadata in memory, following the
/// control plane, answering routers' lookups.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The control plane's endpoint.
    #[arg(long, env = "KEEL_CONTROL", default_value = "127.0.0.1:7450")]
    control: String,
    /// Where routers send lookups.
    #[arg(long, default_value = "127.0.0.1:7460")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    daemon::init_logs();
    let args = Args::parse();
    let memds = Arc::new(Memds::new());
    daemon::listen("MemDS", &args.listen, Arc::clone(&memds)).await?;
    tokio::spawn(follow(memds, args.control, Duration::from_millis(200)));
    daemon::until_stopped().await
}
