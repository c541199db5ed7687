//! Shared helpers of the node benches (included with `mod common;`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use std::path::PathBuf;

/// A fresh directory on the filesystem of the target dir (ext4 here; never
/// tmpfs, which fakes O_DIRECT and fsync). `KEEL_BENCH_DIR` overrides it.
pub fn bench_dir(name: &str) -> tempfile::TempDir {
    let base = std::env::var_os("KEEL_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"), PathBuf::from);
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::Builder::new().prefix(name).tempdir_in(base).expect("temp dir")
}

/// Deterministic pseudo-random key order (splitmix64), so every engine gets
/// the same keys in the same order.
pub fn key(i: u64) -> [u8; 16] {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&z.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// A 1 KiB value derived from `i`.
pub fn value(i: u64) -> Vec<u8> {
    (0..1024u64).map(|j| (i.wrapping_mul(7).wrapping_add(j) % 251) as u8).collect()
}
