//! The runner and the result files, on an in-memory driver: operation
//! counts add up, and results.json, summary.md and the plots have their
//! shape. No timing is asserted.

#![allow(clippy::indexing_slicing)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_bench::driver::{Driver, Fields, MemoryDriver, OpError};
use keel_bench::pacer::OpenLoop;
use keel_bench::report::{self, Report};
use keel_bench::runner::{self, RecordShape, RunConfig};
use keel_bench::workload::{InsertSequence, Workload};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// A load phase's settings: `clients` clients on `threads` threads, seed 1.
fn loading(clients: usize, shape: RecordShape, threads: usize) -> RunConfig {
    RunConfig { clients, duration: None, operations: None, open_loop: None, shape, seed: 1, threads }
}

/// The small records of the summary tests: 2 fields of 4 bytes.
const SMALL: RecordShape = RecordShape { fields: 2, field_bytes: 4 };

/// A closed-loop phase of workload `letter` on `driver` (loaded with 100
/// `SMALL` records): 2 clients, `operations` operations.
fn small_phase(
    runtime: &tokio::runtime::Runtime,
    driver: &MemoryDriver,
    letter: &str,
    operations: u64,
    seed: u64,
) -> runner::PhaseResult {
    let config = RunConfig {
        clients: 2,
        duration: None,
        operations: Some(operations),
        open_loop: None,
        shape: SMALL,
        seed,
        threads: 1,
    };
    let workload = Workload::core(letter).expect("workload");
    runtime.block_on(runner::run(driver, &workload, &config, Arc::new(InsertSequence::new(100)))).expect("run")
}

#[test]
fn phases_count_every_operation_and_the_files_have_their_shape() {
    let runtime = rt();
    let records = 500;
    let config = RunConfig {
        clients: 4,
        duration: None,
        operations: Some(2000),
        open_loop: None,
        shape: RecordShape { fields: 3, field_bytes: 8 },
        seed: 9,
        threads: 1,
    };
    let mut phases = Vec::new();
    for name in ["memory", "other"] {
        let driver = MemoryDriver::default();
        let loaded = runtime.block_on(runner::load(&driver, records, &loading(4, config.shape, 1))).expect("load");
        assert_eq!(loaded.ops, records);
        assert!(loaded.errors.is_empty());
        let inserts = Arc::new(InsertSequence::new(records));
        for letter in ["a", "d", "e", "f"] {
            let workload = Workload::core(letter).expect("workload");
            let mut phase =
                runtime.block_on(runner::run(&driver, &workload, &config, Arc::clone(&inserts))).expect("run");
            assert_eq!(phase.ops + phase.errors.values().sum::<u64>(), 2000, "workload {letter}");
            assert!(phase.errors.is_empty(), "workload {letter}: {:?}", phase.errors);
            let per_op: u64 = phase.per_op.values().map(|l| l.count).sum();
            assert_eq!(per_op, phase.ops, "per-operation counts add up");
            let l = &phase.latency_us;
            assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
            // The timeline holds every operation, second by second.
            assert!(!phase.timeline.is_empty());
            assert_eq!(phase.timeline.iter().map(|s| s.ops).sum::<u64>(), phase.ops, "workload {letter}");
            // (to the seconds' two significant digits)
            let slowest = phase.timeline.iter().map(|s| s.max_us).max().unwrap_or(0);
            assert!(slowest.abs_diff(l.max) <= l.max / 50, "the slowest second holds the max: {slowest} vs {}", l.max);
            assert!(phase.timeline.iter().all(|s| s.p99_us <= s.max_us));
            // The host's steal, if any, is counted in the seconds it fell in.
            assert_eq!(phase.timeline.iter().map(|s| s.steal_ms).sum::<u64>(), phase.steal_ms);
            phase.target = name.to_owned();
            phases.push(phase);
        }
        // Workload D inserted 5 % of its operations: reads see them.
        assert!(inserts.acknowledged() > records);
    }
    let report = Report::new(records, phases);
    let dir = tempfile::tempdir().expect("temp dir");
    report::write(&report, dir.path()).expect("write results");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).expect("results.json")).expect("JSON");
    let phases = json["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 8);
    for phase in phases {
        for field in ["target", "workload", "distribution", "mode", "ops", "seconds", "ops_per_s", "errors"] {
            assert!(phase.get(field).is_some(), "{field} in {phase}");
        }
        assert!(phase["started_unix_ms"].as_u64().is_some_and(|ms| ms > 1_700_000_000_000), "start time");
        let timeline = phase["timeline"].as_array().expect("timeline");
        assert!(!timeline.is_empty());
        for second in timeline {
            for field in ["ops", "p99_us", "max_us", "steal_ms"] {
                assert!(second[field].is_u64(), "{field} in {second}");
            }
        }
        for p in ["p50", "p90", "p99", "p99.9", "max"] {
            assert!(phase["latency_us"][p].is_u64(), "latency {p}");
        }
    }
    assert!(json["machine"]["cpus"].as_u64().is_some_and(|n| n >= 1));
    assert!(phases.iter().all(|p| p["steal_ms"].is_u64()), "steal in every phase");
    // The in-memory driver's phases have no server that logs slow steps.
    assert!(phases.iter().all(|p| p["server_events"].as_array().is_some_and(Vec::is_empty)), "server events");
    // Where the processes ran: the generator's CPUs always, the servers'
    // only when `compare --server-cpus` placed them.
    assert!(json["server_cpus"].is_null());
    assert!(json["generator_cpus"].as_array().is_some_and(|c| !c.is_empty()));
    assert_eq!(json["generator_threads"], 1);

    let summary = std::fs::read_to_string(dir.path().join("summary.md")).expect("summary.md");
    assert!(summary.contains("| workload | keel ops/s | memory ops/s |"), "{summary}");
    for letter in ["a", "d", "e", "f"] {
        assert!(summary.lines().any(|l| l.starts_with(&format!("| {letter} |"))), "a row for {letter}");
    }
    for letter in ["a", "d", "e", "f"] {
        let svg = std::fs::read_to_string(dir.path().join(format!("latency-{letter}.svg"))).expect("plot");
        assert!(svg.contains("<svg") && svg.contains("</svg>"));
    }

    // The docs section is replaced between its markers, nothing else.
    let doc = dir.path().join("README.md");
    std::fs::write(
        &doc,
        "intro\n<!-- keel-bench results: begin (generated by keel-bench; do not edit) -->\nold\n<!-- keel-bench results: end -->\noutro\n",
    )
    .expect("write");
    report::update_docs(&doc, "results", "new table").expect("update");
    let updated = std::fs::read_to_string(&doc).expect("read");
    assert!(updated.starts_with("intro\n") && updated.ends_with("outro\n"));
    assert!(updated.contains("new table") && !updated.contains("old"));
}

