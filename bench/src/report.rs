//! Result files: `results.json` (every phase), `summary.md` (one row per
//! workload: Keel beside its peer, with ratios; and, after `compare
//! --tail-at`, the tail table: each target in open loop at a fraction of its
//! own peak) and one latency-percentile plot per workload
//! (`latency-<workload>.svg`). The tables also go into docs/bench/README.md
//! between its result markers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::runner::{PhaseResult, ServerEvent};

/// The machine a run was measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Memory in GiB.
    pub memory_gib: u64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Describes this machine (from /proc).
    #[must_use]
    pub fn here() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // The machine's CPUs, not the ones this process may use (`compare
        // --server-cpus` moves it onto some of them).
        let processors =
            cpuinfo.lines().filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor")).count();
        Self {
            cpu,
            cpus: if processors > 0 {
                processors
            } else {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            },
            memory_gib: (memory_kib + 512 * 1024) / (1024 * 1024),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        }
    }

    /// One line: CPUs, model, memory, kernel.
    #[must_use]
    pub fn line(&self) -> String {
        format!("{} × {}, {} GiB, Linux {}", self.cpus, self.cpu, self.memory_gib, self.kernel)
    }
}

/// A whole run: where, when, how, and every phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// UTC date (YYYY-MM-DD).
    pub date: String,
    /// Keel commit measured.
    pub commit: String,
    /// The command line.
    pub command: String,
    /// Records loaded.
    pub records: u64,
    /// The CPUs the servers ran on (`compare --server-cpus`); `None`: not
    /// placed (keel-node pinned shard i to the i-th CPU it may use).
    pub server_cpus: Option<Vec<usize>>,
    /// The CPUs the load generator could run on.
    pub generator_cpus: Vec<usize>,
    /// The load generator's threads (`--generator-threads`).
    pub generator_threads: usize,
    /// Every phase, in the order run.
    pub phases: Vec<PhaseResult>,
}

fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Report {
    /// A report of `phases` measured here, now, at the current commit.
    #[must_use]
    pub fn new(records: u64, phases: Vec<PhaseResult>) -> Self {
        Self {
            machine: Machine::here(),
            date: output_of("date", &["-u", "+%Y-%m-%d"]).unwrap_or_default(),
            commit: output_of("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            records,
            server_cpus: None,
            generator_cpus: crate::host::allowed_cpus(),
            generator_threads: 1,
            phases,
        }
    }
}

impl Report {
    /// The machine in one line, with where the servers and the load
    /// generator ran when the servers were placed, and the generator's
    /// threads when it had more than one.
    #[must_use]
    pub fn machine_line(&self) -> String {
        let mut line = match &self.server_cpus {
            Some(servers) => format!(
                "{}; servers on CPUs {}, load generator on CPUs {}",
                self.machine.line(),
                crate::host::cpu_list(servers),
                crate::host::cpu_list(&self.generator_cpus)
            ),
            None => self.machine.line(),
        };
        if self.generator_threads > 1 {
            line.push_str(&format!("; load generator on {} threads", self.generator_threads));
        }
        line
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values.get(n / 2).copied().unwrap_or(0.0),
        n => (values.get(n / 2 - 1).copied().unwrap_or(0.0) + values.get(n / 2).copied().unwrap_or(0.0)) / 2.0,
    }
}

/// Per (workload, target): median over rounds of the offered rate (open
/// loop), ops/s, p50, p99, p99.9.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    rate: f64,
    ops_per_s: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
}

/// Whether a phase belongs to the tail table: open loop at a fraction of
/// its target's peak (`compare --tail-at`). Every other phase is in the
/// summary table.
fn in_tail_table(phase: &PhaseResult) -> bool {
    phase.of_peak.is_some()
}

/// Rows of the summary table (`tail` false) or of the tail table (`tail`
/// true): workload → target → medians over rounds.
#[allow(clippy::cast_precision_loss)]
fn rows(report: &Report, tail: bool) -> BTreeMap<String, BTreeMap<String, Row>> {
    let mut grouped: BTreeMap<(String, String), Vec<&PhaseResult>> = BTreeMap::new();
    for phase in report.phases.iter().filter(|p| in_tail_table(p) == tail) {
        grouped.entry((phase.workload.clone(), phase.target.clone())).or_default().push(phase);
    }
    let mut rows: BTreeMap<String, BTreeMap<String, Row>> = BTreeMap::new();
    for ((workload, target), phases) in grouped {
        let row = Row {
            rate: median(phases.iter().filter_map(|p| p.rate).collect()),
            ops_per_s: median(phases.iter().map(|p| p.ops_per_s).collect()),
            p50: median(phases.iter().map(|p| p.latency_us.p50 as f64).collect()),
            p99: median(phases.iter().map(|p| p.latency_us.p99 as f64).collect()),
            p999: median(phases.iter().map(|p| p.latency_us.p999 as f64).collect()),
            errors: phases.iter().map(|p| p.errors.values().sum::<u64>()).sum(),
        };
        rows.entry(workload).or_default().insert(target, row);
    }
    rows
}

