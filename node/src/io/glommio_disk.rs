//! The production backend: O_DIRECT files through glommio's io_uring reactor.
//!
//! Must be used from inside a glommio executor.
//!
//! # Why the first open on a device is a probe file
//!
//! glommio 0.9 decides, once per thread and block device, whether the device
//! supports polled I/O by issuing a real read on the first file it dma-opens.
//! When that file is empty the read "succeeds" with zero bytes on a device
//! without polling support (this VM's virtio disk has `io_poll=0`), glommio
//! concludes that polling works, and every later DmaFile read on the device
//! fails with EOPNOTSUPP (os error 95; glommio issues #605 and #670).
//! [`GlommioDisk`] therefore makes sure that, on each thread, the first file it
//! dma-opens on a device is a non-empty probe file (`.keel-dma-probe`, 4 KiB)
//! and reads it, before it opens anything else there. The regression test
//! `glommio_reads_work_after_an_empty_file_is_opened_first` pins this.
//!
//! # Request size
//!
//! Each DmaFile read or write is split into requests no larger than
//! [`IO_REQUEST_MAX_BYTES`] and no larger than the device's `max_sectors_kb`:
//! oversized requests hung processes on older kernels (glommio #633/#635).
//!
//! # Why CPU-bound background work yields through a timer
//!
//! glommio 0.9 hands disk requests to the kernel (its "main" io_uring ring,
//! which never rushes submissions) only between scheduler passes: when every
//! task queue has run dry, or when the preemption timer (100 ms by default)
//! fires. `yield_task_queue_now` leaves the yielding queue runnable, so a
//! background loop that yields that way keeps the scheduler pass going, and
//! every WAL write or fdatasync issued meanwhile waits in glommio's own queue:
//! under YCSB A each partition's checkpoint held one WAL commit back for
//! 55–94 ms although the disk answered in under 1 ms. [`yield_to_reactor`]
//! sleeps on a timer instead, which leaves the queue idle until the reactor
//! has run. The test
//! `a_busy_background_queue_that_yields_to_the_reactor_does_not_hold_back_disk_writes`
//! pins this.
//! A pass also ends when the preemption timer fires; keel-node's shards run
//! with a 10 ms one (`server::SHARD_PREEMPT_TIMER`, pinned by
//! `a_shard_executor_submits_disk_writes_while_a_task_queue_stays_busy`), so
//! no busy pass holds requests for glommio's default 100 ms.
//!
//! # Durable writes: through the ring, or inline
//!
//! [`DiskFile::write_durable_at`] writes through a second descriptor opened
//! with `O_DSYNC`, in one of two ways ([`DurableWrites`]):
//!
//! - **`Ring`** (the default): an io_uring write. The shard serves other
//!   requests meanwhile. But on a device without FUA (`queue/fua` 0, as on
//!   this VM) the kernel completes an `O_DSYNC` direct write from a worker
//!   thread: the write's completion wakes a kworker on the CPU that took the
//!   interrupt, which issues the cache flush and, once it is done, posts the
//!   completion to the ring, which the shard reaps at its next scheduler
//!   pass. Each of those waits for a CPU (on a loaded machine, for the other
//!   work on it), so a commit took 0.44–0.57 ms at the median and 1.1–3.7 ms
//!   at the p99 (timed in the node under YCSB A, open loop at 31,000 ops/s,
//!   2-core VM) where the disk itself needs about 0.1 ms.
//! - **`Inline`**: `pwrite` on the shard's own thread, which blocks until the
//!   data is durable. A synchronous direct write runs the flush in the
//!   caller's context, so no other thread is woken: 0.18–0.21 ms at the
//!   median and 0.33–0.74 ms at the p99 in the same runs. The price: the shard
//!   serves nothing while the disk works (reads wait for the commit, as
//!   Redis's do under `appendfsync always`), and a disk that stalls stalls
//!   every request of the shard, not only its writes.
//!
//! Both are equally durable: the call returns only once the data is.

use std::cell::{OnceCell, RefCell};
use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{Directory, DmaFile, OpenOptions};

use super::{Disk, DiskFile, IO_ALIGN_BYTES, IoError, is_aligned};

/// Upper bound on one read or write request handed to the kernel.
pub const IO_REQUEST_MAX_BYTES: usize = 1024 * 1024;

