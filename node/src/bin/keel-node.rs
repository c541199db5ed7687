//! `keel-node`: the storage node daemon. Today it serves one shard in
//! standalone mode (a durable table catalog and every partition of every
//! table) on one port, speaking Keel's binary protocol (frames of
//! FlatBuffers; see docs/format/frame.md).
//!
//! SIGTERM and SIGINT stop accepting connections, let the request in
//! progress finish, checkpoint every partition and exit.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::RwLock;
use glommio::{LocalExecutorBuilder, Placement};
use keel_node::engine::Engine;
use keel_node::handler;
use keel_node::io::glommio_disk::GlommioDisk;
use keel_node::replica::{ShardStore, StoreConfig};
use keel_wire::frame::{FRAME_BODY_MAX_BYTES, FrameDecoder, encode_frame};

/// How often the shutdown flag is checked.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

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
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("keel-shard-0")
        .spawn(move || async move { serve(args, stop).await })
        .map_err(|e| anyhow::anyhow!("start the shard executor: {e}"))?;
    handle.join().map_err(|e| anyhow::anyhow!("shard executor failed: {e:?}"))?
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn serve(args: Args, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut config = StoreConfig::new(&args.data_dir);
    config.page_cache_bytes = args.page_cache_mb * 1024 * 1024;
    let store = ShardStore::open(GlommioDisk::new(), config)
        .await
        .with_context(|| format!("open the shard store in {}", args.data_dir.display()))?;
    let engine = Rc::new(RwLock::new(Engine::open(store).await.context("open the table catalog")?));
    let listener = TcpListener::bind(args.listen).map_err(|e| anyhow::anyhow!("listen on {}: {e}", args.listen))?;
    // Tests and scripts wait for this line.
    let address = listener.local_addr().map_err(|e| anyhow::anyhow!("read the listening address: {e}"))?;
    tracing::info!(%address, data_dir = %args.data_dir.display(), "keel-node serving");
    // Tests and scripts wait for this line on stdout.
    println!("keel-node listening on {address}");
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
    tracing::info!("shutting down: finishing the request in progress and checkpointing");
    let mut engine = engine.write().await.map_err(|e| anyhow::anyhow!("engine lock: {e:?}"))?;
    engine.store_mut().checkpoint_all().await.context("checkpoint before exit")?;
    tracing::info!("stopped");
    Ok(())
}

/// Serves one connection: frames in, frames out, in order.
async fn connection(mut stream: TcpStream, engine: Rc<RwLock<Engine<GlommioDisk>>>) -> anyhow::Result<()> {
    let decoder = FrameDecoder::new(FRAME_BODY_MAX_BYTES);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        while let Some(span) = decoder.decode(&buf)? {
            let response = {
                let body = buf.get(span.body_start..span.end).unwrap_or(&[]);
                let mut engine = engine.write().await.map_err(|e| anyhow::anyhow!("engine lock: {e:?}"))?;
                handler::handle(&mut engine, body, now_ms()).await
            };
            let mut frame = Vec::with_capacity(response.len() + 8);
            encode_frame(&response, &mut frame);
            stream.write_all(&frame).await?;
            buf.drain(..span.end);
        }
        let n = match stream.read(&mut chunk).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    }
}
