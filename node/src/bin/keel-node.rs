//! `keel-node`: the storage node daemon. In standalone mode one node is a
//! whole database: a durable table catalog and every partition of every
//! table, spread over one shard (glommio executor) per core, speaking Keel's
//! binary protocol (frames of FlatBuffers; see docs/format/frame.md). With
//! `--initial-cluster` and `--node-id` it is one member of a cluster whose
//! partitions (and catalog) are Raft groups with a replica in each of three
//! availability zones.
//!
//! Settings come from flags, then `KEEL_*` environment variables, then the
//! TOML file given with `--config` (see ops/keel-node.toml), then defaults.
//!
//! SIGTERM and SIGINT stop accepting connections, answer the requests in
//! flight, checkpoint every partition and exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use keel_node::io::glommio_disk::DurableWrites;
use keel_node::repl::membership::Cluster;
use keel_node::server::{ClusterConfig, Listening, NodeConfig, run};
use serde::Deserialize;

/// Every request allocates (buffers, decoded keys, B-tree nodes) on the
/// shards' threads; mimalloc's thread-local free lists cost a fraction of
/// glibc malloc's (about a fifth of a shard's time went to glibc malloc
/// under YCSB workload A).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "keel-node", version, about = "Keel storage node")]
struct Args {
    /// A TOML file with any of the settings below (flags win over it).
    #[arg(long, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
    /// Serve a whole database from this node (catalog and every partition).
    /// The default without --initial-cluster; accepted for clarity.
    #[arg(long, conflicts_with = "initial_cluster")]
    standalone: bool,
    /// Every member of the cluster: `name=host:port/az,…`, where host:port
    /// is the member's replication address (peers connect there) and az its
    /// availability zone. Every member is started with the same list.
    #[arg(long, env = "KEEL_INITIAL_CLUSTER", requires = "node_id")]
    initial_cluster: Option<String>,
    /// This node's name in --initial-cluster.
    #[arg(long, env = "KEEL_NODE_ID")]
    node_id: Option<String>,
    /// Raft tick in milliseconds (heartbeats every 2 ticks, elections after
    /// 10 to 20 silent ticks). Default: 100.
    #[arg(long)]
    raft_tick_ms: Option<u64>,
    /// Milliseconds a partition's leader waits for a silent replica before
    /// replacing it with a log replica on another node itself; 0: never (a
    /// control plane, which sees every node's load, asks for replacements
    /// instead; `keel dev` runs its nodes so). Default: 3000.
    #[arg(long)]
    self_heal_after_ms: Option<u64>,
    /// Where the node keeps its WAL and B-tree files (never on tmpfs).
    /// Default: keel-data.
    #[arg(long, env = "KEEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The entry port's address. Default: 127.0.0.1:7400.
    #[arg(long, env = "KEEL_LISTEN")]
    listen: Option<SocketAddr>,
    /// First port of the shards' own ports (shard i: base + i). Default:
    /// the entry port + 1.
    #[arg(long)]
    shard_port_base: Option<u16>,
    /// Shards (one executor each). Default: every CPU. Fixed when the data
    /// directory is created.
    #[arg(long, env = "KEEL_SHARDS")]
    shards: Option<usize>,
    /// Do not pin shard i to the i-th CPU the process may use (its
    /// affinity mask: taskset, systemd's CPUAffinity=).
    #[arg(long)]
    no_pin: bool,
    /// The CPUs to pin the shards to, in order, as taskset lists them
    /// (`1`, `2-5`, `0,2`). Only the shards are pinned; the node's other
    /// threads may run on any CPU. Default: the CPUs the process may use.
    #[arg(long)]
    cpus: Option<String>,
    /// Page cache per shard, in MiB. Default: 256.
    #[arg(long)]
    page_cache_mb: Option<usize>,
    /// Dirty B-tree MiB per shard before a background checkpoint (writers
    /// wait only at twice this). Default: an eighth of physical memory
    /// shared by the shards, 128 to 1024.
    #[arg(long)]
    dirty_mb: Option<usize>,
    /// Milliseconds without a write after which a shard checkpoints its
    /// partitions whatever their dirty pages (reads are cheaper from clean
    /// pages, and the WAL behind them is reclaimed); 0: never. Default: 1000.
    #[arg(long)]
    quiet_checkpoint_ms: Option<u64>,
    /// Partitions of a table whose CreateTable does not say. Default: 4.
    #[arg(long)]
    partitions_default: Option<u32>,
    /// Seconds stopping waits for in-flight requests. Default: 10.
    #[arg(long)]
    drain_timeout_s: Option<u64>,
    /// How WAL commits are made durable: `ring` (an O_DSYNC write through
    /// io_uring; the shard serves other requests meanwhile) or `inline` (a
    /// blocking O_DSYNC write on the shard's thread: faster commits on a
    /// disk without FUA, but the shard serves nothing while the disk works,
    /// and a disk stall stalls all its requests). Default: ring.
    #[arg(long, value_enum)]
    wal_sync: Option<WalSync>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    initial_cluster: Option<String>,
    node_id: Option<String>,
    raft_tick_ms: Option<u64>,
    self_heal_after_ms: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    shard_port_base: Option<u16>,
    shards: Option<usize>,
    pin: Option<bool>,
    cpus: Option<String>,
    page_cache_mb: Option<usize>,
    dirty_mb: Option<usize>,
    quiet_checkpoint_ms: Option<u64>,
    partitions_default: Option<u32>,
    drain_timeout_s: Option<u64>,
    wal_sync: Option<WalSync>,
    log_json: Option<bool>,
}

