//! keel-router: the request router (`keel_router::front`).

use std::time::Duration;

use clap::Parser;
use keel_router::daemon;
use keel_router::front::{Admin, Router, RouterConfig};

/// Keel request router: serves Keel's binary protocol and sends each
/// request to the shard that owns its partition.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where clients connect.
    #[arg(long, env = "KEEL_LISTEN", default_value = "127.0.0.1:7400")]
    listen: String,
    /// MemDS servers, comma-separated.
    #[arg(long, env = "KEEL_MEMDS", default_value = "127.0.0.1:7460")]
    memds: String,
    /// The control plane (shown in cluster status).
    #[arg(long, env = "KEEL_CONTROL")]
    control: Option<String>,
    /// The admin port (routing protocol: status with counters, cache flush).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Longest wait for a storage node's answer, in milliseconds, when the
    /// request does not say.
    #[arg(long, default_value_t = 12_000)]
    request_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    daemon::init_logs();
    let args = Args::parse();
    let memds = daemon::endpoints(&args.memds);
    anyhow::ensure!(!memds.is_empty(), "--memds names no MemDS server");
    let router = Router::start(RouterConfig {
        endpoint: args.listen.clone(),
        memds,
        control: args.control,
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
    });
    if let Some(admin) = &args.admin_listen {
        daemon::listen("router admin", admin, std::sync::Arc::new(Admin(std::sync::Arc::clone(&router)))).await?;
    }
    daemon::listen("router", &args.listen, router).await?;
    daemon::until_stopped().await
}