/// A target's peak on a workload: the median ops/s of its closed-loop
/// phases (the load phase is not a workload; tail phases run in open loop).
/// `None` when it ran no such phase.
#[must_use]
pub fn peak(phases: &[PhaseResult], workload: &str, target: &str) -> Option<f64> {
    let runs: Vec<f64> = phases
        .iter()
        .filter(|p| {
            p.workload == workload
                && p.workload != crate::runner::LOAD_PHASE
                && p.target == target
                && p.mode == "closed"
        })
        .map(|p| p.ops_per_s)
        .collect();
    (!runs.is_empty()).then(|| median(runs))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}", a / b) } else { "–".into() }
}

/// Keel, and the other target of the report's phases ("peer" if none), as
/// the tables set them side by side.
fn subject_and_peer(report: &Report) -> (&'static str, String) {
    let subject = "keel";
    let peer = report.phases.iter().map(|p| p.target.as_str()).find(|t| *t != subject).unwrap_or("peer").to_owned();
    (subject, peer)
}

/// The summary table: one row per workload, Keel and its peer side by side.
#[must_use]
pub fn summary_table(report: &Report) -> String {
    let rows = rows(report, false);
    let (subject, peer) = subject_and_peer(report);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | {subject} ops/s | {peer} ops/s | {subject}/{peer} ops/s | {subject} p99 µs | {peer} p99 µs | \
         {subject}/{peer} p99 | {subject} p99.9/p50 | {peer} p99.9/p50 | errors |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (workload, targets) in &rows {
        let (k, p) = (targets.get(subject).copied(), targets.get(&peer).copied());
        let num = |r: Option<Row>, f: fn(Row) -> f64| r.map_or("–".into(), |r| format!("{:.0}", f(r)));
        let _ = writeln!(
            out,
            "| {workload} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            num(k, |r| r.ops_per_s),
            num(p, |r| r.ops_per_s),
            k.zip(p).map_or("–".into(), |(k, p)| ratio(k.ops_per_s, p.ops_per_s)),
            num(k, |r| r.p99),
            num(p, |r| r.p99),
            k.zip(p).map_or("–".into(), |(k, p)| ratio(k.p99, p.p99)),
            k.map_or("–".into(), |k| ratio(k.p999, k.p50)),
            p.map_or("–".into(), |p| ratio(p.p999, p.p50)),
            k.map_or(0, |r| r.errors) + p.map_or(0, |r| r.errors),
        );
    }
    out
}

/// The tail table: one row per workload and target, for the open-loop
/// phases run at a fraction of each target's own peak (`compare
/// --tail-at`), with the rate offered and done and the tail's spread
/// (p99.9/p50). Empty when there were none.
#[must_use]
pub fn tail_table(report: &Report) -> String {
    let rows = rows(report, true);
    if rows.is_empty() {
        return String::new();
    }
    let fractions: Vec<String> = {
        let mut f: Vec<f64> = report.phases.iter().filter_map(|p| p.of_peak).collect();
        f.sort_by(f64::total_cmp);
        f.dedup();
        f.iter().map(|f| format!("{f}")).collect()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nOpen loop at {} of each target's own peak (its closed-loop ops/s above), latency counted from each \
         operation's release:\n",
        fractions.join(", ")
    );
    let _ = writeln!(
        out,
        "| workload | target | rate ops/s | done ops/s | p50 µs | p99 µs | p99.9 µs | p99.9/p50 | errors |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (workload, targets) in &rows {
        for (target, r) in targets {
            let _ = writeln!(
                out,
                "| {workload} | {target} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                r.rate,
                r.ops_per_s,
                r.p50,
                r.p99,
                r.p999,
                ratio(r.p999, r.p50),
                r.errors
            );
        }
    }
    out
}

