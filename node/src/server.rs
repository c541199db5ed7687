//! The daemon shell (glommio): one executor per shard, each with its own
//! WAL, B-trees and page cache, serving the protocol. Like
//! `io/glommio_disk.rs` this edge names glommio types; the logic it drives
//! (`handler`, `engine`) does not.
//!
//! - **Ports.** Every shard listens on the entry port (SO_REUSEPORT: the
//!   kernel spreads connections over the shards) and on a port of its own
//!   (for routers that know the owner). Both serve every request.
//! - **Forwarding.** A request for a partition hosted by another shard
//!   travels there over a glommio channel mesh (lock-free single-producer
//!   rings between each pair of shards); the owner answers with the
//!   encoded response. No locks are shared between shards.
//! - **Catalog.** Shard 0 is the catalog authority: CreateTable and
//!   DeleteTable run there, then every other shard reconciles its copy
//!   before the response goes out. At start shard 0 reconciles all shards
//!   before any of them serves, which repairs a change a crash interrupted.
//! - **Group commit.** Engines run in deferred mode: a write is logged while
//!   the shard's engine is held, then waited for without holding it, so the
//!   writes of many connections (and of one pipelined connection) share one
//!   WAL write and fdatasync. A response goes out only once durable.
//! - **Stopping.** When `stop` becomes true every shard stops accepting and
//!   reading, answers the requests already read, waits for all shards to
//!   get there (a shard may still serve another's forwarded requests), then
//!   checkpoints every partition and returns.
//! - **Cluster.** With [`NodeConfig::cluster`] the node is one member of a
//!   cluster: partitions are Raft groups replicated across nodes, driven by
//!   the shell in `server/cluster.rs` (its module docs say how).

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::{RwLock, Semaphore};
use glommio::{Latency, LocalExecutorBuilder, Placement as CpuPlacement, Shares};
use keel_wire::frame::{FRAME_BODY_MAX_BYTES, FrameDecoder, encode_frame};
use keel_wire::protocol::{self, Envelope, ErrorCode, Response};
use rustc_hash::FxHashMap;

use crate::btree::{FetchedPages, PageFetch};
use crate::engine::{Engine, Page, Placement, TableDef};
use crate::handler::{self, Route};
use crate::io::glommio_disk::{self, DurableWrites, GlommioDisk, GlommioFile};
use crate::replica::{QuietWatch, ShardStore, StoreConfig};
use crate::wal::Notify;

mod cluster;
mod wake;

pub use cluster::{ClusterConfig, LOG_RETAIN_ENTRIES_MAX, READ_WAIT_MAX, WRITE_WAIT_MAX};
use cluster::{ReplShell, WriteOutcome};

/// How often the stop flag (set by a signal handler) is checked.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How often `run` says which shards are still starting, and at what step.
const START_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Requests one connection may have in flight; reading pauses beyond.
const IN_FLIGHT_PER_CONNECTION: u64 = 256;

/// The longest a write waits for a background checkpoint when dirty pages
/// or WAL segments are backlogged (twice their limits). The wait slows
/// writers down to what checkpoints sustain; the bound keeps a stuck
/// checkpoint from stopping writes altogether.
const CHECKPOINT_BACKLOG_WAIT_MAX: Duration = Duration::from_secs(1);

/// The longest a shard's scheduler runs task queues before it goes back to
/// its reactor. glommio submits disk requests and socket sends, and reaps
/// their completions, only between scheduler passes; a pass ends when every
/// queue has run dry or this timer fires. glommio's default, 100 ms, let a
/// busy pass hold a WAL commit for 147 ms under YCSB A in open loop; 10 ms
/// cost no throughput in paired runs.
pub const SHARD_PREEMPT_TIMER: Duration = Duration::from_millis(10);

/// Times a Query or Scan waits for the WAL without the engine before it
/// waits holding it.
const SETTLE_ATTEMPTS_MAX: u32 = 3;

/// Times a request may have the pages it missed read without the engine (a
/// miss ends the run; a point read's fetch is its one page, a scan's the
/// page and the next ones it would visit) before it reads the rest holding
/// the engine. A point read misses at most the tree's depth of pages (3 to
/// 4 in practice); the bound keeps a request whose pages keep being
/// evicted, a BatchGetItem of many cold keys or a Scan over many cold
/// leaves from running again without end.
const FETCH_ATTEMPTS_MAX: u32 = 8;

/// After background work failed (a full or failing disk), the pause before
/// it is tried again.
const BACKGROUND_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The longest rest between two background checkpoints (see
/// `checkpoint_pause`).
const CHECKPOINT_PAUSE_MAX: Duration = Duration::from_millis(500);

/// CPU a background checkpoint spends encoding pages before it lets
/// requests run and the WAL reach the disk. A budget of time, not pages:
/// 32 pages (512 KiB) took 1 ms on average and up to 5 ms, and every WAL
/// write or sync issued meanwhile waited that long.
const CHECKPOINT_SLICE: Duration = Duration::from_micros(200);

/// Retired B-tree nodes a background checkpoint frees between two looks
/// at the clock (a node takes about 0.8 µs to free).
const RETIRED_NODES_PER_STEP: usize = 8;

/// Write requests (up to 1 MiB each) of a background checkpoint in flight
/// at once: the WAL's commits share the disk's queue with them.
const CHECKPOINT_WRITES_IN_FLIGHT_MAX: usize = 2;

/// CPU shares of the background task queue (checkpoints) against the
/// foreground's 1000: background work must not take latency from requests.
const BACKGROUND_SHARES: usize = 100;
/// Messages queued between two shards.
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// The node metadata file in the data directory.
const NODE_FILE: &str = "node.json";
/// Version of the data directory layout.
const LAYOUT_VERSION: u64 = 1;

/// What to serve and where.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Data directory: `node.json`, a `LOCK` file and one `shard-<i>`
    /// directory per shard.
    pub data_dir: PathBuf,
    /// The entry port's address (port 0: any free port).
    pub listen: SocketAddr,
    /// Shard `i` listens on `shard_port_base + i`; None: the entry port + 1
    /// (any free port when the entry port is 0).
    pub shard_port_base: Option<u16>,
    /// Shards (executors). Fixed at the first start of a data directory.
    pub shards: usize,
    /// Pin shard `i` to the `i`-th CPU of `cpus`, or of the process's
    /// affinity mask (when it allows enough CPUs; see [`shard_cpus`]).
    pub pin: bool,
    /// The CPUs the shards are pinned to, in order. Only the shards: the
    /// process's other threads (glommio's helper thread, the kernel's
    /// io_uring workers) stay free to run on any CPU of its mask. Confined
    /// to the shard's CPU they waited for it: with the whole process on
    /// one CPU, p99 rose from 3 ms to 9–13 ms (YCSB A, open loop, 2-core VM).
    pub cpus: Option<Vec<usize>>,
    /// Page cache of each shard, in bytes.
    pub page_cache_bytes: usize,
    /// Partitions of a table whose CreateTable does not say.
    pub partitions_default: u32,
    /// Dirty B-tree bytes of a shard before its dirtiest partition is
    /// checkpointed (in the background; writers wait only at twice this).
    /// Larger means fewer page writes per update: a hot page absorbs more
    /// updates before it is written. None: [`dirty_bytes_default`].
    pub dirty_bytes_max: Option<usize>,
    /// How long stopping waits for in-flight requests.
    pub drain_timeout: Duration,
    /// A shard that applied no write for this long (to twice this)
    /// checkpoints its partitions, whatever their dirty pages: reads then
    /// search clean pages in place (faster than decoded dirty nodes), and
    /// the WAL behind them is reclaimed. None: only the dirty and WAL
    /// limits checkpoint. [`QUIET_CHECKPOINT_AFTER`] by default.
    pub quiet_checkpoint_after: Option<Duration>,
    /// How a shard makes its WAL commits durable: through io_uring (the
    /// shard serves meanwhile) or inline (a blocking write on the shard's
    /// thread: no kernel worker between the write and its flush, but the
    /// shard waits). `glommio_disk` module docs: the trade, measured.
    pub durable_writes: DurableWrites,
    /// Membership in a cluster (None: standalone, the node holds everything).
    pub cluster: Option<ClusterConfig>,
}

impl NodeConfig {
    /// Defaults for a data directory and entry address.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            shard_port_base: None,
            shards: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            pin: true,
            cpus: None,
            page_cache_bytes: 256 * 1024 * 1024,
            partitions_default: crate::engine::PARTITIONS_DEFAULT,
            dirty_bytes_max: None,
            drain_timeout: Duration::from_secs(10),
            quiet_checkpoint_after: Some(QUIET_CHECKPOINT_AFTER),
            durable_writes: DurableWrites::Ring,
            cluster: None,
        }
    }

    fn shard_address(&self, shard: usize) -> anyhow::Result<SocketAddr> {
        let port = match (self.shard_port_base, self.listen.port()) {
            (Some(base), _) => u16::try_from(usize::from(base) + shard).ok(),
            (None, 0) => Some(0),
            (None, entry) => u16::try_from(usize::from(entry) + 1 + shard).ok(),
        }
        .context("shard port beyond 65535")?;
        Ok(SocketAddr::new(self.listen.ip(), port))
    }
}

