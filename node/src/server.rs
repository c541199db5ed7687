//! The daemon shell (glommio): serves the protocol on a TCP port from one
//! shard in standalone mode. Like `io/glommio_disk.rs`, this is an edge that
//! names glommio types; the logic it drives (`handler`, `engine`) does not.
//!
//! Stopping: when `stop` becomes true the listener stops accepting, the
//! request in progress finishes, every partition checkpoints and `serve`
//! returns.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::RwLock;
use keel_wire::frame::{FRAME_BODY_MAX_BYTES, FrameDecoder, encode_frame};

use crate::engine::Engine;
use crate::handler;
use crate::io::glommio_disk::GlommioDisk;
use crate::replica::{ShardStore, StoreConfig};

/// How often the stop flag is checked.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The shard store could not be opened.
    #[error("open the shard store in {dir}: {source}")]
    Store {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: crate::replica::StoreOpenError,
    },
    /// The catalog could not be loaded.
    #[error("open the table catalog: {0}")]
    Catalog(#[from] crate::engine::EngineError),
    /// The port could not be bound.
    #[error("listen on {address}: {reason}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The final checkpoint failed.
    #[error("checkpoint before exit: {0}")]
    Checkpoint(#[from] crate::replica::StoreWriteError),
    /// The engine lock was closed.
    #[error("engine lock: {0}")]
    Lock(String),
}

/// What to serve and where.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory of the shard.
    pub data_dir: PathBuf,
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Page cache size in bytes.
    pub page_cache_bytes: usize,
}

/// Serves until `stop` is set. Calls `on_listening` with the bound address
/// once the listener is up. Must run inside a glommio executor.
pub async fn serve(
    config: ServerConfig,
    stop: Arc<AtomicBool>,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut store_config = StoreConfig::new(&config.data_dir);
    store_config.page_cache_bytes = config.page_cache_bytes;
    let store = ShardStore::open(GlommioDisk::new(), store_config)
        .await
        .with_context(|| format!("open the shard store in {}", config.data_dir.display()))?;
    let engine = Rc::new(RwLock::new(Engine::open(store).await.context("open the table catalog")?));
    let listener = TcpListener::bind(config.listen).map_err(|e| anyhow::anyhow!("listen on {}: {e}", config.listen))?;
    let address = listener.local_addr().map_err(|e| anyhow::anyhow!("read the listening address: {e}"))?;
    tracing::info!(%address, data_dir = %config.data_dir.display(), "keel-node serving");
    on_listening(address);
    crate::notify::notify("READY=1");
    loop {
        let stopping = async {
            while !stop.load(Ordering::Relaxed) {
                glommio::timer::sleep(SHUTDOWN_POLL).await;
            }
            None
        };
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, stopping).await;
        match accepted {
            Some(Ok(stream)) => {
                let engine = Rc::clone(&engine);
                glommio::spawn_local(async move {
                    if let Err(e) = connection(stream, engine).await {
                        tracing::debug!(error = %e, "connection closed");
                    }
                })
                .detach();
            }
            Some(Err(e)) => tracing::warn!(error = %e, "accept failed"),
            None => break,
        }
    }
    crate::notify::notify("STOPPING=1");
    tracing::info!("shutting down: finishing the request in progress and checkpointing");
    let mut engine = engine.write().await.map_err(|e| ServeError::Lock(e.to_string()))?;
    engine.store_mut().checkpoint_all().await?;
    tracing::info!("stopped");
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Serves one connection: frames in, frames out, in order.
async fn connection(mut stream: TcpStream, engine: Rc<RwLock<Engine<GlommioDisk>>>) -> Result<(), String> {
    let decoder = FrameDecoder::new(FRAME_BODY_MAX_BYTES);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        while let Some(span) = decoder.decode(&buf).map_err(|e| e.to_string())? {
            let response = {
                let body = buf.get(span.body_start..span.end).unwrap_or(&[]);
                let mut engine = engine.write().await.map_err(|e| e.to_string())?;
                handler::handle(&mut engine, body, now_ms()).await
            };
            let mut frame = Vec::with_capacity(response.len() + 8);
            encode_frame(&response, &mut frame);
            stream.write_all(&frame).await.map_err(|e| e.to_string())?;
            buf.drain(..span.end);
        }
        let n = match stream.read(&mut chunk).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    }
}