/// CPU per operation in the summary table's phases: µs of the server's
/// process and of keel-bench (user and system time, all threads) per
/// successful operation, medians over rounds, one row per workload with
/// Keel and its peer side by side. Empty when no phase measured its CPU
/// (outside `compare`).
#[must_use]
pub fn cpu_table(report: &Report) -> String {
    // workload → target → (server µs/op, generator µs/op) of each round.
    type Rounds = (Vec<f64>, Vec<f64>);
    let mut grouped: BTreeMap<&str, BTreeMap<&str, Rounds>> = BTreeMap::new();
    for phase in report.phases.iter().filter(|p| !in_tail_table(p)) {
        let Some(cpu) = phase.cpu else { continue };
        let (Some(server), Some(generator)) = (cpu.server_us_per_op(phase.ops), cpu.generator_us_per_op(phase.ops))
        else {
            continue;
        };
        let rounds = grouped.entry(&phase.workload).or_default().entry(&phase.target).or_default();
        rounds.0.push(server);
        rounds.1.push(generator);
    }
    if grouped.is_empty() {
        return String::new();
    }
    let (subject, peer) = subject_and_peer(report);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nCPU per operation, µs: user and system time of the server's process and of keel-bench (all their \
         threads) while each phase of the first table ran, over its successful operations. On a host that lends \
         its CPUs out, ops/s rise and fall with the host; CPU per operation less.\n"
    );
    let _ = writeln!(
        out,
        "| workload | {subject} server | {peer} server | {subject}/{peer} server | keel-bench on {subject} | \
         keel-bench on {peer} |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for (workload, targets) in &grouped {
        let of = |target: &str| targets.get(target).map(|(s, g)| (median(s.clone()), median(g.clone())));
        let (k, p) = (of(subject), of(&peer));
        let num = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
        let _ = writeln!(
            out,
            "| {workload} | {} | {} | {} | {} | {} |",
            num(k.map(|k| k.0)),
            num(p.map(|p| p.0)),
            k.zip(p).map_or("–".into(), |(k, p)| ratio(k.0, p.0)),
            num(k.map(|k| k.1)),
            num(p.map(|p| p.1)),
        );
    }
    out
}

/// The whole `summary.md`.
#[must_use]
pub fn summary_markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# keel-bench results\n");
    let _ = writeln!(out, "- machine: {}", report.machine_line());
    let _ = writeln!(out, "- date: {}, commit {}", report.date, report.commit);
    let _ = writeln!(out, "- records: {}", report.records);
    let _ = writeln!(out, "- command: `{}`\n", report.command);
    out.push_str(&summary_table(report));
    out.push_str(&tail_table(report));
    out.push_str(&cpu_table(report));
    let _ =
        writeln!(out, "\nMedians over rounds. Latencies in µs, from HDR histograms; every phase is in results.json.");
    out.push_str(&steal_lines(report));
    out.push_str(&server_event_lines(report));
    out
}

/// Seconds of a phase's timeline listed by [`steal_lines`] and
/// [`server_event_lines`] at most.
const SECONDS_LISTED_MAX: usize = 8;

/// Each phase's name in the notes under the tables: target, workload, the
/// fraction of peak for a tail phase, and which round of its kind it is.
fn phase_labels(report: &Report) -> Vec<String> {
    let mut rounds: BTreeMap<(&str, &str, Option<u64>), usize> = BTreeMap::new();
    report
        .phases
        .iter()
        .map(|phase| {
            let round = rounds.entry((&phase.target, &phase.workload, phase.of_peak.map(f64::to_bits))).or_default();
            *round += 1;
            format!(
                "{} {}{} round {round}",
                phase.target,
                phase.workload,
                phase.of_peak.map_or(String::new(), |f| format!(" at {f} of peak"))
            )
        })
        .collect()
}

