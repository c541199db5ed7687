//! Runs a workload against a driver: a load phase (insert the records) and
//! run phases, closed-loop (`clients` tasks, each issuing its next
//! operation when the last one finished) or open-loop (a fixed rate: a
//! timer releases the operations due every tick and a free client takes each;
//! an operation's latency counts from its release, so that when a stall
//! keeps every client busy, the operations queued behind it are charged
//! for the wait, which corrects for coordinated omission. The pacer's own
//! lateness is not charged; see [`crate::pacer`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::driver::{Driver, OpError};
use crate::host;
use crate::pacer::{OpenLoop, Pacer, Releases};
use crate::workload::{self, InsertSequence, KeyChooser, Op, Workload};

/// Highest latency recorded (60 s), in µs.
const LATENCY_MAX_US: u64 = 60_000_000;
/// Percentiles on the latency curve (and the plots).
pub const CURVE_PERCENTILES: [f64; 12] = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0];

/// Record shape: YCSB's default is 10 fields of 100 bytes.
#[derive(Debug, Clone, Copy)]
pub struct RecordShape {
    /// Fields per record.
    pub fields: usize,
    /// Bytes per field.
    pub field_bytes: usize,
}

impl Default for RecordShape {
    fn default() -> Self {
        Self { fields: 10, field_bytes: 100 }
    }
}

/// How a run phase issues operations.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    /// Concurrent clients.
    pub clients: usize,
    /// Stop after this long...
    pub duration: Option<Duration>,
    /// ...or after this many operations (whichever comes first).
    pub operations: Option<u64>,
    /// Open loop: its rate and tick (closed loop when `None`).
    pub open_loop: Option<OpenLoop>,
    /// Record shape for inserts and updates.
    pub shape: RecordShape,
    /// Seed of the clients' generators.
    pub seed: u64,
    /// Threads of the load generator, each with its own event loop and
    /// connections (a [`Driver::fork`]), the clients dealt out among them;
    /// 1 (or 0): the caller's event loop alone.
    pub threads: usize,
}

/// The workload name of the load phase.
pub const LOAD_PHASE: &str = "load";

/// Latency summary in µs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Operations measured.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Percentiles.
    pub p50: u64,
    /// 90th.
    pub p90: u64,
    /// 99th.
    pub p99: u64,
    /// 99.9th.
    #[serde(rename = "p99.9")]
    pub p999: u64,
    /// Maximum.
    pub max: u64,
    /// (percentile, µs) at [`CURVE_PERCENTILES`].
    pub curve: Vec<(f64, u64)>,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let q = |p: f64| h.value_at_quantile(p / 100.0);
        Self {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: q(50.0),
            p90: q(90.0),
            p99: q(99.0),
            p999: q(99.9),
            max: h.max(),
            curve: CURVE_PERCENTILES.iter().map(|p| (*p, q(*p))).collect(),
        }
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseResult {
    /// Target (driver) name.
    pub target: String,
    /// Workload name (`load` for the load phase).
    pub workload: String,
    /// Key distribution.
    pub distribution: String,
    /// `closed` or `open`.
    pub mode: String,
    /// Clients.
    pub clients: usize,
    /// Target rate (open loop).
    pub rate: Option<f64>,
    /// The fraction of the target's own closed-loop peak on this workload
    /// that `rate` is (`compare --tail-at`); `None` for every other phase.
    pub of_peak: Option<f64>,
    /// Successful operations.
    pub ops: u64,
    /// When the phase began, in milliseconds since the Unix epoch (to line
    /// the timeline up with a server's logs).
    pub started_unix_ms: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Latency of all successful operations.
    pub latency_us: Latency,
    /// Latency per operation type.
    pub per_op: BTreeMap<String, Latency>,
    /// Failed operations by error type.
    pub errors: BTreeMap<String, u64>,
    /// Second by second from the phase's start: operations finished, their
    /// p99 and the slowest, and the CPU time the host stole, so that a stall
    /// can be placed in time (beside a server's log of its checkpoints, say)
    /// and one the host caused told apart.
    pub timeline: Vec<Second>,
    /// CPU time the host stole from this machine during the phase, all CPUs
    /// together, in ms (see [`crate::host`]); 0 where it is not counted.
    pub steal_ms: u64,
    /// What the server logged as slow while the phase ran (keel-node's WAL
    /// commits and checkpoints that took 20 ms or more), by timeline second;
    /// empty for a server that does not say (Redis) and outside `compare`.
    pub server_events: Vec<ServerEvent>,
    /// The CPU time the server's process and this load generator's process
    /// spent while the phase ran; `None` outside `compare` (which starts
    /// the server, so knows its process) or where `/proc` does not say.
    pub cpu: Option<PhaseCpu>,
}

