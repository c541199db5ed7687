//! A seeded, in-memory, fault-injecting disk.
//!
//! Every file has a *durable* image (what survives a crash) and a *volatile*
//! image (what reads see now). Writes change the volatile image and are queued
//! as unsynced; `sync_data` makes them durable. Names are modelled the same
//! way: creating, renaming and removing a file changes the volatile namespace,
//! and only `sync_dir` makes the change durable.
//!
//! A write made with `write_durable_at` is durable once it returned, but
//! only it: it goes straight into the durable image (with the file's size),
//! and the older unsynced writes lose the bytes it overwrote, so that a crash
//! cannot bring them back over it; the rest of them fare as unsynced writes
//! do.
//!
//! [`SimDisk::crash`] ends the world: each unsynced write independently
//! survives whole, vanishes, or survives as a random subset of its 512-byte
//! sectors (a torn write), and the namespace reverts to its durable state. All
//! randomness comes from the seed, so a failing run replays exactly.
//!
//! Faults on demand: [`SimDisk::crash_at_op`] makes the n-th mutating operation
//! (write, sync, create, rename, remove, dir sync) the crash point;
//! [`SimDisk::fail_after`] fails one later operation with EIO;
//! [`SimDisk::misdirect_next_write`] sends the next write to another offset;
//! [`SimDisk::flip_bit`] rots a durable bit.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Disk, DiskFile, IoError, SECTOR_BYTES, is_aligned};

type InodeId = u64;

#[derive(Debug)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    unsynced: Vec<Unsynced>,
}

impl Inode {
    /// What an O_DSYNC write leaves behind: its data is durable, and so is
    /// the file's size (the metadata needed to read it back). Earlier
    /// unsynced writes keep their fate except where this one overwrote
    /// them.
    fn make_durable(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let mut kept = Vec::with_capacity(self.unsynced.len());
        for op in std::mem::take(&mut self.unsynced) {
            match op {
                Unsynced::SetLen(_) => {} // the size is made durable below
                Unsynced::Write { offset: at, data: old } => {
                    let old_end = at + old.len() as u64;
                    if old_end <= offset || at >= end {
                        kept.push(Unsynced::Write { offset: at, data: old });
                        continue;
                    }
                    // Keep the parts outside the new write.
                    let head = usize::try_from(offset.saturating_sub(at)).expect("within the write");
                    if let Some(part) = old.get(..head).filter(|p| !p.is_empty()) {
                        kept.push(Unsynced::Write { offset: at, data: part.to_vec() });
                    }
                    let tail = usize::try_from(end.saturating_sub(at)).expect("within the write");
                    if let Some(part) = old.get(tail..).filter(|p| !p.is_empty()) {
                        kept.push(Unsynced::Write { offset: end, data: part.to_vec() });
                    }
                }
            }
        }
        self.unsynced = kept;
        resize(&mut self.durable, self.volatile.len() as u64);
        apply_write(&mut self.durable, offset, data);
    }
}

#[derive(Debug)]
struct State {
    rng: SmallRng,
    inodes: BTreeMap<InodeId, Inode>,
    inode_next: InodeId,
    names: BTreeMap<PathBuf, InodeId>,
    names_durable: BTreeMap<PathBuf, InodeId>,
    dirs: BTreeSet<PathBuf>,
    /// Incremented by every crash; handles from an older epoch are dead.
    epoch: u64,
    crashed: bool,
    /// Whether the last checked operation was the crash point itself (a
    /// write at the crash point is in flight and may be torn).
    at_crash_point: bool,
    mutating_ops: u64,
    crash_at_op: Option<u64>,
    eio_countdown: Option<u64>,
    misdirect_bytes: Option<i64>,
    /// Counts of what happened, for tests that want to see faults fire.
    stats: SimStats,
}

/// What the simulated disk did, for assertions in tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimStats {
    /// Reads served.
    pub reads: u64,
    /// Writes accepted.
    pub writes: u64,
    /// `sync_data` calls that succeeded.
    pub syncs: u64,
    /// `write_durable_at` calls that succeeded (also counted in `writes`).
    pub durable_writes: u64,
    /// Unsynced writes torn by crashes.
    pub torn_writes: u64,
    /// Unsynced writes lost whole by crashes.
    pub lost_writes: u64,
}

