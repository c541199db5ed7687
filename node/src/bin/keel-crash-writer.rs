//! Test helper for the real-disk crash test: writes through the glommio
//! backend into a shard store and prints `ack <index>` for every write once
//! it is durable. The test kills it with SIGKILL at random moments.
//!
//! Usage: `keel-crash-writer DIR`. Keys cycle through `CRASH_KEYS` so that the
//! run overwrites, deletes (every 7th index) and reuses pages; every value
//! encodes the index that wrote it (see `crash_value`).

use std::io::Write;
use std::path::PathBuf;

use glommio::LocalExecutorBuilder;
use keel_node::io::glommio_disk::GlommioDisk;
use keel_node::replica::{Mutation, ShardStore};

fn main() {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: keel-crash-writer DIR");
        std::process::exit(2);
    };
    let result = LocalExecutorBuilder::default().spawn(move || async move { run(dir).await }).and_then(|handle| {
        handle.join().map_err(|e| glommio::GlommioError::IoError(std::io::Error::other(format!("{e:?}"))))
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("keel-crash-writer: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("keel-crash-writer: executor: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(dir: PathBuf) -> Result<(), String> {
    let mut store = ShardStore::open(GlommioDisk::new(), keel_node::testing::crash_config(&dir))
        .await
        .map_err(|e| e.to_string())?;
    let partition = keel_node::testing::CRASH_PARTITION;
    if !store.partitions().contains(&partition) {
        store.create_partition(partition).await.map_err(|e| e.to_string())?;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready {}", store.last_index(partition).map_err(|e| e.to_string())?);
    loop {
        let first = store.last_index(partition).map_err(|e| e.to_string())? + 1;
        // Alternate single writes and batches of 8 (one group commit).
        let count = if first % 2 == 0 { 1 } else { 8 };
        let keys: Vec<Vec<u8>> = (first..first + count).map(keel_node::testing::crash_key).collect();
        let values: Vec<Vec<u8>> = (first..first + count).map(keel_node::testing::crash_value).collect();
        let mutations: Vec<Mutation<'_>> = (first..first + count)
            .zip(keys.iter().zip(&values))
            .map(
                |(index, (key, value))| {
                    if index % 7 == 0 { Mutation::Delete { key } } else { Mutation::Put { key, value } }
                },
            )
            .collect();
        let last = store.apply_batch(partition, 1, &mutations).await.map_err(|e| e.to_string())?;
        for index in first..=last {
            if writeln!(out, "ack {index}").is_err() {
                return Ok(()); // the test went away
            }
        }
    }
}