/// `--wal-sync` / `wal_sync`.
#[derive(Debug, Clone, Copy, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WalSync {
    Ring,
    Inline,
}

fn read_config_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid keel-node config", path.display()))
}

fn main() -> anyhow::Result<()> {
    // A panic anywhere takes the whole node down (fail-stop). A node with
    // one shard's thread gone and the others still answering looks alive to
    // its peers, the control plane and its supervisor, while the replicas on
    // that shard never answer again and nobody replaces them. Acknowledged
    // writes are durable already; the restart replays the WAL.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    keel_node::server::keep_freed_memory();
    let thp = keel_node::server::disable_transparent_huge_pages();
    let args = Args::parse();
    let file = match &args.config {
        Some(path) => read_config_file(path)?,
        None => FileConfig::default(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json || file.log_json == Some(true) {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    if let Err(e) = thp {
        tracing::warn!(error = %e, "could not turn transparent huge pages off; expect stalls of milliseconds when memory grows");
    }
    let data_dir = args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("keel-data"));
    let listen = args.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400)));
    let mut config = NodeConfig::new(data_dir, listen);
    config.shard_port_base = args.shard_port_base.or(file.shard_port_base);
    if let Some(shards) = args.shards.or(file.shards) {
        config.shards = shards;
    }
    config.pin = !args.no_pin && file.pin.unwrap_or(true);
    if let Some(list) = args.cpus.or(file.cpus) {
        let cpus = keel_node::server::parse_cpu_list(&list)
            .with_context(|| format!("cpus {list:?} is not a CPU list (such as 1, 2-5 or 0,2)"))?;
        config.cpus = Some(cpus);
    }
    if let Some(mb) = args.page_cache_mb.or(file.page_cache_mb) {
        config.page_cache_bytes = mb.checked_mul(1024 * 1024).context("page cache size overflows")?;
    }
    if let Some(mb) = args.dirty_mb.or(file.dirty_mb) {
        config.dirty_bytes_max = Some(mb.max(1).checked_mul(1024 * 1024).context("dirty size overflows")?);
    }
    if let Some(ms) = args.quiet_checkpoint_ms.or(file.quiet_checkpoint_ms) {
        config.quiet_checkpoint_after = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(partitions) = args.partitions_default.or(file.partitions_default) {
        anyhow::ensure!((1..=1024).contains(&partitions), "partitions_default must be 1 to 1024");
        config.partitions_default = partitions;
    }
    if let Some(seconds) = args.drain_timeout_s.or(file.drain_timeout_s) {
        config.drain_timeout = Duration::from_secs(seconds);
    }
    config.durable_writes = match args.wal_sync.or(file.wal_sync) {
        None | Some(WalSync::Ring) => DurableWrites::Ring,
        Some(WalSync::Inline) => DurableWrites::Inline,
    };
    let initial_cluster = if args.standalone { None } else { args.initial_cluster.or(file.initial_cluster) };
    if let Some(spec) = initial_cluster {
        let cluster = Cluster::parse(&spec).context("--initial-cluster")?;
        let node = args.node_id.or(file.node_id).context("--initial-cluster needs --node-id")?;
        let mut cluster_config = ClusterConfig::new(cluster, node);
        cluster_config.member().context("--node-id")?;
        if let Some(ms) = args.raft_tick_ms.or(file.raft_tick_ms) {
            anyhow::ensure!((10..=10_000).contains(&ms), "raft_tick_ms must be 10 to 10000");
            cluster_config.tick = Duration::from_millis(ms);
        }
        if let Some(ms) = args.self_heal_after_ms.or(file.self_heal_after_ms) {
            anyhow::ensure!(ms <= 3_600_000, "self_heal_after_ms must be at most 3600000 (0: never)");
            cluster_config.heal_after = (ms > 0).then(|| Duration::from_millis(ms));
        }
        config.cluster = Some(cluster_config);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("install signal handler")?;
    }
    run(config, stop, |listening: &Listening| {
        // Tests and scripts wait for these lines on stdout.
        for (shard, address) in listening.shards.iter().enumerate() {
            println!("keel-node shard {shard} listening on {address}");
        }
        println!("keel-node listening on {}", listening.entry);
    })
}
