//! The I/O layer: every byte the storage engine reads or writes goes through
//! the [`Disk`] and [`DiskFile`] traits.
//!
//! Two backends implement them. [`glommio_disk`] is production: O_DIRECT files
//! driven by glommio's io_uring reactor, so the kernel page cache is never on
//! the data path and every write lands at a 4 KiB-aligned offset. [`sim`] is a
//! seeded in-memory disk for tests: it keeps a *durable* image and a *volatile*
//! image of every file and, on a simulated crash, loses or tears the writes that
//! were never synced; it can also flip bits, misdirect a write and fail with EIO
//! on a countdown.
//!
//! The WAL and the B-tree are generic over `Disk`, so the same logic runs on
//! both. Nothing outside this module names a glommio type, which keeps the
//! runtime replaceable (glommio's upstream is quiet).
//!
//! The contract both backends honour, and that the engine relies on:
//! - Offsets and lengths of reads and writes are multiples of [`IO_ALIGN_BYTES`].
//! - A write is durable only after [`DiskFile::sync_data`] returned `Ok`, or,
//!   for a write made with [`DiskFile::write_durable_at`], once that returned
//!   `Ok` (which promises nothing about other unsynced writes).
//! - A file's existence (create, rename, remove) is durable only after
//!   [`Disk::sync_dir`] on its directory returned `Ok`.
//! - A write interrupted by a crash may persist any subset of its 512-byte
//!   sectors; sectors are atomic.

pub mod glommio_disk;
pub mod sim;

use std::path::{Path, PathBuf};

/// Alignment of every offset and length the engine hands to a [`DiskFile`].
/// 4 KiB is the physical block size of the disks Keel targets and the page
/// granularity of O_DIRECT on ext4/xfs.
pub const IO_ALIGN_BYTES: usize = 4096;

/// The unit a crash can tear a write at; disks guarantee sector atomicity.
pub const SECTOR_BYTES: usize = 512;

const _: () = assert!(IO_ALIGN_BYTES.is_multiple_of(SECTOR_BYTES));

/// An I/O failure, with the operation and the path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct IoError {
    /// What was being done, as a verb phrase ("write WAL segment").
    pub op: &'static str,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The underlying error from the OS or the simulation.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    pub(crate) fn new(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self { op, path: path.to_path_buf(), source }
    }
}

/// A directory tree of files: the shard's data directory.
///
/// Methods are `async` without `Send` bounds on purpose: a disk belongs to one
/// shard (one thread), as everything in a thread-per-core design does.
#[allow(async_fn_in_trait)]
pub trait Disk: Clone + std::fmt::Debug + 'static {
    /// An open file on this disk.
    type File: DiskFile + 'static;

    /// Creates `dir` and its parents if missing (and syncs their parents).
    async fn create_dir_all(&self, dir: &Path) -> Result<(), IoError>;
    /// Opens `path` for reading and writing, creating it empty when `create`.
    /// The creation is durable only after `sync_dir` of its parent.
    async fn open(&self, path: &Path, create: bool) -> Result<Self::File, IoError>;
    /// Names (not paths) of the entries of `dir`, in no particular order.
    async fn list(&self, dir: &Path) -> Result<Vec<String>, IoError>;
    /// Removes a file.
    async fn remove(&self, path: &Path) -> Result<(), IoError>;
    /// Renames a file, replacing `to` if it exists.
    async fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError>;
    /// Makes creations, renames and removals in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> Result<(), IoError>;
    /// Whether `path` exists.
    async fn exists(&self, path: &Path) -> Result<bool, IoError>;
}

/// One open file. Offsets and lengths must be multiples of [`IO_ALIGN_BYTES`].
#[allow(async_fn_in_trait)]
pub trait DiskFile: std::fmt::Debug {
    /// Reads `len` bytes at `offset`. Returns fewer bytes only at end of file.
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, IoError>;
    /// Writes `data` at `offset`, extending the file if needed.
    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError>;
    /// Writes `parts`, one after the other, at `offset`: the same as one
    /// `write_at` of their concatenation. A backend that copies into its own
    /// buffers anyway (O_DIRECT's aligned buffers) copies the parts straight
    /// there; the concatenation would be a second copy into fresh memory
    /// (a checkpoint's pages: 32 MB, whose page faults took the shard's core
    /// for 5–8 ms at a time).
    async fn write_gather_at(&self, offset: u64, parts: &[&[u8]]) -> Result<(), IoError> {
        match parts {
            [single] => self.write_at(offset, single).await,
            parts => self.write_at(offset, &parts.concat()).await,
        }
    }
    /// fdatasync: every write that completed before the call is durable when
    /// this returns `Ok`. After an `Err` nothing can be assumed about them.
    async fn sync_data(&self) -> Result<(), IoError>;
    /// Writes `data` at `offset` and returns once it is durable: `write_at`
    /// then `sync_data`, but as one request where the backend can (an
    /// O_DSYNC write), which saves a round trip to the device per WAL commit.
    ///
    /// Only `data` is promised durable. Writes that completed earlier and
    /// were never synced may still be lost, as POSIX promises a synchronized
    /// write nothing about other writes; a caller syncs those first. After an
    /// `Err` nothing can be assumed about `data`.
    async fn write_durable_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.write_at(offset, data).await?;
        self.sync_data().await
    }
    /// Current size of the file in bytes.
    async fn size(&self) -> Result<u64, IoError>;
    /// Sets the file's size (extending with zeros or cutting).
    async fn truncate(&self, len: u64) -> Result<(), IoError>;
    /// The path this file was opened with (for error messages).
    fn path(&self) -> &Path;
}

/// Rounds `value` up to the next multiple of [`IO_ALIGN_BYTES`].
#[must_use]
pub const fn align_up(value: u64) -> u64 {
    let align = IO_ALIGN_BYTES as u64;
    value.div_ceil(align) * align
}

/// Whether `value` is a multiple of [`IO_ALIGN_BYTES`].
#[must_use]
pub const fn is_aligned(value: u64) -> bool {
    value.is_multiple_of(IO_ALIGN_BYTES as u64)
}