/// How long a shard applies no write before it checkpoints its partitions
/// by default ([`NodeConfig::quiet_checkpoint_after`]). Long enough that a
/// shard written to at all steadily is left to the dirty and WAL limits (a
/// page absorbs many updates between writes); short beside a read-heavy
/// phase, whose reads are a quarter cheaper from clean pages
/// ([`ShardStore::quiet_checkpoint_due`]).
pub const QUIET_CHECKPOINT_AFTER: Duration = Duration::from_secs(1);

/// Least and most dirty B-tree bytes per shard by default.
pub const DIRTY_BYTES_DEFAULT_RANGE: (usize, usize) = (128 << 20, 1 << 30);

/// The default dirty limit of a shard: an eighth of physical memory shared
/// by the shards, within [`DIRTY_BYTES_DEFAULT_RANGE`] (the least when the
/// memory is unknown). With 128 MiB, YCSB A over 100k records checkpointed
/// ~5 times a second and spent ~9 % of the shard in checkpoints; with 1 GiB,
/// 21 % more throughput and a third lower p99 (commit 0d379d9). The
/// WAL limit (`StoreConfig::wal_segments_max`) still bounds recovery.
#[must_use]
pub fn dirty_bytes_default(memory_bytes: Option<u64>, shards: usize) -> usize {
    let (least, most) = DIRTY_BYTES_DEFAULT_RANGE;
    let share = memory_bytes.map_or(0, |m| m / 8 / shards.max(1) as u64);
    usize::try_from(share).unwrap_or(most).clamp(least, most)
}

/// Physical memory (`MemTotal` in /proc/meminfo), if it can be read.
fn physical_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Where a started node listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// The entry port (any shard answers).
    pub entry: SocketAddr,
    /// Each shard's own port.
    pub shards: Vec<SocketAddr>,
}

/// Takes the data directory for this process: creates it, locks it (a
/// second keel-node on it fails here), and checks that its shard count is
/// the configured one.
fn claim_data_dir(config: &NodeConfig) -> anyhow::Result<File> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("create the data directory {}", dir.display()))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .with_context(|| format!("open {}", dir.join("LOCK").display()))?;
    lock.try_lock()
        .map_err(|_| anyhow::anyhow!("the data directory {} is in use by another keel-node process", dir.display()))?;
    let path = dir.join(NODE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let meta: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid JSON", path.display()))?;
            let layout = meta.get("layout").and_then(serde_json::Value::as_u64);
            anyhow::ensure!(
                layout == Some(LAYOUT_VERSION),
                "{} has layout {layout:?}; this keel-node reads layout {LAYOUT_VERSION}",
                path.display()
            );
            let node = meta.get("cluster_node").and_then(serde_json::Value::as_str);
            let want = config.cluster.as_ref().map(|c| c.node.as_str());
            anyhow::ensure!(
                node == want,
                "the data directory {} belongs to {}; this keel-node is started as {} \
                 (a data directory never changes between standalone and cluster, or between nodes)",
                dir.display(),
                node.map_or_else(|| "a standalone node".to_owned(), |n| format!("cluster node {n}")),
                want.map_or_else(|| "a standalone node".to_owned(), |n| format!("cluster node {n}")),
            );
            let shards = meta.get("shards").and_then(serde_json::Value::as_u64);
            anyhow::ensure!(
                shards == Some(config.shards as u64),
                "the data directory {} was created with {} shards; start keel-node with --shards {} \
                 (changing the shard count of existing data is not supported)",
                dir.display(),
                shards.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                shards.map_or_else(|| "?".to_owned(), |s| s.to_string()),
            );
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            anyhow::ensure!(
                std::fs::read_dir(dir)?.flatten().all(|e| e.file_name() == "LOCK"),
                "the data directory {} holds files but no {NODE_FILE}: not a keel-node data directory",
                dir.display()
            );
            let mut meta = serde_json::json!({"layout": LAYOUT_VERSION, "shards": config.shards});
            if let (Some(cluster), Some(object)) = (&config.cluster, meta.as_object_mut()) {
                object.insert("cluster_node".to_owned(), serde_json::Value::String(cluster.node.clone()));
            }
            let tmp = dir.join(format!("{NODE_FILE}.tmp"));
            std::fs::write(&tmp, meta.to_string())?;
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(dir)?.sync_all()?;
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    }
    Ok(lock)
}

/// How long the probe for another listener on a port waits.
const PORT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Fails when something already listens on `address`.
fn refuse_if_listening(address: SocketAddr) -> anyhow::Result<()> {
    let mut probe = address;
    if probe.ip().is_unspecified() {
        probe.set_ip(if probe.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    if std::net::TcpStream::connect_timeout(&probe, PORT_PROBE_TIMEOUT).is_ok() {
        anyhow::bail!("listen on {address}: another process listens there already");
    }
    Ok(())
}

/// A CPU list as taskset and `/proc` write it (`1`, `0-3`, `0,2-3`), in
/// ascending order without repeats; `None` when it is not one.
#[must_use]
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = std::collections::BTreeSet::new();
    for part in text.trim().split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?),
            None => {
                let cpu = part.trim().parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if first > last || last >= CPUS_MAX {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus.into_iter().collect())
}

/// CPUs a CPU list may name (the size of the kernel's `cpu_set_t`).
const CPUS_MAX: usize = 1024;

/// The CPUs the calling thread may run on, lowest first: its affinity
/// mask, which a process's first thread has from `taskset`, systemd's
/// `CPUAffinity=` or a cgroup cpuset. Empty when the mask cannot be read.
#[must_use]
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect(),
        Err(_) => Vec::new(),
    }
}

/// The CPU each shard is pinned to: with pinning on, shard `i` runs on the
/// `i`-th CPU of `allowed` (`cpus` when given, else the process's affinity
/// mask, so that an operator places the shards with the usual tools too).
/// `None` everywhere (unpinned) when pinning is off or fewer CPUs are
/// allowed than there are shards.
#[must_use]
pub fn shard_cpus(allowed: &[usize], shards: usize, pin: bool) -> Vec<Option<usize>> {
    if pin && allowed.len() >= shards {
        allowed.iter().take(shards).map(|&cpu| Some(cpu)).collect()
    } else {
        vec![None; shards]
    }
}

/// The executor of one shard: glommio's builder with Keel's scheduler
/// settings ([`SHARD_PREEMPT_TIMER`]).
#[must_use]
pub fn shard_executor(placement: CpuPlacement) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement).preempt_timer(SHARD_PREEMPT_TIMER)
}

/// mimalloc's number for its purge delay (`mi_option_purge_delay` in
/// mimalloc.h; the Rust bindings do not name it). A test checks that the
/// option under this number has the purge delay's default.
pub const MIMALLOC_PURGE_DELAY_OPTION: i32 = 15;

/// Makes mimalloc keep the memory this process frees instead of returning it
/// to the kernel ("purging") later. It purges lazily, on the thread that
/// freed, at that thread's allocations a delay (1 s by default) after the
/// free: after a checkpoint freed a partition's decoded nodes (tens of MB),
/// the shard's first requests after a quiet spell paid for the purge and
/// the page faults after it. In `keel-bench compare`, whose Keel C phases
/// follow Redis's turn (during which Keel's quiet checkpoint runs), the
/// first second of every Keel C phase had one request of 15–31 ms, against
/// at most ~8 ms in every later second; with purging off, none
/// (docs/bench/history.md, 2026-12-07, late night). A node's memory is
/// bounded by its own limits (page cache, dirty bytes), and what a
/// checkpoint frees is what the next writes' nodes reuse. Call it before
/// the shards start.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    // SAFETY: mi_option_set only records an option's value (mimalloc reads
    // it when it considers a purge); the number is checked by a test.
    unsafe { libmimalloc_sys::mi_option_set(MIMALLOC_PURGE_DELAY_OPTION, -1) };
}

/// Turns transparent huge pages off for this process (and what it starts),
/// as Redis does at start-up (`disable-thp`). mimalloc asks for huge pages
/// on its arenas (`madvise(MADV_HUGEPAGE)`), and the first touch of each 2 MiB
/// page faults it in and zeroes it in one piece: on the 2-core VM that took
/// 5.5 ms of the shard's thread at a time, during which no request ran and no
/// WAL write was submitted. A checkpoint round met dozens of them (YCSB A at
/// half of peak, open loop: p99 8.6–14 ms with them, 3.5 ms without).
/// With 4 KiB pages the same memory is faulted in in pieces of microseconds,
/// which the background work's time slices bound. keel-bench calls it too
/// (its generator would otherwise charge such stalls to the operations).
pub fn disable_transparent_huge_pages() -> nix::Result<()> {
    nix::sys::prctl::set_thp_disable(true)
}