/// Requests of one large write in flight at once.
pub const WRITES_IN_FLIGHT_MAX: usize = 4;

const PROBE_FILE_NAME: &str = ".keel-dma-probe";

/// How long [`yield_to_reactor`] sleeps: long enough that the timer is
/// still pending when the scheduler looks at the queue again.
const REACTOR_YIELD: std::time::Duration = std::time::Duration::from_micros(20);

/// Lets the executor go back to its reactor (submit queued disk requests,
/// reap completions) before this task goes on; for CPU-bound loops in
/// background task queues. See the module docs for why
/// `yield_task_queue_now` is not enough.
pub async fn yield_to_reactor() {
    glommio::timer::sleep(REACTOR_YIELD).await;
}

thread_local! {
    /// Devices on which this thread has already dma-opened the probe file.
    static PRIMED_DEVICES: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// How [`DiskFile::write_durable_at`] is issued (module docs: the trade).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DurableWrites {
    /// An `O_DSYNC` write through io_uring: the shard keeps serving while
    /// the disk works.
    #[default]
    Ring,
    /// A blocking `O_DSYNC` `pwrite` on the shard's own thread: no kernel
    /// worker or ring round trip, but the shard waits for the disk.
    Inline,
}

/// The glommio-backed disk. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct GlommioDisk {
    durable_writes: DurableWrites,
}

/// An O_DIRECT file opened through glommio.
#[derive(Debug)]
pub struct GlommioFile {
    file: Rc<DmaFile>,
    /// A second descriptor of the same file opened with O_DSYNC, for
    /// [`DiskFile::write_durable_at`]; opened on first use (only WAL segments
    /// and B-tree meta pages need it).
    dsync: OnceCell<DmaFile>,
    /// The same for [`DurableWrites::Inline`]: written with blocking `pwrite`.
    dsync_inline: OnceCell<std::fs::File>,
    durable_writes: DurableWrites,
    path: PathBuf,
    request_max_bytes: usize,
}

impl GlommioDisk {
    /// A backend for use inside a glommio executor, with durable writes
    /// through the ring.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend whose durable writes go as `durable_writes` says.
    #[must_use]
    pub fn with_durable_writes(durable_writes: DurableWrites) -> Self {
        Self { durable_writes }
    }

