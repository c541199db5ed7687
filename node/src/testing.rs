//! Shared definitions of the real-disk crash test and its writer process
//! (`keel-crash-writer`). Not part of the storage API.

use std::path::Path;

use crate::replica::StoreConfig;
use crate::wal::WalConfig;

/// Partition the crash writer writes to.
pub const CRASH_PARTITION: u64 = 1;
/// Number of distinct keys the writer cycles through.
pub const CRASH_KEYS: u64 = 3000;
/// Size of each value.
pub const CRASH_VALUE_BYTES: usize = 1024;

/// Small segments and dirty budgets, so that a short run rotates, reclaims
/// and checkpoints many times.
#[must_use]
pub fn crash_config(dir: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.wal = WalConfig {
        segment_size_bytes: 1024 * 1024,
        payload_max_bytes: 64 * 1024,
        recycle_pool_max: 2,
        zero_fill: true,
        ..WalConfig::default()
    };
    config.page_cache_bytes = 4 * 1024 * 1024;
    config.dirty_bytes_max = 1024 * 1024;
    config.wal_segments_max = 4;
    config
}

/// The key written (or deleted) at log index `index`.
#[must_use]
pub fn crash_key(index: u64) -> Vec<u8> {
    format!("key-{:05}", index % CRASH_KEYS).into_bytes()
}

/// The value written at log index `index`: the index, then filler derived
/// from it.
#[must_use]
pub fn crash_value(index: u64) -> Vec<u8> {
    let mut value = index.to_le_bytes().to_vec();
    value.extend((0..CRASH_VALUE_BYTES - 8).map(|i| (index.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8));
    value
}

/// The index a stored value claims to come from, if it is well-formed.
#[must_use]
pub fn crash_value_index(value: &[u8]) -> Option<u64> {
    let index = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    (crash_value(index) == value).then_some(index)
}