#[test]
fn open_loop_runs_at_the_requested_rate_and_charges_queueing() {
    let runtime = rt();
    let driver = MemoryDriver::default();
    runtime.block_on(runner::load(&driver, 100, &loading(2, SMALL, 1))).expect("load");
    let config = RunConfig {
        clients: 4,
        duration: None,
        operations: Some(400),
        open_loop: Some(OpenLoop::at(2000.0)),
        shape: SMALL,
        seed: 3,
        threads: 1,
    };
    let workload = Workload::core("c").expect("workload");
    let phase =
        runtime.block_on(runner::run(&driver, &workload, &config, Arc::new(InsertSequence::new(100)))).expect("run");
    assert_eq!(phase.mode, "open");
    assert_eq!(phase.ops, 400);
    // 400 operations at 2,000/s take at least 0.2 s whatever the driver's speed.
    assert!(phase.seconds >= 0.19, "{}", phase.seconds);
}

/// The in-memory driver, noting the threads its operations ran on and the
/// forks made of it.
#[derive(Debug, Clone, Default)]
struct ThreadsSeen {
    inner: MemoryDriver,
    threads: Arc<Mutex<HashSet<std::thread::ThreadId>>>,
    forks: Arc<AtomicUsize>,
}

impl ThreadsSeen {
    fn seen(&self) {
        self.threads.lock().expect("lock").insert(std::thread::current().id());
    }
}

impl Driver for ThreadsSeen {
    fn name(&self) -> &'static str {
        "memory"
    }
    async fn insert(&self, key: &str, fields: &Fields) -> Result<(), OpError> {
        self.seen();
        self.inner.insert(key, fields).await
    }
    async fn read(&self, key: &str) -> Result<usize, OpError> {
        self.seen();
        self.inner.read(key).await
    }
    async fn update(&self, key: &str, field: &str, value: &str) -> Result<(), OpError> {
        self.seen();
        self.inner.update(key, field, value).await
    }
    async fn scan(&self, start: &str, count: usize) -> Result<usize, OpError> {
        self.seen();
        self.inner.scan(start, count).await
    }
    async fn fork(&self) -> anyhow::Result<Self> {
        self.forks.fetch_add(1, Ordering::Relaxed);
        Ok(self.clone())
    }
}

