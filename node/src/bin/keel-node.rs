//! `keel-node`: the storage node daemon. Today it serves one shard in
//! standalone mode (a durable table catalog and every partition of every
//! table) on one port, speaking Keel's binary protocol (frames of
//! FlatBuffers; see docs/format/frame.md).
//!
//! SIGTERM and SIGINT stop accepting connections, let the request in
//! progress finish, checkpoint every partition and exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use keel_node::server::{ServerConfig, serve};

#[derive(Debug, Parser)]
#[command(name = "keel-node", version, about = "Keel storage node")]
struct Args {
    /// Serve a whole database from this node (catalog and every partition).
    #[arg(long, default_value_t = true)]
    standalone: bool,
    /// Where the shard keeps its WAL and B-tree files (never on tmpfs).
    #[arg(long, default_value = "keel-data")]
    data_dir: PathBuf,
    /// Address to serve the binary protocol on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Page cache size in MiB.
    #[arg(long, default_value_t = 256)]
    page_cache_mb: usize,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    anyhow::ensure!(args.standalone, "only --standalone is supported so far");
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("install signal handler")?;
    }
    let config = ServerConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        page_cache_bytes: args.page_cache_mb * 1024 * 1024,
    };
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("keel-shard-0")
        .spawn(move || async move {
            // Tests and scripts wait for this line on stdout.
            serve(config, stop, |address| println!("keel-node listening on {address}")).await
        })
        .map_err(|e| anyhow::anyhow!("start the shard executor: {e}"))?;
    let served = handle.join().map_err(|e| anyhow::anyhow!("shard executor failed: {e:?}"))?;
    served?;
    Ok(())
}