/// The simulated disk. Cheap to clone; clones share the same state.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Rc<RefCell<State>>,
}

/// An open file on a [`SimDisk`].
#[derive(Debug)]
pub struct SimFile {
    state: Rc<RefCell<State>>,
    inode: InodeId,
    epoch: u64,
    path: PathBuf,
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated crash: the disk is down until restart")
}

impl SimDisk {
    /// A new, empty disk whose random decisions derive from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        let state = State {
            rng: SmallRng::seed_from_u64(seed),
            inodes: BTreeMap::new(),
            inode_next: 1,
            names: BTreeMap::new(),
            names_durable: BTreeMap::new(),
            dirs: BTreeSet::new(),
            epoch: 0,
            crashed: false,
            at_crash_point: false,
            mutating_ops: 0,
            crash_at_op: None,
            eio_countdown: None,
            misdirect_bytes: None,
            stats: SimStats::default(),
        };
        Self { state: Rc::new(RefCell::new(state)) }
    }

    /// The `n`-th mutating operation from now on (0 = the next one) crashes
    /// the disk: it fails, a write in it may be torn, and every later
    /// operation fails until [`SimDisk::crash`] is called.
    pub fn crash_at_op(&self, n: u64) {
        let mut st = self.state.borrow_mut();
        st.crash_at_op = Some(st.mutating_ops + n);
    }

    /// Number of mutating operations so far (writes, syncs, namespace ops).
    #[must_use]
    pub fn mutating_ops(&self) -> u64 {
        self.state.borrow().mutating_ops
    }

    /// Whether the disk has hit its crash point.
    #[must_use]
    pub fn is_crashed(&self) -> bool {
        self.state.borrow().crashed
    }

    /// The `n`-th operation from now on (reads included) fails with EIO once.
    pub fn fail_after(&self, n: u64) {
        self.state.borrow_mut().eio_countdown = Some(n);
    }

    /// The next write lands `delta_bytes` away from where it was aimed.
    pub fn misdirect_next_write(&self, delta_bytes: i64) {
        self.state.borrow_mut().misdirect_bytes = Some(delta_bytes);
    }

    /// Flips one bit of a file, in its durable and its volatile image.
    ///
    /// # Panics
    /// If the file or the byte does not exist (a test bug).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) {
        let mut st = self.state.borrow_mut();
        let id = *st.names.get(path).expect("flip_bit: no such file");
        let inode = st.inodes.get_mut(&id).expect("inode of a name exists");
        let at = usize::try_from(offset).expect("offset fits usize");
        for image in [&mut inode.durable, &mut inode.volatile] {
            if let Some(byte) = image.get_mut(at) {
                *byte ^= 1 << (bit % 8);
            }
        }
    }

    /// Overwrites bytes of a file, durably, bypassing the engine (for tests
    /// that plant stale or foreign content).
    ///
    /// # Panics
    /// If the file does not exist (a test bug).
    pub fn poke(&self, path: &Path, offset: u64, bytes: &[u8]) {
        let mut st = self.state.borrow_mut();
        let id = *st.names.get(path).expect("poke: no such file");
        let inode = st.inodes.get_mut(&id).expect("inode of a name exists");
        let at = usize::try_from(offset).expect("offset fits usize");
        for image in [&mut inode.durable, &mut inode.volatile] {
            if image.len() < at + bytes.len() {
                image.resize(at + bytes.len(), 0);
            }
            image.get_mut(at..at + bytes.len()).expect("resized").copy_from_slice(bytes);
        }
    }

    /// Reads a whole file's volatile image (for tests).
    #[must_use]
    pub fn peek(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.borrow();
        let id = st.names.get(path)?;
        st.inodes.get(id).map(|inode| inode.volatile.clone())
    }

    /// Statistics so far.
    #[must_use]
    pub fn stats(&self) -> SimStats {
        self.state.borrow().stats
    }

    /// Simulates power loss and restart: unsynced writes are kept, lost or
    /// torn at sector granularity (decided by the seed), unsynced namespace
    /// changes are undone, and every open handle dies. The disk then works
    /// again.
    pub fn crash(&self) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        st.epoch += 1;
        st.crashed = false;
        st.crash_at_op = None;
        st.eio_countdown = None;
        st.misdirect_bytes = None;
        st.names = st.names_durable.clone();
        let live: BTreeSet<InodeId> = st.names.values().copied().collect();
        st.inodes.retain(|id, _| live.contains(id));
        for inode in st.inodes.values_mut() {
            for op in std::mem::take(&mut inode.unsynced) {
                match op {
                    Unsynced::SetLen(len) => {
                        if st.rng.random_bool(0.5) {
                            resize(&mut inode.durable, len);
                        }
                    }
                    Unsynced::Write { offset, data } => match st.rng.random_range(0..3u8) {
                        0 => apply_write(&mut inode.durable, offset, &data),
                        1 => st.stats.lost_writes += 1,
                        _ => {
                            st.stats.torn_writes += 1;
                            for (i, sector) in data.chunks(SECTOR_BYTES).enumerate() {
                                if st.rng.random_bool(0.5) {
                                    let at = offset + (i * SECTOR_BYTES) as u64;
                                    apply_write(&mut inode.durable, at, sector);
                                }
                            }
                        }
                    },
                }
            }
            inode.volatile = inode.durable.clone();
        }
    }

    fn check_op(&self, mutating: bool) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.at_crash_point = false;
        if st.crashed {
            return Err(crashed_error());
        }
        if let Some(n) = st.eio_countdown {
            if n == 0 {
                st.eio_countdown = None;
                return Err(io::Error::from_raw_os_error(5));
            }
            st.eio_countdown = Some(n - 1);
        }
        if mutating {
            let op = st.mutating_ops;
            st.mutating_ops += 1;
            if st.crash_at_op == Some(op) {
                st.crashed = true;
                st.at_crash_point = true;
                return Err(crashed_error());
            }
        }
        Ok(())
    }
}

