//! What the front end's three binaries share: logs, binding, and running
//! until SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::net::{Handler, serve};

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Binds `address` and serves `handler` there in a task.
pub async fn listen<H: Handler>(what: &str, address: &str, handler: Arc<H>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address).await.with_context(|| format!("bind the {what} port {address}"))?;
    tracing::info!(%address, "{what} listening");
    let what = what.to_owned();
    tokio::spawn(async move {
        if let Err(e) = serve(listener, handler).await {
            tracing::error!(error = %e, "{what} stopped accepting");
        }
    });
    Ok(())
}

/// Waits for SIGTERM or SIGINT.
pub async fn until_stopped() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
    Ok(())
}

/// A comma-separated list of endpoints.
#[must_use]
pub fn endpoints(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect()
}