/// `items` joined, the first [`SECONDS_LISTED_MAX`] of them, with
/// how many more there were.
fn listed(mut items: Vec<String>) -> String {
    let more = items.len().saturating_sub(SECONDS_LISTED_MAX);
    items.truncate(SECONDS_LISTED_MAX);
    let mut out = items.join(", ");
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

/// The phases the host stole CPU time from, with the seconds it happened
/// in and that second's p99: a latency spike there is the host's, not the
/// target's. Empty when the host took nothing.
#[must_use]
pub fn steal_lines(report: &Report) -> String {
    let mut out = String::new();
    for (phase, label) in report.phases.iter().zip(phase_labels(report)) {
        if phase.steal_ms == 0 {
            continue;
        }
        if out.is_empty() {
            let _ = writeln!(
                out,
                "\nHost steal: CPU time the hypervisor gave to something else while this machine's CPUs had work \
                 (all CPUs, 10 ms steps). Requests in flight then wait whatever the server; \
                 second (steal ms, that second's p99 µs):"
            );
        }
        let seconds: Vec<String> = phase
            .timeline
            .iter()
            .enumerate()
            .filter(|(_, s)| s.steal_ms > 0)
            .map(|(i, s)| format!("{i} ({}, {})", s.steal_ms, s.p99_us))
            .collect();
        let _ = writeln!(out, "- {label}: {} ms; {}", phase.steal_ms, listed(seconds));
    }
    out
}

/// The phases in which a server logged slow steps (keel-node: WAL group
/// commits and partition checkpoints of 20 ms or more), each kind on its
/// own (a slow commit held writes; a checkpoint runs beside them), longest
/// first, with the second it ended in and that second's p99: a latency
/// spike beside one is the server's own (or its disk's). Empty when no
/// server logged any.
#[must_use]
pub fn server_event_lines(report: &Report) -> String {
    let mut out = String::new();
    for (phase, label) in report.phases.iter().zip(phase_labels(report)) {
        if phase.server_events.is_empty() {
            continue;
        }
        if out.is_empty() {
            let _ = writeln!(
                out,
                "\nSlow steps the server logged (keel-node: WAL group commits, which every write waiting on them \
                 waited for, and partition checkpoints, which run beside the requests; 20 ms or more), longest \
                 first; second (ms, that second's p99 µs):"
            );
        }
        let mut kinds: BTreeMap<&str, Vec<&ServerEvent>> = BTreeMap::new();
        for event in &phase.server_events {
            kinds.entry(&event.what).or_default().push(event);
        }
        let kinds: Vec<String> = kinds
            .into_iter()
            .map(|(what, mut events)| {
                events.sort_by_key(|e| (std::cmp::Reverse(e.ms), e.second));
                let seconds = events
                    .iter()
                    .map(|e| {
                        format!("{} ({} ms, {})", e.second, e.ms, phase.timeline.get(e.second).map_or(0, |s| s.p99_us))
                    })
                    .collect();
                format!("{} × {what}: {}", events.len(), listed(seconds))
            })
            .collect();
        let _ = writeln!(out, "- {label}: {}", kinds.join("; "));
    }
    out
}

/// Plots latency by percentile for each workload, one line per target
/// (and round).
pub fn plot(report: &Report, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    let mut workloads: Vec<&str> = report.phases.iter().map(|p| p.workload.as_str()).collect();
    workloads.dedup();
    workloads.sort_unstable();
    workloads.dedup();
    for workload in workloads {
        let phases: Vec<&PhaseResult> = report.phases.iter().filter(|p| p.workload == workload).collect();
        let name = format!("latency-{workload}.svg");
        let path = dir.join(&name);
        let max = phases.iter().map(|p| p.latency_us.max).max().unwrap_or(1).max(10);
        // x: "nines" of the percentile, −log10(1 − p); 100 % is drawn at 5.
        let nines = |p: f64| if p >= 100.0 { 5.0 } else { (-(1.0 - p / 100.0).log10()).min(5.0) };
        let root = SVGBackend::new(&path, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("workload {workload}: latency by percentile"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..5f64, (1u64..max * 2).log_scale())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .x_labels(6)
            .x_label_formatter(&|x| {
                let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "max"];
                let i = labels.iter().enumerate().min_by(|a, b| {
                    #[allow(clippy::cast_precision_loss)]
                    let d = |i: usize| (x - i as f64).abs();
                    d(a.0).total_cmp(&d(b.0))
                });
                i.map_or(String::new(), |(_, l)| (*l).to_owned())
            })
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, phase) in phases.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, u64)> =
                phase.latency_us.curve.iter().map(|(p, v)| (nines(*p), (*v).max(1))).collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(match phase.rate {
                    Some(rate) => format!("{} (open loop at {rate:.0} ops/s)", phase.target),
                    None => format!("{} ({} ops/s)", phase.target, phase.ops_per_s),
                })
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        files.push(name);
    }
    Ok(files)
}

/// Writes results.json, summary.md and the plots into `dir`.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(report)?)?;
    write_summary(report, dir)
}

/// Writes `summary.md` and the plots of `report` into `dir` (which exists).
pub fn write_summary(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("summary.md"), summary_markdown(report))?;
    plot(report, dir)?;
    Ok(())
}

/// Reads a `results.json` written by [`write`] (`keel-bench report`
/// regenerates the summary, the plots and the docs section from it).
pub fn read(path: &Path) -> anyhow::Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a keel-bench results.json", path.display()))
}

/// Replaces the generated section `name` of a Markdown file (between
/// `<!-- keel-bench NAME: begin … -->` and `<!-- keel-bench NAME: end -->`).
pub fn update_docs(path: &Path, name: &str, section: &str) -> anyhow::Result<()> {
    let begin_marker = format!("<!-- keel-bench {name}: begin (generated by keel-bench; do not edit) -->");
    let end_marker = format!("<!-- keel-bench {name}: end -->");
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let (Some(begin), Some(end)) = (text.find(&begin_marker), text.find(&end_marker)) else {
        anyhow::bail!("{} has no `{name}` markers", path.display());
    };
    anyhow::ensure!(begin < end, "{}: `{name}` markers out of order", path.display());
    let head = text.get(..begin + begin_marker.len()).unwrap_or_default();
    let tail = text.get(end..).unwrap_or_default();
    std::fs::write(path, format!("{head}\n{}\n{tail}", section.trim_end()))?;
    Ok(())
}
