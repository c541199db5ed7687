//! `keel-bench compare` end to end against a real keel-node (Keel alone:
//! CI has no redis-server). It starts the node (reading its JSON log for the
//! "listening" line and the slow steps), loads, runs, stops the node and
//! writes the result files. The node is the `keel-node` next to this test's
//! `keel-bench` (`cargo test --workspace` builds both there). No timing is
//! asserted.

// serde_json's `Value` indexing returns Null for what is missing; it does
// not panic.
#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a short `compare` of Keel alone in a fresh directory, with
/// `rust_log` as RUST_LOG (or none) and the load generator on `threads`
/// threads; returns its stderr and output directory.
fn compare(rust_log: Option<&str>, threads: u16) -> (String, PathBuf, tempfile::TempDir) {
    let bench = env!("CARGO_BIN_EXE_keel-bench");
    let node = Path::new(bench).with_file_name("keel-node");
    assert!(node.exists(), "{} is missing: run the tests with `cargo test --workspace`", node.display());
    // On the target directory's file system: compare refuses tmpfs.
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir");
    let out_dir = tmp.path().join("out");
    let mut command = Command::new(bench);
    command
        .args(["compare", "--targets", "keel", "--workloads", "a", "--records", "2000", "--duration-s", "2"])
        .args(["--clients", "8", "--rounds", "1", "--dir"])
        .arg(tmp.path().join("run"))
        .arg("--out")
        .arg(&out_dir)
        .args(["--generator-threads", &threads.to_string()])
        .env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let output = command.output().expect("run keel-bench compare");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "compare failed: {stderr}");
    assert!(stderr.contains("started keel-node"), "{stderr}");
    assert!(stderr.contains("stopped keel-node"), "stopped on SIGTERM, not killed: {stderr}");
    (stderr, out_dir, tmp)
}

#[test]
fn compare_runs_keel_end_to_end_from_a_generator_of_two_threads_and_every_phase_says_what_the_node_logged_as_slow() {
    let (stderr, out_dir, _tmp) = compare(None, 2);
    // Without RUST_LOG only the node's warnings reach the terminal: not the
    // info lines it writes for compare to read, nor its plain lines (every
    // run prints one per shard), which the other test sees passed on.
    assert!(!stderr.contains("keel-node: INFO"), "{stderr}");
    assert!(!stderr.contains("keel-node: keel-node shard 0 listening on"), "{stderr}");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).expect("results.json")).expect("JSON");
    assert_eq!(json["generator_threads"], 2);
    let phases = json["phases"].as_array().expect("phases");
    let workloads: Vec<&str> = phases.iter().filter_map(|p| p["workload"].as_str()).collect();
    assert_eq!(workloads, ["load", "a"]);
    for phase in phases {
        assert_eq!(phase["target"], "keel");
        assert!(phase["ops"].as_u64().is_some_and(|ops| ops > 0), "{phase}");
        assert_eq!(phase["errors"], serde_json::json!({}), "{phase}");
        // The node's process and the generator's, over each phase: two
        // seconds of workload A keep both busy for more than a tick.
        let cpu = &phase["cpu"];
        assert!(cpu["server_ms"].is_u64() && cpu["generator_ms"].is_u64(), "{phase}");
        if phase["workload"] == "a" {
            assert!(cpu["server_ms"].as_u64() > Some(0) && cpu["generator_ms"].as_u64() > Some(0), "{cpu}");
        }
        // Whatever this machine's disk did, the node's slow steps are there
        // to read, each within the phase's timeline.
        let seconds = phase["timeline"].as_array().expect("timeline").len();
        let events = phase["server_events"].as_array().expect("server_events");
        for event in events {
            assert!(event["second"].as_u64().is_some_and(|s| usize::try_from(s).is_ok_and(|s| s < seconds)));
            assert!(["WAL commit", "checkpoint"].contains(&event["what"].as_str().unwrap_or("")), "{event}");
            assert!(event["ms"].as_u64().is_some_and(|ms| ms >= 20), "{event}");
        }
    }
    let summary = std::fs::read_to_string(out_dir.join("summary.md")).expect("summary.md");
    assert!(summary.contains("| a |"), "{summary}");
    assert!(summary.contains("CPU per operation"), "{summary}");
    assert!(out_dir.join("latency-a.svg").exists());
}

#[test]
fn with_rust_log_set_compare_passes_the_nodes_whole_log_on_as_readable_lines() {
    let (stderr, out_dir, _tmp) = compare(Some("info"), 1);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).expect("results.json")).expect("JSON");
    assert_eq!(json["generator_threads"], 1);
    // keel-node's JSON entries, each as one line: level, target, message,
    // fields; from its first line (logged before it listens) to its last.
    assert!(stderr.contains("keel-node: INFO keel_node::server: keel-node serving entry=127.0.0.1:"), "{stderr}");
    assert!(
        stderr.contains("keel-node: INFO keel_node::server: stopping: draining in-flight requests, then checkpointing"),
        "{stderr}"
    );
    assert!(!stderr.contains("keel-node: {"), "no raw JSON: {stderr}");
    // Its plain lines too (written before it listens).
    assert!(stderr.contains("keel-node: keel-node shard 0 listening on 127.0.0.1:"), "{stderr}");
}

/// A keel-node this test started; killed when dropped, so a failing test
/// leaves no server behind.
struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_against_a_server_already_up_records_its_cpu_given_its_pid_and_refuses_a_pid_that_is_not_there() {
    use std::io::BufRead as _;
    let bench = env!("CARGO_BIN_EXE_keel-bench");
    let node_binary = Path::new(bench).with_file_name("keel-node");
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir");
    let mut node = Node(
        Command::new(&node_binary)
            .args(["--standalone", "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
            .arg(tmp.path().join("data"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start keel-node"),
    );
    let stdout = node.0.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let endpoint = loop {
        let line = lines.next().expect("keel-node exited before listening").expect("a line");
        if let Some(address) = line.strip_prefix("keel-node listening on ") {
            break address.trim().to_owned();
        }
    };
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    let run_at = |endpoint: &str, pid: u32, out: &Path| {
        Command::new(bench)
            .args(["run", "--target", "keel", "--endpoint", endpoint, "--workloads", "c", "--records", "500"])
            .args(["--duration-s", "2", "--clients", "4", "--server-pid", &pid.to_string(), "--out"])
            .arg(out)
            .output()
            .expect("run keel-bench run")
    };
    let run = |pid: u32, out: &Path| run_at(&endpoint, pid, out);
    let out_dir = tmp.path().join("out");
    let output = run(node.0.id(), &out_dir);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).expect("results.json")).expect("JSON");
    let phases = json["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2, "the load and C");
    for phase in phases {
        assert!(phase["cpu"]["server_ms"].is_u64() && phase["cpu"]["generator_ms"].is_u64(), "{phase}");
    }
    // Two seconds of reads keep the node busy for more than a tick.
    assert!(phases[1]["cpu"]["server_ms"].as_u64() > Some(0), "{}", phases[1]);
    let summary = std::fs::read_to_string(out_dir.join("summary.md")).expect("summary.md");
    assert!(summary.contains("CPU per operation"), "{summary}");

    let refused = run(u32::MAX, &tmp.path().join("refused"));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no such process here"), "{stderr}");
    // The pid is checked before connecting: refused for it even where
    // nothing listens (port 9 of loopback: discard, not served here).
    let refused = run_at("127.0.0.1:9", u32::MAX, &tmp.path().join("refused-unserved"));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no such process here"), "{stderr}");
}
