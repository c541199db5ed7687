//! Waking a shard that glommio left asleep.
//!
//! glommio 0.9 now and then leaves a shard asleep in `io_uring_enter` (the
//! kernel's `io_cqring_wait`) although its timer has expired: the timer, the
//! eventfd that other threads write to wake it, and network receives all
//! complete on glommio's "latency" ring, and the shard sleeps on its "main"
//! ring, linked to the latency ring by a poll on that ring's descriptor.
//! When the link misses, nothing on the latency ring wakes the shard. Only a
//! completion on the main ring (a disk request) or a signal does: a signal
//! makes `io_uring_enter` return EINTR, glommio's loop runs again, finds the
//! expired timers by the clock and the mesh messages by polling, and goes on.
//! (ARCHITECTURE.md, "Lost wake-ups", has what was measured: one shard stuck
//! for as long as it was watched, its 20 ms timer pending, nothing in flight
//! on the disk, and a debugger attach, which interrupts the wait, freeing it.)
//!
//! So every shard beats a [`Heartbeat`] from a task that sleeps
//! `STOP_POLL` (20 ms) in a loop, and a watchdog thread
//! ([`watch`]) checks the beats every [`CHECK_EVERY`]. A shard whose beat has
//! not moved for [`STALL_CHECKS`] checks is sent `SIGURG`, whose handler does
//! nothing (installed with `SA_RESTART`, so other system calls the shard may
//! be in restart; `io_uring_enter` returns EINTR regardless). A shard that is
//! busy on the CPU is not asleep and is left alone. The decision is a plain
//! struct, [`Stalls`], so it is tested without threads or clocks. Each
//! warning carries the process's io_uring queues as the kernel reports them
//! (`io_uring_rings`), taken just before the signal, so that the wake-ups
//! the watchdog makes also say where the missed event sat.
//!
//! `SIGURG` is the signal Go's runtime uses for the same purpose (preempting
//! a thread): its default action is to ignore it, and nothing else in a
//! storage node sends it (it is raised only for sockets that asked for
//! out-of-band data with `F_SETOWN`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// How often the watchdog reads the beats.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(50);
/// Checks in a row without a beat after which a sleeping shard is woken: a
/// shard beats every 20 ms, so 4 checks (≥ 150 ms) is at least seven missed
/// timers, never a timer merely late on a busy machine's run queue (a
/// runnable shard is not woken at all).
pub(crate) const STALL_CHECKS: u32 = 4;
/// At most one warning per shard per this long; the count in between is in it.
const WARN_EVERY: Duration = Duration::from_secs(10);

const _: () = assert!(STALL_CHECKS >= 2, "one check without a beat can be the beat's own jitter");

/// One shard's sign of life, written by the shard and read by the watchdog.
#[derive(Debug, Default)]
pub(crate) struct Heartbeat {
    beats: AtomicU64,
    /// The shard's kernel thread id and `pthread_t`, from registration until
    /// the shard retires. A signal is sent only under this lock, so never to
    /// a thread that has retired (a `pthread_t` is not valid once the thread
    /// is joined).
    thread: Mutex<Option<(i32, nix::sys::pthread::Pthread)>>,
}

impl Heartbeat {
    /// Records the calling thread as the one to wake. Called once, from the
    /// shard's executor thread.
    pub(crate) fn register_current_thread(&self) {
        if let Ok(mut thread) = self.thread.lock() {
            *thread = Some((nix::unistd::gettid().as_raw(), nix::sys::pthread::pthread_self()));
        }
    }

    /// The shard is done: it is never signalled again. Called from the
    /// shard's thread before it exits.
    pub(crate) fn retire(&self) {
        if let Ok(mut thread) = self.thread.lock() {
            *thread = None;
        }
    }

    /// Signals the shard's thread if it sleeps in io_uring's wait; returns
    /// its wait channel and what `before` saw just before the signal, or
    /// `None` where it was not asleep there (or not registered).
    fn wake_if_asleep<T>(&self, before: impl FnOnce() -> T) -> Option<nix::Result<(String, T)>> {
        let thread = self.thread.lock().ok()?;
        let (tid, pthread) = (*thread)?;
        let (state, wchan) = thread_wait(tid)?;
        if !sleeps_in_io_uring(&state, &wchan) {
            return None;
        }
        let seen = before();
        Some(nix::sys::pthread::pthread_kill(pthread, nix::sys::signal::Signal::SIGURG).map(|()| (wchan, seen)))
    }