fn resize(image: &mut Vec<u8>, len: u64) {
    image.resize(usize::try_from(len).expect("simulated file fits memory"), 0);
}

fn apply_write(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let at = usize::try_from(offset).expect("simulated file fits memory");
    if image.len() < at + data.len() {
        image.resize(at + data.len(), 0);
    }
    if let Some(dst) = image.get_mut(at..at + data.len()) {
        dst.copy_from_slice(data);
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Disk for SimDisk {
    type File = SimFile;

    async fn create_dir_all(&self, dir: &Path) -> Result<(), IoError> {
        self.check_op(false).map_err(|e| IoError::new("create directory", dir, e))?;
        self.state.borrow_mut().dirs.insert(dir.to_path_buf());
        Ok(())
    }

    async fn open(&self, path: &Path, create: bool) -> Result<SimFile, IoError> {
        let existing = self.state.borrow().names.get(path).copied();
        let id = match existing {
            Some(id) => {
                self.check_op(false).map_err(|e| IoError::new("open file", path, e))?;
                id
            }
            None if create => {
                self.check_op(true).map_err(|e| IoError::new("create file", path, e))?;
                let mut st = self.state.borrow_mut();
                let id = st.inode_next;
                st.inode_next += 1;
                st.inodes.insert(id, Inode::default());
                st.names.insert(path.to_path_buf(), id);
                id
            }
            None => {
                return Err(IoError::new("open file", path, io::ErrorKind::NotFound.into()));
            }
        };
        let epoch = self.state.borrow().epoch;
        Ok(SimFile { state: Rc::clone(&self.state), inode: id, epoch, path: path.to_path_buf() })
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, IoError> {
        self.check_op(false).map_err(|e| IoError::new("list directory", dir, e))?;
        let st = self.state.borrow();
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    async fn remove(&self, path: &Path) -> Result<(), IoError> {
        self.check_op(true).map_err(|e| IoError::new("remove file", path, e))?;
        let removed = self.state.borrow_mut().names.remove(path);
        match removed {
            Some(_) => Ok(()),
            None => Err(IoError::new("remove file", path, io::ErrorKind::NotFound.into())),
        }
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError> {
        self.check_op(true).map_err(|e| IoError::new("rename file", from, e))?;
        let mut st = self.state.borrow_mut();
        match st.names.remove(from) {
            Some(id) => {
                st.names.insert(to.to_path_buf(), id);
                Ok(())
            }
            None => Err(IoError::new("rename file", from, io::ErrorKind::NotFound.into())),
        }
    }

    async fn sync_dir(&self, dir: &Path) -> Result<(), IoError> {
        self.check_op(true).map_err(|e| IoError::new("sync directory", dir, e))?;
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        st.names_durable.retain(|p, _| parent(p) != dir);
        for (p, id) in &st.names {
            if parent(p) == dir {
                st.names_durable.insert(p.clone(), *id);
            }
        }
        Ok(())
    }

    async fn exists(&self, path: &Path) -> Result<bool, IoError> {
        self.check_op(false).map_err(|e| IoError::new("stat file", path, e))?;
        let st = self.state.borrow();
        Ok(st.names.contains_key(path) || st.dirs.contains(path))
    }
}

impl SimFile {
    fn disk(&self) -> SimDisk {
        SimDisk { state: Rc::clone(&self.state) }
    }

    fn check(&self, op: &'static str, mutating: bool) -> Result<(), IoError> {
        if self.state.borrow().epoch != self.epoch {
            return Err(IoError::new(op, &self.path, crashed_error()));
        }
        self.disk().check_op(mutating).map_err(|e| IoError::new(op, &self.path, e))
    }

    /// A write; `durable` for one made with `write_durable_at`, which
    /// survives a crash once it returned `Ok` (and only it: the unsynced
    /// writes before it may still be lost or torn).
    fn write(&self, offset: u64, data: &[u8], durable: bool) -> Result<(), IoError> {
        assert!(is_aligned(offset) && is_aligned(data.len() as u64), "unaligned write");
        let result = self.check("write file", true);
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        if result.is_err() && !st.at_crash_point {
            return result; // EIO, dead handle or a downed disk: nothing written
        }
        // A write at the crash point is in flight: it may be torn on crash,
        // durable or not.
        let target = match st.misdirect_bytes.take() {
            Some(delta) => offset.saturating_add_signed(delta),
            None => offset,
        };
        let inode = st.inodes.get_mut(&self.inode).expect("open inode exists");
        let data = data.to_vec();
        if result.is_ok() {
            apply_write(&mut inode.volatile, target, &data);
            st.stats.writes += 1;
            if durable {
                st.stats.durable_writes += 1;
                inode.make_durable(target, &data);
                return result;
            }
        }
        inode.unsynced.push(Unsynced::Write { offset: target, data });
        result
    }
}

impl DiskFile for SimFile {
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, IoError> {
        assert!(is_aligned(offset) && is_aligned(len as u64), "unaligned read");
        self.check("read file", false)?;
        self.state.borrow_mut().stats.reads += 1;
        let st = self.state.borrow();
        let inode = st.inodes.get(&self.inode).expect("open inode exists");
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(inode.volatile.len());
        let end = start.saturating_add(len).min(inode.volatile.len());
        Ok(inode.volatile.get(start..end).map(<[u8]>::to_vec).unwrap_or_default())
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.write(offset, data, false)
    }

    async fn write_durable_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.write(offset, data, true)
    }

    async fn sync_data(&self) -> Result<(), IoError> {
        self.check("sync file", true)?;
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let inode = st.inodes.get_mut(&self.inode).expect("open inode exists");
        inode.unsynced.clear();
        inode.durable = inode.volatile.clone();
        st.stats.syncs += 1;
        Ok(())
    }

    async fn size(&self) -> Result<u64, IoError> {
        self.check("stat file", false)?;
        let st = self.state.borrow();
        Ok(st.inodes.get(&self.inode).map_or(0, |i| i.volatile.len() as u64))
    }

    async fn truncate(&self, len: u64) -> Result<(), IoError> {
        self.check("truncate file", true)?;
        let mut st = self.state.borrow_mut();
        let inode = st.inodes.get_mut(&self.inode).expect("open inode exists");
        resize(&mut inode.volatile, len);
        inode.unsynced.push(Unsynced::SetLen(len));
        Ok(())
    }

    fn path(&self) -> &Path {
        &self.path
    }
}
