//! `keel dev`: a whole local cluster on loopback with one command.
//!
//! Storage nodes in three availability zones (three by default, one per
//! zone; with `--nodes 4` or more the zones take turns: n4 joins az1, …;
//! each partition and the catalog is a Raft group with a replica in each
//! zone), a control plane, two MemDS servers and a router, all as child processes of this one, with every
//! byte of data under one directory (`node-1/`, `node-2/`, …) and each
//! process's log in `logs/`. It prints the router's endpoint once the
//! router sees every node, writes `dev.json` (every process's endpoint, pid
//! and command line, for tests and scripts), and on Ctrl-C or SIGTERM stops
//! the router, MemDS and the control plane, then the nodes (each answers
//! its requests in flight and checkpoints), and exits.
//!
//! Ports, from `--port` P (default 7400): the router P, its admin port P+1;
//! the control plane P+5; MemDS P+6 and P+7; node i: clients P+10·i, its
//! shards P+10·i+1…, replication P+10·i+9.
//!
//! The control plane heals: the nodes run with their own leader-driven
//! healing off (`--self-heal-after-ms 0`), and the control plane asks the
//! leaders to replace the replicas of a node silent for 3 s (with three
//! nodes there is no spare node to move them to; with four or more there
//! is).
//!
//! The binaries (keel-node, keel-control, keel-memds, keel-router) are
//! taken from the directory `keel` itself runs from: build them with
//! `cargo build --release -p keel-node -p keel-router -p keel-ops`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use keel_wire::client::{BlockingClient, ClientConfig};
use serde_json::json;

/// Settings of `keel dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where every process keeps its data and logs.
    #[arg(long, default_value = "keel-dev")]
    pub data_dir: PathBuf,
    /// The router's port; the others follow from it (module docs).
    #[arg(long, default_value_t = 7400)]
    pub port: u16,
    /// Storage nodes (3 to 9), spread over the zones az1, az2, az3 in turn.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Shards (cores) per node.
    #[arg(long, default_value_t = 2)]
    pub shards: u16,
    /// Page cache per shard, in MiB.
    #[arg(long, default_value_t = 64)]
    pub page_cache_mb: u32,
    /// How long to wait for the cluster to come up, in seconds.
    #[arg(long, default_value_t = 120)]
    pub ready_timeout_s: u64,
}

/// Most storage nodes (node i's ports are P+10·i to P+10·i+9).
const NODES_MAX: u16 = 9;
/// Availability zones the nodes are spread over.
const ZONES: u32 = 3;

/// One child process.
struct Process {
    name: String,
    endpoint: String,
    args: Vec<String>,
    binary: PathBuf,
    child: Child,
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find the keel binary")?;
    let dir = exe.parent().context("the keel binary's directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: keel dev runs it from the directory keel runs from; build it with \
             `cargo build --release -p keel-node -p keel-router -p keel-ops`",
            path.display()
        );
    }
    Ok(path)
}

fn spawn(name: &str, binary_name: &str, endpoint: String, args: Vec<String>, logs: &Path) -> anyhow::Result<Process> {
    let binary = binary(binary_name)?;
    let log = std::fs::File::create(logs.join(format!("{name}.log"))).context("create a log file")?;
    let child = Command::new(&binary)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("open the log file twice")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {name} ({})", binary.display()))?;
    Ok(Process { name: name.to_owned(), endpoint, args, binary, child })
}

fn address(port: u32) -> anyhow::Result<String> {
    let port = u16::try_from(port).context("--port leaves no room for the cluster's ports")?;
    Ok(format!("127.0.0.1:{port}"))
}