/// CPU time (user and system, all threads) spent during one phase, in
/// milliseconds, in 10 ms steps (`/proc`'s clock ticks). On a host that
/// lends its CPUs to others, throughput rises and falls with the host;
/// CPU time per operation much less, as the kernel counts stolen time
/// apart. So it is the figure to compare two builds by on such a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseCpu {
    /// The server's process (keel-node: its shards, their io_uring workers
    /// and its other threads; Redis: its main and helper threads).
    pub server_ms: u64,
    /// This process: the load generator's threads (the clients, their
    /// connections, the pacer, the steal sampler).
    pub generator_ms: u64,
}

impl PhaseCpu {
    /// µs of the server's CPU per successful operation of `phase`.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn server_us_per_op(&self, ops: u64) -> Option<f64> {
        (ops > 0).then(|| self.server_ms as f64 * 1000.0 / ops as f64)
    }

    /// µs of the load generator's CPU per successful operation.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn generator_us_per_op(&self, ops: u64) -> Option<f64> {
        (ops > 0).then(|| self.generator_ms as f64 * 1000.0 / ops as f64)
    }
}

/// A slow step a server logged during a phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerEvent {
    /// The timeline second it ended in (when the server logged it).
    pub second: usize,
    /// What it was: `WAL commit` or `checkpoint`.
    pub what: String,
    /// How long it took, in ms, as the server measured it.
    pub ms: u64,
}

/// One second of a phase.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Second {
    /// Successful operations that finished in this second.
    pub ops: u64,
    /// Their 99th percentile latency, in µs (two significant digits).
    pub p99_us: u64,
    /// The slowest of them, in µs.
    pub max_us: u64,
    /// CPU time the host stole from this machine in this second, all CPUs
    /// together, in ms (10 ms steps).
    pub steal_ms: u64,
}

/// Seconds of a phase's timeline at most (longer phases fold the rest into
/// the last second).
const TIMELINE_SECONDS_MAX: usize = 24 * 3600;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant bounds are valid")
}

/// What a phase measured so far, shared by its clients. On the default
/// single-threaded generator the lock is never contended; with
/// `--generator-threads` each record holds it for three histogram updates
/// (well under a microsecond). One set of histograms for the
/// phase, not one per client: 256 clients' histograms (≈140 KB each, three
/// per client) took the generator's thread for ~130 ms at the start of every
/// open-loop run, and the operations it then sent late were charged for it.
#[derive(Debug)]
struct Tally {
    began: Instant,
    all: Histogram<u64>,
    per_op: BTreeMap<Op, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    /// The seconds summed up so far.
    timeline: Vec<Second>,
    /// The second being recorded (index into the timeline), and its
    /// latencies with two significant digits (enough for a second's p99).
    /// Operations are recorded in the order they finish (on several
    /// generator threads, within the moment it takes to get the lock; one
    /// that comes after a later one counts in that one's second), so one
    /// histogram serves every second in turn: a day-long phase keeps 86,400
    /// summaries, not 86,400 histograms (~19 KB each).
    second: usize,
    second_latencies: Histogram<u64>,
    /// Steal seen in each second so far, in ms (index: second).
    steal: Vec<u64>,
}

type SharedTally = Arc<std::sync::Mutex<Tally>>;

impl Tally {
    fn shared(began: Instant) -> SharedTally {
        Arc::new(std::sync::Mutex::new(Self {
            began,
            all: histogram(),
            per_op: BTreeMap::new(),
            errors: BTreeMap::new(),
            timeline: Vec::new(),
            second: 0,
            second_latencies: Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("constant bounds are valid"),
            steal: Vec::new(),
        }))
    }

    /// The timeline second (from the phase's start) that `at` falls in.
    fn second_of(&self, at: Instant) -> usize {
        usize::try_from(at.duration_since(self.began).as_secs()).unwrap_or(usize::MAX).min(TIMELINE_SECONDS_MAX - 1)
    }

