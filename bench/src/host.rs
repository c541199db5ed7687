//! What the host took from the machine the benchmark runs on: the CPU time
//! a hypervisor gave to something else while this virtual machine's CPUs
//! had work ("steal", the eighth figure of `/proc/stat`'s `cpu` line).
//!
//! On the 2-core VM the host now and then takes both CPUs for tens of
//! milliseconds. Every request in flight then waits, whatever the server,
//! and that second's p99 jumps to 10–45 ms. A phase records the steal it
//! saw second by second beside its latencies, so that such a second is told
//! apart from one the server caused.
//!
//! It also places the benchmark's processes on CPUs (`compare
//! --server-cpus`). On the 2-core VM the disk's interrupts all land on
//! CPU 1, and so do the kernel workers that finish each durable write
//! (`O_DSYNC` on a disk without FUA: a flush follows every write, issued
//! from a worker on the CPU that took the write's interrupt). Where the
//! load generator shared that CPU, the workers waited for it and Keel's
//! WAL commits with them; docs/bench/history.md (2026-12-06, evening) has
//! the figures.
//!
//! Only the servers' main threads are placed (keel-node `--cpus`, Redis
//! `server_cpulist`): their helper threads and the kernel's io_uring
//! workers stay free. A keel-node confined to one CPU as a whole had p99
//! 9–13 ms where pinning its shard alone gave 3 ms.

use std::time::Duration;

/// The unit of `/proc/stat`: `USER_HZ`, 100 ticks a second on every Linux
/// architecture (it is part of the kernel's ABI, unlike `HZ`).
const USER_HZ: u64 = 100;

/// How often a phase reads the steal counter: a tick is 10 ms, and a
/// second's figure should come from that second.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The steal time of all CPUs together, in milliseconds, from the text of
/// `/proc/stat`; `None` when its `cpu` line has no steal figure.
#[must_use]
pub fn steal_ms(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    // cpu user nice system idle iowait irq softirq steal …
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(ticks.saturating_mul(1000 / USER_HZ))
}

/// The steal counter now; `None` where there is none (not Linux, or a
/// kernel too old to count steal).
#[must_use]
pub fn read_steal_ms() -> Option<u64> {
    steal_ms(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The CPU time (user and system) of a process, all its threads together,
/// in milliseconds, from the text of its `/proc/PID/stat`; `None` when the
/// text is not such a line.
#[must_use]
pub fn process_cpu_ms(proc_pid_stat: &str) -> Option<u64> {
    // `pid (comm) state …`: the name may hold spaces and parentheses, so
    // the fields are counted from the last ") ". After it, the state is
    // field 3 of proc(5); utime and stime are fields 14 and 15.
    let (_, rest) = proc_pid_stat.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user.saturating_add(system).saturating_mul(1000 / USER_HZ))
}

/// The CPU time process `pid` has spent so far, in ms; `None` once it has
/// gone, or where there is no `/proc`.
#[must_use]
pub fn read_process_cpu_ms(pid: u32) -> Option<u64> {
    process_cpu_ms(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The CPUs the calling thread may run on, as keel-node reads them.
pub use keel_node::server::allowed_cpus;

/// Restricts the calling thread, and the threads and processes it starts
/// from now on, to `cpus`.
///
/// # Errors
/// A CPU beyond the kernel's set, or one this process may not use.
pub fn run_only_on(cpus: &[usize]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).with_context(|| format!("CPU {cpu} is beyond this kernel's CPU set"))?;
    }
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).with_context(|| format!("run on CPUs {}", cpu_list(cpus)))
}

/// `cpus` written as a list (`0,2,3`).
#[must_use]
pub fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}
