//! The glommio backend on the real disk (never tmpfs: it hides alignment and
//! durability bugs).

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use glommio::LocalExecutorBuilder;
use keel_node::io::glommio_disk::{DurableWrites, GlommioDisk};
use keel_node::io::{Disk, DiskFile};

/// A temp dir on the repository's filesystem (ext4 here), not /dev/shm.
fn temp_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tempfile::tempdir_in(base).expect("temp dir")
}

/// Runs `f` on a fresh glommio executor thread: glommio remembers per thread
/// and device whether polled I/O works, so each test needs a new thread to
/// see a first open.
fn on_fresh_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default().spawn(f).expect("spawn executor").join().expect("executor thread");
}

#[test]
fn glommio_reads_work_after_an_empty_file_is_opened_first() {
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    on_fresh_executor(move || async move {
        let disk = GlommioDisk::new();
        // The trap: the first DMA open on the device is an empty file.
        let empty = disk.open(&root.join("empty"), true).await.expect("create empty file");
        assert_eq!(empty.size().await.expect("size"), 0);
        let file = disk.open(&root.join("data"), true).await.expect("create data file");
        let block: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        file.write_at(0, &block).await.expect("write");
        file.sync_data().await.expect("sync");
        let back = file.read_at(0, 8192).await.expect("read must not fail with EOPNOTSUPP");
        assert_eq!(back, block);
        let short = empty.read_at(0, 4096).await.expect("reading an empty file");
        assert!(short.is_empty());
    });
}

#[test]
fn glommio_disk_lists_renames_and_removes_durably() {
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    on_fresh_executor(move || async move {
        let disk = GlommioDisk::new();
        let nested = root.join("a/b");
        disk.create_dir_all(&nested).await.expect("mkdir");
        let file = disk.open(&nested.join("x"), true).await.expect("create");
        file.write_at(0, &[7u8; 4096]).await.expect("write");
        file.sync_data().await.expect("sync");
        disk.rename(&nested.join("x"), &nested.join("y")).await.expect("rename");
        disk.sync_dir(&nested).await.expect("sync dir");
        let names = disk.list(&nested).await.expect("list");
        assert!(names.contains(&"y".to_owned()) && !names.contains(&"x".to_owned()), "{names:?}");
        assert!(disk.exists(&nested.join("y")).await.expect("exists"));
        disk.remove(&nested.join("y")).await.expect("remove");
        assert!(!disk.exists(&nested.join("y")).await.expect("exists"));
        disk.sync_dir(Path::new(".")).await.expect("relative directory paths work");
        let missing = disk.open(Path::new(&nested.join("nope")), false).await;
        assert!(missing.is_err());
    });
}

/// `Wal::sync` beside a group commit in flight (a replica rebuild syncs the
/// WAL while the shard's writers commit): it joins the write on the disk
/// instead of starting a second flush (which used to panic the shard,
/// "only one flush at a time"), and returns only once the records
/// submitted before it are durable, those not yet in the write included.
#[test]
fn a_wal_sync_beside_a_commit_in_flight_waits_for_it_and_for_what_came_before() {
    use keel_node::wal::{RecordMeta, USER_KIND_MIN, Wal, WalConfig};
    let dir = temp_dir();
    let root = dir.path().join("wal");
    on_fresh_executor(move || async move {
        let config = || WalConfig { segment_size_bytes: 4 << 20, payload_max_bytes: 64 << 10, ..WalConfig::default() };
        let (wal, _) = Wal::open(GlommioDisk::new(), &root, config()).await.expect("open the WAL");
        let meta = |index| RecordMeta { partition: 1, term: 1, index, kind: USER_KIND_MIN };
        let first = wal.submit(meta(1), &[1u8; 100]).expect("submit");
        let mut second = None;
        // The commit goes first: it starts the write and waits on the disk;
        // then another record comes, and the sync.
        let (committed, synced) = futures_lite::future::zip(wal.wait_durable(first), async {
            let lsn = wal.submit(meta(2), &[2u8; 100]).expect("submit");
            second = Some(lsn);
            assert!(wal.durable_lsn() <= lsn, "the second record is not yet durable");
            wal.sync().await
        })
        .await;
        committed.expect("the commit");
        synced.expect("the sync");
        let second = second.expect("submitted");
        assert!(wal.durable_lsn() > second, "sync returned before a record submitted before it was durable");
        drop(wal);
        let (_, records) = Wal::open(GlommioDisk::new(), &root, config()).await.expect("reopen");
        assert_eq!(records.iter().map(|r| r.meta.index).collect::<Vec<_>>(), vec![1, 2]);
    });
}

