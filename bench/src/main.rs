//! `keel-bench`: YCSB's core workloads against Keel and peers (see
//! docs/bench/README.md), the disk's limit beside Keel's WAL, and a plain
//! PutItem/GetItem load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use keel_bench::driver::{Driver, KeelDriver, RedisDriver};
use keel_bench::pacer::OpenLoop;
use keel_bench::report::{self, Report};
use keel_bench::runner::{self, PhaseCpu, PhaseResult, RecordShape, RunConfig};
use keel_bench::workload::{Distribution, InsertSequence, Workload};
use keel_bench::{disk, host, servers};
use keel_wire::client::Client;
use keel_wire::item::{AttributeValue, Item};
use keel_wire::protocol::{ErrorCode, KeyKind};
use rand::{Rng, SeedableRng};

/// The generator allocates for every operation (requests, decoded items,
/// replies), for both targets alike: with glibc malloc about an eighth of
/// its time went to malloc and free under YCSB C.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "keel-bench", version, about = "Keel benchmark suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start Keel and its peers, load them, run workloads interleaved, write results.
    Compare(CompareArgs),
    /// Run workloads against one target that is already serving.
    Run(RunArgs),
    /// The disk's limit (fio) beside Keel's WAL on the same directory.
    Disk(DiskArgs),
    /// Closed-loop PutItem/GetItem load against a running keel-node.
    Load(LoadArgs),
    /// From a saved results.json (of `compare` or `run`): its tables
    /// printed, its summary.md and plots written beside it again, and with
    /// `--update-docs` the docs' results section rewritten, as the run
    /// itself would have.
    Report(ReportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// keel-node through the binary-protocol client.
    Keel,
    /// redis-server through RESP.
    Redis,
}

#[derive(Debug, Clone, clap::Args)]
struct WorkloadArgs {
    /// YCSB core workloads (a–f), in order.
    #[arg(long, value_delimiter = ',', default_value = "a,c")]
    workloads: Vec<String>,
    /// Override the workloads' key distribution (uniform, zipfian, latest).
    #[arg(long)]
    distribution: Option<String>,
    /// Records loaded before the runs.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Seconds per run phase.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Operations per run phase at most.
    #[arg(long)]
    operations: Option<u64>,
    /// Closed loop: concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Open loop: operations per second (all clients together), released
    /// by a timer and taken by whichever client is free; latencies then
    /// count from each operation's release, waiting for a client included.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: the pacer's tick in µs. Operations due within one tick
    /// are released together; 1000 gives the millisecond bursts of
    /// generators built on millisecond timers (wrk2, and keel-bench before
    /// its pacer).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    tick_us: u64,
    /// Connections per target (per generator thread).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Threads of the load generator, each with its own event loop and
    /// `--connections` connections per target, every phase's clients dealt
    /// out among them. One (the default) keeps it off the servers' cores on
    /// a small machine; on a larger one a single thread caps what it can
    /// offer (about 170,000 reads a second on the 2-core VM), so give it
    /// more, and `compare` gives keel-node as many fewer shards.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    generator_threads: u16,
    /// Fields per record.
    #[arg(long, default_value_t = 10)]
    fields: usize,
    /// Bytes per field.
    #[arg(long, default_value_t = 100)]
    field_bytes: usize,
    /// Seed of the generators.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write results.json, summary.md and plots here.
    #[arg(long, default_value = "target/keel-bench/results")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// Targets, in order (the first is compared with the second).
    #[arg(long, value_delimiter = ',', default_value = "keel,redis")]
    targets: Vec<Target>,
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Rounds: every workload runs on every target this many times, interleaved.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// After the closed-loop rounds, run every workload on every target
    /// again, as many rounds, in open loop at this fraction of the target's
    /// own peak on it (its median closed-loop ops/s): the tail at a load
    /// the target sustains (0.5: "at half of peak"). A second table
    /// reports it.
    #[arg(long, conflicts_with = "rate", value_parser = parse_fraction)]
    tail_at: Option<f64>,
    /// keel-node shards. Default: every CPU but one per thread of the load
    /// generator, which needs them (Redis, single-threaded, uses one core
    /// either way).
    #[arg(long)]
    shards: Option<usize>,
    /// Where the servers keep their data (a real disk, not tmpfs).
    #[arg(long, default_value = "target/keel-bench")]
    dir: PathBuf,
    /// CPUs for the servers' main threads, as taskset lists them (`1`,
    /// `2-3`, `1,3`): keel-node pins its shards there (`--cpus`, one shard
    /// each unless `--shards` says otherwise) and Redis its main thread
    /// (`server_cpulist`); their other threads may run anywhere. The load
    /// generator runs on the other CPUs. Default: no placement (keel-node
    /// pins shard i to the i-th CPU; the scheduler places the rest).
    #[arg(long)]
    server_cpus: Option<String>,
    /// keel-node's `--wal-sync`: `ring` (its default) or `inline` (see
    /// `keel-node --help` and docs/bench/README.md for the trade).
    #[arg(long, default_value = "ring", value_parser = ["ring", "inline"])]
    keel_wal_sync: String,
    /// Rewrite the results section of this Markdown file (docs/bench/README.md).
    #[arg(long)]
    update_docs: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// What is serving at `--endpoint`.
    #[arg(long, value_enum)]
    target: Target,
    /// host:port.
    #[arg(long, default_value = "127.0.0.1:7400")]
    endpoint: String,
    /// The records are loaded already.
    #[arg(long)]
    no_load: bool,
    /// The server's process id (on this machine): its CPU time over each
    /// phase goes into results.json and the CPU-per-operation table, as in
    /// `compare`.
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    workload: WorkloadArgs,
}