#[test]
fn on_several_generator_threads_every_operation_is_counted_once_in_the_load_and_both_loops() {
    let runtime = rt();
    let driver = ThreadsSeen::default();
    let shape = SMALL;
    let loaded = runtime.block_on(runner::load(&driver, 300, &loading(16, shape, 4))).expect("load");
    assert_eq!(loaded.ops, 300);
    assert_eq!(driver.forks.load(Ordering::Relaxed), 3, "a driver of its own for each other thread");
    for keynum in 0..300 {
        let key = keel_bench::workload::key_name(keynum);
        assert_eq!(runtime.block_on(driver.inner.read(&key)), Ok(2), "{key} loaded once, whole");
    }
    let inserts = Arc::new(InsertSequence::new(300));
    for (phases, (letter, open_loop)) in (1..).zip([("a", None), ("d", None), ("c", Some(OpenLoop::at(4000.0)))]) {
        let config =
            RunConfig { clients: 32, duration: None, operations: Some(3000), open_loop, shape, seed: 5, threads: 4 };
        let workload = Workload::core(letter).expect("workload");
        driver.threads.lock().expect("lock").clear();
        let phase = runtime.block_on(runner::run(&driver, &workload, &config, Arc::clone(&inserts))).expect("run");
        assert!(phase.errors.is_empty(), "workload {letter}: {:?}", phase.errors);
        assert_eq!(phase.ops, 3000, "workload {letter}");
        assert_eq!(phase.per_op.values().map(|l| l.count).sum::<u64>(), 3000, "workload {letter}");
        // Threads record out of order by a moment: still every operation
        // in exactly one second.
        assert_eq!(phase.timeline.iter().map(|s| s.ops).sum::<u64>(), 3000, "workload {letter}");
        // Three more threads each phase, each with a driver of its own.
        assert_eq!(driver.forks.load(Ordering::Relaxed), 3 + 3 * phases, "workload {letter}");
        let threads = driver.threads.lock().expect("lock").len();
        if open_loop.is_some() {
            // Each thread paces a quarter of the rate, so each ran
            // operations all along (in closed loop the in-memory driver,
            // which never waits, lets the first thread's clients take the
            // whole budget before the others start).
            assert_eq!(threads, 4, "workload {letter}");
        } else {
            assert!((1..=4).contains(&threads), "workload {letter}: {threads}");
        }
    }
    // D's inserts were acknowledged from every thread: the next key
    // follows them all.
    assert!(inserts.acknowledged() > 300, "{}", inserts.acknowledged());
}

#[test]
fn the_summary_names_the_seconds_the_host_stole_and_only_those() {
    let runtime = rt();
    let driver = MemoryDriver::default();
    let loaded = runtime.block_on(runner::load(&driver, 100, &loading(2, SMALL, 1))).expect("load");
    let mut phase = small_phase(&runtime, &driver, "a", 200, 5);
    // Whatever this machine's host did during the test, start from none.
    let mut quiet = vec![loaded, phase.clone()];
    for p in &mut quiet {
        p.steal_ms = 0;
        p.timeline.iter_mut().for_each(|s| s.steal_ms = 0);
    }
    assert_eq!(report::steal_lines(&Report::new(100, quiet.clone())), "");
    assert!(!report::summary_markdown(&Report::new(100, quiet)).contains("Host steal"));

    phase.timeline.resize(3, runner::Second::default());
    phase.timeline.iter_mut().for_each(|s| s.steal_ms = 0);
    phase.timeline[2] = runner::Second { ops: 7, p99_us: 41_000, max_us: 45_000, steal_ms: 40 };
    phase.steal_ms = 40;
    let mut other = phase.clone();
    other.steal_ms = 0;
    other.timeline.iter_mut().for_each(|s| s.steal_ms = 0);
    let lines = report::steal_lines(&Report::new(100, vec![other, phase]));
    assert!(lines.contains("Host steal"), "{lines}");
    // The second round of keel a was the one the host took from.
    assert!(lines.contains("- memory a round 2: 40 ms; 2 (40, 41000)"), "{lines}");
    assert!(!lines.contains("round 1"), "{lines}");
}