/// A CPU-bound loop in a background task queue must not hold disk requests
/// back: glommio submits them only between scheduler passes, and a queue
/// that yields with `yield_task_queue_now` stays runnable, so the pass (and
/// the write) would wait for the preemption timer or the loop's end.
#[test]
fn a_busy_background_queue_that_yields_to_the_reactor_does_not_hold_back_disk_writes() {
    use std::cell::Cell;
    use std::rc::Rc;

    use glommio::{Latency, Shares};
    use keel_node::io::glommio_disk::yield_to_reactor;

    /// Slices of busy work, each ~100 µs: ~60 ms in all, inside glommio's
    /// 100 ms preemption timer; the write (~0.1 ms on the disk) has half of
    /// them to get through.
    const SLICES: usize = 600;
    let dir = temp_dir();
    let path = dir.path().join("f");
    on_fresh_executor(move || async move {
        let file = Rc::new(GlommioDisk::new().open(&path, true).await.expect("open"));
        let background =
            glommio::executor().create_task_queue(Shares::Static(100), Latency::NotImportant, "background");
        let slices_done = Rc::new(Cell::new(0));
        let busy = glommio::spawn_local_into(
            {
                let slices_done = Rc::clone(&slices_done);
                async move {
                    for slice in 1..=SLICES {
                        let until = std::time::Instant::now() + std::time::Duration::from_micros(100);
                        while std::time::Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        slices_done.set(slice);
                        yield_to_reactor().await;
                    }
                }
            },
            background,
        )
        .expect("spawn the background loop");
        let write = glommio::spawn_local({
            let (file, slices_done) = (Rc::clone(&file), Rc::clone(&slices_done));
            async move {
                // Starts once the background loop is running.
                while slices_done.get() == 0 {
                    futures_lite::future::yield_now().await;
                }
                file.write_at(0, &[7u8; 4096]).await.expect("write");
                slices_done.get()
            }
        });
        let slices_at_written = write.await;
        busy.await;
        assert!(
            slices_at_written < SLICES / 2,
            "the write completed only after {slices_at_written} of {SLICES} background slices"
        );
    });
}

/// A shard's scheduler goes back to its reactor within its preemption timer
/// even while a task queue never runs dry, so a disk write issued beside a
/// busy foreground loop is not held until the loop ends (glommio's default
/// timer, 100 ms, held it for all of this loop's ~60 ms).
#[test]
fn a_shard_executor_submits_disk_writes_while_a_task_queue_stays_busy() {
    use std::cell::Cell;
    use std::rc::Rc;

    use keel_node::server::{SHARD_PREEMPT_TIMER, shard_executor};

    /// Slices of busy work, each ~100 µs, in a queue that never runs dry.
    const SLICES: usize = 600;
    const _: () = assert!(SHARD_PREEMPT_TIMER.as_micros() * 3 < SLICES as u128 * 100);
    let dir = temp_dir();
    let path = dir.path().join("f");
    let handle = shard_executor(glommio::Placement::Unbound)
        .spawn(move || async move {
            let file = Rc::new(GlommioDisk::new().open(&path, true).await.expect("open"));
            let slices_done = Rc::new(Cell::new(0));
            let busy = glommio::spawn_local({
                let slices_done = Rc::clone(&slices_done);
                async move {
                    for slice in 1..=SLICES {
                        let until = std::time::Instant::now() + std::time::Duration::from_micros(100);
                        while std::time::Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        slices_done.set(slice);
                        futures_lite::future::yield_now().await;
                    }
                }
            });
            let write = glommio::spawn_local({
                let (file, slices_done) = (Rc::clone(&file), Rc::clone(&slices_done));
                async move {
                    while slices_done.get() == 0 {
                        futures_lite::future::yield_now().await;
                    }
                    file.write_at(0, &[7u8; 4096]).await.expect("write");
                    slices_done.get()
                }
            });
            let slices_at_written = write.await;
            busy.await;
            slices_at_written
        })
        .expect("spawn executor");
    let slices_at_written = handle.join().expect("executor thread");
    assert!(
        slices_at_written < SLICES / 2,
        "the write completed only after {slices_at_written} of {SLICES} busy slices"
    );
}