    /// Counts `ms` of steal in the second that is under way.
    fn add_steal(&mut self, ms: u64) {
        let second = self.second_of(Instant::now());
        if self.steal.len() <= second {
            self.steal.resize(second + 1, 0);
        }
        if let Some(slot) = self.steal.get_mut(second) {
            *slot += ms;
        }
    }

    /// Sums up the second being recorded and moves on to `second`, leaving
    /// an empty summary for every second without operations in between.
    fn close_second(&mut self, second: usize) {
        let h = &self.second_latencies;
        let summary = Second { ops: h.len(), p99_us: h.value_at_quantile(0.99), max_us: h.max(), steal_ms: 0 };
        self.timeline.resize(self.second, Second::default());
        self.timeline.push(summary);
        self.second_latencies.reset();
        self.second = second;
    }

    fn record(tally: &SharedTally, op: Op, began: Instant, outcome: Result<(), OpError>) {
        let now = Instant::now();
        let mut tally = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match outcome {
            Ok(()) => {
                let micros =
                    u64::try_from(now.duration_since(began).as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_US);
                tally.all.saturating_record(micros);
                tally.per_op.entry(op).or_insert_with(histogram).saturating_record(micros);
                let second = tally.second_of(now);
                // (An operation that finished just before the one recorded last
                // counts in that one's second.)
                if second > tally.second {
                    tally.close_second(second);
                }
                tally.second_latencies.saturating_record(micros);
            }
            Err(e) => *tally.errors.entry(e.kind).or_default() += 1,
        }
    }
}

/// Shows progress: a bar on a terminal, a plain line every few seconds
/// otherwise.
#[derive(Debug)]
struct Progress {
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(label: String, total: Option<u64>, duration: Option<Duration>) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&done);
        let task = tokio::spawn(async move {
            let began = Instant::now();
            let terminal = std::io::stderr().is_terminal();
            let bar = terminal.then(|| {
                let bar = match (total, duration) {
                    (Some(total), _) => indicatif::ProgressBar::new(total),
                    (None, Some(d)) => indicatif::ProgressBar::new(d.as_secs().max(1)),
                    (None, None) => indicatif::ProgressBar::no_length(),
                };
                let style = indicatif::ProgressStyle::with_template("{prefix:>24} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                bar.set_style(style.progress_chars("=> "));
                bar.set_prefix(label.clone());
                bar
            });
            let mut last_line = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let n = counter.load(Ordering::Relaxed);
                let rate = n as f64 / began.elapsed().as_secs_f64().max(1e-9);
                match &bar {
                    Some(bar) => {
                        bar.set_position(if total.is_some() { n } else { began.elapsed().as_secs() });
                        bar.set_message(format!("{n} ops, {rate:.0} ops/s"));
                    }
                    None if last_line.elapsed() >= Duration::from_secs(5) => {
                        eprintln!("{label}: {n} ops, {rate:.0} ops/s");
                        last_line = Instant::now();
                    }
                    None => {}
                }
            }
        });
        Self { done, task }
    }

    fn finish(self) {
        self.task.abort();
    }
}

/// The phase's result from its tally.
fn summarize(
    target: &str,
    workload: &str,
    distribution: &str,
    config: &RunConfig,
    tally: &SharedTally,
    started: SystemTime,
) -> PhaseResult {
    let mut tally = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let seconds = tally.began.elapsed().as_secs_f64();
    if !tally.second_latencies.is_empty() {
        let next = tally.second + 1;
        tally.close_second(next);
    }
    let steal = std::mem::take(&mut tally.steal);
    if tally.timeline.len() < steal.len() {
        tally.timeline.resize(steal.len(), Second::default());
    }
    for (second, ms) in tally.timeline.iter_mut().zip(&steal) {
        second.steal_ms = *ms;
    }
    let ops = tally.all.len();
    PhaseResult {
        target: target.to_owned(),
        workload: workload.to_owned(),
        distribution: distribution.to_owned(),
        mode: if config.open_loop.is_some() { "open" } else { "closed" }.to_owned(),
        clients: config.clients,
        rate: config.open_loop.map(|o| o.rate),
        of_peak: None,
        ops,
        started_unix_ms: unix_ms(started),
        seconds: (seconds * 1000.0).round() / 1000.0,
        ops_per_s: (ops as f64 / seconds.max(1e-9)).round(),
        latency_us: Latency::of(&tally.all),
        per_op: tally.per_op.iter().map(|(op, h)| (op.name().to_owned(), Latency::of(h))).collect(),
        errors: tally.errors.clone(),
        timeline: tally.timeline.clone(),
        steal_ms: steal.iter().sum(),
        server_events: Vec::new(),
        cpu: None,
    }
}