#[test]
fn the_summary_lists_the_slow_steps_the_server_logged_in_each_phase() {
    let runtime = rt();
    let driver = MemoryDriver::default();
    let phase = small_phase(&runtime, &driver, "a", 200, 5);
    assert!(phase.server_events.is_empty(), "a run alone gathers no server events");
    let quiet = vec![phase.clone(), phase.clone()];
    assert_eq!(report::server_event_lines(&Report::new(100, quiet.clone())), "");
    assert!(!report::summary_markdown(&Report::new(100, quiet)).contains("Slow steps"));

    let mut slow = phase.clone();
    slow.timeline.resize(4, runner::Second::default());
    slow.timeline[1].p99_us = 148_000;
    slow.timeline[2].p99_us = 12_000;
    slow.timeline[3].p99_us = 27_000;
    let event = |second, what: &str, ms| runner::ServerEvent { second, what: what.into(), ms };
    // In the order logged: the longer checkpoint ended later.
    slow.server_events = vec![event(1, "WAL commit", 148), event(2, "checkpoint", 190), event(3, "checkpoint", 235)];
    let report = Report::new(100, vec![phase, slow]);
    let lines = report::server_event_lines(&report);
    // The second round is the one with the events: each kind on its own,
    // longest first, each in its second beside that second's p99.
    assert!(
        lines.contains(
            "- memory a round 2: 1 × WAL commit: 1 (148 ms, 148000); \
             2 × checkpoint: 3 (235 ms, 27000), 2 (190 ms, 12000)\n"
        ),
        "{lines}"
    );
    assert!(!lines.contains("round 1"), "{lines}");
    assert!(report::summary_markdown(&report).contains(&lines));
    let json = serde_json::to_value(&report).expect("JSON");
    assert_eq!(
        json["phases"][1]["server_events"][0],
        serde_json::json!({"second": 1, "what": "WAL commit", "ms": 148})
    );
}

#[test]
fn the_machine_counts_every_cpu_even_from_a_process_placed_on_one() {
    let everywhere = keel_bench::report::Machine::here().cpus;
    let mine = keel_bench::host::allowed_cpus();
    keel_bench::host::run_only_on(&mine[..1]).expect("move onto one CPU");
    let placed = keel_bench::report::Machine::here().cpus;
    keel_bench::host::run_only_on(&mine).expect("move back");
    assert_eq!(placed, everywhere);
    assert!(everywhere >= mine.len());
}

#[test]
fn the_machine_line_says_where_placed_servers_and_the_generator_ran() {
    let mut report = Report::new(100, Vec::new());
    assert!(!report.machine_line().contains("servers on"), "nothing said of servers not placed");
    report.server_cpus = Some(vec![1]);
    report.generator_cpus = vec![0, 2, 3];
    let line = report.machine_line();
    assert!(line.starts_with(&report.machine.line()), "{line}");
    assert!(line.ends_with("; servers on CPUs 1, load generator on CPUs 0,2,3"), "{line}");
    report.generator_threads = 2;
    assert!(report.machine_line().ends_with("load generator on CPUs 0,2,3; load generator on 2 threads"));
    let json = serde_json::to_value(&report).expect("JSON");
    assert_eq!(json["server_cpus"], serde_json::json!([1]));
    assert_eq!(json["generator_cpus"], serde_json::json!([0, 2, 3]));
}

