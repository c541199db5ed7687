//! How a thread asks Linux's scheduler to let the kernel's short jobs run
//! first on its CPU.
//!
//! Why a shard needs it. This disk has no FUA, so an `O_DSYNC` direct
//! write (a WAL commit through io_uring) ends in a kernel worker: the
//! `dio` workqueue's `kworker/N:M` runs on the CPU that took the disk's
//! interrupt, issues the cache flush and only then completes the write.
//! That worker is an ordinary `SCHED_OTHER` task. Under EEVDF (Linux 6.6
//! and later) a waking task does not preempt the running one while that one
//! is inside its protected slice (`RUN_TO_PARITY`), and on a 250 Hz kernel
//! the slice's end is noticed at the next tick: so the worker waited for
//! whatever ran on that CPU, a shard or the load generator, for up to about
//! 4 ms. On the 2-core VM (open loop YCSB A at 31,000 ops/s, `perf sched
//! timehist`) the worker's wait from wake-up to run had a p99 of 0.8–1.0 ms
//! and a p99.9 of 1.7–3.4 ms, and each commit waited for it.
//!
//! The remedy is EEVDF's own: since Linux 6.12 a thread may ask for a longer
//! slice (`sched_setattr` with `sched_runtime` on a `SCHED_OTHER` thread), and
//! a waking task with a shorter slice (every task that did not ask, kernel
//! workers included) then preempts it at once (`PREEMPT_SHORT`). Its share of
//! the CPU is unchanged; only who goes first on a wake-up changes. A
//! thread-per-core shard wants exactly that: the kernel work it gives way to
//! is short and is, as often as not, its own commit. Measured: the
//! worker's wake-up p99 fell to 0.19–0.22 ms with the shard on the
//! interrupts' CPU (docs/bench/history.md, 2026-12-06, evening).
//!
//! Older kernels ignore `sched_runtime` for `SCHED_OTHER` threads; then this
//! changes nothing. Threads under another policy (an operator's `SCHED_FIFO`,
//! say) are left alone.

use std::io;
use std::time::Duration;

/// The slice a shard asks for: longer than any default slice (EEVDF's base
/// slice is 0.75 ms times 1 + log2 of the CPU count, 3 ms at 8 CPUs), so
/// that every task that did not ask preempts it on waking, and short enough
/// that a shard sharing its CPU with another long-running thread still takes
/// turns with it several times a second.
pub const SHARD_SLICE: Duration = Duration::from_millis(20);

/// `SCHED_FLAG_RESET_ON_FORK`: threads and processes started by the caller
/// begin with the default slice.
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// The kernel's `struct sched_attr`, first version (`SCHED_ATTR_SIZE_VER0`,
/// 48 bytes; include/uapi/linux/sched/types.h).
#[repr(C)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
}

const _: () = assert!(std::mem::size_of::<SchedAttr>() == 48);

/// Asks for a `slice` of CPU time (see the module docs) for the calling
/// thread, keeping its nice value. Returns `Ok(false)` without changing
/// anything when the thread is not under `SCHED_OTHER`.
///
/// # Errors
/// The error of `sched_getscheduler`, `getpriority` or `sched_setattr`
/// (for instance `EPERM` under a seccomp filter that refuses them).
pub fn prefer_short_wakers(slice: Duration) -> io::Result<bool> {
    assert!(slice >= Duration::from_micros(100) && slice <= Duration::from_millis(100), "the kernel's range");
    let Some(nice) = nice_under_sched_other()? else { return Ok(false) };
    let attr = SchedAttr {
        size: 48,
        sched_policy: 0, // SCHED_OTHER
        sched_flags: SCHED_FLAG_RESET_ON_FORK,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        sched_deadline: 0,
        sched_period: 0,
    };
    set_attr(&attr)?;
    Ok(true)
}

/// The calling thread's nice value, or `None` when it is not under
/// `SCHED_OTHER`.
#[allow(unsafe_code)]
fn nice_under_sched_other() -> io::Result<Option<i32>> {
    // SAFETY: plain system calls on the calling thread (pid 0); no memory
    // is passed.
    let policy = unsafe { nix::libc::sched_getscheduler(0) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    if policy != nix::libc::SCHED_OTHER {
        return Ok(None);
    }
    // getpriority may return -1 as a value: errno tells.
    nix::errno::Errno::clear();
    // SAFETY: as above. With PRIO_PROCESS and 0, Linux answers for the
    // calling thread.
    let nice = unsafe { nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0) };
    if nice == -1 && nix::errno::Errno::last() != nix::errno::Errno::UnknownErrno {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(nice))
}

/// `sched_setattr(0, attr, 0)`: the calling thread.
#[allow(unsafe_code)]
fn set_attr(attr: &SchedAttr) -> io::Result<()> {
    // SAFETY: `attr` is a live, initialised `struct sched_attr` whose `size`
    // field is its true size; the kernel reads that many bytes and keeps no
    // pointer to them. pid 0 names the calling thread.
    let ret = unsafe { nix::libc::syscall(nix::libc::SYS_sched_setattr, 0, std::ptr::from_ref(attr), 0) };
    if ret == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's `se.slice` in ns, from `/proc/thread-self/sched`.
    fn slice_ns() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = text.lines().find(|l| l.starts_with("se.slice"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    }

    /// Linux 6.12 or later: custom slices exist.
    fn kernel_has_custom_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (6, 12)
    }

    #[test]
    fn a_thread_that_asks_gets_the_long_slice_and_the_threads_it_starts_do_not() {
        let (asked, child) = std::thread::spawn(|| {
            let applied = prefer_short_wakers(SHARD_SLICE).expect("sched_setattr on this thread");
            assert!(applied, "test threads run under SCHED_OTHER");
            let child = std::thread::spawn(slice_ns).join().expect("child thread");
            (slice_ns(), child)
        })
        .join()
        .expect("thread");
        if kernel_has_custom_slices() {
            let want = u64::try_from(SHARD_SLICE.as_nanos()).expect("fits");
            assert_eq!(asked, Some(want), "the asking thread's slice");
            let child = child.expect("the child's slice is readable where the parent's was");
            assert!(child < want, "a thread started by it has the default slice, got {child} ns");
        }
    }
}