/// Starts every process (nodes first).
fn start(args: &DevArgs) -> anyhow::Result<Vec<Process>> {
    if !(3..=NODES_MAX).contains(&args.nodes) {
        bail!("--nodes must be 3 to {NODES_MAX} (one replica per zone, three zones; ten ports per node)");
    }
    if args.shards == 0 || args.shards > 8 {
        bail!("--shards must be 1 to 8 (each node has ten ports)");
    }
    let base = u32::from(args.port);
    let logs = args.data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("n{i}")).collect();
    let spec = names
        .iter()
        .zip(1u32..)
        .map(|(name, i)| Ok(format!("{name}={}/az{}", address(base + 10 * i + 9)?, (i - 1) % ZONES + 1)))
        .collect::<anyhow::Result<Vec<_>>>()?
        .join(",");
    let mut processes = Vec::new();
    let mut node_endpoints = Vec::new();
    for (name, i) in names.iter().zip(1u32..) {
        let endpoint = address(base + 10 * i)?;
        let data = args.data_dir.join(format!("node-{i}"));
        let node_args = vec![
            "--initial-cluster".into(),
            spec.clone(),
            "--node-id".into(),
            name.clone(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            endpoint.clone(),
            "--shards".into(),
            args.shards.to_string(),
            "--no-pin".into(),
            "--page-cache-mb".into(),
            args.page_cache_mb.to_string(),
            // The control plane heals (module docs).
            "--self-heal-after-ms".into(),
            "0".into(),
        ];
        node_endpoints.push(endpoint.clone());
        processes.push(spawn(name, "keel-node", endpoint, node_args, &logs)?);
    }
    let control = address(base + 5)?;
    let control_args = vec!["--nodes".into(), node_endpoints.join(","), "--listen".into(), control.clone()];
    processes.push(spawn("control", "keel-control", control.clone(), control_args, &logs)?);
    let mut memds = Vec::new();
    for i in 0..2 {
        let endpoint = address(base + 6 + i)?;
        let memds_args = vec!["--control".into(), control.clone(), "--listen".into(), endpoint.clone()];
        processes.push(spawn(&format!("memds-{}", i + 1), "keel-memds", endpoint.clone(), memds_args, &logs)?);
        memds.push(endpoint);
    }
    let router = address(base)?;
    let router_args = vec![
        "--listen".into(),
        router.clone(),
        "--admin-listen".into(),
        address(base + 1)?,
        "--memds".into(),
        memds.join(","),
        "--control".into(),
        control,
    ];
    processes.push(spawn("router", "keel-router", router, router_args, &logs)?);
    Ok(processes)
}