#[test]
fn tail_phases_run_at_a_fraction_of_each_targets_own_peak_and_get_their_own_table() {
    let runtime = rt();
    let shape = SMALL;
    let workload = Workload::core("c").expect("workload");
    let mut phases = Vec::new();
    for target in ["keel", "memory"] {
        let driver = MemoryDriver::default();
        let mut loaded = runtime.block_on(runner::load(&driver, 100, &loading(2, shape, 1))).expect("load");
        loaded.target = target.to_owned();
        loaded.ops_per_s = 1e9; // the load phase is no workload's peak
        phases.push(loaded);
        let closed = RunConfig {
            clients: 2,
            duration: None,
            operations: Some(200),
            open_loop: None,
            shape,
            seed: 5,
            threads: 1,
        };
        let inserts = Arc::new(InsertSequence::new(100));
        // Three closed rounds, at (made-up) 100, 300 and 200 ops/s: the peak
        // is their median.
        for ops_per_s in [100.0, 300.0, 200.0] {
            let mut phase =
                runtime.block_on(runner::run(&driver, &workload, &closed, Arc::clone(&inserts))).expect("run");
            phase.target = target.to_owned();
            phase.ops_per_s = if target == "keel" { ops_per_s * 10.0 } else { ops_per_s };
            phases.push(phase);
        }
        assert_eq!(report::peak(&phases, "c", target), Some(if target == "keel" { 2000.0 } else { 200.0 }));
        // The tail phase: open loop at half of that peak.
        let rate = report::peak(&phases, "c", target).expect("peak") * 0.5;
        let open = RunConfig { open_loop: Some(OpenLoop::at(rate)), operations: Some(50), ..closed };
        let mut tail = runtime.block_on(runner::run(&driver, &workload, &open, Arc::clone(&inserts))).expect("run");
        assert_eq!(tail.of_peak, None, "the runner does not know of peaks");
        tail.of_peak = Some(0.5);
        tail.target = target.to_owned();
        tail.ops_per_s = 1e9; // a tail phase is not a peak either
        tail.steal_ms = 30;
        tail.timeline.iter_mut().for_each(|s| s.steal_ms = 0);
        tail.timeline[0].steal_ms = 30;
        phases.push(tail);
    }
    assert_eq!(report::peak(&phases, "c", "keel"), Some(2000.0), "tail phases leave the peak alone");
    assert_eq!(report::peak(&phases, "load", "keel"), None, "the load phase is no workload");
    assert_eq!(report::peak(&phases, "a", "keel"), None, "no phase of workload a");

    let report = Report::new(100, phases.clone());
    // The summary table holds the closed-loop medians only.
    let summary = report::summary_table(&report);
    assert!(summary.contains("| c | 2000 | 200 | 10.00 |"), "{summary}");
    // The tail table: one row per target, at the rate offered.
    let tail = report::tail_table(&report);
    assert!(tail.contains("Open loop at 0.5 of each target's own peak"), "{tail}");
    assert!(tail.contains("| workload | target | rate ops/s | done ops/s |"), "{tail}");
    for (target, rate) in [("keel", "1000"), ("memory", "100")] {
        let row = tail.lines().find(|l| l.starts_with(&format!("| c | {target} | {rate} |"))).expect("a row");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let p50: f64 = cells[5].parse().expect("p50");
        let p999: f64 = cells[7].parse().expect("p99.9");
        assert_eq!(cells[8], format!("{:.2}", p999 / p50), "p99.9/p50 in {row}");
    }
    let markdown = report::summary_markdown(&report);
    assert!(markdown.contains(&summary) && markdown.contains(&tail));
    let steal = report::steal_lines(&report);
    assert!(steal.contains("- keel c at 0.5 of peak round 1: 30 ms; 0 (30, "), "{steal}");
    let json = serde_json::to_value(&report).expect("JSON");
    let of_peak: Vec<&serde_json::Value> =
        json["phases"].as_array().expect("phases").iter().map(|p| &p["of_peak"]).collect();
    assert_eq!(of_peak.iter().filter(|f| **f == &serde_json::json!(0.5)).count(), 2);
    assert_eq!(of_peak.iter().filter(|f| f.is_null()).count(), 8);

    // Without tail phases there is no tail table.
    let closed_only: Vec<_> = phases.into_iter().filter(|p| p.of_peak.is_none()).collect();
    let report = Report::new(100, closed_only);
    assert_eq!(report::tail_table(&report), "");
    assert!(!report::summary_markdown(&report).contains("Open loop at"));
}