#[test]
fn a_gather_write_lands_as_the_concatenation_of_its_parts_across_request_boundaries() {
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    on_fresh_executor(move || async move {
        let disk = GlommioDisk::new();
        let file = disk.open(&root.join("gather"), true).await.expect("create file");
        // 2.5 MiB in parts of uneven sizes (multiples of 4 KiB, as pages and
        // free-list blocks are), so that parts straddle the 1 MiB requests.
        let sizes_kib = [16, 4, 1020, 8, 512, 996, 4];
        let parts: Vec<Vec<u8>> = sizes_kib
            .iter()
            .enumerate()
            .map(|(n, kib)| (0..kib * 1024).map(|i| ((i * 7 + n * 31) % 253) as u8).collect())
            .collect();
        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let offset = 8192;
        file.write_gather_at(offset, &slices).await.expect("gather write");
        file.sync_data().await.expect("sync");
        let expected = parts.concat();
        let back = file.read_at(offset, expected.len()).await.expect("read back");
        assert_eq!(back.len(), expected.len());
        assert!(back == expected, "the file holds the parts in order");
    });
}

/// `write_durable_at` goes through a second, O_DSYNC descriptor (one request
/// up to the request size, through the ring or inline; write + fdatasync
/// beyond): every path must land the bytes where the ordinary descriptor and
/// a later open read them.
#[test]
fn a_durable_write_lands_through_either_path_and_reads_back_after_reopening() {
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    on_fresh_executor(move || async move {
        for mode in [DurableWrites::Ring, DurableWrites::Inline] {
            durable_writes_land(GlommioDisk::with_durable_writes(mode), &root.join(format!("durable-{mode:?}"))).await;
        }
    });
}

async fn durable_writes_land(disk: GlommioDisk, path: &Path) {
    let file = disk.open(path, true).await.expect("create file");
    let small: Vec<u8> = (0..4096u32).map(|i| (i % 241) as u8).collect();
    // 3 MiB: more than one request, so written and then synced.
    let large: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 239) as u8).collect();
    file.write_at(0, &vec![0u8; 8192]).await.expect("plain write");
    file.write_durable_at(4096, &small).await.expect("small durable write");
    file.write_durable_at(8192, &large).await.expect("large durable write");
    // Over the first durable write, through the same path again.
    let again: Vec<u8> = small.iter().map(|b| b ^ 0xff).collect();
    file.write_durable_at(4096, &again).await.expect("durable overwrite");
    assert_eq!(file.read_at(4096, 4096).await.expect("read through the plain descriptor"), again);
    drop(file);
    let file = disk.open(path, false).await.expect("reopen");
    assert_eq!(file.size().await.expect("size"), 8192 + large.len() as u64);
    assert_eq!(file.read_at(0, 4096).await.expect("read"), vec![0u8; 4096]);
    assert_eq!(file.read_at(4096, 4096).await.expect("read"), again);
    assert!(file.read_at(8192, large.len()).await.expect("read") == large, "the large write reads back");
}

/// The O_DSYNC descriptor is opened on first use, possibly after the file was
/// renamed (WAL segments move into the reuse pool and back): it must still
/// write to the file the handle was opened on, never to a path's new owner.
#[test]
fn a_durable_write_after_a_rename_lands_in_the_renamed_file() {
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    on_fresh_executor(move || async move {
        for mode in [DurableWrites::Ring, DurableWrites::Inline] {
            durable_write_after_rename(GlommioDisk::with_durable_writes(mode), &root.join(format!("{mode:?}"))).await;
        }
    });
}

async fn durable_write_after_rename(disk: GlommioDisk, root: &Path) {
    disk.create_dir_all(root).await.expect("create directory");
    let first = root.join("first");
    let moved = root.join("moved");
    let file = disk.open(&first, true).await.expect("create file");
    file.write_at(0, &[1u8; 4096]).await.expect("write");
    disk.rename(&first, &moved).await.expect("rename");
    // Another file now lives at the old path.
    let other = disk.open(&first, true).await.expect("create another file");
    other.write_at(0, &[9u8; 4096]).await.expect("write");
    file.write_durable_at(0, &[2u8; 4096]).await.expect("durable write");
    let moved_file = disk.open(&moved, false).await.expect("open renamed");
    assert_eq!(moved_file.read_at(0, 4096).await.expect("read"), vec![2u8; 4096]);
    assert_eq!(other.read_at(0, 4096).await.expect("read"), vec![9u8; 4096], "the old path's new file is untouched");
}