/// Runs a node until `stop` is set: starts one executor per shard, calls
/// `on_ready` once every shard serves, and returns after the last
/// checkpoint. Blocks the calling thread.
pub fn run(
    mut config: NodeConfig,
    stop: Arc<AtomicBool>,
    on_ready: impl FnOnce(&Listening) + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!((1..=256).contains(&config.shards), "--shards must be 1 to 256, got {}", config.shards);
    let _lock = claim_data_dir(&config)?;
    // Resolved once here, for every shard.
    config.dirty_bytes_max =
        Some(config.dirty_bytes_max.unwrap_or_else(|| dirty_bytes_default(physical_memory_bytes(), config.shards)));
    // glommio binds with SO_REUSEPORT, so a second process on the same port
    // would silently share it: make sure nobody listens there first. (A
    // probe bind without SO_REUSEPORT would also refuse a port whose old
    // connections linger after a crash, in FIN-WAIT-2 for up to a minute,
    // which glommio's own bind accepts.)
    let peer = match &config.cluster {
        Some(cluster) => Some(cluster.member()?.addr),
        None => None,
    };
    let addresses = std::iter::once(Ok(config.listen))
        .chain(peer.map(Ok))
        .chain((0..config.shards).map(|i| config.shard_address(i)));
    let mut seen = std::collections::BTreeSet::new();
    for address in addresses {
        let address = address?;
        if address.port() != 0 {
            // Two listeners of this node on one port would share it too.
            anyhow::ensure!(
                seen.insert(address.port()),
                "port {} is configured twice (entry, shard and replication ports must differ)",
                address.port()
            );
            refuse_if_listening(address)?;
        }
    }
    let shards = config.shards;
    let allowed = allowed_cpus();
    let shard_cpus = match &config.cpus {
        Some(cpus) => {
            anyhow::ensure!(config.pin, "cpus are given but pinning is off (--no-pin)");
            anyhow::ensure!(cpus.len() >= shards, "cpus lists {} CPUs for {shards} shards", cpus.len());
            if let Some(cpu) = cpus.iter().find(|cpu| !allowed.is_empty() && !allowed.contains(cpu)) {
                anyhow::bail!("CPU {cpu} of cpus is not one this process may use ({allowed:?})");
            }
            shard_cpus(cpus, shards, true)
        }
        None => shard_cpus(&allowed, shards, config.pin),
    };
    if config.pin && shard_cpus.iter().any(Option::is_none) {
        tracing::warn!(shards, allowed = ?allowed, "fewer CPUs allowed than shards: shards run unpinned");
    }
    let mesh = MeshBuilder::<Message, _>::full(shards, MESH_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<(usize, SocketAddr, SocketAddr)>>();
    let (entry_txs, mut entry_rxs): (Vec<_>, Vec<_>) =
        (1..shards).map(|_| std::sync::mpsc::channel::<SocketAddr>()).unzip();
    let drained = Arc::new(AtomicUsize::new(0));
    let mut progress: Vec<Arc<StartProgress>> = Vec::with_capacity(shards);
    let mut hearts: Vec<Arc<wake::Heartbeat>> = Vec::with_capacity(shards);
    let mut entry_txs = Some(entry_txs);
    let mut handles = Vec::new();
    for index in 0..shards {
        let placement = match shard_cpus.get(index).copied().flatten() {
            Some(cpu) => {
                tracing::debug!(shard = index, cpu, "shard pinned");
                CpuPlacement::Fixed(cpu)
            }
            None => CpuPlacement::Unbound,
        };
        let context = ShardStart {
            index,
            config: config.clone(),
            mesh: mesh.clone(),
            stop: Arc::clone(&stop),
            drained: Arc::clone(&drained),
            ready: ready_tx.clone(),
            entry_out: if index == 0 { entry_txs.take().unwrap_or_default() } else { Vec::new() },
            entry_in: if index == 0 { None } else { Some(entry_rxs.remove(0)) },
            progress: Arc::new(StartProgress::new()),
            heartbeat: Arc::new(wake::Heartbeat::default()),
        };
        progress.push(Arc::clone(&context.progress));
        hearts.push(Arc::clone(&context.heartbeat));
        let handle = shard_executor(placement)
            .name(&format!("keel-shard-{index}"))
            .spawn(move || async move {
                let ready = context.ready.clone();
                let heartbeat = Arc::clone(&context.heartbeat);
                let result = shard_main(context).await;
                heartbeat.retire();
                if let Err(e) = &result {
                    // Unblocks `run` when a shard fails before it is ready.
                    let _ = ready.send(Err(anyhow::anyhow!("shard {index}: {e:#}")));
                }
                result
            })
            .map_err(|e| anyhow::anyhow!("start the executor of shard {index}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    // Wakes shards that glommio leaves asleep (the module docs say why); it
    // stops when `watching` is dropped, after every shard has returned.
    let (watching, watch_done) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::Builder::new()
        .name("keel-wake-watch".into())
        .spawn({
            let hearts = hearts.clone();
            move || wake::watch(&hearts, &watch_done)
        })
        .map_err(|e| anyhow::anyhow!("start the wake-up watchdog: {e}"))?;
    let mut entry = None;
    let mut addresses = vec![None; shards];
    let mut failure = None;
    let mut started = 0;
    while started < shards {
        match ready_rx.recv_timeout(START_REPORT_EVERY) {
            Ok(Ok((index, entry_address, own))) => {
                started += 1;
                entry = Some(entry_address);
                if let Some(slot) = addresses.get_mut(index) {
                    *slot = Some(own);
                }
            }
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                for (index, (progress, heart)) in progress.iter().zip(&hearts).enumerate() {
                    if addresses.get(index).is_some_and(Option::is_none) {
                        let (step, lasted, done) = progress.get();
                        // Beats that go on while the step does not move: the
                        // shard runs, and a task waits for a wake-up nobody
                        // sends; beats that stop: the shard sleeps through
                        // its timers (the watchdog wakes it).
                        let beats = heart.beats();
                        tracing::warn!(shard = index, step, lasted = ?lasted, done, beats, "shard still starting");
                    }
                }
                tracing::warn!(threads = %thread_states(), "threads of this process (id name state wait)");
                tracing::warn!(
                    dir = %config.data_dir.display(),
                    in_flight = %disk_in_flight(&config.data_dir),
                    "requests the data directory's disk has in flight (reads writes)"
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let ready = match (failure, entry, addresses.iter().copied().collect::<Option<Vec<_>>>()) {
        (None, Some(entry), Some(shards)) => Some(Listening { entry, shards }),
        (failure, ..) => {
            stop.store(true, Ordering::Relaxed);
            failure.map(Err).unwrap_or_else(|| Err(anyhow::anyhow!("a shard stopped before it was ready")))?
        }
    };
    if let Some(listening) = &ready {
        crate::notify::notify("READY=1");
        tracing::info!(entry = %listening.entry, shards = ?listening.shards, "keel-node serving");
        on_ready(listening);
    }
    let mut result = Ok(());
    for (index, handle) in handles.into_iter().enumerate() {
        let outcome = handle.join().map_err(|e| anyhow::anyhow!("shard {index} executor failed: {e:?}"));
        if let Err(e) = outcome.and_then(|r| r) {
            tracing::error!(shard = index, error = %format!("{e:#}"), "shard failed");
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    drop(watching);
    match watchdog.join() {
        Ok(0) => {}
        Ok(woken) => tracing::info!(woken, "the wake-up watchdog woke shards that slept through their timers"),
        Err(_) => tracing::warn!("the wake-up watchdog panicked"),
    }
    tracing::info!("stopped");
    result
}

/// One line per thread of this process: its name, scheduler state and the
/// kernel function it waits in (`/proc/self/task`), so that a start that
/// never ends says whether its shards sleep in io_uring, on a lock, or in
/// uninterruptible I/O. Empty where /proc is not readable.
fn thread_states() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return String::new() };
    let mut lines = Vec::new();
    for task in tasks.flatten() {
        let name = task.file_name().to_string_lossy().into_owned();
        let Ok(tid) = name.parse::<i32>() else { continue };
        let (state, wchan) = wake::thread_wait(tid).unwrap_or_else(|| ("?".into(), String::new()));
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        lines.push(format!("{name} {} {state} {wchan}", comm.trim()));
    }
    lines.sort();
    lines.join("; ")
}

/// The requests in flight on the block device that holds `dir`, as its
/// `inflight` file in sysfs says ("reads writes"): a start stuck on disk I/O
/// with requests in flight for many seconds points at the device; none in
/// flight, at a completion the runtime missed. "unknown" where sysfs does not
/// say (tmpfs, no /sys).
fn disk_in_flight(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(dir) else { return "unknown".into() };
    let dev = meta.dev();
    let (major, minor) = (nix::libc::major(dev), nix::libc::minor(dev));
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/inflight"))
        .map_or_else(|_| "unknown".into(), |s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

struct ShardStart {
    index: usize,
    config: NodeConfig,
    mesh: MeshBuilder<Message, glommio::channels::channel_mesh::Full>,
    stop: Arc<AtomicBool>,
    drained: Arc<AtomicUsize>,
    ready: std::sync::mpsc::Sender<anyhow::Result<(usize, SocketAddr, SocketAddr)>>,
    /// Shard 0: where to tell the others the entry port it bound.
    entry_out: Vec<std::sync::mpsc::Sender<SocketAddr>>,
    /// Other shards: where shard 0 tells the entry port.
    entry_in: Option<std::sync::mpsc::Receiver<SocketAddr>>,
    /// Where this shard's start-up has got to (read by `run`).
    progress: Arc<StartProgress>,
    /// Beaten by the shard's timer task, watched by `wake::watch`.
    heartbeat: Arc<wake::Heartbeat>,
}

/// The step a shard's start-up has reached, so that a start that takes long
/// (a long replay, or a wait that never ends) says where it is instead of
/// only going quiet: `run` logs the shards still starting every
/// `START_REPORT_EVERY`.
#[derive(Debug)]
pub(crate) struct StartProgress {
    step: std::sync::Mutex<(&'static str, Instant, u64)>,
}

impl StartProgress {
    fn new() -> Self {
        Self { step: std::sync::Mutex::new(("starting", Instant::now(), 0)) }
    }

    /// Enters `step`.
    fn enter(&self, step: &'static str) {
        if let Ok(mut guard) = self.step.lock() {
            *guard = (step, Instant::now(), 0);
        }
    }

    /// Counts one more unit of work (a replayed Raft batch) in this step.
    fn advance(&self) {
        if let Ok(mut guard) = self.step.lock() {
            guard.2 += 1;
        }
    }

    /// The step, how long it has lasted, and the work counted in it.
    fn get(&self) -> (&'static str, Duration, u64) {
        self.step.lock().map_or(("unknown", Duration::ZERO, 0), |g| (g.0, g.1.elapsed(), g.2))
    }
}

/// A message between shards.
#[derive(Debug)]
enum Message {
    Call {
        id: u64,
        op: Op,
    },
    Reply {
        id: u64,
        answer: Answer,
    },
    /// (Cluster.) A peer's Raft messages for groups of the receiving shard.
    Raft {
        from: u64,
        endpoint: String,
        messages: Vec<crate::repl::Outgoing>,
    },
    /// (Cluster, from shard 0.) The replicated catalog changed; no answer.
    Reconcile(Vec<TableDef>),
}

/// Work one shard asks of another.
#[derive(Debug)]
enum Op {
    /// Run this request body here.
    Handle(Vec<u8>),
    /// (To shard 0.) Run a CreateTable or DeleteTable, then reconcile all.
    Catalog(Vec<u8>),
    /// Make the catalog equal to this one.
    Reconcile(Vec<TableDef>),
    /// Read one hosted partition of a Scan.
    ScanPart { body: Vec<u8>, partition: u64, after: Option<Vec<u8>>, page: Page },
    /// List this shard's replicas (cluster status).
    Groups,
    /// (Cluster.) Read the next chunk of a snapshot of a hosted partition.
    SnapshotChunk { partition: u64, after: Option<Vec<u8>> },
}

#[derive(Debug)]
enum Answer {
    Body(Vec<u8>),
    Done(Result<(), String>),
    ScanPart(Result<(Page, bool), Response<'static>>),
    /// The shard's own client endpoint and its replicas.
    Groups(String, Vec<keel_wire::protocol::GroupInfo>),
    SnapshotChunk(Result<cluster::ChunkRead, String>),
}

/// One shard, shared by its tasks.
struct Shard {
    index: u32,
    shards: u32,
    engine: RwLock<Engine<GlommioDisk>>,
    senders: Senders<Message>,
    calls: RefCell<FxHashMap<u64, local_channel::LocalSender<Answer>>>,
    next_call: Cell<u64>,
    stopping: StopSignal,
    catalog_ready: StopSignal,
    /// Notified when a write finds background work due (a checkpoint, a
    /// spare WAL segment).
    background_wanted: Notify,
    /// Notified after each background checkpoint.
    checkpointed: Notify,
    /// Replication (cluster mode).
    repl: Option<ReplShell>,
    /// The low-share task queue (checkpoints, snapshots).
    background_queue: Cell<Option<glommio::TaskQueueHandle>>,
    /// [`NodeConfig::quiet_checkpoint_after`].
    quiet_checkpoint_after: Option<Duration>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("index", &self.index).finish_non_exhaustive()
    }
}

async fn shard_main(start: ShardStart) -> anyhow::Result<()> {
    let ShardStart { index, config, mesh, stop, drained, ready, entry_out, entry_in, progress, heartbeat } = start;
    heartbeat.register_current_thread();
    // Kernel workers that finish this shard's disk writes (and any other
    // short task) run at once when they wake on its CPU: crate::sched says
    // why and what it measured.
    match crate::sched::prefer_short_wakers(crate::sched::SHARD_SLICE) {
        Ok(true) => tracing::debug!(shard = index, slice = ?crate::sched::SHARD_SLICE, "shard asked for a long slice"),
        Ok(false) => tracing::info!(shard = index, "shard is not under SCHED_OTHER: its scheduling is left as it is"),
        Err(e) => {
            tracing::warn!(shard = index, error = %e, "could not ask for a long slice; kernel workers may wait for the shard")
        }
    }
    // For the shard's whole life a timer is always pending, and each time
    // it fires the shard beats its heartbeat: glommio 0.9 now and then
    // leaves a shard asleep in io_uring_enter although what it waits for
    // (another shard's message, a completion) has arrived. The timer wakes
    // most such sleeps (without it, about one `keel dev` start in 15 hung);
    // when glommio misses the timer too, the beats stop and the watchdog
    // thread wakes the shard with a signal (`wake`'s module docs).
    let _waker = glommio::spawn_local(async move {
        loop {
            heartbeat.beat();
            glommio::timer::sleep(STOP_POLL).await;
        }
    });
    let dir = config.data_dir.join(format!("shard-{index}"));
    let mut store_config = StoreConfig::new(&dir);
    store_config.page_cache_bytes = config.page_cache_bytes;
    store_config.dirty_bytes_max = config.dirty_bytes_max.unwrap_or(DIRTY_BYTES_DEFAULT_RANGE.0);
    store_config.background_checkpoints = true;
    progress.enter("opening the shard store (WAL replay)");
    let store = ShardStore::open(GlommioDisk::with_durable_writes(config.durable_writes), store_config)
        .await
        .with_context(|| format!("open the shard store in {}", dir.display()))?;
    let placement = Placement { shard: u32::try_from(index)?, shards: u32::try_from(config.shards)? };
    progress.enter("opening the table catalog");
    let mut engine = Engine::open_placed(store, placement).await.context("open the table catalog")?;
    engine.set_deferred(true);
    engine.set_default_partitions(config.partitions_default);
    let repl = match &config.cluster {
        Some(cluster) => {
            progress.enter("starting the Raft groups");
            engine.enable_replication(cluster::replication(cluster)?).context("start the Raft groups")?;
            Some(ReplShell::new(cluster.member()?.id, cluster.tick, cluster.heal_after))
        }
        None => None,
    };
    progress.enter("joining the other shards");
    let (senders, mut receivers) = mesh.join().await.map_err(|e| anyhow::anyhow!("join the shard mesh: {e}"))?;
    let shard = Rc::new(Shard {
        index: placement.shard,
        shards: placement.shards,
        engine: RwLock::new(engine),
        senders,
        calls: RefCell::new(FxHashMap::default()),
        next_call: Cell::new(0),
        stopping: StopSignal::default(),
        catalog_ready: StopSignal::default(),
        background_wanted: Notify::default(),
        checkpointed: Notify::default(),
        repl,
        background_queue: Cell::new(None),
        quiet_checkpoint_after: config.quiet_checkpoint_after,
    });
    if shard.repl.is_some() {
        // Committed entries the trees do not hold yet (applied after the
        // last checkpoint) are applied before the shard serves.
        progress.enter("applying committed Raft entries (batches counted)");
        while cluster::drive_once(&shard, false).await.map_err(|e| anyhow::anyhow!("replay Raft entries: {e}"))? {
            progress.advance();
        }
    }
    let background =
        glommio::executor().create_task_queue(Shares::Static(BACKGROUND_SHARES), Latency::NotImportant, "background");
    shard.background_queue.set(Some(background));
    let background = glommio::spawn_local_into(background_work(Rc::clone(&shard)), background)
        .map_err(|e| anyhow::anyhow!("start the background task: {e}"))?;
    let dispatchers = start_dispatchers(&shard, &mut receivers);

    // The entry port: shard 0 binds it first (resolving port 0), then the
    // others bind the same port.
    progress.enter("binding the entry port (shard 0 first)");
    let entry_address = match entry_in {
        None => config.listen,
        Some(rx) => rx.recv_timeout(Duration::from_secs(30)).context("shard 0 never bound the entry port")?,
    };
    let entry = TcpListener::bind(entry_address).map_err(|e| anyhow::anyhow!("listen on {entry_address}: {e}"))?;
    let entry_address = entry.local_addr().map_err(|e| anyhow::anyhow!("read the entry address: {e}"))?;
    for tx in entry_out {
        let _ = tx.send(entry_address);
    }
    let own_address = config.shard_address(index)?;
    let own = TcpListener::bind(own_address).map_err(|e| anyhow::anyhow!("listen on {own_address}: {e}"))?;
    let own_address = own.local_addr().map_err(|e| anyhow::anyhow!("read the shard address: {e}"))?;
    if let Some(repl) = shard.engine.write().await.map_err(|e| anyhow::anyhow!("{e}"))?.replication_mut() {
        repl.set_listening(entry_address.to_string(), own_address.to_string());
    }
    let mut repl_tasks = Vec::new();
    if let (Some(shell), Some(cluster)) = (&shard.repl, &config.cluster) {
        shell.set_endpoint(entry_address.to_string());
        let peer_address = cluster.member()?.addr;
        let peers = TcpListener::bind(peer_address).map_err(|e| anyhow::anyhow!("listen on {peer_address}: {e}"))?;
        repl_tasks.extend(cluster::start_peers(&shard, &cluster.cluster));
        repl_tasks.push(glommio::spawn_local(cluster::accept_peers(Rc::clone(&shard), peers)));
        repl_tasks.push(glommio::spawn_local(cluster::driver(Rc::clone(&shard))));
        if let Some(queue) = shard.background_queue.get() {
            let rebuilds = glommio::spawn_local_into(cluster::rebuild_log_replicas(Rc::clone(&shard)), queue)
                .map_err(|e| anyhow::anyhow!("start the rebuild task: {e}"))?;
            repl_tasks.push(rebuilds);
        }
    }

    progress.enter("making every shard's catalog equal shard 0's");
    if shard.index == 0 {
        // Every shard's catalog must equal the authority's before serving.
        let tables = shard.engine.read().await.map_err(|e| anyhow::anyhow!("engine lock: {e}"))?.tables();
        for peer in 1..shard.shards {
            match shard.call(peer, Op::Reconcile(tables.clone())).await {
                Answer::Done(Ok(())) => {}
                other => anyhow::bail!("shard {peer} could not reconcile its catalog: {other:?}"),
            }
        }
        shard.catalog_ready.fire();
    } else {
        shard.catalog_ready.wait().await;
    }
    let _ = ready.send(Ok((index, entry_address, own_address)));

    let connections = glommio::sync::Gate::new();
    let accepting = [entry, own].map(|listener| {
        let shard = Rc::clone(&shard);
        let gate = connections.clone();
        glommio::spawn_local(async move {
            loop {
                let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
                    shard.stopping.wait().await;
                    None
                })
                .await;
                match accepted {
                    Some(Ok(stream)) => {
                        let shard = Rc::clone(&shard);
                        let spawned = gate.spawn(async move {
                            if let Err(e) = connection(shard, stream).await {
                                tracing::debug!(error = %e, "connection closed");
                            }
                        });
                        if let Ok(task) = spawned {
                            task.detach();
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "accept failed"),
                    None => break,
                }
            }
        })
    });

    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    if shard.index == 0 {
        crate::notify::notify("STOPPING=1");
        tracing::info!("stopping: draining in-flight requests, then checkpointing");
    }
    shard.stopping.fire();
    for task in accepting {
        task.await;
    }
    let drain = futures_lite::future::or(
        async {
            let _ = connections.close().await;
            true
        },
        async {
            glommio::timer::sleep(config.drain_timeout).await;
            false
        },
    )
    .await;
    if !drain {
        tracing::warn!(shard = index, "connections still busy after the drain timeout; stopping anyway");
    }
    // Other shards may still forward requests here until they drained too.
    drained.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + config.drain_timeout;
    while drained.load(Ordering::SeqCst) < config.shards && Instant::now() < deadline {
        glommio::timer::sleep(STOP_POLL).await;
    }
    // Replication ran until now: the requests drained above waited for it.
    if let Some(shell) = &shard.repl {
        shell.stopping.fire();
        cluster::stop_peers(&shard);
        for task in repl_tasks {
            task.await;
        }
    }
    shard.senders.close();
    for task in dispatchers {
        task.await;
    }
    // The background task stops after the checkpoint it is writing, if any.
    background.await;
    let mut engine = shard.engine.write().await.map_err(|e| anyhow::anyhow!("engine lock: {e}"))?;
    engine.store_mut().checkpoint_all().await.context("checkpoint before exit")?;
    Ok(())
}

/// One task per peer, receiving its calls and replies.
fn start_dispatchers(shard: &Rc<Shard>, receivers: &mut Receivers<Message>) -> Vec<glommio::Task<()>> {
    receivers
        .streams()
        .into_iter()
        .map(|(peer, receiver)| {
            let shard = Rc::clone(shard);
            glommio::spawn_local(async move {
                while let Some(message) = receiver.recv().await {
                    match message {
                        Message::Call { id, op } => {
                            let shard = Rc::clone(&shard);
                            glommio::spawn_local(async move {
                                let answer = shard.serve_op(op).await;
                                if shard.senders.send_to(peer, Message::Reply { id, answer }).await.is_err() {
                                    tracing::warn!(peer, "could not answer a shard: mesh closed");
                                }
                            })
                            .detach();
                        }
                        Message::Reply { id, answer } => {
                            if let Some(tx) = shard.calls.borrow_mut().remove(&id) {
                                let _ = tx.try_send(answer);
                            }
                        }
                        Message::Raft { from, endpoint, messages } => {
                            cluster::step_here(&shard, from, &endpoint, messages).await;
                        }
                        Message::Reconcile(tables) => {
                            if let Err(e) = shard.serve_reconcile(&tables).await {
                                tracing::error!(shard = shard.index, error = %e, "could not take a catalog change");
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Shard {
    /// Asks shard `peer` to do `op` and waits for its answer.
    async fn call(&self, peer: u32, op: Op) -> Answer {
        let id = self.next_call.get();
        self.next_call.set(id + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.calls.borrow_mut().insert(id, tx);
        if self.senders.send_to(peer as usize, Message::Call { id, op }).await.is_err() {
            self.calls.borrow_mut().remove(&id);
            return Answer::Done(Err(format!("shard {peer} is not reachable")));
        }
        rx.recv().await.unwrap_or_else(|| Answer::Done(Err(format!("shard {peer} did not answer"))))
    }

    async fn serve_op(&self, op: Op) -> Answer {
        match op {
            Op::Handle(body) => Answer::Body(self.execute_local(&body).await),
            Op::Catalog(body) => Answer::Body(self.catalog_change(&body).await),
            Op::Reconcile(tables) => {
                let result = self.serve_reconcile(&tables).await;
                self.catalog_ready.fire();
                Answer::Done(result)
            }
            Op::SnapshotChunk { partition, after } => {
                Answer::SnapshotChunk(cluster::read_chunk(self, partition, after.as_deref()).await)
            }
            Op::Groups => match self.engine.read().await {
                Ok(engine) => {
                    let own = engine.replication().map(|r| r.listening().1.to_owned()).unwrap_or_default();
                    Answer::Groups(own, handler::local_groups(&engine))
                }
                Err(e) => Answer::Done(Err(e.to_string())),
            },
            Op::ScanPart { body, partition, after, mut page } => {
                let result = self.scan_part_here(&body, partition, after, &mut page).await;
                Answer::ScanPart(result.map(|full| (page, full)))
            }
        }
    }

    async fn serve_reconcile(&self, tables: &[TableDef]) -> Result<(), String> {
        let mut engine = self.engine.write().await.map_err(|e| e.to_string())?;
        engine.reconcile(tables).await.map_err(|e| e.to_string())
    }

    /// Reads one partition of a Scan here (after the read barrier when the
    /// Scan is strongly consistent).
    async fn scan_part_here(
        &self,
        body: &[u8],
        partition: u64,
        after: Option<Vec<u8>>,
        page: &mut Page,
    ) -> Result<bool, Response<'static>> {
        let internal = |e: String| Response::error(ErrorCode::InternalServerError, e);
        let replicated = self.engine.read().await.map_err(|e| internal(e.to_string()))?.is_replicated(partition);
        if replicated && handler::scan_is_consistent(body) {
            self.read_barrier(partition).await.map_err(handler::engine_error)?;
        }
        // As in execute_decoded: a page miss is read without the engine and
        // the part run again (a part that missed left `page` as it was).
        let mut fetches = 0;
        let mut fetched = None;
        loop {
            let mut engine = self.engine.write().await.map_err(|e| internal(e.to_string()))?;
            if let Some(fetched) = fetched.take() {
                engine.cache_fetched(fetched);
            }
            engine.set_fetch_elsewhere(fetches < FETCH_ATTEMPTS_MAX);
            let result = handler::scan_part(&mut engine, body, partition, after.clone(), page).await;
            engine.set_fetch_elsewhere(false);
            let Some(fetch) = engine.take_page_fetch() else { return result };
            drop(engine);
            fetched = self.fetch_missed(fetch, &mut fetches).await;
        }
    }

    /// Reads a page a request missed, without the engine, counting it in
    /// `fetches` ([`FETCH_ATTEMPTS_MAX`]). After a failed read the request
    /// runs again reading under the engine, which reports the failure.
    async fn fetch_missed(
        &self,
        fetch: PageFetch<GlommioFile>,
        fetches: &mut u32,
    ) -> Option<FetchedPages<GlommioFile>> {
        *fetches += 1;
        match fetch.read().await {
            Ok(page) => Some(page),
            Err(e) => {
                tracing::debug!(shard = self.index, "a page read without the engine failed: {e}");
                *fetches = FETCH_ATTEMPTS_MAX;
                None
            }
        }
    }

    /// Answers a request body wherever it must run.
    async fn serve(&self, body: Vec<u8>) -> Vec<u8> {
        let (route, decoded) = match self.engine.read().await {
            Ok(engine) => handler::route(&engine, &body),
            Err(e) => return handler::error_response(&body, ErrorCode::InternalServerError, e.to_string()),
        };
        match route {
            Route::Shard(shard) if shard == self.index => self.execute_decoded(&body, decoded).await,
            Route::Shard(shard) => self.forward(shard, Op::Handle(body)).await,
            Route::Catalog if self.index == 0 => self.catalog_change(&body).await,
            Route::Catalog => self.forward(0, Op::Catalog(body)).await,
            Route::Scan => self.scan(&body).await,
            Route::Batch => self.batch(&body).await,
            Route::Status => self.status(&body).await,
        }
    }

    async fn forward(&self, shard: u32, op: Op) -> Vec<u8> {
        let body = match &op {
            Op::Handle(body) | Op::Catalog(body) => body.clone(),
            _ => Vec::new(),
        };
        match self.call(shard, op).await {
            Answer::Body(response) => response,
            other => {
                handler::error_response(&body, ErrorCode::InternalServerError, format!("shard {shard}: {other:?}"))
            }
        }
    }

    /// Runs a request on this shard's engine; answers once its writes (and
    /// the writes it read) are durable.
    async fn execute_local(&self, body: &[u8]) -> Vec<u8> {
        self.execute_decoded(body, None).await
    }

    /// [`Self::execute_local`] with the body's envelope when routing decoded
    /// it already (used on the first attempt; a retry decodes again).
    async fn execute_decoded<'b>(&self, body: &'b [u8], decoded: Option<Envelope<'b>>) -> Vec<u8> {
        // Decoded once here (a body that does not decode is left to the
        // handler, which answers with the error).
        let mut decoded = decoded.or_else(|| protocol::decode_request(body).ok());
        if self.repl.is_some() {
            let consistent = match self.engine.read().await {
                Ok(engine) => decoded.as_ref().map(|e| handler::consistent_reads(&engine, e)).unwrap_or_default(),
                Err(e) => return handler::error_response(body, ErrorCode::InternalServerError, e.to_string()),
            };
            for partition in consistent {
                if let Err(e) = self.read_barrier(partition).await {
                    return handler::engine_error_response(body, e);
                }
            }
        }
        let (mut attempt, mut fetches) = (0, 0);
        let mut fetched = None;
        let (response, commit, wal, waits) = loop {
            let mut engine = match self.engine.write().await {
                Ok(engine) => engine,
                Err(e) => return handler::error_response(body, ErrorCode::InternalServerError, e.to_string()),
            };
            if let Some(page) = fetched.take() {
                engine.cache_fetched(page);
            }
            // A Query or Scan whose partition has writes not yet durable
            // waits for them without the engine (a few times; then with it,
            // so that a stream of writes cannot starve it).
            engine.set_settle_elsewhere(attempt < SETTLE_ATTEMPTS_MAX);
            // A read that misses the page cache reads the page without the
            // engine (the other requests go on meanwhile), then runs again.
            engine.set_fetch_elsewhere(fetches < FETCH_ATTEMPTS_MAX);
            let response = handler::handle_decoded(&mut engine, body, decoded.take(), now_ms()).await;
            engine.set_settle_elsewhere(false);
            engine.set_fetch_elsewhere(false);
            if let Some(fetch) = engine.take_page_fetch() {
                assert!(!engine.take_commit().has_writes(), "a request that missed a page has logged nothing");
                let _ = engine.take_settle_after();
                drop(engine);
                fetched = self.fetch_missed(fetch, &mut fetches).await;
                continue;
            }
            let Some(lsn) = engine.take_settle_after() else {
                let commit = engine.take_commit();
                // Registered while the engine is held: the driver cannot
                // apply the entries before.
                let waits = self.repl.as_ref().map(|shell| shell.register(commit.proposals())).unwrap_or_default();
                break (response, commit, engine.wal(), waits);
            };
            assert!(engine.take_commit().is_empty(), "a read that waits to settle has logged nothing");
            let wal = engine.wal();
            drop(engine);
            if let Err(e) = wal.wait_durable(lsn).await {
                return handler::error_response(body, ErrorCode::InternalServerError, format!("WAL: {e}"));
            }
            attempt += 1;
        };
        if let Some(shell) = self.repl.as_ref().filter(|_| !waits.is_empty()) {
            return match cluster::wait_writes(shell, waits).await {
                WriteOutcome::Done => {
                    self.backlog_wait().await;
                    response
                }
                WriteOutcome::Failed => handler::error_response(
                    body,
                    ErrorCode::ServiceUnavailable,
                    "a write was not committed (the partition's leader changed); retry",
                ),
                WriteOutcome::Unknown => handler::error_response(
                    body,
                    ErrorCode::InternalServerError,
                    format!("a write did not commit within {WRITE_WAIT_MAX:?}; its outcome is unknown"),
                ),
            };
        }
        let Some(lsn) = commit.wait_lsn() else { return response };
        if let Err(e) = wal.wait_durable(lsn).await {
            return handler::error_response(body, ErrorCode::InternalServerError, format!("write not durable: {e}"));
        }
        let (finished, backlog) = match self.engine.write().await {
            Ok(mut engine) => {
                let finished = engine.finish(commit).await.map_err(|e| e.to_string());
                let store = engine.store_mut();
                if store.background_work_due() {
                    self.background_wanted.notify_all();
                }
                // Made while the engine is held, so that a checkpoint
                // finishing right after is not missed.
                (finished, store.checkpoint_backlogged().then(|| self.checkpointed.notified()))
            }
            Err(e) => (Err(e.to_string()), None),
        };
        if let Some(checkpointed) = backlog {
            tracing::debug!(shard = self.index, "a write waits for the background checkpoint (backlog)");
            futures_lite::future::or(checkpointed, glommio::timer::sleep(CHECKPOINT_BACKLOG_WAIT_MAX)).await;
        }
        match finished {
            Ok(()) => response,
            Err(e) => handler::error_response(body, ErrorCode::InternalServerError, format!("apply a write: {e}")),
        }
    }

    /// Waits for the background checkpoint when dirty pages or WAL segments
    /// are backlogged (writers slow down to what checkpoints sustain).
    async fn backlog_wait(&self) {
        let backlog = match self.engine.read().await {
            Ok(engine) => engine.store_backlogged().then(|| self.checkpointed.notified()),
            Err(_) => None,
        };
        if let Some(checkpointed) = backlog {
            futures_lite::future::or(checkpointed, glommio::timer::sleep(CHECKPOINT_BACKLOG_WAIT_MAX)).await;
        }
    }

    /// (Shard 0.) Runs a catalog change, then brings every shard's catalog
    /// to the new state before answering.
    async fn catalog_change(&self, body: &[u8]) -> Vec<u8> {
        let response = self.execute_local(body).await;
        let tables = match self.engine.read().await {
            Ok(engine) => engine.tables(),
            Err(e) => return handler::error_response(body, ErrorCode::InternalServerError, e.to_string()),
        };
        for peer in 1..self.shards {
            if let Answer::Done(Err(e)) = self.call(peer, Op::Reconcile(tables.clone())).await.map_body_to_err() {
                let message = format!("shard {peer} did not take the catalog change: {e}");
                return handler::error_response(body, ErrorCode::InternalServerError, message);
            }
        }
        response
    }

    /// A Scan: each partition of the segment in turn, on its shard.
    async fn scan(&self, body: &[u8]) -> Vec<u8> {
        let job = match self.engine.read().await {
            Ok(engine) => handler::scan_job(&engine, body),
            Err(e) => return handler::error_response(body, ErrorCode::InternalServerError, e.to_string()),
        };
        let job = match job {
            Ok(job) => job,
            Err(response) => return response,
        };
        let mut page = Page::default();
        let mut after = job.after.clone();
        let placement = Placement { shard: self.index, shards: self.shards };
        for &partition in &job.partitions {
            let owner = placement.shard_of(partition);
            let part = if owner == self.index {
                self.scan_part_here(body, partition, after.take(), &mut page)
                    .await
                    .map(|full| (std::mem::take(&mut page), full))
            } else {
                let state = Page { items: Vec::new(), ..page.clone() };
                let op = Op::ScanPart { body: body.to_vec(), partition, after: after.take(), page: state };
                match self.call(owner, op).await {
                    Answer::ScanPart(result) => result.map(|(mut part, full)| {
                        let mut items = std::mem::take(&mut page.items);
                        items.append(&mut part.items);
                        part.items = items;
                        (part, full)
                    }),
                    other => Err(Response::error(ErrorCode::InternalServerError, format!("shard {owner}: {other:?}"))),
                }
            };
            match part {
                Ok((merged, full)) => {
                    page = merged;
                    if full {
                        break;
                    }
                }
                Err(response) => return handler::scan_answer(&job, Err(response)),
            }
        }
        handler::scan_answer(&job, Ok(page))
    }

    /// ClusterStatus: the replicas of every shard.
    async fn status(&self, body: &[u8]) -> Vec<u8> {
        let mut groups = Vec::new();
        let mut shard_endpoints = Vec::new();
        for peer in (0..self.shards).filter(|&p| p != self.index) {
            match self.call(peer, Op::Groups).await {
                Answer::Groups(endpoint, more) => {
                    shard_endpoints.push((peer, endpoint));
                    groups.extend(more);
                }
                other => {
                    let message = format!("shard {peer}: {other:?}");
                    return handler::error_response(body, ErrorCode::InternalServerError, message);
                }
            }
        }
        match self.engine.read().await {
            Ok(engine) => {
                groups.extend(handler::local_groups(&engine));
                groups.sort_by_key(|g| g.partition);
                let mut status = handler::node_status(&engine, groups);
                for (peer, endpoint) in shard_endpoints {
                    if let Some(slot) = usize::try_from(peer).ok().and_then(|i| status.shard_endpoints.get_mut(i)) {
                        *slot = endpoint;
                    }
                }
                handler::status_response(body, status)
            }
            Err(e) => handler::error_response(body, ErrorCode::InternalServerError, e.to_string()),
        }
    }

    /// BatchGetItem / BatchWriteItem: one sub-request per shard, at once.
    async fn batch(&self, body: &[u8]) -> Vec<u8> {
        let parts = match self.engine.read().await {
            Ok(engine) => handler::split_batch(&engine, body),
            Err(e) => return handler::error_response(body, ErrorCode::InternalServerError, e.to_string()),
        };
        let parts = match parts {
            Ok(parts) => parts,
            Err(response) => return response,
        };
        let calls = parts.into_iter().map(|(shard, sub)| async move {
            if shard == self.index {
                self.execute_local(&sub).await
            } else {
                self.forward(shard, Op::Handle(sub)).await
            }
        });
        let responses = futures_util::future::join_all(calls).await;
        handler::merge_batch(body, &responses)
    }
}

impl Answer {
    /// For catalog reconciliation: a body is an unexpected answer.
    fn map_body_to_err(self) -> Self {
        match self {
            Self::Body(_) | Self::ScanPart(_) | Self::Groups(..) | Self::SnapshotChunk(_) => {
                Self::Done(Err("unexpected answer".into()))
            }
            done @ Self::Done(_) => done,
        }
    }
}

/// The shard's background work (in the low-share task queue): spare WAL
/// segments, and the checkpoints the store's policy asks for, holding the
/// engine only to begin and to finish each one, never while its pages are
/// encoded or written. Stops when the shard stops.
async fn background_work(shard: Rc<Shard>) {
    let mut quiet = shard.quiet_checkpoint_after.map(QuietLooks::new);
    loop {
        // Made before the checks, so that a request made meanwhile is seen.
        let wanted = shard.background_wanted.notified();
        if shard.stopping.is_fired() {
            break;
        }
        let wal = match shard.engine.read().await {
            Ok(engine) => engine.wal(),
            Err(_) => break,
        };
        let mut failed = false;
        if let Err(e) = wal.replenish_pool().await {
            tracing::warn!(shard = shard.index, error = %e, "could not make a spare WAL segment");
            failed = true;
        }
        let began = Instant::now();
        match checkpoint_once(&shard, quiet.as_mut()).await {
            Ok(true) if !failed => {
                checkpoint_pause(&shard, began.elapsed()).await;
                continue;
            }
            Ok(_) => {}
            // The replica is poisoned; its writes fail from now on and say so.
            Err(e) => {
                tracing::error!(shard = shard.index, error = %e, "background checkpoint failed");
                failed = true;
            }
        }
        if failed {
            // Every write asks again; a failing disk is not retried (and
            // logged) once per write.
            futures_lite::future::or(glommio::timer::sleep(BACKGROUND_RETRY_AFTER), shard.stopping.wait()).await;
            continue;
        }
        let woken = futures_lite::future::or(wanted, shard.stopping.wait());
        match &quiet {
            // A write need not wake the task, so it looks again on time.
            Some(looks) => futures_lite::future::or(woken, glommio::timer::sleep(looks.next_in())).await,
            None => woken.await,
        }
    }
}

/// The background task's looks for a quiet shard: every `every`, it notes
/// where writes stand ([`ShardStore::quiet_watch`]); once a look finds that
/// no partition applied a write since the previous one, the partitions with
/// dirty pages are checkpointed in turn ([`ShardStore::quiet_checkpoint_due`]),
/// so between one and two `every` after the shard's last write.
#[derive(Debug)]
struct QuietLooks {
    every: Duration,
    looked_at: Instant,
    seen: QuietWatch,
}

impl QuietLooks {
    fn new(every: Duration) -> Self {
        Self { every, looked_at: Instant::now(), seen: QuietWatch::default() }
    }

    /// A partition to checkpoint, if it is time to look and the shard has
    /// been quiet since the previous look. The watch is taken again only
    /// once nothing is due, so that every dirty partition of a quiet shard
    /// is checkpointed in turn.
    fn due<D: crate::io::Disk>(&mut self, store: &ShardStore<D>) -> Option<u64> {
        if self.looked_at.elapsed() < self.every {
            return None;
        }
        let due = store.quiet_checkpoint_due(&self.seen);
        if due.is_none() && !store.checkpoint_in_flight() {
            self.seen = store.quiet_watch();
            self.looked_at = Instant::now();
        }
        if let Some(partition) = due {
            tracing::debug!(partition, "checkpointing a quiet partition");
        }
        due
    }

    /// How long until the next look.
    fn next_in(&self) -> Duration {
        self.every.saturating_sub(self.looked_at.elapsed()).max(Duration::from_millis(1))
    }
}

/// After a checkpoint, the background task rests as long as it took (at
/// most [`CHECKPOINT_PAUSE_MAX`]) before the next, unless writers are
/// backlogged. A WAL-driven round checkpoints every partition (8 × 32 MB
/// under YCSB A); back to back it saturated the shard's core for ~1.2 s,
/// and WAL commits and requests queued behind it.
async fn checkpoint_pause(shard: &Shard, took: Duration) {
    let backlogged = match shard.engine.read().await {
        Ok(engine) => engine.store().checkpoint_backlogged(),
        Err(_) => return,
    };
    let pause = checkpoint_pause_for(took, backlogged);
    if !pause.is_zero() {
        futures_lite::future::or(glommio::timer::sleep(pause), shard.stopping.wait()).await;
    }
}

/// How long to rest after a checkpoint that took `took`.
fn checkpoint_pause_for(took: Duration, backlogged: bool) -> Duration {
    if backlogged { Duration::ZERO } else { took.min(CHECKPOINT_PAUSE_MAX) }
}

/// One background checkpoint if one is due; whether there was one.
async fn checkpoint_once(shard: &Shard, quiet: Option<&mut QuietLooks>) -> Result<bool, String> {
    // Decided under the read lock: the write lock waits for the requests
    // holding the engine and holds back every new one, and the quiet looks
    // ask once a second, on nodes that may be serving nothing but reads
    // (which never take it otherwise).
    let partition = {
        let engine = shard.engine.read().await.map_err(|e| e.to_string())?;
        let store = engine.store();
        let due = store.checkpoint_due().or_else(|| quiet.and_then(|looks| looks.due(store)));
        let Some(partition) = due else { return Ok(false) };
        partition
    };
    let mut job = {
        let mut engine = shard.engine.write().await.map_err(|e| e.to_string())?;
        let store = engine.store_mut();
        // Dropped meanwhile (DeleteTable): the next pass decides again.
        if store.applied(partition).is_none() || store.checkpoint_in_flight() {
            return Ok(false);
        }
        store.begin_checkpoint(partition).map_err(|e| e.to_string())?
    };
    // Encoding takes a few µs a page; requests get the core, and the WAL
    // the disk, between slices.
    in_slices(|| job.prepare(1)).await;
    let written = job.write(CHECKPOINT_WRITES_IN_FLIGHT_MAX).await;
    let partition = job.partition();
    let (mut finished, wal) = match shard.engine.write().await {
        Ok(mut engine) => {
            let held = Instant::now();
            let finished = engine.store_mut().finish_checkpoint(job, written).map_err(|e| e.to_string());
            let finish_us = u64::try_from(held.elapsed().as_micros()).unwrap_or(u64::MAX);
            tracing::debug!(partition, finish_us, "checkpoint step 3 (engine held)");
            (finished, engine.wal())
        }
        Err(e) => return Err(e.to_string()),
    };
    shard.checkpointed.notify_all();
    // Freeing the decoded nodes took 1.2–1.7 ms in one piece (see Retired).
    if let Ok(done) = &mut finished {
        in_slices(|| done.retired.release(RETIRED_NODES_PER_STEP)).await;
    }
    if shard.repl.is_some() {
        cluster::before_reclaim(shard, partition).await?;
    }
    // Renames and directory syncs, without the engine: on a virtual disk a
    // directory sync may wait for the host to write back everything.
    wal.reclaim_below(finished?.reclaim_below).await.map_err(|e| e.to_string())?;
    Ok(true)
}

/// Runs `step` (a little work; true once there is none left) over and over
/// in slices of [`CHECKPOINT_SLICE`], letting requests run and the WAL
/// reach the disk between slices.
async fn in_slices(mut step: impl FnMut() -> bool) {
    loop {
        let slice_began = Instant::now();
        let mut done = false;
        while !done && slice_began.elapsed() < CHECKPOINT_SLICE {
            done = step();
        }
        if done {
            return;
        }
        glommio_disk::yield_to_reactor().await;
    }
}

/// Serves one connection: requests are read and started as they arrive
/// (many in flight, see IN_FLIGHT_PER_CONNECTION), responses are written as
/// they finish, matched by request id.
async fn connection(shard: Rc<Shard>, stream: TcpStream) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (tx, rx) = local_channel::new_unbounded::<Vec<u8>>();
    let write_task = glommio::spawn_local(async move {
        let mut out = Vec::with_capacity(READ_CHUNK_BYTES);
        while let Some(response) = rx.recv().await {
            out.clear();
            encode_frame(&response, &mut out);
            // Whatever else is ready goes out in the same write.
            while let Some(Some(more)) = futures_lite::future::poll_once(rx.recv()).await {
                encode_frame(&more, &mut out);
            }
            writer.write_all(&out).await?;
            writer.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let in_flight = Rc::new(Semaphore::new(IN_FLIGHT_PER_CONNECTION));
    let tx = Rc::new(tx);
    let decoder = FrameDecoder::new(FRAME_BODY_MAX_BYTES);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let read_result = 'read: loop {
        let mut consumed = 0;
        loop {
            let rest = buf.get(consumed..).unwrap_or(&[]);
            let span = match decoder.decode(rest) {
                Ok(Some(span)) => span,
                Ok(None) => break,
                Err(e) => break 'read Err(e.to_string()),
            };
            // The request's own buffer: verified and used in place from here.
            let body = rest.get(span.body_start..span.end).unwrap_or(&[]).to_vec();
            consumed += span.end;
            let permit = match in_flight.acquire_static_permit(1).await {
                Ok(permit) => permit,
                Err(e) => break 'read Err(e.to_string()),
            };
            let (shard, tx) = (Rc::clone(&shard), Rc::clone(&tx));
            glommio::spawn_local(async move {
                let response = shard.serve(body).await;
                let _ = tx.send(response).await;
                drop(permit);
            })
            .detach();
        }
        buf.drain(..consumed);
        let read = futures_lite::future::or(async { Some(reader.read(&mut chunk).await) }, async {
            shard.stopping.wait().await;
            None
        })
        .await;
        match read {
            None | Some(Ok(0)) => break Ok(()),
            Some(Ok(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
            Some(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Some(Err(e)) => break Err(e.to_string()),
        }
    };
    // Answer everything already read, then close.
    let _ = in_flight.acquire(IN_FLIGHT_PER_CONNECTION).await;
    drop(tx);
    let written = write_task.await;
    read_result?;
    written.map_err(|e| e.to_string())
}

/// A one-way local signal: `wait` resolves once `fire` was called. Each
/// pending wait keeps one waker, removed when the wait is dropped (a reader
/// polls a new wait per read, so wakers must not pile up: glommio counts
/// references to a task in an i16).
#[derive(Debug, Default)]
struct StopSignal {
    fired: Cell<bool>,
    next_waiter: Cell<u64>,
    waiters: RefCell<FxHashMap<u64, Waker>>,
}

impl StopSignal {
    fn is_fired(&self) -> bool {
        self.fired.get()
    }

    fn fire(&self) {
        self.fired.set(true);
        let waiters: Vec<Waker> = self.waiters.borrow_mut().drain().map(|(_, w)| w).collect();
        for waker in waiters {
            waker.wake();
        }
    }

    fn wait(&self) -> SignalWait<'_> {
        SignalWait { signal: self, id: None }
    }
}

struct SignalWait<'a> {
    signal: &'a StopSignal,
    id: Option<u64>,
}

impl Future for SignalWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            return Poll::Ready(());
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = self.signal.next_waiter.get();
                self.signal.next_waiter.set(id + 1);
                self.id = Some(id);
                id
            }
        };
        let mut waiters = self.signal.waiters.borrow_mut();
        match waiters.get_mut(&id) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                waiters.insert(id, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for SignalWait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.signal.waiters.borrow_mut().remove(&id);
        }
    }
}

/// The data directory of shard `index` (for tools and tests).
#[must_use]
pub fn shard_dir(data_dir: &Path, index: usize) -> PathBuf {
    data_dir.join(format!("shard-{index}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::{
        CHECKPOINT_PAUSE_MAX, DIRTY_BYTES_DEFAULT_RANGE, QuietLooks, ShardStore, StartProgress, StoreConfig,
        checkpoint_pause_for, dirty_bytes_default, disk_in_flight, parse_cpu_list, shard_cpus, thread_states,
    };

    #[test]
    fn a_starting_shard_says_its_step_and_the_work_counted_in_it() {
        let progress = StartProgress::new();
        assert_eq!(progress.get().0, "starting");
        progress.enter("applying committed Raft entries");
        progress.advance();
        progress.advance();
        let (step, lasted, done) = progress.get();
        assert_eq!((step, done), ("applying committed Raft entries", 2));
        assert!(lasted < Duration::from_secs(60));
        // A new step counts from zero again.
        progress.enter("binding the entry port");
        assert_eq!(progress.get().2, 0);
    }

    #[test]
    fn the_thread_report_names_each_thread_with_its_state() {
        let states = std::thread::Builder::new()
            .name("keel-probe".into())
            .spawn(thread_states)
            .expect("spawn")
            .join()
            .expect("join");
        // The asking thread is running ("R"); this test's own thread waits
        // for it to end.
        let probe = states.split("; ").find(|t| t.contains(" keel-probe ")).unwrap_or_else(|| panic!("{states}"));
        assert!(probe.contains(" keel-probe R"), "{probe}");
        assert!(states.split("; ").count() >= 2, "{states}");
    }

    #[test]
    fn the_disk_report_gives_two_counts_for_a_real_disk_and_unknown_otherwise() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let report = disk_in_flight(dir);
        // Reads and writes in flight, or "unknown" where sysfs has no such
        // device (a container's overlay); never anything else.
        let counts: Vec<_> = report.split(' ').map(str::parse::<u64>).collect();
        assert!(report == "unknown" || (counts.len() == 2 && counts.iter().all(Result::is_ok)), "{report}");
        assert_eq!(disk_in_flight(&dir.join("no-such-directory")), "unknown");
    }

    #[test]
    fn cpu_lists_are_read_as_taskset_writes_them() {
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("0-3"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("3,0-1, 1"), Some(vec![0, 1, 3]), "sorted, without repeats");
        for bad in ["", "x", "3-1", "1-", "-1", "1,,2", "4096"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?} is not a CPU list");
        }
    }

    #[test]
    fn shards_are_pinned_to_the_cpus_the_process_is_allowed_in_order() {
        assert_eq!(shard_cpus(&[0, 1, 2, 3], 2, true), vec![Some(0), Some(1)]);
        assert_eq!(shard_cpus(&[1], 1, true), vec![Some(1)]);
        assert_eq!(shard_cpus(&[2, 5, 7], 3, true), vec![Some(2), Some(5), Some(7)]);
        // Too few CPUs allowed, an unreadable mask, or pinning off: unpinned.
        assert_eq!(shard_cpus(&[2, 5], 3, true), vec![None, None, None]);
        assert_eq!(shard_cpus(&[], 1, true), vec![None]);
        assert_eq!(shard_cpus(&[0, 1], 2, false), vec![None, None]);
    }

    #[test]
    fn background_checkpoints_rest_as_long_as_they_took_unless_writers_are_backlogged() {
        let took = Duration::from_millis(120);
        assert_eq!(checkpoint_pause_for(took, false), took);
        assert_eq!(checkpoint_pause_for(took, true), Duration::ZERO);
        assert_eq!(checkpoint_pause_for(CHECKPOINT_PAUSE_MAX * 4, false), CHECKPOINT_PAUSE_MAX);
    }

    #[test]
    fn a_quiet_shard_s_partitions_are_checkpointed_in_turn_once_a_look_finds_no_write_since_the_last() {
        use crate::io::sim::SimDisk;
        futures_lite::future::block_on(async {
            let mut store = ShardStore::open(SimDisk::new(4), StoreConfig::new("/s")).await.expect("open");
            for p in [1, 2] {
                store.create_partition(p).await.expect("create");
                store.put(p, b"k", &[1; 10]).await.expect("put");
            }
            // Looking every hour: never time to look in this test.
            let mut hourly = QuietLooks::new(Duration::from_secs(3600));
            assert_eq!(hourly.due(&store), None);
            // Looking at every call: the first look only takes the watch.
            let mut looks = QuietLooks::new(Duration::ZERO);
            assert_eq!(looks.due(&store), None);
            store.put(1, b"k", &[2; 10]).await.expect("put");
            assert_eq!(looks.due(&store), None, "1 applied a write since the look: the watch is taken again");
            let first = looks.due(&store).expect("quiet since the last look");
            store.checkpoint(first).await.expect("checkpoint");
            // The same watch names the other one at once.
            let second = looks.due(&store).expect("the other partition, in turn");
            assert_ne!(first, second);
            store.checkpoint(second).await.expect("checkpoint");
            assert_eq!(looks.due(&store), None, "nothing is dirty");
        });
    }

    #[test]
    fn the_default_dirty_limit_is_an_eighth_of_memory_per_shard_within_its_range() {
        let (least, most) = DIRTY_BYTES_DEFAULT_RANGE;
        let gib = 1u64 << 30;
        assert_eq!(dirty_bytes_default(Some(4 * gib), 1), 512 << 20);
        assert_eq!(dirty_bytes_default(Some(4 * gib), 2), 256 << 20);
        assert_eq!(dirty_bytes_default(Some(24 * gib), 1), most);
        assert_eq!(dirty_bytes_default(Some(gib), 4), least);
        assert_eq!(dirty_bytes_default(None, 1), least);
        assert_eq!(dirty_bytes_default(Some(24 * gib), 0), most);
    }
}