#[test]
fn compare_refuses_a_tail_fraction_outside_zero_to_one_and_beside_a_rate() {
    let bench = env!("CARGO_BIN_EXE_keel-bench");
    for (args, expected) in [
        (&["--tail-at", "0"][..], "is not in (0, 1]"),
        (&["--tail-at", "1.5"][..], "is not in (0, 1]"),
        (&["--tail-at", "half"][..], "is not a number"),
        (&["--tail-at", "0.5", "--rate", "1000"][..], "cannot be used with"),
    ] {
        let out = std::process::Command::new(bench).arg("compare").args(args).output().expect("run keel-bench");
        assert!(!out.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn the_cpu_table_gives_each_targets_cpu_per_operation_side_by_side_and_only_where_measured() {
    let runtime = rt();
    let shape = SMALL;
    let config =
        RunConfig { clients: 2, duration: None, operations: Some(200), open_loop: None, shape, seed: 5, threads: 1 };
    let workload = Workload::core("c").expect("workload");
    let phase = runtime
        .block_on(runner::run(&MemoryDriver::default(), &workload, &config, Arc::new(InsertSequence::new(100))))
        .expect("run");
    assert_eq!(phase.cpu, None, "a run alone measures no server's CPU");
    assert_eq!(report::cpu_table(&Report::new(100, vec![phase.clone()])), "");
    assert!(!report::summary_markdown(&Report::new(100, vec![phase.clone()])).contains("CPU per operation"));

    // Two rounds of Keel (1 and 3 ms of server CPU over 200 operations:
    // 5 and 15 µs, median 10) and one of Redis (1 ms: 5 µs).
    let with = |target: &str, server_ms, generator_ms| {
        let mut p = phase.clone();
        p.target = target.into();
        p.ops = 200;
        p.cpu = Some(runner::PhaseCpu { server_ms, generator_ms });
        p
    };
    let report = Report::new(100, vec![with("keel", 1, 2), with("redis", 1, 1), with("keel", 3, 2)]);
    let table = report::cpu_table(&report);
    assert!(table.contains("| workload | keel server | redis server | keel/redis server |"), "{table}");
    assert!(table.contains("| c | 10.0 | 5.0 | 2.00 | 10.0 | 5.0 |"), "{table}");
    assert!(report::summary_markdown(&report).contains(&table));
    let json = serde_json::to_value(&report).expect("JSON");
    assert_eq!(json["phases"][0]["cpu"], serde_json::json!({"server_ms": 1, "generator_ms": 2}));
}

#[test]
fn a_saved_run_is_read_back_whole_and_keel_bench_report_rebuilds_its_files_and_docs_from_it() {
    let runtime = rt();
    let driver = MemoryDriver::default();
    let loaded = runtime.block_on(runner::load(&driver, 100, &loading(2, SMALL, 1))).expect("load");
    let mut phases = vec![loaded];
    for letter in ["a", "c"] {
        let mut phase = small_phase(&runtime, &driver, letter, 300, 3);
        phase.server_events.push(runner::ServerEvent { second: 0, what: "checkpoint".into(), ms: 25 });
        phases.push(phase);
    }
    let mut report = Report::new(100, phases);
    report.commit = "abc1234".into();
    report.command = "keel-bench compare --workloads a,c".into();
    let dir = tempfile::tempdir().expect("temp dir");
    report::write(&report, dir.path()).expect("write results");
    let results = dir.path().join("results.json");

    // Every field comes back: the same JSON, the same summary.
    let back = report::read(&results).expect("read back");
    assert_eq!(serde_json::to_value(&back).expect("JSON"), serde_json::to_value(&report).expect("JSON"));
    assert_eq!(report::summary_markdown(&back), report::summary_markdown(&report));

    // The binary makes the summary, the plots and the docs section again,
    // and leaves the results file as it was.
    let saved = std::fs::read(&results).expect("results.json");
    std::fs::remove_file(dir.path().join("summary.md")).expect("remove summary");
    std::fs::remove_file(dir.path().join("latency-a.svg")).expect("remove plot");
    let doc = dir.path().join("README.md");
    std::fs::write(
        &doc,
        "intro\n<!-- keel-bench results: begin (generated by keel-bench; do not edit) -->\nold\n<!-- keel-bench results: end -->\noutro\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel-bench"))
        .arg("report")
        .arg("--results")
        .arg(&results)
        .arg("--update-docs")
        .arg(&doc)
        .output()
        .expect("run keel-bench report");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(&results).expect("results.json"), saved);
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).expect("summary.md again");
    assert_eq!(summary, report::summary_markdown(&report));
    assert!(dir.path().join("latency-a.svg").exists(), "the plot again");
    let updated = std::fs::read_to_string(&doc).expect("read");
    assert!(updated.starts_with("intro\n") && updated.ends_with("outro\n") && !updated.contains("old"));
    assert!(updated.contains("at commit abc1234"), "{updated}");
    assert!(updated.contains("Command: `keel-bench compare --workloads a,c`"), "{updated}");
    assert!(updated.contains(&report::summary_table(&report)), "{updated}");
    assert!(updated.contains("checkpoint"), "the slow steps: {updated}");

    // Anything else is refused with the file named.
    std::fs::write(&results, "{\"phases\": 3}").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel-bench"))
        .arg("report")
        .arg("--results")
        .arg(&results)
        .output()
        .expect("run keel-bench report");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a keel-bench results.json"));
}
