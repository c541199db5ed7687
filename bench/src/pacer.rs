//! The open loop's clock: a timer that releases operations at the
//! requested rate, to be taken by whichever client is free.
//!
//! Why a timer of its own: tokio's timers have a resolution of one
//! millisecond, so clients that each slept until their own next start woke
//! together on the millisecond's tick. At 31,000 operations a second that
//! sent 31 requests at once every millisecond, and the last of each burst
//! waited for the 30 before it. That queueing was the load generator's,
//! not the server's, yet it was charged to the server: in workload C (no
//! disk at all) at 56,000 reads a second, both Keel's and Redis's median
//! was 750–920 µs. The pacer is a `timerfd` (the kernel's high-resolution
//! timer) on the runtime's own event loop that ticks every [`QUANTUM`]
//! (`--tick-us`), and each tick releases what came due since the last. (A
//! thread sleeping in `nanosleep` did the same, but cost 17 % of a core at
//! 56,000 a second on the 2-core VM, mostly in context switches, and each
//! release woke the runtime's thread too.)
//!
//! An operation's latency counts from its release. When every client is
//! busy, a released operation waits until one is free, and that wait is
//! charged: the clients are busy because the server is slow (this is what
//! corrects for coordinated omission). The pacer's own lateness, the
//! difference between an operation's intended start and its release, is
//! not charged: it is the load generator's.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_lite::StreamExt as _;
use tokio::sync::Semaphore;
use tokio_timerfd::Interval;

/// The pacer's tick by default: operations that come due within one are
/// released together. It bounds the load generator's wake-ups at 10,000 a
/// second, on a machine whose cores the servers under test need. Below
/// one operation a tick, the tick is the interval between two.
pub const QUANTUM: Duration = Duration::from_micros(100);

/// An open loop's schedule: `rate` operations a second, released every
/// `tick`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenLoop {
    /// Operations per second, all clients together.
    pub rate: f64,
    /// Operations due within one tick are released together.
    pub tick: Duration,
}

impl OpenLoop {
    /// `rate` a second, every [`QUANTUM`].
    #[must_use]
    pub fn at(rate: f64) -> Self {
        Self { rate, tick: QUANTUM }
    }
}

/// How many operations of a phase are due `elapsed` after it began, at
/// `rate` a second: operation `k` is due at `k / rate`, so the first one
/// is due at once.
#[must_use]
pub fn due(elapsed: Duration, rate: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let before = (elapsed.as_secs_f64() * rate).floor() as u64;
    before.saturating_add(1)
}

/// The released operations, shared by the clients.
#[derive(Debug, Clone)]
pub struct Releases {
    shared: Arc<Shared>,
}

/// One permit per released operation not yet taken, and their release
/// instants, oldest first. A release is queued before its permit is added,
/// so a client holding a permit always finds one. A semaphore wakes as many
/// idle clients as operations were released, at once: a lock handed from
/// client to client woke them one per pass of the runtime's queue, and the
/// releases fell behind.
#[derive(Debug)]
struct Shared {
    permits: Semaphore,
    released: Mutex<VecDeque<Instant>>,
}

impl Shared {
    fn released(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        self.released.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Releases {
    /// The next operation to run: the instant it was released, from which
    /// its latency counts. `None` once the pacer has stopped.
    pub async fn next(&self) -> Option<Instant> {
        self.shared.permits.acquire().await.ok()?.forget();
        self.shared.released().pop_front()
    }
}

/// The pacing task, on the runtime it was started from. It stops at the
/// deadline, or once every [`Releases`] is dropped.
#[derive(Debug)]
pub struct Pacer {
    task: tokio::task::JoinHandle<()>,
}

impl Pacer {
    /// Starts releasing operations on `schedule` from `began` until
    /// `deadline`, every tick (or, at rates below one operation a tick, at
    /// each operation's time). Call it from within a tokio runtime.
    ///
    /// # Errors
    /// When the timer cannot be made.
    pub fn start(schedule: OpenLoop, began: Instant, deadline: Option<Instant>) -> std::io::Result<(Self, Releases)> {
        let rate = schedule.rate.max(1e-9);
        let tick = Duration::from_secs_f64(1.0 / rate)
            .clamp(schedule.tick.max(Duration::from_micros(1)), Duration::from_secs(1));
        let ticks = Interval::new(began, tick)?;
        let shared = Arc::new(Shared { permits: Semaphore::new(0), released: Mutex::new(VecDeque::new()) });
        let task = tokio::spawn(pace(ticks, Arc::clone(&shared), rate, began, deadline));
        Ok((Self { task }, Releases { shared }))
    }

    /// Waits for the pacer to end: at the deadline, or within a tick of
    /// the last [`Releases`] being dropped.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

async fn pace(mut ticks: Interval, shared: Arc<Shared>, rate: f64, began: Instant, deadline: Option<Instant>) {
    let mut released = 0;
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) || Arc::strong_count(&shared) == 1 {
            break;
        }
        let due = due(now.saturating_duration_since(began), rate);
        if due > released {
            #[allow(clippy::cast_possible_truncation)]
            let permits = (due - released) as usize;
            shared.released().extend(std::iter::repeat_n(now, permits));
            shared.permits.add_permits(permits);
            released = due;
        }
        // The next tick (ticks missed while the runtime was busy do not
        // matter: what is due is computed from the clock).
        if !matches!(ticks.next().await, Some(Ok(()))) {
            break;
        }
    }
    shared.permits.close();
}