    /// One more sign of life.
    pub(crate) fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Release);
    }

    /// How many times the shard has beaten.
    pub(crate) fn beats(&self) -> u64 {
        self.beats.load(Ordering::Acquire)
    }
}

/// What a check decided for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It beat since the last check (or has not been silent long enough).
    Alive,
    /// Silent for `checks` checks: wake it if it sleeps.
    Stalled { checks: u32 },
}

/// The watchdog's memory: each shard's last beat count and for how many
/// checks in a row it has not moved. No clock, no threads.
#[derive(Debug)]
pub(crate) struct Stalls {
    last: Vec<(u64, u32)>,
}

impl Stalls {
    pub(crate) fn new(shards: usize) -> Self {
        Self { last: vec![(0, 0); shards] }
    }

    /// Takes this check's beat counts (one per shard, in shard order) and
    /// says which shards have been silent for `STALL_CHECKS` checks. A shard
    /// found stalled starts counting again, so a shard that stays silent is
    /// woken once every `STALL_CHECKS` checks, not at every check.
    pub(crate) fn check(&mut self, beats: &[u64]) -> Vec<Verdict> {
        assert_eq!(beats.len(), self.last.len(), "one beat count per shard");
        self.last
            .iter_mut()
            .zip(beats)
            .map(|((last, silent), &now)| {
                if now == *last {
                    *silent += 1;
                } else {
                    *last = now;
                    *silent = 0;
                }
                if *silent >= STALL_CHECKS {
                    let checks = *silent;
                    *silent = 0;
                    Verdict::Stalled { checks }
                } else {
                    Verdict::Alive
                }
            })
            .collect()
    }
}

/// Whether a thread's `/proc` state and wait channel say it is asleep in
/// io_uring's wait (the kernel's `io_cqring_wait`), where a lost wake-up
/// leaves a shard. A shard that runs, waits for the disk (state D) or
/// sleeps elsewhere (a futex, say) is not woken. Where the kernel hides the
/// wait channel (empty, or "0") a sleeping shard is woken all the same: the
/// signal costs it nothing.
fn sleeps_in_io_uring(state: &str, wchan: &str) -> bool {
    let wchan = wchan.trim();
    state == "S" && (wchan.is_empty() || wchan == "0" || wchan.contains("io_cqring") || wchan.contains("io_uring"))
}

/// The scheduler state and kernel wait channel of thread `tid` of this
/// process; `None` where /proc does not say.
pub(super) fn thread_wait(tid: i32) -> Option<(String, String)> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = stat.rsplit_once(") ")?.1.split_whitespace().next()?.to_owned();
    let wchan = std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan")).unwrap_or_default();
    Some((state, wchan))
}

/// One line per io_uring instance of this process, from its `/proc` fdinfo:
/// the descriptor, submission and completion queue heads and tails, and the
/// pending polls by opcode (`op6` is a poll, `op22` a read). Taken before a
/// shard is woken, so each wake-up says where the missed event sat: a
/// latency ring with a completion not yet consumed (its tail past its head)
/// while a main ring still holds its poll on it points at the link between
/// the rings. Empty where /proc does not say.
fn io_uring_rings() -> String {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return String::new() };
    let mut rings = Vec::new();
    for fd in fds.flatten() {
        let is_ring = std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().contains("io_uring"));
        if !is_ring {
            continue;
        }
        let name = fd.file_name().to_string_lossy().into_owned();
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{name}")) else { continue };
        rings.push((name.parse::<u32>().unwrap_or(u32::MAX), summarize_fdinfo(&name, &info)));
    }
    rings.sort();
    rings.into_iter().map(|(_, line)| line).collect::<Vec<_>>().join("; ")
}

/// `fd 11: sq 29925/29925 cq 29920/29920 polls op6x3` from an io_uring fdinfo.
fn summarize_fdinfo(fd: &str, info: &str) -> String {
    let field = |key: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')))
            .map_or("?", str::trim)
    };
    let mut polls: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    let mut in_polls = false;
    for line in info.lines() {
        if line.starts_with("PollList:") {
            in_polls = true;
        } else if in_polls {
            match line.trim().strip_prefix("op=").and_then(|rest| rest.split(',').next()) {
                Some(op) if line.starts_with(char::is_whitespace) => *polls.entry(op).or_default() += 1,
                _ => in_polls = false,
            }
        }
    }
    let polls = if polls.is_empty() {
        "none".to_owned()
    } else {
        polls.iter().map(|(op, n)| format!("op{op}x{n}")).collect::<Vec<_>>().join(",")
    };
    format!(
        "fd {fd}: sq {}/{} cq {}/{} polls {polls}",
        field("SqHead"),
        field("SqTail"),
        field("CqHead"),
        field("CqTail")
    )
}

