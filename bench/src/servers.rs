//! The servers `compare` starts: a standalone keel-node on a fresh data
//! directory, and Debian's redis-server with `appendonly yes` and
//! `appendfsync always`, so that both acknowledge only durable writes.
//! Each is stopped when dropped: SIGTERM, then SIGKILL after two minutes
//! (`STOP_GRACE`).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

use crate::host;
use crate::runner::{PhaseResult, ServerEvent, unix_ms};

/// How long a server may take to stop after SIGTERM before it is killed.
/// keel-node answers its requests in flight (10 s at most by default) and
/// checkpoints; killing it later loses nothing acknowledged (its WAL is
/// durable), but the next `compare` starts from a fresh directory anyway.
const STOP_GRACE: Duration = Duration::from_secs(120);

/// A server process.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// `host:port` it serves on.
    pub endpoint: String,
    name: &'static str,
    /// The slow steps it has logged so far (keel-node), in the order logged.
    events: Option<Arc<Mutex<Vec<LoggedEvent>>>>,
}

/// A slow step a server logged, stamped with this process's clock when the
/// line arrived (the server logs it as the step ends).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoggedEvent {
    at_unix_ms: u64,
    what: &'static str,
    ms: u64,
}

/// How [`Server::stop`] ended the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited after SIGTERM (or had exited before).
    Terminated,
    /// It was still running after the grace period (or could not be
    /// signalled) and was killed.
    Killed,
}

impl Server {
    fn new(child: Child, endpoint: String, name: &'static str) -> Self {
        Self { child, endpoint, name, events: None }
    }

    /// The slow steps the server logged while `phase` ran, by the phase's
    /// timeline second (empty for a server that does not log them).
    #[must_use]
    pub fn events_during(&self, phase: &PhaseResult) -> Vec<ServerEvent> {
        let Some(events) = &self.events else { return Vec::new() };
        let events = events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        events_in(&events, phase.started_unix_ms, phase.timeline.len().max(1))
    }

    /// The CPU time the server's process has spent so far, in ms; `None`
    /// once it has exited, or where `/proc` does not say.
    #[must_use]
    pub fn cpu_ms(&mut self) -> Option<u64> {
        if self.exited() {
            return None;
        }
        host::read_process_cpu_ms(self.child.id())
    }

