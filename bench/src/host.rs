//! What the host took from the machine the benchmark runs on: the CPU time
//! a hypervisor gave to something else while this virtual machine's CPUs
//! had work ("steal", the eighth figure of `/proc/stat`'s `cpu` line).
//!
//! On the 2-core VM the host now and then takes both CPUs for tens of
//! milliseconds. Every request in flight then waits, whatever the server,
//! and that second's p99 jumps to 10–45 ms. A phase records the steal it
//! saw second by second beside its latencies, so that such a second is told
//! apart from one the server caused.

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