/// Installs the do-nothing `SIGURG` handler (once per process). A handler,
/// not `SIG_IGN`: an ignored signal is discarded without waking anyone.
fn install_handler() -> std::io::Result<()> {
    static INSTALLED: Once = Once::new();
    static RESULT: Mutex<Option<std::io::ErrorKind>> = Mutex::new(None);
    INSTALLED.call_once(|| {
        let flag = Arc::new(AtomicBool::new(false));
        if let (Err(e), Ok(mut slot)) = (signal_hook::flag::register(signal_hook::consts::SIGURG, flag), RESULT.lock())
        {
            *slot = Some(e.kind());
        }
    });
    match RESULT.lock().map(|slot| *slot) {
        Ok(Some(kind)) => Err(std::io::Error::new(kind, "install the SIGURG handler")),
        _ => Ok(()),
    }
}

/// Watches `hearts` (one per shard, in shard order) until `done` is
/// disconnected, waking any shard that sleeps through its timers. Runs on
/// its own thread; returns how many times it woke a shard.
pub(crate) fn watch(hearts: &[Arc<Heartbeat>], done: &std::sync::mpsc::Receiver<()>) -> u64 {
    if let Err(e) = install_handler() {
        tracing::warn!(error = %e, "no wake-up signal handler: a shard glommio leaves asleep stays asleep");
        let _ = done.recv();
        return 0;
    }
    let mut stalls = Stalls::new(hearts.len());
    let mut woken_total = 0_u64;
    // Per shard: wake-ups since the last warning, and when that was.
    let mut warned: Vec<(u64, Option<Instant>)> = vec![(0, None); hearts.len()];
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(CHECK_EVERY) {
        let beats: Vec<u64> = hearts.iter().map(|h| h.beats()).collect();
        for ((shard, verdict), (heart, warn)) in
            stalls.check(&beats).into_iter().enumerate().zip(hearts.iter().zip(warned.iter_mut()))
        {
            let Verdict::Stalled { checks } = verdict else { continue };
            let warn_now = warn.1.is_none_or(|at| at.elapsed() >= WARN_EVERY);
            let rings = || if warn_now { io_uring_rings() } else { String::new() };
            let (wchan, rings) = match heart.wake_if_asleep(rings) {
                None => continue,
                Some(Ok(woken)) => woken,
                Some(Err(e)) => {
                    tracing::warn!(shard, error = %e, "could not signal a shard that sleeps through its timers");
                    continue;
                }
            };
            woken_total += 1;
            warn.0 += 1;
            if warn_now {
                tracing::warn!(
                    shard,
                    silent = ?CHECK_EVERY * checks,
                    wait = %wchan.trim(),
                    woken = warn.0,
                    rings = %rings,
                    "shard slept through its timers (a glommio lost wake-up); woke it with SIGURG"
                );
                *warn = (0, Some(Instant::now()));
            }
        }
    }
    woken_total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_that_beats_is_never_stalled() {
        let mut stalls = Stalls::new(2);
        for beat in 1..=20 {
            assert_eq!(stalls.check(&[beat, beat * 3]), vec![Verdict::Alive, Verdict::Alive]);
        }
    }

    #[test]
    fn a_silent_shard_is_stalled_after_stall_checks_and_then_every_stall_checks() {
        let mut stalls = Stalls::new(2);
        let mut stalled_at = Vec::new();
        for check in 1..=3 * STALL_CHECKS {
            // Shard 0 beats every check; shard 1 never moves from 7.
            let verdicts = stalls.check(&[u64::from(check), 7]);
            assert_eq!(verdicts.first(), Some(&Verdict::Alive));
            if let Some(Verdict::Stalled { checks }) = verdicts.get(1) {
                assert_eq!(*checks, STALL_CHECKS);
                stalled_at.push(check);
            }
        }
        // The first check only learns the count (7 is new), so silence
        // starts at the second.
        assert_eq!(stalled_at, vec![STALL_CHECKS + 1, 2 * STALL_CHECKS + 1]);
    }

    #[test]
    fn one_beat_resets_the_silence() {
        let mut stalls = Stalls::new(1);
        stalls.check(&[1]);
        for _ in 1..STALL_CHECKS {
            assert_eq!(stalls.check(&[1]), vec![Verdict::Alive]);
        }
        assert_eq!(stalls.check(&[2]), vec![Verdict::Alive], "a beat on the last check before the stall");
        for _ in 1..STALL_CHECKS {
            assert_eq!(stalls.check(&[2]), vec![Verdict::Alive]);
        }
        assert_eq!(stalls.check(&[2]), vec![Verdict::Stalled { checks: STALL_CHECKS }]);
    }

    #[test]
    fn an_io_uring_fdinfo_is_summarized_with_its_queues_and_pending_polls() {
        let info = "pos:\t0\nSqMask:\t0x7f\nSqHead:\t29925\nSqTail:\t29926\nCqMask:\t0xff\nCqHead:\t29920\n\
                    CqTail:\t29921\nSQEs:\t1\nUserBufs:\t1\n    0: 0x4268cc00000/10485760\nPollList:\n  \
                    op=6, task_works=0\n  op=22, task_works=0\n  op=6, task_works=0\nCqOverflowList:\nNAPI:\tdisabled\n";
        assert_eq!(summarize_fdinfo("11", info), "fd 11: sq 29925/29926 cq 29920/29921 polls op22x1,op6x2");
        let idle = "SqHead:\t1\nSqTail:\t1\nCqHead:\t1\nCqTail:\t1\nPollList:\nCqOverflowList:\n";
        assert_eq!(summarize_fdinfo("12", idle), "fd 12: sq 1/1 cq 1/1 polls none");
        assert_eq!(summarize_fdinfo("3", "garbage"), "fd 3: sq ?/? cq ?/? polls none");
    }

    #[test]
    fn the_rings_of_a_glommio_executor_are_listed() {
        let rings = glommio::LocalExecutorBuilder::default()
            .spawn(|| async { io_uring_rings() })
            .expect("start an executor")
            .join()
            .expect("executor thread");
        // glommio 0.9 makes three rings per executor (main, latency, poll).
        assert!(rings.matches("fd ").count() >= 3, "{rings}");
        assert!(rings.contains(" cq "), "{rings}");
    }

    #[test]
    fn a_shard_not_registered_retired_or_awake_is_not_signalled() {
        let heart = Heartbeat::default();
        assert!(heart.wake_if_asleep(|| ()).is_none(), "not registered");
        // This thread is running while it asks.
        heart.register_current_thread();
        assert!(heart.wake_if_asleep(|| ()).is_none(), "running");
        heart.retire();
        assert!(heart.wake_if_asleep(|| ()).is_none(), "retired");
    }

    #[test]
    fn only_a_thread_asleep_in_io_uring_is_woken() {
        assert!(sleeps_in_io_uring("S", "io_cqring_wait"));
        assert!(sleeps_in_io_uring("S", "0"), "a hidden wait channel");
        assert!(sleeps_in_io_uring("S", ""), "no wait channel");
        assert!(!sleeps_in_io_uring("R", "0"), "running");
        assert!(!sleeps_in_io_uring("D", "io_cqring_wait"), "uninterruptible");
        assert!(!sleeps_in_io_uring("S", "futex_wait_queue"), "asleep on a futex");
    }

    #[test]
    fn the_wake_up_signal_interrupts_a_thread_asleep_in_the_kernel() {
        // pause(2), like io_uring_enter, is never restarted after a handler:
        // it returns once a signal with a handler arrives, and only then.
        install_handler().expect("install the handler");
        let heart = Arc::new(Heartbeat::default());
        let (registered_tx, registered_rx) = std::sync::mpsc::channel();
        let sleeper = {
            let heart = Arc::clone(&heart);
            std::thread::spawn(move || {
                heart.register_current_thread();
                registered_tx.send(()).expect("the test waits for this");
                nix::unistd::pause();
            })
        };
        registered_rx.recv().expect("the sleeper registers");
        // A signal that lands before the thread sleeps is handled and
        // forgotten, so wake it whenever the kernel reports it asleep, until
        // it returns. The bound only turns a broken wake-up into a failure
        // instead of a hung test.
        let (tid, pthread) = heart.thread.lock().expect("lock").expect("registered");
        let mut signals = 0_u32;
        for _ in 0..200_000 {
            if sleeper.is_finished() {
                break;
            }
            if thread_wait(tid).is_some_and(|(state, _)| state == "S") {
                nix::sys::pthread::pthread_kill(pthread, nix::sys::signal::Signal::SIGURG).expect("signal the sleeper");
                signals += 1;
            }
            std::thread::yield_now();
        }
        assert!(sleeper.is_finished(), "the sleeper never returned from pause() ({signals} signals sent)");
        assert!(signals >= 1);
        sleeper.join().expect("the sleeper thread");
    }
}