/// Waits until the router reports every storage node up; gives up at once
/// when one of `processes` exits (naming it, with its log's error), and at
/// `timeout` naming the nodes not up.
fn wait_ready(
    router: &str,
    processes: &mut [Process],
    logs: &Path,
    timeout: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let nodes: Vec<(String, String)> = processes
        .iter()
        .filter(|p| p.binary.ends_with("keel-node"))
        .map(|p| (p.name.clone(), p.endpoint.clone()))
        .collect();
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        // A process that exits while the cluster starts (a port taken, a
        // data directory it refuses) will not come up: say so at once
        // instead of waiting out the timeout.
        if let Some(exited) = exited_during_start(processes, logs) {
            bail!("{exited}");
        }
        let mut config = ClientConfig::new(router);
        config.retries_max = 0;
        config.connections = 1;
        config.request_timeout = Duration::from_secs(3);
        match BlockingClient::connect(config).and_then(|c| c.run(async |c| c.cluster_status().await)) {
            Ok(status) => {
                let healthy = |endpoint: &str| {
                    status.services.iter().any(|s| s.role == "node" && s.healthy && s.endpoint == endpoint)
                };
                let down: Vec<&str> =
                    nodes.iter().filter(|(_, endpoint)| !healthy(endpoint)).map(|(name, _)| name.as_str()).collect();
                if down.is_empty() {
                    return Ok(());
                }
                last = format!(
                    "{} of {} storage nodes up; not up: {} (its log says which start-up step it is at)",
                    nodes.len() - down.len(),
                    nodes.len(),
                    down.join(", ")
                );
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the cluster did not come up within {timeout:?} ({last}); see the logs")
}

/// The first process found to have exited, with its exit status and what
/// its log says of the error.
fn exited_during_start(processes: &mut [Process], logs: &Path) -> Option<String> {
    processes.iter_mut().find_map(|p| {
        let status = p.child.try_wait().ok().flatten()?;
        let log = logs.join(format!("{}.log", p.name));
        let said =
            std::fs::read_to_string(&log).ok().and_then(|text| error_line(&text).map(|line| format!(": {line}")));
        Some(format!(
            "{} exited while the cluster was starting ({status}){}; its log: {}",
            p.name,
            said.unwrap_or_default(),
            log.display()
        ))
    })
}

/// The error a Keel binary's `main` reported in its log (`Error: ...`).
fn error_line(log: &str) -> Option<&str> {
    log.lines().find_map(|line| line.strip_prefix("Error: ")).map(str::trim)
}

fn write_manifest(args: &DevArgs, processes: &[Process]) -> anyhow::Result<()> {
    let list: Vec<_> = processes
        .iter()
        .map(|p| {
            json!({"name": p.name, "endpoint": p.endpoint, "pid": p.child.id(),
                "binary": p.binary.display().to_string(), "args": p.args})
        })
        .collect();
    let manifest = json!({
        "router": address(u32::from(args.port))?,
        "admin": address(u32::from(args.port) + 1)?,
        "processes": list,
    });
    let path = args.data_dir.join("dev.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?).with_context(|| format!("write {}", path.display()))
}

/// Stops the front end first, then the nodes; waits for each.
fn stop_all(processes: &mut [Process]) {
    let (nodes, front): (Vec<_>, Vec<_>) = processes.iter_mut().partition(|p| p.binary.ends_with("keel-node"));
    for group in [front, nodes] {
        for p in &group {
            // std's Child::kill sends SIGKILL; SIGTERM lets each process stop
            // cleanly, and kill(1) sends it without unsafe code here.
            // (A process that already exited makes kill(1) complain: quiet.)
            let _ = Command::new("kill").arg("-TERM").arg(p.child.id().to_string()).stderr(Stdio::null()).status();
        }
        for p in group {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

/// `keel dev`.
pub fn run(args: &DevArgs) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("keel dev: install a signal handler: {e}");
            return ExitCode::from(255);
        }
    }
    let mut processes = match start(args) {
        Ok(processes) => processes,
        Err(e) => {
            eprintln!("keel dev: {e:#}");
            return ExitCode::from(255);
        }
    };
    let router = processes.last().map(|p| p.endpoint.clone()).unwrap_or_default();
    let logs = args.data_dir.join("logs");
    let ready = write_manifest(args, &processes)
        .and_then(|()| wait_ready(&router, &mut processes, &logs, Duration::from_secs(args.ready_timeout_s), &stop));
    if let Err(e) = ready {
        eprintln!("keel dev: {e:#}");
        stop_all(&mut processes);
        return ExitCode::from(255);
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "keel dev: router at {router} (KEEL_ENDPOINT={router}); data and logs in {}",
            args.data_dir.display()
        );
        let _ =
            writeln!(out, "keel dev: {} nodes, a control plane, 2 MemDS servers; Ctrl-C stops them all", args.nodes);
        let _ = out.flush();
    }
    let mut exited = vec![false; processes.len()];
    while !stop.load(Ordering::Relaxed) {
        for (p, seen) in processes.iter_mut().zip(exited.iter_mut()) {
            if !*seen && let Ok(Some(status)) = p.child.try_wait() {
                *seen = true;
                eprintln!("keel dev: {} exited ({status}); the others keep running", p.name);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("keel dev: stopping");
    stop_all(&mut processes);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[test]
    fn the_error_a_process_logged_is_found_among_its_log_lines() {
        let log = "2026-12-07T11:00:01Z  INFO keel_node: starting\nError: listen on 127.0.0.1:29540: another \
                   process listens there already\n\nStack backtrace:\n   0: anyhow::Error::msg\n";
        assert_eq!(error_line(log), Some("listen on 127.0.0.1:29540: another process listens there already"));
        assert_eq!(error_line("2026-12-07T11:00:01Z  INFO keel_node: serving\n"), None);
    }
}
