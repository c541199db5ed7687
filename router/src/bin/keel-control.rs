//! keel-control: the control plane (`keel_router::control`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use keel_router::control::{ControlPlane, poll_nodes};
use keel_router::daemon;

/// Keel control plane: observes the storage nodes and publishes the routing
/// map's changes to MemDS servers.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Storage nodes' client (entry) endpoints, comma-separated.
    #[arg(long, env = "KEEL_NODES")]
    nodes: String,
    /// Where MemDS servers follow the change stream.
    #[arg(long, default_value = "127.0.0.1:7450")]
    listen: String,
    /// How often every node is polled, in milliseconds.
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
    /// Milliseconds a storage node may stay unanswering before the leaders
    /// of its partitions are asked to replace its replicas with log
    /// replicas on other nodes; 0: never.
    #[arg(long, default_value_t = 3000)]
    replace_after_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    daemon::init_logs();
    let args = Args::parse();
    let nodes = daemon::endpoints(&args.nodes);
    anyhow::ensure!(!nodes.is_empty(), "--nodes names no storage node");
    // The epoch is the start time: a restarted control plane is a new epoch.
    let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis().max(1));
    let control = Arc::new(ControlPlane::new(u64::try_from(epoch).unwrap_or(u64::MAX)));
    daemon::listen("control plane", &args.listen, Arc::clone(&control)).await?;
    let replace_after = (args.replace_after_ms > 0).then(|| Duration::from_millis(args.replace_after_ms));
    tokio::spawn(poll_nodes(control, nodes, Duration::from_millis(args.poll_ms.max(10)), replace_after));
    daemon::until_stopped().await
}