/// `at` in milliseconds since the Unix epoch (0 before it), the clock a
/// phase's `started_unix_ms` and a server's logged events share.
#[must_use]
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads the host's steal counter every [`host::SAMPLE_EVERY`] during a
/// phase and counts it in the tally's seconds. Nothing where the counter
/// does not exist.
#[derive(Debug)]
struct StealSampler {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StealSampler {
    fn start(tally: &SharedTally) -> Self {
        let Some(mut last) = host::read_steal_ms() else { return Self { task: None } };
        let tally = Arc::clone(tally);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(host::SAMPLE_EVERY).await;
                let Some(now) = host::read_steal_ms() else { continue };
                let stolen = now.saturating_sub(last);
                last = now;
                if stolen > 0 {
                    tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).add_steal(stolen);
                }
            }
        });
        Self { task: Some(task) }
    }

    fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
    }
}

/// Load phase: inserts records `0..records` with `run`'s clients, record
/// shape, seed and generator threads (dealt out as a run phase deals them);
/// its duration, operations and open loop do not apply.
///
/// # Errors
/// When a generator thread cannot be started or connected.
pub async fn load<D: Driver>(driver: &D, records: u64, run: &RunConfig) -> std::io::Result<PhaseResult> {
    let clients = run.clients.max(1);
    let threads = run.threads.clamp(1, clients);
    let (shape, seed) = (run.shape, run.seed);
    let config =
        RunConfig { clients, duration: None, operations: Some(records), open_loop: None, shape, seed, threads };
    let others = GeneratorThread::start_all(driver, threads).await?;
    let next = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(format!("{} load", driver.name()), Some(records), None);
    let started = SystemTime::now();
    let began = Instant::now();
    let tally = Tally::shared(began);
    let steal = StealSampler::start(&tally);
    // Client c runs on thread c mod threads.
    let loader = Loader { next, records, tally: Arc::clone(&tally), done: Arc::clone(&progress.done), shape };
    let seeds = |thread: usize| -> Vec<u64> {
        (thread..clients).step_by(threads).map(|client| seed ^ (client as u64).wrapping_mul(0x9E37_79B9)).collect()
    };
    let jobs: Vec<Job<D>> = (1..threads)
        .map(|thread| {
            let (loader, seeds) = (loader.clone(), seeds(thread));
            Box::new(move |driver| {
                Box::pin(loader.run(driver, seeds)) as Pin<Box<dyn Future<Output = std::io::Result<()>>>>
            }) as Job<D>
        })
        .collect();
    let outcome = GeneratorThread::run_all(others, jobs, loader.run(driver.clone(), seeds(0))).await;
    progress.finish();
    steal.finish();
    outcome?;
    Ok(summarize(driver.name(), LOAD_PHASE, "sequential", &config, &tally, started))
}

/// What the clients of a load phase share.
#[derive(Debug, Clone)]
struct Loader {
    /// The next record to insert.
    next: Arc<AtomicU64>,
    records: u64,
    tally: SharedTally,
    done: Arc<AtomicU64>,
    shape: RecordShape,
}

