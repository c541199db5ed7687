//! The real-disk crash test: a child process (`keel-crash-writer`) writes
//! through the glommio backend into a store on the ext4 temp dir and prints
//! each acknowledged index; we SIGKILL it at random moments, reopen the store
//! and check that it holds exactly a prefix of the log that includes every
//! acknowledged write.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use glommio::LocalExecutorBuilder;
use keel_node::io::glommio_disk::GlommioDisk;
use keel_node::replica::ShardStore;
use keel_node::testing::{CRASH_KEYS, CRASH_PARTITION, crash_config, crash_key, crash_value};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const KILLS: u64 = 24;

/// Opens the store and returns its applied index after checking every key
/// against the log prefix up to it.
fn verify(dir: &Path, max_acked: u64, run: u64) -> u64 {
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let store = ShardStore::open(GlommioDisk::new(), crash_config(&dir))
                .await
                .unwrap_or_else(|e| panic!("run {run}: reopen after kill -9 failed: {e}"));
            let applied = store.applied_index(CRASH_PARTITION).unwrap_or(0);
            assert!(
                applied >= max_acked,
                "run {run}: acknowledged index {max_acked} lost; store holds up to {applied}"
            );
            for k in 0..CRASH_KEYS {
                // The last index up to `applied` that wrote key k.
                let last_write =
                    (applied >= k.max(1)).then(|| applied - (applied - k) % CRASH_KEYS).filter(|&v| v >= 1);
                let expected = last_write.filter(|v| v % 7 != 0).map(crash_value);
                let got = store
                    .get(CRASH_PARTITION, &crash_key(k))
                    .await
                    .unwrap_or_else(|e| panic!("run {run}: read failed: {e}"));
                assert!(
                    got == expected,
                    "run {run}: key {k} holds the wrong version (applied {applied}, last write {last_write:?})"
                );
            }
            applied
        })
        .expect("spawn executor")
        .join()
        .expect("verifier thread")
}

#[test]
fn real_disk_kill_9_never_loses_an_acknowledged_write() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let tmp = tempfile::tempdir_in(base).expect("temp dir on the repo's filesystem");
    let dir = tmp.path().join("shard");
    let mut rng =
        SmallRng::seed_from_u64(std::env::var("KEEL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1));
    let mut max_acked = 0;
    let mut total_acks = 0;
    for run in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel-crash-writer"))
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn keel-crash-writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(ready.starts_with("ready "), "run {run}: writer did not start: {ready:?}");
        let target = if run % 5 == 0 { rng.random_range(0..3) } else { rng.random_range(1..800) };
        let mut seen = 0;
        while seen < target {
            let Some(Ok(line)) = lines.next() else { panic!("run {run}: writer exited early") };
            let index: u64 = line.strip_prefix("ack ").and_then(|s| s.parse().ok()).expect("ack line");
            max_acked = max_acked.max(index);
            seen += 1;
        }
        child.kill().expect("kill -9");
        let _ = child.wait();
        total_acks += seen;
        let applied = verify(&dir, max_acked, run);
        max_acked = max_acked.max(applied);
    }
    eprintln!("crash test: {KILLS} kills, {total_acks} acknowledgements read, log at index {max_acked}");
    assert!(total_acks > 1000, "too few writes to mean anything");
}