    /// Opens and reads a non-empty probe file in `dir` if this thread has not
    /// yet dma-opened anything on `dir`'s device (see the module docs).
    async fn prime_device(dir: &Path) -> Result<(), IoError> {
        let device = std::fs::metadata(dir).map_err(|e| IoError::new("stat directory", dir, e))?.dev();
        if PRIMED_DEVICES.with(|primed| primed.borrow().contains(&device)) {
            return Ok(());
        }
        let probe = dir.join(PROBE_FILE_NAME);
        let needs_content = std::fs::metadata(&probe).map(|m| m.len() < IO_ALIGN_BYTES as u64).unwrap_or(true);
        if needs_content {
            std::fs::write(&probe, [0x6b_u8; IO_ALIGN_BYTES])
                .map_err(|e| IoError::new("write DMA probe file", &probe, e))?;
        }
        let file = DmaFile::open(&probe).await.map_err(|e| IoError::new("open DMA probe file", &probe, e.into()))?;
        let read = file.read_at_aligned(0, IO_ALIGN_BYTES).await;
        // Close before judging the read so the descriptor never leaks.
        let _ = file.close().await;
        read.map_err(|e| IoError::new("read DMA probe file", &probe, e.into()))?;
        PRIMED_DEVICES.with(|primed| primed.borrow_mut().insert(device));
        Ok(())
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl Disk for GlommioDisk {
    type File = GlommioFile;

    async fn create_dir_all(&self, dir: &Path) -> Result<(), IoError> {
        // Remember which ancestors are new: their parents must be synced so
        // the new entries survive a crash.
        let mut created = Vec::new();
        let mut cursor = Some(dir);
        while let Some(d) = cursor {
            if d.as_os_str().is_empty() || d.is_dir() {
                break;
            }
            created.push(d.to_path_buf());
            cursor = d.parent();
        }
        std::fs::create_dir_all(dir).map_err(|e| IoError::new("create directory", dir, e))?;
        for d in created.iter().rev() {
            self.sync_dir(parent_of(d)).await?;
        }
        Ok(())
    }

    async fn open(&self, path: &Path, create: bool) -> Result<GlommioFile, IoError> {
        Self::prime_device(parent_of(path)).await?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(path)
            .await
            .map_err(|e| IoError::new(if create { "create file" } else { "open file" }, path, e.into()))?;
        let device_max = std::fs::read_to_string(format!(
            "/sys/dev/block/{}:{}/queue/max_sectors_kb",
            file.dev_major(),
            file.dev_minor()
        ))
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map_or(IO_REQUEST_MAX_BYTES, |kb| kb * 1024);
        let request_max_bytes = device_max.clamp(IO_ALIGN_BYTES, IO_REQUEST_MAX_BYTES);
        Ok(GlommioFile {
            file: Rc::new(file),
            dsync: OnceCell::new(),
            dsync_inline: OnceCell::new(),
            durable_writes: self.durable_writes,
            path: path.to_path_buf(),
            request_max_bytes,
        })
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, IoError> {
        // Listing happens only at open time; a blocking read_dir is acceptable.
        let entries = std::fs::read_dir(dir).map_err(|e| IoError::new("list directory", dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| IoError::new("list directory", dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    async fn remove(&self, path: &Path) -> Result<(), IoError> {
        glommio::io::remove(path).await.map_err(|e| IoError::new("remove file", path, e.into()))
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError> {
        glommio::io::rename(from, to).await.map_err(|e| IoError::new("rename file", from, e.into()))
    }

    async fn sync_dir(&self, dir: &Path) -> Result<(), IoError> {
        // glommio fails to open relative directory paths such as "." (EBADF).
        let dir = &std::path::absolute(dir).map_err(|e| IoError::new("resolve directory", dir, e))?;
        let handle = Directory::open(dir).await.map_err(|e| IoError::new("open directory", dir, e.into()))?;
        let synced = handle.sync().await;
        let _ = handle.close().await;
        synced.map_err(|e| IoError::new("sync directory", dir, e.into()))
    }

    async fn exists(&self, path: &Path) -> Result<bool, IoError> {
        path.try_exists().map_err(|e| IoError::new("stat file", path, e))
    }
}

impl GlommioFile {
    /// One write request through `file` (this file's plain or O_DSYNC
    /// descriptor): bytes `start..start + len` of the concatenation of
    /// `parts`, copied into a DMA buffer, written at `at`; a short write is
    /// an error.
    async fn write_request(
        &self,
        file: &DmaFile,
        at: u64,
        parts: &[&[u8]],
        start: usize,
        len: usize,
    ) -> Result<(), IoError> {
        let mut buf = file.alloc_dma_buffer(len);
        copy_range(parts, start, buf.as_bytes_mut());
        let written = file.write_at(buf, at).await.map_err(|e| IoError::new("write file", &self.path, e.into()))?;
        self.whole_write(written, len)
    }

    /// A write that wrote fewer than `len` bytes is an error.
    fn whole_write(&self, written: usize, len: usize) -> Result<(), IoError> {
        if written == len {
            Ok(())
        } else {
            let short = std::io::Error::new(std::io::ErrorKind::WriteZero, format!("short write: {written} of {len}"));
            Err(IoError::new("write file", &self.path, short))
        }
    }

    /// The O_DSYNC descriptor, opened on first use. A write through it
    /// completes only once its data (and the metadata needed to read it back)
    /// is durable: after the direct write the kernel runs the filesystem's
    /// fdatasync for the written range (`generic_write_sync`), or writes with
    /// FUA where the device has it, all for one io_uring request. Write +
    /// fdatasync are two requests with a trip through the reactor between
    /// them (measured on this VM: one 4 KiB commit every 262 µs that way).
    async fn dsync_file(&self) -> Result<&DmaFile, IoError> {
        if let Some(file) = self.dsync.get() {
            return Ok(file);
        }
        let reopen = self.reopen_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_DSYNC)
            .dma_open(&reopen)
            .await
            .map_err(|e| IoError::new("open file for synchronized writes", &self.path, e.into()))?;
        // Only one task writes durably at a time (the WAL's flush, or a
        // checkpoint's meta page), but should two race, the loser's
        // descriptor is simply dropped (glommio closes it asynchronously).
        let _ = self.dsync.set(file);
        Ok(self.dsync.get().expect("set just above"))
    }

    /// The path that reopens this file through its open descriptor, not its
    /// name: the name may belong to another file by now (a WAL segment
    /// renamed into the reuse pool, a rebuilt B-tree renamed into place).
    fn reopen_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// [`DurableWrites::Inline`]: one blocking `pwrite` through an
    /// `O_DIRECT | O_DSYNC` descriptor (opened on first use), from a DMA
    /// buffer (aligned, as O_DIRECT needs). It returns once the data is
    /// durable; a short write is an error.
    fn write_durable_inline(&self, at: u64, data: &[u8]) -> Result<(), IoError> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let file = match self.dsync_inline.get() {
            Some(file) => file,
            None => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::libc::O_DIRECT | nix::libc::O_DSYNC)
                    .open(self.reopen_path())
                    .map_err(|e| IoError::new("open file for synchronized writes", &self.path, e))?;
                self.dsync_inline.get_or_init(|| file)
            }
        };
        let mut buf = self.file.alloc_dma_buffer(data.len());
        buf.as_bytes_mut().copy_from_slice(data);
        let written = loop {
            match file.write_at(buf.as_bytes(), at) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other.map_err(|e| IoError::new("write file", &self.path, e))?,
            }
        };
        self.whole_write(written, data.len())
    }
}

/// Fills `out` with the bytes at `start..start + out.len()` of the
/// concatenation of `parts`.
fn copy_range(parts: &[&[u8]], start: usize, out: &mut [u8]) {
    let mut skip = start;
    let mut filled = 0;
    for part in parts {
        if filled == out.len() {
            break;
        }
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        let from = part.get(skip..).unwrap_or(&[]);
        skip = 0;
        let n = from.len().min(out.len() - filled);
        if let (Some(dst), Some(src)) = (out.get_mut(filled..filled + n), from.get(..n)) {
            dst.copy_from_slice(src);
        }
        filled += n;
    }
    assert_eq!(filled, out.len(), "the parts hold the range");
}

impl DiskFile for GlommioFile {
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, IoError> {
        assert!(is_aligned(offset) && is_aligned(len as u64), "unaligned read");
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = (len - out.len()).min(self.request_max_bytes);
            let at = offset + out.len() as u64;
            let got = self
                .file
                .read_at_aligned(at, want)
                .await
                .map_err(|e| IoError::new("read file", &self.path, e.into()))?;
            out.extend_from_slice(&got);
            if got.len() < want {
                break; // end of file
            }
        }
        Ok(out)
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.write_gather_at(offset, &[data]).await
    }

    async fn write_gather_at(&self, offset: u64, parts: &[&[u8]]) -> Result<(), IoError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert!(is_aligned(offset) && is_aligned(total as u64), "unaligned write");
        // Large writes go out as several requests in flight at once, so that
        // copying into DMA buffers overlaps with the device's work. Each
        // request's buffer is filled from the parts directly.
        stream::iter((0..total).step_by(self.request_max_bytes))
            .map(|start| {
                let len = (total - start).min(self.request_max_bytes);
                self.write_request(&self.file, offset + start as u64, parts, start, len)
            })
            .buffer_unordered(WRITES_IN_FLIGHT_MAX)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn sync_data(&self) -> Result<(), IoError> {
        self.file.fdatasync().await.map_err(|e| IoError::new("sync file", &self.path, e.into()))
    }

    async fn write_durable_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        assert!(is_aligned(offset) && is_aligned(data.len() as u64), "unaligned write");
        if data.len() > self.request_max_bytes {
            // Split into several requests, each O_DSYNC one would flush the
            // device's cache on its own: one fdatasync for all is cheaper.
            self.write_at(offset, data).await?;
            return self.sync_data().await;
        }
        match self.durable_writes {
            DurableWrites::Ring => {
                let file = self.dsync_file().await?;
                self.write_request(file, offset, &[data], 0, data.len()).await
            }
            DurableWrites::Inline => self.write_durable_inline(offset, data),
        }
    }

    async fn size(&self) -> Result<u64, IoError> {
        self.file.file_size().await.map_err(|e| IoError::new("stat file", &self.path, e.into()))
    }

    async fn truncate(&self, len: u64) -> Result<(), IoError> {
        self.file.truncate(len).await.map_err(|e| IoError::new("truncate file", &self.path, e.into()))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}
