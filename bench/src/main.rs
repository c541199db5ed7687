//! `keel-bench`: load for a running Keel endpoint through the client
//! library, with latencies in HDR histograms.
//!
//! `keel-bench load` loads `--records` items (keys `k0…`), then runs each
//! phase of `--phases` for `--duration-s` seconds with `--clients`
//! closed-loop clients on uniformly random keys, and prints throughput and
//! latency percentiles per phase (JSON with `--json`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use keel_wire::client::{Client, ClientConfig};
use keel_wire::item::{AttributeValue, Item};
use keel_wire::protocol::{ErrorCode, KeyKind};
use rand::{Rng, SeedableRng};

#[derive(Debug, Parser)]
#[command(name = "keel-bench", version, about = "Keel load and benchmark tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Closed-loop PutItem/GetItem load against a running endpoint.
    Load(LoadArgs),
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
    /// Endpoint (a keel-node entry port).
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

fn key_of(i: u64) -> Item {
    Item::from([("id".to_owned(), AttributeValue::S(format!("k{i}")))])
}

fn item_of(i: u64, value: &str) -> Item {
    let mut item = key_of(i);
    item.insert("v".to_owned(), AttributeValue::S(value.to_owned()));
    item
}

/// Picks the next key of a client (None: the phase is over).
type KeySource = Arc<dyn Fn(&mut rand::rngs::SmallRng) -> Option<u64> + Send + Sync>;

/// What one phase measured.
#[derive(Debug)]
struct Outcome {
    name: String,
    ops: u64,
    errors: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Outcome {
    fn ops_per_s(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let ops = self.ops as f64;
        ops / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn json(&self) -> serde_json::Value {
        let q = |q: f64| self.latency_us.value_at_quantile(q);
        serde_json::json!({
            "phase": self.name,
            "ops": self.ops,
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "ops_per_s": self.ops_per_s().round(),
            "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99.9": q(0.999), "max": self.latency_us.max()},
        })
    }

    fn line(&self) -> String {
        let q = |q: f64| self.latency_us.value_at_quantile(q);
        format!(
            "{:<5} {:>9.0} ops/s  p50 {:>6} µs  p90 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  max {:>7} µs  errors {}",
            self.name,
            self.ops_per_s(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.latency_us.max(),
            self.errors
        )
    }
}

/// Runs `clients` closed-loop tasks until `deadline` or until `next_key`
/// runs out; each does `op(key)`.
async fn run_phase<F, Fut>(
    name: &str,
    clients: usize,
    deadline: Option<Instant>,
    next_key: KeySource,
    op: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), keel_wire::client::ClientError>> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (op, next_key) = (op.clone(), Arc::clone(&next_key));
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(client as u64);
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let (mut ops, mut errors) = (0u64, 0u64);
            while deadline.is_none_or(|d| Instant::now() < d) {
                let Some(key) = next_key(&mut rng) else { break };
                let began = Instant::now();
                match op(key).await {
                    Ok(()) => {
                        ops += 1;
                        let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                        histogram.saturating_record(micros.max(1));
                    }
                    Err(e) if e.code() == Some(ErrorCode::ProvisionedThroughputExceeded) => errors += 1,
                    Err(e) => return Err(anyhow::anyhow!("{e}")),
                }
            }
            Ok((ops, errors, histogram))
        }));
    }
    let mut outcome = Outcome {
        name: name.to_owned(),
        ops: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for task in tasks {
        let (ops, errors, histogram) = task.await??;
        outcome.ops += ops;
        outcome.errors += errors;
        outcome.latency_us.add(&histogram)?;
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let mut config = ClientConfig::new(args.endpoint.clone());
    config.connections = args.connections;
    config.in_flight_max = args.clients.max(1);
    let client = Client::connect(config).await.with_context(|| format!("connect to {}", args.endpoint))?;
    match client.create_table(&args.table, ("id", KeyKind::S), None, args.partitions).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::ResourceInUseException) => {}
        Err(e) => return Err(e).context("create the table"),
    }
    let value: Arc<str> = "x".repeat(args.value_bytes).into();
    let records = args.records.max(1);
    let mut outcomes = Vec::new();
    let put = {
        let (client, table, value) = (client.clone(), args.table.clone(), Arc::clone(&value));
        move |i: u64| {
            let (client, table, value) = (client.clone(), table.clone(), Arc::clone(&value));
            async move { client.put_item(&table, item_of(i, &value)).send().await.map(|_| ()) }
        }
    };
    if !args.no_load {
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sequential: KeySource =
            Arc::new(move |_| Some(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).filter(|i| *i < records));
        outcomes.push(run_phase("load", args.clients, None, sequential, put.clone()).await?);
    }
    let random: KeySource = Arc::new(move |rng| Some(rng.random_range(0..records)));
    for phase in &args.phases {
        let deadline = Some(Instant::now() + Duration::from_secs(args.duration_s));
        let outcome = match phase {
            Phase::Put => run_phase("put", args.clients, deadline, Arc::clone(&random), put.clone()).await?,
            Phase::Get => {
                let (client, table) = (client.clone(), args.table.clone());
                let get = move |i: u64| {
                    let (client, table) = (client.clone(), table.clone());
                    async move {
                        match client.get_item(&table, key_of(i), None, Vec::new(), false).await? {
                            Some(_) => Ok(()),
                            None => Err(keel_wire::client::ClientError::Unexpected(format!("k{i} is missing"))),
                        }
                    }
                };
                run_phase("get", args.clients, deadline, Arc::clone(&random), get).await?
            }
        };
        outcomes.push(outcome);
    }
    if args.json {
        let phases: Vec<_> = outcomes.iter().map(Outcome::json).collect();
        let report = serde_json::json!({
            "endpoint": args.endpoint,
            "records": records,
            "value_bytes": args.value_bytes,
            "clients": args.clients,
            "connections": args.connections,
            "phases": phases,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for outcome in &outcomes {
            println!("{}", outcome.line());
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: on a small machine the load tool must not starve the
    // server it measures.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Load(args) => runtime.block_on(load(args)),
    }
}