impl Loader {
    /// One client per seed on the calling thread's event loop, inserting
    /// the next record until all are; returns when all have ended.
    async fn run<D: Driver>(self, driver: D, seeds: Vec<u64>) -> std::io::Result<()> {
        let tasks: Vec<_> = seeds
            .into_iter()
            .map(|seed| {
                let (loader, driver) = (self.clone(), driver.clone());
                tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(seed);
                    loop {
                        let keynum = loader.next.fetch_add(1, Ordering::Relaxed);
                        if keynum >= loader.records {
                            return;
                        }
                        let fields = workload::record(&mut rng, loader.shape.fields, loader.shape.field_bytes);
                        let start = Instant::now();
                        let outcome = driver.insert(&workload::key_name(keynum), &fields).await;
                        Tally::record(&loader.tally, Op::Insert, start, outcome);
                        loader.done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    }
}

/// One operation of a workload; the error, if any.
async fn operate<D: Driver>(
    driver: &D,
    workload: &Workload,
    op: Op,
    chooser: &mut KeyChooser,
    inserts: &InsertSequence,
    rng: &mut SmallRng,
    shape: RecordShape,
) -> Result<(), OpError> {
    let existing = || inserts.acknowledged();
    match op {
        Op::Read => driver.read(&workload::key_name(chooser.next(rng, existing()))).await.map(|_| ()),
        Op::Update => {
            let key = workload::key_name(chooser.next(rng, existing()));
            let field = format!("field{}", rand::Rng::random_range(rng, 0..shape.fields.max(1)));
            driver.update(&key, &field, &workload::value(rng, shape.field_bytes)).await
        }
        Op::Insert => {
            let keynum = inserts.next();
            let fields = workload::record(rng, shape.fields, shape.field_bytes);
            let outcome = driver.insert(&workload::key_name(keynum), &fields).await;
            inserts.acknowledge(keynum);
            outcome
        }
        Op::Scan => {
            let start = workload::key_name(chooser.next(rng, existing()));
            let length = rand::Rng::random_range(rng, 1..=workload.scan_length_max.max(1));
            driver.scan(&start, length).await.map(|_| ())
        }
        Op::ReadModifyWrite => {
            let key = workload::key_name(chooser.next(rng, existing()));
            driver.read(&key).await?;
            let field = format!("field{}", rand::Rng::random_range(rng, 0..shape.fields.max(1)));
            driver.update(&key, &field, &workload::value(rng, shape.field_bytes)).await
        }
    }
}

/// What every client of a run phase shares.
#[derive(Debug, Clone)]
struct Clients<D> {
    driver: D,
    workload: Workload,
    inserts: Arc<InsertSequence>,
    /// Operations left to start (`--operations`).
    budget: Arc<AtomicU64>,
    tally: SharedTally,
    /// Operations done, for the progress line.
    done: Arc<AtomicU64>,
    shape: RecordShape,
    deadline: Option<Instant>,
}

impl<D: Driver> Clients<D> {
    /// One client: operations one after another until the deadline, the
    /// budget or (open loop) the pacer ends.
    async fn client(self, releases: Option<Releases>, mut chooser: KeyChooser, seed: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        loop {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            if self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_err() {
                return;
            }
            let start = match &releases {
                // Open loop: from its release, however long it waited for a
                // free client.
                Some(releases) => match releases.next().await {
                    Some(released) => released,
                    None => return,
                },
                None => Instant::now(),
            };
            let op = self.workload.next_op(&mut rng);
            let outcome =
                operate(&self.driver, &self.workload, op, &mut chooser, &self.inserts, &mut rng, self.shape).await;
            Tally::record(&self.tally, op, start, outcome);
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs `clients` (each its key chooser and seed) on the calling
    /// thread's event loop, paced by `open_loop` from `began` if given, and
    /// returns when all have ended.
    async fn run(self, clients: ClientList, open_loop: Option<OpenLoop>, began: Instant) -> std::io::Result<()> {
        let (pacer, releases) =
            open_loop.map(|schedule| Pacer::start(schedule, began, self.deadline)).transpose()?.unzip();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|(chooser, seed)| tokio::spawn(self.clone().client(releases.clone(), chooser, seed)))
            .collect();
        drop(releases);
        for task in tasks {
            let _ = task.await;
        }
        if let Some(pacer) = pacer {
            pacer.join().await;
        }
        Ok(())
    }
}

/// The clients a thread runs: each one's key chooser and seed.
type ClientList = Vec<(KeyChooser, u64)>;

/// What a [`GeneratorThread`] runs once the phase's clock has started:
/// given the thread's own driver, its clients on its event loop.
type Job<D> = Box<dyn FnOnce(D) -> Pin<Box<dyn Future<Output = std::io::Result<()>>>> + Send>;

/// A thread of the load generator beyond the first (`--generator-threads`):
/// its own single-threaded event loop and its own connections (a
/// [`Driver::fork`]), made before the phase's clock starts.
struct GeneratorThread<D> {
    /// Its share of the phase.
    go: std::sync::mpsc::Sender<Job<D>>,
    /// Its clients' end.
    done: tokio::sync::oneshot::Receiver<std::io::Result<()>>,
}

impl<D: Driver> GeneratorThread<D> {
    /// Starts `threads - 1` threads, each with a fork of `driver`; returns
    /// once all are connected.
    async fn start_all(driver: &D, threads: usize) -> std::io::Result<Vec<Self>> {
        let mut started = Vec::new();
        for index in 1..threads {
            started.push(Self::start(driver, index).await?);
        }
        Ok(started)
    }

    async fn start(driver: &D, index: usize) -> std::io::Result<Self> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let (go, go_rx) = std::sync::mpsc::channel::<Job<D>>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let driver = driver.clone();
        std::thread::Builder::new().name(format!("keel-bench-{index}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let forked = match runtime.block_on(driver.fork()) {
                Ok(forked) => forked,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // Gone when the phase was given up before its start.
            let Ok(job) = go_rx.recv() else { return };
            let _ = done_tx.send(runtime.block_on(job(forked)));
        })?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(Self { go, done }),
            Ok(Err(e)) => Err(std::io::Error::other(format!("generator thread {index}: {e:#}"))),
            Err(_) => Err(std::io::Error::other(format!("generator thread {index} ended before it was ready"))),
        }
    }

    /// Hands each thread its job, runs `mine` on the calling thread, and
    /// returns once every thread's clients have ended: the first error, if
    /// any.
    async fn run_all(
        threads: Vec<Self>,
        jobs: impl IntoIterator<Item = Job<D>>,
        mine: impl Future<Output = std::io::Result<()>>,
    ) -> std::io::Result<()> {
        let mut waiting = Vec::new();
        for (thread, job) in threads.into_iter().zip(jobs) {
            // A thread that ended early has dropped its receiver: its error
            // comes back through `done`.
            let _ = thread.go.send(job);
            waiting.push(thread.done);
        }
        let mut outcome = mine.await;
        for done in waiting {
            let ended = done.await.unwrap_or_else(|_| Err(std::io::Error::other("a generator thread ended early")));
            outcome = outcome.and(ended);
        }
        outcome
    }
}

/// Run phase of `workload` over the records `inserts` says exist.
///
/// # Errors
/// When the open loop's pacer cannot make its timer, or a generator
/// thread cannot be started or connected.
pub async fn run<D: Driver>(
    driver: &D,
    workload: &Workload,
    config: &RunConfig,
    inserts: Arc<InsertSequence>,
) -> std::io::Result<PhaseResult> {
    let clients = config.clients.max(1);
    let threads = config.threads.clamp(1, clients);
    let label = format!("{} {}", driver.name(), workload.name);
    let budget = Arc::new(AtomicU64::new(config.operations.unwrap_or(u64::MAX)));
    let expected_inserts = workload.expected_inserts(config.operations);
    // Built once, before the clock starts: a chooser computes zipfian
    // constants over every record (milliseconds), and 64 clients doing it
    // at the start of the phase showed up as an 80 ms stall of the server.
    let chooser = KeyChooser::new(workload.distribution, inserts.acknowledged(), expected_inserts);
    // The other threads connect before the clock starts too.
    let others = GeneratorThread::start_all(driver, threads).await?;
    let progress = Progress::start(label, config.operations, config.duration);
    let started = SystemTime::now();
    let began = Instant::now();
    let tally = Tally::shared(began);
    let steal = StealSampler::start(&tally);
    let share = Clients {
        driver: driver.clone(),
        workload: workload.clone(),
        inserts,
        budget,
        tally: Arc::clone(&tally),
        done: Arc::clone(&progress.done),
        shape: config.shape,
        deadline: config.duration.map(|d| began + d),
    };
    // Client c runs on thread c mod threads; each thread paces its share
    // of the rate.
    let mut per_thread: Vec<ClientList> = vec![Vec::new(); threads];
    for client in 0..clients {
        let seed = config.seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        if let Some(list) = per_thread.get_mut(client % threads) {
            list.push((chooser.clone(), seed));
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let open_loop = config.open_loop.map(|schedule| OpenLoop { rate: schedule.rate / threads as f64, ..schedule });
    let mut per_thread = per_thread.into_iter();
    let mine = per_thread.next().unwrap_or_default();
    let jobs: Vec<Job<D>> = per_thread
        .map(|clients| {
            let share = share.clone();
            Box::new(move |driver| {
                Box::pin(Clients { driver, ..share }.run(clients, open_loop, began))
                    as Pin<Box<dyn Future<Output = std::io::Result<()>>>>
            }) as Job<D>
        })
        .collect();
    let outcome = GeneratorThread::run_all(others, jobs, share.run(mine, open_loop, began)).await;
    progress.finish();
    steal.finish();
    outcome?;
    Ok(summarize(driver.name(), &workload.name, workload.distribution.name(), config, &tally, started))
}