#[derive(Debug, clap::Args)]
struct DiskArgs {
    /// Directory to measure (a real disk, not tmpfs).
    #[arg(long, default_value = "target/keel-bench")]
    dir: PathBuf,
    /// Rewrite the disk section of this Markdown file (docs/bench/README.md).
    #[arg(long)]
    update_docs: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// The results.json a run wrote (its directory gets summary.md and the
    /// plots).
    #[arg(long, default_value = "target/keel-bench/results/results.json")]
    results: PathBuf,
    /// Rewrite the results section of this Markdown file (docs/bench/README.md).
    #[arg(long)]
    update_docs: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// PutItem of random existing keys (overwrites).
    Put,
    /// GetItem of random existing keys.
    Get,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Endpoint (a keel-node entry port; several, comma-separated, for the
    /// nodes of a cluster).
    #[arg(long, default_value = "127.0.0.1:7400")]
    endpoint: String,
    /// Table (created with `--partitions` if missing).
    #[arg(long, default_value = "bench")]
    table: String,
    /// Partitions of the table when it is created.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Items loaded before the phases.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Bytes of the value attribute of each item.
    #[arg(long, default_value_t = 1000)]
    value_bytes: usize,
    /// Concurrent closed-loop clients (requests in flight).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections in the client's pool.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Phases, in order.
    #[arg(long, value_delimiter = ',', default_value = "put,get")]
    phases: Vec<Phase>,
    /// Skip loading (the table already holds the records).
    #[arg(long)]
    no_load: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// A connected driver of any target.
#[derive(Debug, Clone)]
enum AnyDriver {
    Keel(KeelDriver),
    Redis(RedisDriver),
}

impl AnyDriver {
    async fn connect(target: Target, endpoint: &str, connections: usize) -> anyhow::Result<Self> {
        Ok(match target {
            Target::Keel => Self::Keel(KeelDriver::connect(endpoint, connections, 8).await?),
            Target::Redis => Self::Redis(RedisDriver::connect(endpoint, connections).await?),
        })
    }

    async fn load(&self, records: u64, config: &RunConfig) -> std::io::Result<PhaseResult> {
        match self {
            Self::Keel(d) => runner::load(d, records, config).await,
            Self::Redis(d) => runner::load(d, records, config).await,
        }
    }

    async fn run(
        &self,
        workload: &Workload,
        config: &RunConfig,
        inserts: Arc<InsertSequence>,
    ) -> std::io::Result<PhaseResult> {
        match self {
            Self::Keel(d) => runner::run(d, workload, config, inserts).await,
            Self::Redis(d) => runner::run(d, workload, config, inserts).await,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Keel(d) => d.name(),
            Self::Redis(d) => d.name(),
        }
    }
}

impl WorkloadArgs {
    fn workloads(&self) -> anyhow::Result<Vec<Workload>> {
        let distribution = self
            .distribution
            .as_deref()
            .map(|d| Distribution::parse(d).with_context(|| format!("unknown distribution {d:?}")))
            .transpose()?;
        self.workloads
            .iter()
            .map(|w| {
                let workload = Workload::core(w).with_context(|| format!("unknown workload {w:?} (a–f)"))?;
                Ok(distribution.map_or(workload.clone(), |d| workload.with_distribution(d)))
            })
            .collect()
    }

    fn config(&self) -> RunConfig {
        RunConfig {
            clients: self.clients,
            duration: Some(Duration::from_secs(self.duration_s)),
            operations: self.operations,
            open_loop: self.rate.map(|rate| OpenLoop { rate, tick: Duration::from_micros(self.tick_us) }),
            shape: RecordShape { fields: self.fields, field_bytes: self.field_bytes },
            seed: self.seed,
            threads: self.generator_threads.into(),
        }
    }
}

fn print_phase(phase: &PhaseResult) {
    let l = &phase.latency_us;
    let errors: u64 = phase.errors.values().sum();
    eprintln!(
        "{:<6} {:<5} {:>9.0} ops/s  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>7} µs  max {:>8} µs  errors {errors}  \
         host steal {} ms{}",
        phase.target,
        phase.workload,
        phase.ops_per_s,
        l.p50,
        l.p99,
        l.p999,
        l.max,
        phase.steal_ms,
        phase.rate.map_or(String::new(), |rate| format!("  (open loop at {rate:.0} ops/s)"))
    );
}

fn finish(report: &Report, out: &std::path::Path, update_docs: Option<&PathBuf>) -> anyhow::Result<()> {
    report::write(report, out)?;
    publish(report, out, update_docs)
}

/// `keel-bench report`: a saved run's files and docs section made again
/// (the results file itself is left as it is).
fn report_command(args: &ReportArgs) -> anyhow::Result<()> {
    let report = report::read(&args.results)?;
    let dir = args.results.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    report::write_summary(&report, dir)?;
    publish(&report, dir, args.update_docs.as_ref())
}

/// Prints a run's tables and rewrites the docs section from them.
fn publish(report: &Report, out: &std::path::Path, update_docs: Option<&PathBuf>) -> anyhow::Result<()> {
    let table = report::summary_table(report) + &report::tail_table(report) + &report::cpu_table(report);
    let steal = report::steal_lines(report) + &report::server_event_lines(report);
    println!("{table}{steal}");
    println!("results in {}", out.display());
    if let Some(path) = update_docs {
        let section = format!(
            "Measured {} at commit {} on {}.\n\nCommand: `{}`\n\n{table}{steal}",
            report.date,
            report.commit,
            report.machine_line(),
            report.command
        );
        report::update_docs(path, "results", &section)?;
        println!("updated {}", path.display());
    }
    Ok(())
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.targets.is_empty(), "no targets");
    let workloads = args.workload.workloads()?;
    servers::check_real_disk(&args.dir)?;
    // Before the generator's other threads start: they keep off the
    // servers' CPUs.
    let placement = args.server_cpus.as_deref().map(place_servers).transpose()?;
    let mut running = Vec::new();
    let mut drivers = Vec::new();
    for target in &args.targets {
        let server = match target {
            Target::Keel => {
                let shards = args.shards.or(placement.as_ref().map(|p| p.servers.len())).unwrap_or_else(|| {
                    let generator = usize::from(args.workload.generator_threads);
                    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(generator).max(1))
                });
                servers::keel_node(
                    &servers::keel_node_binary()?,
                    &args.dir,
                    &servers::KeelOptions { shards, wal_sync: args.keel_wal_sync.clone() },
                    placement.as_ref(),
                )?
            }
            Target::Redis => servers::redis(&args.dir, placement.as_ref())?,
        };
        drivers.push(AnyDriver::connect(*target, &server.endpoint, args.workload.connections).await?);
        running.push(server);
    }
    let config = args.workload.config();
    let mut phases = Vec::new();
    let mut inserts = Vec::new();
    for (driver, server) in drivers.iter().zip(&mut running) {
        let before = cpu_now(server.cpu_ms());
        let mut loaded = driver.load(args.workload.records, &config).await?;
        loaded.cpu = cpu_since(before, cpu_now(server.cpu_ms()));
        loaded.server_events = server.events_during(&loaded);
        print_phase(&loaded);
        phases.push(loaded);
        inserts.push(Arc::new(InsertSequence::new(args.workload.records)));
    }
    // The closed-loop rounds (each target's peak), then, with `--tail-at`,
    // the same rounds in open loop at that fraction of each peak.
    for of_peak in std::iter::once(None).chain(args.tail_at.map(Some)) {
        for _round in 0..args.rounds.max(1) {
            for workload in &workloads {
                for ((driver, inserts), server) in drivers.iter().zip(&inserts).zip(&mut running) {
                    let config = match of_peak {
                        None => config,
                        Some(fraction) => {
                            let peak = report::peak(&phases, &workload.name, driver.name())
                                .context("a tail phase needs the target's closed-loop phase")?;
                            let tick = Duration::from_micros(args.workload.tick_us);
                            RunConfig { open_loop: Some(OpenLoop { rate: (peak * fraction).max(1.0), tick }), ..config }
                        }
                    };
                    let before = cpu_now(server.cpu_ms());
                    let mut phase = driver.run(workload, &config, Arc::clone(inserts)).await?;
                    phase.cpu = cpu_since(before, cpu_now(server.cpu_ms()));
                    phase.of_peak = of_peak;
                    phase.server_events = server.events_during(&phase);
                    print_phase(&phase);
                    phases.push(phase);
                }
            }
        }
    }
    drop(running);
    let mut report = Report::new(args.workload.records, phases);
    report.server_cpus = placement.map(|p| p.servers);
    report.generator_threads = args.workload.generator_threads.into();
    finish(&report, &args.workload.out, args.update_docs.as_ref())
}

