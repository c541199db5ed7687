//! MemDS: every routing entry in memory, kept current from the control
//! plane's change stream, answering routers' batched lookups.
//!
//! Each MemDS server holds the whole [`RoutingMap`]; more servers mean more
//! lookup capacity and more failures survived, never a different answer
//! (they follow the same stream and differ only in how far they got, which
//! each answer says with its epoch and version). A lookup reads the map
//! under a read lock and writes nothing but a counter, so its cost does not
//! depend on what the router asking had cached: routers send one lookup per
//! request whether their cache hit or missed, and MemDS's load follows
//! client traffic, never cache misses.
//!
//! Memory: per partition, one `PartitionRoute` in a `BTreeMap` (the id, the
//! leader, the term and a vector of replicas of 16 bytes each: about 130
//! bytes with three replicas and the map's own overhead) and its version
//! (about 40 bytes with overhead); a million partitions fit in about
//! 170 MB. Tables and nodes are few and small beside them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use keel_wire::routing::{self, Body, MapStatus};

use crate::map::RoutingMap;
use crate::net::{Handler, Pipes, routing_id};

/// Changes asked for in one poll of the control plane.
pub const FOLLOW_BATCH_MAX: u32 = 4096;
/// How long one long poll of the control plane waits for a change.
pub const FOLLOW_WAIT_MS: u32 = 1000;

/// A MemDS server's map and counters.
#[derive(Debug, Default)]
pub struct Memds {
    map: RwLock<RoutingMap>,
    lookups: AtomicU64,
}

impl Memds {
    /// An empty map (it answers `NoSuchTable` until it follows a control
    /// plane).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Epoch and version of the map.
    #[must_use]
    pub fn position(&self) -> (u64, u64) {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        (map.epoch(), map.version())
    }

    /// Applies one answer of the control plane. An error leaves the map as
    /// it was before the answer's first change that failed.
    pub fn apply(&self, answer: &Body) -> Result<(), String> {
        let Body::ChangesAnswer { epoch, reset, changes, .. } = answer else {
            return Err(format!("not a change answer: {answer:?}"));
        };
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if *reset {
            let first = changes.first().map_or(0, |c| c.version);
            map.reset_at(*epoch, first.saturating_sub(1));
        } else if *epoch != map.epoch() {
            return Err(format!("changes of epoch {epoch}, the map follows {}", map.epoch()));
        }
        for change in changes {
            map.apply(change).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The status answer.
    #[must_use]
    pub fn status(&self) -> MapStatus {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        MapStatus {
            role: "memds".into(),
            epoch: map.epoch(),
            version: map.version(),
            tables: u32::try_from(map.state().tables.len()).unwrap_or(u32::MAX),
            partitions: u32::try_from(map.state().partitions.len()).unwrap_or(u32::MAX),
            nodes: map.state().nodes.values().cloned().collect(),
            lookups: self.lookups.load(Ordering::Relaxed),
            counters: Vec::new(),
        }
    }

    fn lookup(&self, keys: &[routing::LookupKey]) -> Body {
        self.lookups.fetch_add(u64::try_from(keys.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        Body::LookupAnswer {
            epoch: map.epoch(),
            version: map.version(),
            locations: keys.iter().map(|k| map.lookup(k)).collect(),
        }
    }
}

impl Handler for Memds {
    async fn handle(self: Arc<Self>, body: Vec<u8>) -> Vec<u8> {
        let (id, answer) = match routing::decode(&body) {
            Ok((id, Body::Lookup(keys))) => (id, self.lookup(&keys)),
            Ok((id, Body::Status)) => (id, Body::StatusAnswer(self.status())),
            Ok((id, other)) => (id, Body::Error(format!("a MemDS server does not serve {other:?}"))),
            Err(e) => (0, Body::Error(format!("unreadable request: {e}"))),
        };
        routing::encode(id, &answer)
    }
}

/// Follows the control plane at `control` forever: long polls for changes,
/// applies them, and after a failure tries again after `retry`.
pub async fn follow(memds: Arc<Memds>, control: String, retry: Duration) {
    let pipes = Pipes::new(routing_id, Duration::from_secs(1));
    let timeout = Duration::from_millis(u64::from(FOLLOW_WAIT_MS)) + Duration::from_secs(5);
    let mut id = 0u64;
    loop {
        id += 1;
        let (epoch, after) = memds.position();
        let request =
            routing::encode(id, &Body::Changes { epoch, after, max: FOLLOW_BATCH_MAX, wait_ms: FOLLOW_WAIT_MS });
        let outcome = match pipes.call(&control, id, &request, timeout).await {
            Ok(answer) => match routing::decode(&answer) {
                Ok((_, body)) => memds.apply(&body),
                Err(e) => Err(format!("unreadable answer: {e}")),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = outcome {
            tracing::warn!(control = %control, %why, "following the control plane failed; retrying");
            tokio::time::sleep(retry).await;
        }
    }
}