    /// Whether the process has exited and been reaped (after a `wait`,
    /// `try_wait` answers from the status it kept, without a system call),
    /// so that its pid, perhaps reused already, is never signalled.
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Stops the server: SIGTERM (sent by the process itself, not by a
    /// `kill` program, which minimal Debian images lack), then SIGKILL if it
    /// has not exited within `grace`. Never waits longer than that.
    pub fn stop(&mut self, grace: Duration) -> Stopped {
        if self.exited() {
            return Stopped::Terminated;
        }
        let pid = i32::try_from(self.child.id()).map(nix::unistd::Pid::from_raw);
        let signalled = pid.is_ok_and(|pid| nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok());
        let deadline = Instant::now() + grace;
        if signalled {
            loop {
                if self.exited() {
                    return Stopped::Terminated;
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Stopped::Killed
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited() {
            return;
        }
        let how = match self.stop(STOP_GRACE) {
            Stopped::Terminated => "stopped",
            Stopped::Killed => "killed (it did not stop on SIGTERM)",
        };
        tracing_free_log(&format!("{how} {} ({})", self.name, self.endpoint));
    }
}

fn tracing_free_log(line: &str) {
    eprintln!("keel-bench: {line}");
}

/// Refuses tmpfs (it fakes O_DIRECT and fsync, so durability costs nothing).
pub fn check_real_disk(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let out = Command::new("stat").args(["-f", "-c", "%T"]).arg(dir).output().context("run stat -f")?;
    let fs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    anyhow::ensure!(fs != "tmpfs" && fs != "ramfs", "{} is on {fs}: benchmarks need a real disk", dir.display());
    Ok(())
}

/// The keel-node binary next to this one (both built by `cargo build --release`).
pub fn keel_node_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("keel-node");
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it with `cargo build --release -p keel-node -p keel-bench`",
        path.display()
    );
    Ok(path)
}

/// Where the servers run (`compare --server-cpus`).
#[derive(Debug, Clone)]
pub struct Placement {
    /// The CPUs of the servers' main threads (keel-node's shards).
    pub servers: Vec<usize>,
    /// Every CPU the benchmark could use before it moved itself off the
    /// servers' CPUs: the servers' processes may use all of them.
    pub everywhere: Vec<usize>,
}

/// Starts `command`, with `placement`'s CPUs when given: the child inherits
/// the mask of the thread that starts it, so the mask is widened for the
/// start and put back after.
fn spawn_placed(command: &mut Command, placement: Option<&Placement>) -> anyhow::Result<Child> {
    let Some(placement) = placement else { return Ok(command.spawn()?) };
    let mine = host::allowed_cpus();
    host::run_only_on(&placement.everywhere)?;
    let child = command.spawn();
    host::run_only_on(&mine)?;
    Ok(child?)
}

/// How `compare` runs keel-node.
#[derive(Debug, Clone)]
pub struct KeelOptions {
    /// Shards.
    pub shards: usize,
    /// `--wal-sync`: `ring` or `inline`.
    pub wal_sync: String,
}

/// Starts a standalone keel-node as `options` say on a fresh `dir`, with
/// its shards pinned to `placement`'s server CPUs when given.
pub fn keel_node(
    binary: &Path,
    dir: &Path,
    options: &KeelOptions,
    placement: Option<&Placement>,
) -> anyhow::Result<Server> {
    let shards = options.shards;
    let user_log = std::env::var("RUST_LOG").ok();
    check_real_disk(dir)?;
    let data = dir.join("keel-data");
    let _ = std::fs::remove_dir_all(&data);
    let mut command = Command::new(binary);
    command
        .args(["--standalone", "--listen", "127.0.0.1:0", "--shards", &shards.to_string()])
        .args(["--wal-sync", &options.wal_sync, "--log-json", "--data-dir"])
        .arg(&data)
        // Its slow WAL commits and checkpoints (info) are gathered to place
        // beside each phase's timeline; only warnings are passed on, unless
        // the caller's RUST_LOG asks for more.
        .env("RUST_LOG", user_log.clone().unwrap_or_else(|| NODE_LOG.to_owned()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(placement) = placement {
        command.args(["--cpus", &host::cpu_list(&placement.servers)]);
    }
    let mut child = spawn_placed(&mut command, placement).with_context(|| format!("start {}", binary.display()))?;
    let stdout = child.stdout.take().context("keel-node stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    // Its log, from the first line on: slow steps gathered, warnings (or all
    // that the caller's RUST_LOG asks for) passed on.
    let events = Arc::new(Mutex::new(Vec::new()));
    let pass_all = user_log.is_some();
    let endpoint = loop {
        let line = lines.next().context("keel-node exited before listening")??;
        if let Some(address) = line.strip_prefix("keel-node listening on ") {
            break address.trim().to_owned();
        }
        read_node_line(&line, pass_all, &events);
    };
    // Keep draining stdout so the node never blocks on a full pipe.
    let gathered = Arc::clone(&events);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            read_node_line(&line, pass_all, &gathered);
        }
    });
    tracing_free_log(&format!(
        "started keel-node ({shards} shards, --wal-sync {}) on {endpoint}, data in {}",
        options.wal_sync,
        data.display()
    ));
    let mut server = Server::new(child, endpoint, "keel-node");
    server.events = Some(events);
    Ok(server)
}

/// One line of keel-node's stdout under `compare`: a slow step is added to
/// `events`, stamped with this process's clock; a warning or an error is
/// passed on as one readable line, and so is every other line when
/// `pass_all` (the caller set RUST_LOG), lines that are not JSON (its
/// "listening" lines) included.
fn read_node_line(line: &str, pass_all: bool, events: &Mutex<Vec<LoggedEvent>>) {
    let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
        if pass_all {
            eprintln!("keel-node: {line}");
        }
        return;
    };
    if let Some((what, ms)) = slow_step(&entry) {
        let at_unix_ms = unix_ms(SystemTime::now());
        events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(LoggedEvent { at_unix_ms, what, ms });
    }
    let level = entry.get("level").and_then(serde_json::Value::as_str).unwrap_or("");
    if pass_all || matches!(level, "WARN" | "ERROR") {
        eprintln!("keel-node: {}", log_line(&entry));
    }
}

/// The events logged in the `seconds` of a phase that started at
/// `started_unix_ms`, by second.
fn events_in(events: &[LoggedEvent], started_unix_ms: u64, seconds: usize) -> Vec<ServerEvent> {
    events
        .iter()
        .filter_map(|e| {
            let since = e.at_unix_ms.checked_sub(started_unix_ms)?;
            let second = usize::try_from(since / 1000).ok().filter(|&s| s < seconds)?;
            Some(ServerEvent { second, what: e.what.to_owned(), ms: e.ms })
        })
        .collect()
}

/// keel-node's log filter under `compare` when the caller sets no
/// RUST_LOG: warnings, and the info lines of its slow WAL commits and
/// checkpoints.
const NODE_LOG: &str = "warn,keel_node::wal=info,keel_node::replica=info";

/// What a keel-node JSON log entry reports as slow, with its duration in
/// ms: `slow WAL commit` (a group commit that took 20 ms or more) and
/// `slow checkpoint` (a partition's checkpoint that did). None for any
/// other entry, or one without a duration.
#[must_use]
fn slow_step(entry: &serde_json::Value) -> Option<(&'static str, u64)> {
    let fields = entry.get("fields")?;
    let what = match fields.get("message")?.as_str()? {
        "slow WAL commit" => "WAL commit",
        "slow checkpoint" => "checkpoint",
        _ => return None,
    };
    let ms = fields.get("ms")?;
    let ms = ms.as_u64().or_else(|| ms.as_str()?.parse().ok())?;
    Some((what, ms))
}

/// A keel-node JSON log entry as one readable line: level, target,
/// message, then the other fields as `name=value`.
fn log_line(entry: &serde_json::Value) -> String {
    let text = |key: &str| entry.get(key).and_then(serde_json::Value::as_str).unwrap_or("");
    let mut line = format!("{} {}:", text("level"), text("target"));
    if let Some(fields) = entry.get("fields").and_then(serde_json::Value::as_object) {
        if let Some(message) = fields.get("message").and_then(serde_json::Value::as_str) {
            line.push(' ');
            line.push_str(message);
        }
        for (name, value) in fields.iter().filter(|(name, _)| *name != "message") {
            let value = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            line.push_str(&format!(" {name}={value}"));
        }
    }
    line
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts redis-server with an append-only file fsynced before every
/// reply, with its main thread on `placement`'s server CPUs when given.
pub fn redis(dir: &Path, placement: Option<&Placement>) -> anyhow::Result<Server> {
    check_real_disk(dir)?;
    let data = dir.join("redis-data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let port = free_port()?;
    let mut command = Command::new("redis-server");
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--dir"])
        .arg(&data)
        .args(["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"])
        // No background AOF rewrite: its forked child would take a core
        // while the other target is measured (it halved Keel's workload C).
        .args(["--auto-aof-rewrite-percentage", "0"])
        .args(["--loglevel", "warning"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(placement) = placement {
        command.args(["--server_cpulist", &host::cpu_list(&placement.servers)]);
    }
    let child = spawn_placed(&mut command, placement).context("start redis-server (apt-get install redis-server)")?;
    let endpoint = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ping = redis::Client::open(format!("redis://{endpoint}/"))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if ping.is_ok() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "redis-server did not answer PING on {endpoint}");
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing_free_log(&format!("started redis-server (appendfsync always) on {endpoint}, data in {}", data.display()));
    Ok(Server::new(child, endpoint, "redis-server"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(script: &str) -> Server {
        let child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sh");
        Server::new(child, "none".into(), "test")
    }

    fn gone(pid: u32) -> bool {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
        nix::sys::signal::kill(pid, None) == Err(nix::errno::Errno::ESRCH)
    }

    #[test]
    fn keel_nodes_slow_commits_and_checkpoints_are_read_from_its_json_log() {
        let entry = |line: &str| serde_json::from_str::<serde_json::Value>(line).expect("JSON");
        // As keel-node --log-json writes them (`ms` is a u128, which the
        // JSON formatter may write as a number or as a string).
        let commit = entry(
            r#"{"timestamp":"2026-12-06T19:25:25.498104Z","level":"INFO","fields":{"message":"slow WAL commit","bytes":8192,"ms":"118"},"target":"keel_node::wal"}"#,
        );
        let checkpoint = entry(
            r#"{"timestamp":"2026-12-06T19:25:47.831255Z","level":"INFO","fields":{"message":"slow checkpoint","partition":4294967296,"bytes":32260096,"ms":237},"target":"keel_node::replica"}"#,
        );
        let other = entry(
            r#"{"timestamp":"2026-12-06T19:38:32.800340Z","level":"INFO","fields":{"message":"keel-node serving","entry":"127.0.0.1:7499"},"target":"keel_node::server"}"#,
        );
        let no_duration = entry(r#"{"level":"INFO","fields":{"message":"slow WAL commit","bytes":8192}}"#);
        assert_eq!(slow_step(&commit), Some(("WAL commit", 118)));
        assert_eq!(slow_step(&checkpoint), Some(("checkpoint", 237)));
        assert_eq!(slow_step(&other), None);
        assert_eq!(slow_step(&no_duration), None);
        assert_eq!(
            log_line(&checkpoint),
            "INFO keel_node::replica: slow checkpoint bytes=32260096 ms=237 partition=4294967296"
        );
    }

    #[test]
    fn logged_events_are_placed_in_the_second_of_the_phase_they_ended_in() {
        let at = |at_unix_ms, ms| LoggedEvent { at_unix_ms, what: "WAL commit", ms };
        let events = [at(999_999, 1), at(1_000_000, 2), at(1_002_999, 3), at(1_003_000, 4)];
        let placed = events_in(&events, 1_000_000, 3);
        let seconds: Vec<(usize, u64)> = placed.iter().map(|e| (e.second, e.ms)).collect();
        // Before the phase and after its last second: not its own.
        assert_eq!(seconds, [(0, 2), (2, 3)]);
    }

    #[test]
    fn a_server_that_exits_on_sigterm_is_terminated() {
        let mut server = server("exec sleep 1000");
        let pid = server.child.id();
        assert_eq!(server.stop(Duration::from_secs(60)), Stopped::Terminated);
        assert!(gone(pid), "stopped and reaped");
    }

    #[test]
    fn a_server_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut server = server("trap '' TERM; echo ready; while :; do sleep 1; done");
        let pid = server.child.id();
        // SIGTERM must come after the trap is set, or sh would just die of it.
        let stdout = server.child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready");
        assert_eq!(server.stop(Duration::from_millis(200)), Stopped::Killed);
        assert!(gone(pid), "killed and reaped");
        assert_eq!(
            server.stop(Duration::from_millis(200)),
            Stopped::Terminated,
            "a reaped server is not signalled again"
        );
    }
}