/// The CPU time the server (`server_ms`, read by the caller) and this
/// process (the load generator) have spent so far, in ms; `None` where
/// `/proc` does not say.
fn cpu_now(server_ms: Option<u64>) -> Option<(u64, u64)> {
    Some((server_ms?, host::read_process_cpu_ms(std::process::id())?))
}

/// The CPU time each spent between two readings of [`cpu_now`].
fn cpu_since(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<PhaseCpu> {
    let ((server_before, generator_before), (server_after, generator_after)) = before.zip(after)?;
    Some(PhaseCpu {
        server_ms: server_after.saturating_sub(server_before),
        generator_ms: generator_after.saturating_sub(generator_before),
    })
}

/// A fraction of a peak: above 0, at most 1.
fn parse_fraction(text: &str) -> Result<f64, String> {
    let fraction: f64 = text.parse().map_err(|e| format!("{text:?} is not a number: {e}"))?;
    if fraction > 0.0 && fraction <= 1.0 { Ok(fraction) } else { Err(format!("{fraction} is not in (0, 1]")) }
}

/// Parses `--server-cpus` and moves this process (the load generator, and
/// the threads it starts from now on) onto the other CPUs it may use.
fn place_servers(list: &str) -> anyhow::Result<servers::Placement> {
    let servers =
        keel_node::server::parse_cpu_list(list).with_context(|| format!("--server-cpus {list:?} is not a CPU list"))?;
    let allowed = host::allowed_cpus();
    anyhow::ensure!(
        servers.iter().all(|cpu| allowed.contains(cpu)),
        "--server-cpus {list}: this process may use CPUs {} only",
        host::cpu_list(&allowed)
    );
    let generator: Vec<usize> = allowed.iter().copied().filter(|cpu| !servers.contains(cpu)).collect();
    anyhow::ensure!(!generator.is_empty(), "--server-cpus {list} leaves no CPU for the load generator");
    host::run_only_on(&generator)?;
    eprintln!(
        "keel-bench: servers' main threads on CPUs {}, load generator on CPUs {}",
        host::cpu_list(&servers),
        host::cpu_list(&generator)
    );
    Ok(servers::Placement { servers, everywhere: allowed })
}

async fn run_one(args: RunArgs) -> anyhow::Result<()> {
    let workloads = args.workload.workloads()?;
    // Checked before connecting: a wrong pid is refused whether or not the
    // endpoint answers.
    if let Some(pid) = args.server_pid {
        anyhow::ensure!(host::read_process_cpu_ms(pid).is_some(), "--server-pid {pid}: no such process here");
    }
    let driver = AnyDriver::connect(args.target, &args.endpoint, args.workload.connections).await?;
    let server_cpu = || args.server_pid.and_then(host::read_process_cpu_ms);
    let mut phases = Vec::new();
    if !args.no_load {
        let before = cpu_now(server_cpu());
        let mut loaded = driver.load(args.workload.records, &args.workload.config()).await?;
        loaded.cpu = cpu_since(before, cpu_now(server_cpu()));
        print_phase(&loaded);
        phases.push(loaded);
    }
    let inserts = Arc::new(InsertSequence::new(args.workload.records));
    let config = args.workload.config();
    for workload in &workloads {
        let before = cpu_now(server_cpu());
        let mut phase = driver.run(workload, &config, Arc::clone(&inserts)).await?;
        phase.cpu = cpu_since(before, cpu_now(server_cpu()));
        print_phase(&phase);
        phases.push(phase);
    }
    eprintln!("target: {}", driver.name());
    let mut report = Report::new(args.workload.records, phases);
    report.generator_threads = args.workload.generator_threads.into();
    finish(&report, &args.workload.out, None)
}

fn disk_command(args: &DiskArgs) -> anyhow::Result<()> {
    servers::check_real_disk(&args.dir)?;
    let dir = args.dir.join("disk");
    std::fs::create_dir_all(&dir)?;
    let mut figures = disk::fio_figures(&dir)?;
    figures.extend(disk::keel_wal_figures(&dir)?);
    let table = disk::table(&figures);
    println!("{table}");
    if let Some(path) = &args.update_docs {
        let report = Report::new(0, Vec::new());
        let section = format!(
            "Measured {} at commit {} on {}, directory `{}`.\n\n{table}",
            report.date,
            report.commit,
            report.machine_line(),
            args.dir.display()
        );
        report::update_docs(path, "disk", &section)?;
        println!("updated {}", path.display());
    }
    Ok(())
}

fn key_of(i: u64) -> Item {
    Item::from([("id".to_owned(), AttributeValue::S(format!("k{i}")))])
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let mut config = keel_bench::driver::client_config(&args.endpoint);
    config.connections = args.connections;
    config.in_flight_max = args.clients.max(1);
    let client = Client::connect(config).await.with_context(|| format!("connect to {}", args.endpoint))?;
    match client.create_table(&args.table, ("id", KeyKind::S), None, args.partitions).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::ResourceInUseException) => {}
        Err(e) => return Err(e).context("create the table"),
    }
    let value = "x".repeat(args.value_bytes);
    let records = args.records.max(1);
    let mut lines = Vec::new();
    let mut phases: Vec<(&str, bool)> = Vec::new();
    if !args.no_load {
        phases.push(("load", true));
    }
    phases.extend(args.phases.iter().map(|p| match p {
        Phase::Put => ("put", true),
        Phase::Get => ("get", false),
    }));
    for (name, write) in phases {
        let sequential = name == "load";
        let deadline = (!sequential).then(|| Instant::now() + Duration::from_secs(args.duration_s));
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..args.clients.max(1) {
            let (client, table, value, next) = (client.clone(), args.table.clone(), value.clone(), Arc::clone(&next));
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(c as u64);
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                loop {
                    let i = if sequential {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= records {
                            break;
                        }
                        i
                    } else {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        rng.random_range(0..records)
                    };
                    let began = Instant::now();
                    if write {
                        let mut item = key_of(i);
                        item.insert("v".into(), AttributeValue::S(value.clone()));
                        client.put_item(&table, item).send().await?;
                    } else {
                        client.get_item(&table, key_of(i), None, Vec::new(), false).await?.context("missing item")?;
                    }
                    histogram.saturating_record(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX).max(1));
                }
                Ok::<_, anyhow::Error>(histogram)
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for task in tasks {
            all.add(&task.await??)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let q = |q: f64| all.value_at_quantile(q);
        #[allow(clippy::cast_precision_loss)]
        let ops_per_s = all.len() as f64 / seconds;
        lines.push(serde_json::json!({
            "phase": name, "ops": all.len(), "seconds": seconds, "ops_per_s": ops_per_s.round(),
            "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99.9": q(0.999), "max": all.max()},
        }));
        if !args.json {
            println!(
                "{name:<5} {ops_per_s:>9.0} ops/s  p50 {:>6} µs  p90 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  max {:>7} µs",
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                all.max()
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"endpoint": args.endpoint, "phases": lines}))?);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // As keel-node does (see there why); the servers started from here
    // inherit it.
    if let Err(e) = keel_node::server::disable_transparent_huge_pages() {
        eprintln!("keel-bench: transparent huge pages stay on ({e}); expect rare multi-millisecond stalls");
    }
    let cli = Cli::parse();
    if let Command::Disk(args) = &cli.command {
        return disk_command(args);
    }
    if let Command::Report(args) = &cli.command {
        return report_command(args);
    }
    // One thread: on a small machine the load generator must not take the
    // cores of the servers it measures. With `--generator-threads` each
    // phase starts the others, each with its own event loop.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Compare(args) => runtime.block_on(compare(args)),
        Command::Run(args) => runtime.block_on(run_one(args)),
        Command::Load(args) => runtime.block_on(load(args)),
        Command::Disk(_) | Command::Report(_) => Ok(()),
    }
}
