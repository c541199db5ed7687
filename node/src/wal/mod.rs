//! The shard write-ahead log: one log per shard, shared by every partition
//! replica on it, so that one write + fdatasync commits many partitions'
//! records at once.
//!
//! # Shape
//!
//! The log is a sequence of fixed-size segment files `wal-<seq:016x>.seg`.
//! Each starts with a 4 KiB header block; records follow back to back. A
//! record's position is its [`Lsn`] (`segment << 32 | offset`) and the record
//! carries it, so a record read from anywhere else (a recycled segment, a
//! misdirected write) is recognised as stale.
//!
//! # Group commit
//!
//! [`Wal::submit`] encodes a record into the pending batch and returns at once;
//! [`Wal::wait_durable`] resolves when the record is on disk. The first waiter
//! that finds no write in flight becomes the flusher: it takes *every* pending
//! record, pads the batch to a 4 KiB boundary, and writes it durably: one
//! synchronized (O_DSYNC) request when the batch fits one request, else a
//! write and one fdatasync ([`DiskFile::write_durable_at`]; the one request
//! saves a round trip through the reactor, 4.0–4.5k → 5.0–6.8k single commits
//! a second on this VM). Records submitted meanwhile wait for the next batch,
//! which starts at the next 4 KiB boundary: a durable block is never written
//! again, so a torn write can only damage records that were never
//! acknowledged.
//!
//! # Recovery
//!
//! [`Wal::open`] reads the segments in order and verifies every record
//! (checksum, own LSN, version, and that the batch LSNs never go backwards).
//! The first record that fails ends the log *if nothing durable follows it*:
//! a torn tail. If a valid record from a later batch exists after it, the
//! damage is in the middle of the log and opening fails with
//! [`WalOpenError::Corrupt`] naming the segment and offset. See
//! `docs/format/wal.md` for the byte layout and the durability order.
//!
//! A failed write or fdatasync poisons the log: the kernel may have dropped
//! the dirty pages, so nothing after it can be trusted until a restart runs
//! recovery again.

mod notify;
pub mod record;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::io::{Disk, DiskFile, IO_ALIGN_BYTES, IoError, align_up};
pub use notify::{Notified, Notify};
use record::{
    KIND_CUT, KIND_PADDING, KIND_SEGMENT_END, RECORD_HEADER_BYTES, RecordFault, SEGMENT_HEADER_BYTES, encode_record,
    encode_segment_header, parse_record, parse_segment_header,
};
pub use record::{Lsn, RecordMeta, USER_KIND_MIN};

/// Size of the zero-fill writes that preallocate a new segment.
const ZERO_FILL_CHUNK_BYTES: usize = 1024 * 1024;

/// WAL settings.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Size of every segment file; a multiple of 4 KiB, at most 4 GiB.
    pub segment_size_bytes: u64,
    /// Largest payload of one record.
    pub payload_max_bytes: usize,
    /// Reclaimed segments kept for reuse (overwriting a preallocated file is
    /// much faster than appending to a new one).
    pub recycle_pool_max: usize,
    /// Write zeros over new segments so that later writes overwrite allocated
    /// blocks instead of converting unwritten extents on every fdatasync.
    pub zero_fill: bool,
    /// Bytes of submitted records not yet written; beyond it `submit` fails
    /// with [`WalAppendError::Backlog`] instead of growing without bound.
    pub pending_bytes_max: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_size_bytes: 64 * 1024 * 1024,
            payload_max_bytes: 1024 * 1024,
            recycle_pool_max: 4,
            zero_fill: true,
            pending_bytes_max: 64 * 1024 * 1024,
        }
    }
}

impl WalConfig {
    fn validate(&self) -> Result<(), WalOpenError> {
        if !self.segment_size_bytes.is_multiple_of(IO_ALIGN_BYTES as u64) {
            return Err(WalOpenError::Config("segment size must be a multiple of 4 KiB"));
        }
        if self.segment_size_bytes > u64::from(u32::MAX) {
            return Err(WalOpenError::Config("segment size must be at most 4 GiB"));
        }
        let record_max = (RECORD_HEADER_BYTES + self.payload_max_bytes) as u64;
        if u64::from(SEGMENT_HEADER_BYTES) + record_max + IO_ALIGN_BYTES as u64 > self.segment_size_bytes {
            return Err(WalOpenError::Config("segment too small for the largest record"));
        }
        if u32::try_from(self.payload_max_bytes).is_err() {
            return Err(WalOpenError::Config("payload limit must fit in 32 bits"));
        }
        Ok(())
    }
}

/// Failure to open (recover) the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalOpenError {
    /// The disk failed.
    #[error("open WAL: {0}")]
    Io(#[from] IoError),
    /// Damage before the tail of the log: acknowledged records may be lost.
    #[error("WAL corrupt in {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the damaged record or header.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A segment between two others is missing.
    #[error("WAL segment {missing} is missing (found {found:?})")]
    MissingSegment {
        /// Sequence number expected.
        missing: u64,
        /// Sequence numbers present.
        found: Vec<u64>,
    },
    /// The configuration is unusable.
    #[error("invalid WAL configuration: {0}")]
    Config(&'static str),
    /// Existing segments were written with another segment size.
    #[error(
        "WAL segment {segment} has size {found} bytes but the configured size is {configured}; keep the size a WAL was created with"
    )]
    SegmentSizeMismatch {
        /// The segment file.
        segment: PathBuf,
        /// Size recorded in its header.
        found: u64,
        /// `WalConfig::segment_size_bytes`.
        configured: u64,
    },
    /// Recording where recovery cut a torn tail failed.
    #[error("open WAL: record the cut at the torn tail: {0}")]
    Cut(#[source] Box<WalAppendError>),
}

/// Failure to append to the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalAppendError {
    /// This append's write or sync failed; the WAL is now poisoned.
    #[error("append to WAL: {0}")]
    Io(#[from] IoError),
    /// An earlier write or sync failed.
    #[error("WAL is poisoned by an earlier I/O failure ({0}); restart the shard to recover")]
    Poisoned(String),
    /// The payload exceeds [`WalConfig::payload_max_bytes`].
    #[error("WAL record payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Kinds below [`USER_KIND_MIN`] belong to the WAL.
    #[error("WAL record kind {0} is reserved")]
    ReservedKind(u8),
    /// Too many bytes wait for the disk; retry after pending appends resolve.
    #[error("WAL backlog of {pending} bytes reached its limit of {max} bytes")]
    Backlog {
        /// Bytes waiting.
        pending: usize,
        /// The limit.
        max: usize,
    },
}

/// A record found by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it is.
    pub lsn: Lsn,
    /// Its header fields.
    pub meta: RecordMeta,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Counters for benchmarks and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WalStats {
    /// Records submitted.
    pub records: u64,
    /// Batches written (each made durable by one synchronized write, or a
    /// write + one fdatasync).
    pub batches: u64,
    /// Bytes written for batches, padding included.
    pub batch_bytes: u64,
}

#[derive(Debug)]
struct Batch {
    start: Lsn,
    bytes: Vec<u8>,
    /// Where to write a segment-end record in the previous segment first.
    seal: Option<Lsn>,
}

#[derive(Debug)]
struct State<F> {
    active: Option<(u64, Rc<F>)>,
    /// Where the next batch starts when nothing is pending.
    tail: Lsn,
    pending: Vec<Batch>,
    /// Everything before this LSN is durable.
    durable: Lsn,
    flushing: bool,
    poisoned: Option<String>,
    segments: BTreeSet<u64>,
    free_pool: Vec<PathBuf>,
    free_next: u64,
    /// Whether [`Wal::replenish_pool`] is making a spare segment.
    replenishing: bool,
    /// Buffers of flushed batches, kept to avoid reallocating (and page
    /// faulting) a batch buffer for every write.
    spare_buffers: Vec<Vec<u8>>,
    stats: WalStats,
}

/// WAL commits (write + fdatasync) longer than this are logged.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Spare batch buffers kept for reuse.
const SPARE_BUFFERS_MAX: usize = 4;

/// The shard write-ahead log. See the module docs.
#[derive(Debug)]
pub struct Wal<D: Disk> {
    disk: D,
    dir: PathBuf,
    config: WalConfig,
    state: RefCell<State<D::File>>,
    notify: Notify,
}

fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016x}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Outcome of scanning one segment.
enum Scan {
    /// The segment ended cleanly; the log continues in the next one.
    Complete,
    /// The log ends at this offset (a record failed to verify there).
    Tail { offset: usize, fault: RecordFault },
}

impl<D: Disk> Wal<D> {
    /// Opens the WAL in `dir`, recovering it. Returns the WAL, ready for
    /// appends after the recovered tail, and every valid record in order.
    /// Holds the whole log in memory; the shard store uses [`Wal::recover`]
    /// to replay one segment at a time instead.
    pub async fn open(disk: D, dir: &Path, config: WalConfig) -> Result<(Self, Vec<Record>), WalOpenError> {
        let mut recovery = Self::recover(disk, dir, config).await?;
        let mut records = Vec::new();
        while let Some(segment) = recovery.next_segment().await? {
            records.extend(segment);
        }
        Ok((recovery.finish().await?, records))
    }

    /// Starts recovering the WAL in `dir`: lists and checks the segments.
    /// Read the records with [`Recovery::next_segment`] (one segment in
    /// memory at a time), then get the WAL from [`Recovery::finish`].
    pub async fn recover(disk: D, dir: &Path, config: WalConfig) -> Result<Recovery<D>, WalOpenError> {
        config.validate()?;
        disk.create_dir_all(dir).await?;
        let mut seqs = Vec::new();
        let mut free_pool = Vec::new();
        let mut free_next = 0;
        for name in disk.list(dir).await? {
            if let Some(seq) = parse_segment_name(&name) {
                seqs.push(seq);
            } else if let Some(n) = name.strip_prefix("wal-free-").and_then(|s| s.strip_suffix(".seg")) {
                free_next = free_next.max(n.parse::<u64>().unwrap_or(0) + 1);
                free_pool.push(dir.join(&name));
            }
        }
        seqs.sort_unstable();
        for pair in seqs.windows(2) {
            if let [a, b] = pair
                && a + 1 != *b
            {
                return Err(WalOpenError::MissingSegment { missing: a + 1, found: seqs.clone() });
            }
        }
        Ok(Recovery {
            disk,
            dir: dir.to_path_buf(),
            config,
            seqs,
            next: 0,
            batch_floor: Lsn(0),
            tail: None,
            tail_header_torn: false,
            cut: None,
            free_pool,
            free_next,
        })
    }

    /// Reads a whole segment file.
    async fn read_segment(disk: &D, dir: &Path, seq: u64) -> Result<(PathBuf, Vec<u8>), WalOpenError> {
        let path = dir.join(segment_name(seq));
        let file = disk.open(&path, false).await?;
        let size = usize::try_from(align_up(file.size().await?)).unwrap_or(usize::MAX);
        let image = file.read_at(0, size).await?;
        Ok((path, image))
    }

    fn scan_segment(
        config: &WalConfig,
        seq: u64,
        image: &[u8],
        start: usize,
        batch_floor: &mut Lsn,
        out: &mut Vec<Record>,
    ) -> Scan {
        let size = usize::try_from(config.segment_size_bytes).unwrap_or(usize::MAX);
        let mut pos = start;
        loop {
            if pos + RECORD_HEADER_BYTES > size {
                return Scan::Complete;
            }
            let block_left = IO_ALIGN_BYTES - pos % IO_ALIGN_BYTES;
            if block_left < RECORD_HEADER_BYTES {
                pos += block_left;
                continue;
            }
            let lsn = Lsn::new(seq, u32::try_from(pos).unwrap_or(u32::MAX));
            let (header, payload) = match parse_record(image, pos, lsn, config.payload_max_bytes.max(IO_ALIGN_BYTES)) {
                Ok(found) => found,
                Err(fault) => return Scan::Tail { offset: pos, fault },
            };
            let batch = Lsn(header.batch_lsn.get());
            if batch < *batch_floor {
                // Left over from a batch older than the one we just read: a
                // torn write's remains overwritten in part after recovery.
                return Scan::Tail { offset: pos, fault: RecordFault::WrongLsn };
            }
            *batch_floor = batch;
            pos += RECORD_HEADER_BYTES + payload.len();
            match header.kind {
                KIND_PADDING | KIND_CUT => {}
                KIND_SEGMENT_END => return Scan::Complete,
                kind => out.push(Record {
                    lsn,
                    meta: RecordMeta {
                        partition: header.partition.get(),
                        term: header.term.get(),
                        index: header.index.get(),
                        kind,
                    },
                    payload: payload.to_vec(),
                }),
            }
        }
    }

    /// Whether the record at `block` of a segment image is a cut marker
    /// naming `bad` (see [`KIND_CUT`]).
    fn names_cut(config: &WalConfig, seq: u64, image: &[u8], block: u64, bad: Lsn) -> bool {
        let lsn = Lsn::new(seq, u32::try_from(block).unwrap_or(u32::MAX));
        let at = usize::try_from(block).unwrap_or(usize::MAX);
        parse_record(image, at, lsn, config.payload_max_bytes.max(IO_ALIGN_BYTES)).is_ok_and(|(header, payload)| {
            header.kind == KIND_CUT && payload.try_into().ok().map(u64::from_le_bytes) == Some(bad.0)
        })
    }

    /// Looks, in one segment image, for a verified record at a 4 KiB boundary
    /// after `bad` that belongs to a batch that began after `bad`: proof
    /// that the write containing `bad` had completed, so `bad` is damage, not
    /// a torn tail. Returns its offset.
    fn later_batch_in(config: &WalConfig, bad: Lsn, seq: u64, image: &[u8]) -> Option<u64> {
        let size = config.segment_size_bytes;
        let first =
            if seq == bad.segment() { align_up(u64::from(bad.offset()) + 1) } else { u64::from(SEGMENT_HEADER_BYTES) };
        let mut block = first;
        while block + RECORD_HEADER_BYTES as u64 <= size {
            let lsn = Lsn::new(seq, u32::try_from(block).unwrap_or(u32::MAX));
            let at = usize::try_from(block).unwrap_or(usize::MAX);
            if let Ok((header, _)) = parse_record(image, at, lsn, config.payload_max_bytes.max(IO_ALIGN_BYTES))
                && header.batch_lsn.get() > bad.0
            {
                return Some(block);
            }
            block += IO_ALIGN_BYTES as u64;
        }
        None
    }

    /// Encodes a record into the pending batch. It is durable once
    /// [`Wal::wait_durable`] for the returned LSN resolves.
    pub fn submit(&self, meta: RecordMeta, payload: &[u8]) -> Result<Lsn, WalAppendError> {
        if meta.kind < USER_KIND_MIN {
            return Err(WalAppendError::ReservedKind(meta.kind));
        }
        self.submit_record(meta, payload)
    }

    /// `submit` for any kind, the WAL's own included.
    fn submit_record(&self, meta: RecordMeta, payload: &[u8]) -> Result<Lsn, WalAppendError> {
        if payload.len() > self.config.payload_max_bytes {
            return Err(WalAppendError::TooLarge { len: payload.len(), max: self.config.payload_max_bytes });
        }
        let mut st = self.state.borrow_mut();
        if let Some(reason) = &st.poisoned {
            return Err(WalAppendError::Poisoned(reason.clone()));
        }
        let record_len = RECORD_HEADER_BYTES + payload.len();
        let pending: usize = st.pending.iter().map(|b| b.bytes.len()).sum();
        if pending + record_len > self.config.pending_bytes_max {
            return Err(WalAppendError::Backlog { pending, max: self.config.pending_bytes_max });
        }
        let size = self.config.segment_size_bytes;
        let fits = |start: Lsn, used: usize| {
            let end = u64::from(start.offset()) + used as u64;
            end + header_skip(end) + record_len as u64 <= size
        };
        let reuse = st.pending.last().is_some_and(|b| fits(b.start, b.bytes.len()));
        if !reuse {
            let (seq, pos) = match st.pending.last() {
                Some(b) => (b.start.segment(), align_up(u64::from(b.start.offset()) + b.bytes.len() as u64)),
                None => (st.tail.segment(), u64::from(st.tail.offset())),
            };
            let here = Lsn::new(seq, u32::try_from(pos).expect("segment size fits u32"));
            let bytes = st.spare_buffers.pop().unwrap_or_default();
            let batch = if fits(here, 0) {
                Batch { start: here, bytes, seal: None }
            } else {
                let room = pos + RECORD_HEADER_BYTES as u64 <= size;
                let next = Lsn::new(seq + 1, SEGMENT_HEADER_BYTES);
                Batch { start: next, bytes, seal: room.then_some(here) }
            };
            st.pending.push(batch);
        }
        st.stats.records += 1;
        let batch = st.pending.last_mut().expect("a batch was ensured above");
        // A header never straddles a block boundary (recovery looks for the
        // next record at the next block): zero the rest of the block.
        let end = u64::from(batch.start.offset()) + batch.bytes.len() as u64;
        let skip = usize::try_from(header_skip(end)).expect("below a block");
        batch.bytes.resize(batch.bytes.len() + skip, 0);
        let offset = end + skip as u64;
        let lsn = Lsn::new(batch.start.segment(), u32::try_from(offset).expect("checked against segment size"));
        encode_record(&mut batch.bytes, lsn, batch.start, meta, payload);
        Ok(lsn)
    }

    /// Resolves once the record at `lsn` is durable (group commit: joins the
    /// write in flight or leads the next one).
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), WalAppendError> {
        self.wait_until(|durable| durable > lsn).await
    }

    /// Submits and waits: resolves when the record is durable.
    pub async fn append(&self, meta: RecordMeta, payload: &[u8]) -> Result<Lsn, WalAppendError> {
        let lsn = self.submit(meta, payload)?;
        self.wait_durable(lsn).await?;
        Ok(lsn)
    }

    /// Resolves once every record submitted before the call is durable.
    /// Like [`Self::wait_durable`] it joins a write in flight rather than
    /// starting a second one beside it: any task may call it at any time.
    pub async fn sync(&self) -> Result<(), WalAppendError> {
        let target = self.next_lsn();
        self.wait_until(|durable| durable >= target).await
    }

    /// Group commit: resolves once the durable LSN satisfies `done`, joining
    /// the write in flight or leading the next one.
    async fn wait_until(&self, done: impl Fn(Lsn) -> bool) -> Result<(), WalAppendError> {
        loop {
            let must_wait = {
                let st = self.state.borrow();
                if done(st.durable) {
                    return Ok(());
                }
                if let Some(reason) = &st.poisoned {
                    return Err(WalAppendError::Poisoned(reason.clone()));
                }
                st.flushing
            };
            if must_wait {
                self.notify.notified().await;
            } else {
                self.flush().await?;
            }
        }
    }

    /// Writes and syncs every pending record now. Only one runs at a time:
    /// callers outside go through [`Self::wait_durable`] or [`Self::sync`].
    async fn flush(&self) -> Result<(), WalAppendError> {
        {
            let mut st = self.state.borrow_mut();
            assert!(!st.flushing, "only one flush at a time");
            st.flushing = true;
        }
        // Gather: let the tasks that are ready to run submit their records
        // first, so that they share this write. Where a write blocks the
        // thread (keel-node's inline durable writes), a flush taken at once
        // would carry one record and hold back the rest, which then commit
        // one by one.
        futures_lite::future::yield_now().await;
        let taken = {
            let mut st = self.state.borrow_mut();
            if let Some(reason) = &st.poisoned {
                Err(WalAppendError::Poisoned(reason.clone()))
            } else {
                Ok(std::mem::take(&mut st.pending))
            }
        };
        let mut batches = match taken {
            Ok(batches) if !batches.is_empty() => batches,
            other => {
                // Nothing to write: let the writers that waited during the
                // gather look again.
                self.state.borrow_mut().flushing = false;
                self.notify.notify_all();
                return other.map(drop);
            }
        };
        for batch in &mut batches {
            pad_batch(batch);
        }
        let last = batches.last().expect("non-empty");
        let end = u64::from(last.start.offset()) + last.bytes.len() as u64;
        self.state.borrow_mut().tail = Lsn::new(last.start.segment(), u32::try_from(end).expect("within segment"));
        let began = std::time::Instant::now();
        let result = self.write_batches(&batches).await;
        let elapsed = began.elapsed();
        if elapsed >= SLOW_COMMIT {
            // Every waiting writer waited this long: say so, with the size.
            let bytes: usize = batches.iter().map(|b| b.bytes.len()).sum();
            tracing::info!(bytes, ms = elapsed.as_millis(), "slow WAL commit");
        }
        {
            let mut st = self.state.borrow_mut();
            st.flushing = false;
            match &result {
                Ok(()) => {
                    st.durable = st.tail;
                    st.stats.batches += batches.len() as u64;
                    st.stats.batch_bytes += batches.iter().map(|b| b.bytes.len() as u64).sum::<u64>();
                }
                Err(e) => st.poisoned = Some(e.to_string()),
            }
            for mut batch in batches {
                if st.spare_buffers.len() < SPARE_BUFFERS_MAX {
                    batch.bytes.clear();
                    st.spare_buffers.push(batch.bytes);
                }
            }
        }
        self.notify.notify_all();
        result
    }

    async fn write_batches(&self, batches: &[Batch]) -> Result<(), WalAppendError> {
        // The file written since its last sync, if any.
        let mut unsynced: Option<Rc<D::File>> = None;
        for (i, batch) in batches.iter().enumerate() {
            let active = self.state.borrow().active.clone();
            if let (Some(seal), Some((seq, file))) = (batch.seal, &active) {
                assert_eq!(seal.segment(), *seq, "seal goes into the active segment");
                let mut block = Vec::with_capacity(IO_ALIGN_BYTES);
                let meta = RecordMeta { partition: 0, term: 0, index: 0, kind: KIND_SEGMENT_END };
                encode_record(&mut block, seal, seal, meta, &[]);
                block.resize(IO_ALIGN_BYTES, 0);
                file.write_at(u64::from(seal.offset()), &block).await?;
                // The seal must be durable before the next segment holds
                // anything, or recovery would see a hole before it.
                file.sync_data().await?;
                unsynced = None;
            }
            let file = match active {
                Some((seq, file)) if seq == batch.start.segment() => file,
                _ => {
                    // So must the previous segment's records when there was
                    // no room for a seal (the segment is exactly full): a
                    // flush that ends in the next segment syncs only that
                    // one.
                    if let Some(previous) = unsynced.take() {
                        previous.sync_data().await?;
                    }
                    self.prepare_segment(batch.start.segment()).await?
                }
            };
            let at = u64::from(batch.start.offset());
            if i + 1 == batches.len() && unsynced.is_none() {
                // The commit's last write, with nothing else unsynced on its
                // file (the usual commit: one batch): write and sync it as
                // one request.
                file.write_durable_at(at, &batch.bytes).await?;
                return Ok(());
            }
            file.write_at(at, &batch.bytes).await?;
            unsynced = Some(file);
        }
        if let Some(file) = unsynced {
            file.sync_data().await?;
        }
        Ok(())
    }

    /// Creates (or recycles) segment `seq`, writes its header, and makes it
    /// durable, before any record is written into it.
    async fn prepare_segment(&self, seq: u64) -> Result<Rc<D::File>, WalAppendError> {
        let path = self.dir.join(segment_name(seq));
        let recycled = self.state.borrow_mut().free_pool.pop();
        if let Some(free) = &recycled {
            self.disk.rename(free, &path).await?;
        }
        let file = self.disk.open(&path, true).await?;
        let size = self.config.segment_size_bytes;
        let have = file.size().await?;
        if have < size {
            if self.config.zero_fill {
                let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES];
                let mut at = have - have % IO_ALIGN_BYTES as u64;
                while at < size {
                    let len = usize::try_from((size - at).min(ZERO_FILL_CHUNK_BYTES as u64)).unwrap_or(0);
                    file.write_at(at, zeros.get(..len).unwrap_or(&[])).await?;
                    at += len as u64;
                }
            } else {
                file.truncate(size).await?;
            }
        }
        file.write_at(0, &encode_segment_header(seq, size)).await?;
        file.sync_data().await?;
        self.disk.sync_dir(&self.dir).await?;
        let file = Rc::new(file);
        let mut st = self.state.borrow_mut();
        st.segments.insert(seq);
        st.active = Some((seq, Rc::clone(&file)));
        Ok(file)
    }

    /// Removes (or keeps for reuse) every whole segment below `watermark`
    /// except the active one. Returns how many were reclaimed. The caller
    /// guarantees that no record below the watermark is needed any more.
    pub async fn reclaim_below(&self, watermark: Lsn) -> Result<usize, WalAppendError> {
        let victims: Vec<u64> = {
            let st = self.state.borrow();
            let active = st.active.as_ref().map_or(st.tail.segment(), |(seq, _)| *seq);
            st.segments.iter().copied().filter(|&s| s < watermark.segment() && s < active).collect()
        };
        for &seq in &victims {
            self.retire_segment(seq).await?;
        }
        Ok(victims.len())
    }

    /// Whether the reuse pool is empty, so that the next segment would be
    /// zero-filled on the commit path: time for [`Self::replenish_pool`].
    #[must_use]
    pub fn wants_spare_segment(&self) -> bool {
        let st = self.state.borrow();
        self.config.zero_fill && st.free_pool.is_empty() && !st.replenishing && st.poisoned.is_none()
    }

    /// Makes one zero-filled spare segment in the reuse pool when it is
    /// empty; whether it made one. Meant for a background task: a new
    /// segment otherwise gets its 64 MiB of zeros while commits wait for
    /// the rotation. A spare left half-filled by a crash is found at the
    /// next open and finished when used.
    pub async fn replenish_pool(&self) -> Result<bool, WalAppendError> {
        let free = {
            let mut st = self.state.borrow_mut();
            if !self.config.zero_fill || !st.free_pool.is_empty() || st.replenishing || st.poisoned.is_some() {
                return Ok(false);
            }
            st.replenishing = true;
            st.free_next += 1;
            self.dir.join(format!("wal-free-{}.seg", st.free_next - 1))
        };
        let began = std::time::Instant::now();
        let made = async {
            let file = self.disk.open(&free, true).await?;
            let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES];
            let size = self.config.segment_size_bytes;
            let mut at = 0;
            while at < size {
                let len = usize::try_from((size - at).min(ZERO_FILL_CHUNK_BYTES as u64)).unwrap_or(0);
                file.write_at(at, zeros.get(..len).unwrap_or(&[])).await?;
                at += len as u64;
            }
            file.sync_data().await?;
            self.disk.sync_dir(&self.dir).await
        }
        .await;
        let mut st = self.state.borrow_mut();
        st.replenishing = false;
        made?;
        tracing::debug!(ms = began.elapsed().as_millis(), "spare WAL segment zero-filled: the reuse pool was empty");
        st.free_pool.push(free);
        Ok(true)
    }

    /// Moves a segment into the reuse pool or deletes it, durably, so that
    /// recovery never sees a gap (oldest first, one directory sync each).
    async fn retire_segment(&self, seq: u64) -> Result<(), IoError> {
        let path = self.dir.join(segment_name(seq));
        let pool_has_room = {
            let st = self.state.borrow();
            st.free_pool.len() < self.config.recycle_pool_max
        };
        if pool_has_room {
            let free_id = {
                let mut st = self.state.borrow_mut();
                st.free_next += 1;
                st.free_next - 1
            };
            let free = self.dir.join(format!("wal-free-{free_id}.seg"));
            self.disk.rename(&path, &free).await?;
            self.disk.sync_dir(&self.dir).await?;
            self.state.borrow_mut().free_pool.push(free);
        } else {
            // The pool is full: a segment the WAL needs again later is then
            // zero-filled anew (see `StoreConfig::new` on the pool's size).
            tracing::debug!(seq, "WAL segment deleted: the reuse pool is full");
            self.disk.remove(&path).await?;
            self.disk.sync_dir(&self.dir).await?;
        }
        self.state.borrow_mut().segments.remove(&seq);
        Ok(())
    }

    /// Everything before this LSN is durable.
    #[must_use]
    pub fn durable_lsn(&self) -> Lsn {
        self.state.borrow().durable
    }

    /// The LSN the next submitted record will (at the earliest) get.
    #[must_use]
    pub fn next_lsn(&self) -> Lsn {
        let st = self.state.borrow();
        st.pending.last().map_or(st.tail, |b| {
            Lsn::new(b.start.segment(), b.start.offset() + u32::try_from(b.bytes.len()).unwrap_or(u32::MAX))
        })
    }

    /// Segment sequence numbers present on disk.
    #[must_use]
    pub fn segments(&self) -> Vec<u64> {
        self.state.borrow().segments.iter().copied().collect()
    }

    /// Number of segment files present.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> WalStats {
        self.state.borrow().stats
    }

    /// The WAL directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn empty_state<F>(tail: Lsn) -> State<F> {
    State {
        active: None,
        tail,
        pending: Vec::new(),
        durable: tail,
        flushing: false,
        poisoned: None,
        segments: BTreeSet::new(),
        free_pool: Vec::new(),
        free_next: 0,
        replenishing: false,
        spare_buffers: Vec::new(),
        stats: WalStats::default(),
    }
}

/// Bytes to skip at `offset` before a record: the rest of the 4 KiB block
/// when a record header does not fit in it (docs/format/wal.md), else 0.
fn header_skip(offset: u64) -> u64 {
    let block_left = IO_ALIGN_BYTES as u64 - offset % IO_ALIGN_BYTES as u64;
    if block_left < RECORD_HEADER_BYTES as u64 { block_left } else { 0 }
}

/// Pads a batch to a 4 KiB boundary with a padding record (or zeros when the
/// gap is smaller than a record header), so the next batch starts on a fresh
/// block.
fn pad_batch(batch: &mut Batch) {
    let end = u64::from(batch.start.offset()) + batch.bytes.len() as u64;
    let gap = usize::try_from(align_up(end) - end).expect("gap below 4 KiB");
    if gap >= RECORD_HEADER_BYTES {
        let lsn = Lsn::new(batch.start.segment(), u32::try_from(end).expect("within segment"));
        let meta = RecordMeta { partition: 0, term: 0, index: 0, kind: KIND_PADDING };
        let zeros = [0u8; IO_ALIGN_BYTES];
        encode_record(&mut batch.bytes, lsn, batch.start, meta, zeros.get(..gap - RECORD_HEADER_BYTES).unwrap_or(&[]));
    } else {
        batch.bytes.resize(batch.bytes.len() + gap, 0);
    }
}

/// An open WAL being recovered: yields the records segment by segment. See
/// [`Wal::recover`].
#[derive(Debug)]
pub struct Recovery<D: Disk> {
    disk: D,
    dir: PathBuf,
    config: WalConfig,
    seqs: Vec<u64>,
    /// Index into `seqs` of the next segment to read.
    next: usize,
    batch_floor: Lsn,
    /// Where the next batch will start, once the end of the log is found.
    tail: Option<Lsn>,
    tail_header_torn: bool,
    /// The first record that failed to verify at the end of the log.
    cut: Option<Lsn>,
    free_pool: Vec<PathBuf>,
    free_next: u64,
}

impl<D: Disk> Recovery<D> {
    /// The verified records of the next segment, in order; `None` once the
    /// end of the log is reached.
    pub async fn next_segment(&mut self) -> Result<Option<Vec<Record>>, WalOpenError> {
        if self.tail.is_some() {
            return Ok(None);
        }
        let Some(&seq) = self.seqs.get(self.next) else {
            let next_seq = self.seqs.last().map_or(1, |s| s + 1);
            self.tail = Some(Lsn::new(next_seq, SEGMENT_HEADER_BYTES));
            return Ok(None);
        };
        self.next += 1;
        let is_last = self.next == self.seqs.len();
        let (path, image) = Wal::read_segment(&self.disk, &self.dir, seq).await?;
        match parse_segment_header(&image, seq) {
            Ok(size) if size != self.config.segment_size_bytes => {
                return Err(WalOpenError::SegmentSizeMismatch {
                    segment: path,
                    found: size,
                    configured: self.config.segment_size_bytes,
                });
            }
            Ok(_) => {}
            // A segment whose creation was torn: it held nothing yet.
            Err(_) if is_last => {
                self.tail = Some(Lsn::new(seq, SEGMENT_HEADER_BYTES));
                self.tail_header_torn = true;
                return Ok(Some(Vec::new()));
            }
            Err(reason) => {
                return Err(WalOpenError::Corrupt { segment: path, offset: 0, reason: reason.to_owned() });
            }
        }
        let mut records = Vec::new();
        let mut start = SEGMENT_HEADER_BYTES as usize;
        while let Scan::Tail { offset, fault } =
            Wal::<D>::scan_segment(&self.config, seq, &image, start, &mut self.batch_floor, &mut records)
        {
            let bad = Lsn::new(seq, u32::try_from(offset).unwrap_or(u32::MAX));
            let mut later = Wal::<D>::later_batch_in(&self.config, bad, seq, &image)
                .map(|o| (seq, o, Wal::<D>::names_cut(&self.config, seq, &image, o, bad)));
            // Later segments are read one at a time, only on this path.
            for &other in self.seqs.get(self.next..).unwrap_or(&[]) {
                if later.is_some() {
                    break;
                }
                let (_, other_image) = Wal::read_segment(&self.disk, &self.dir, other).await?;
                later = Wal::<D>::later_batch_in(&self.config, bad, other, &other_image)
                    .map(|o| (other, o, Wal::<D>::names_cut(&self.config, other, &other_image, o, bad)));
            }
            let next_seq = self.seqs.get(self.next).copied();
            match later {
                // An earlier recovery cut the log here and said so: the
                // damage is that torn tail, and the log goes on after it.
                Some((later_seq, later_offset, true)) if later_seq == seq => {
                    start = usize::try_from(later_offset).unwrap_or(usize::MAX);
                }
                Some((later_seq, _, true)) if Some(later_seq) == next_seq => break,
                Some((later_seq, later_offset, _)) => {
                    let reason = format!(
                        "record fails verification ({fault:?}) but a later batch is intact at segment {later_seq} offset {later_offset}"
                    );
                    return Err(WalOpenError::Corrupt { segment: path, offset: offset as u64, reason });
                }
                None => {
                    let next = align_up(offset as u64).min(self.config.segment_size_bytes);
                    self.tail = Some(Lsn::new(seq, u32::try_from(next).unwrap_or(u32::MAX)));
                    self.cut = Some(bad);
                    break;
                }
            }
        }
        Ok(Some(records))
    }

    /// Reads any remaining records (discarding them) and returns the WAL,
    /// ready for appends after the recovered tail.
    pub async fn finish(mut self) -> Result<Wal<D>, WalOpenError> {
        while self.next_segment().await?.is_some() {}
        let tail = self.tail.expect("next_segment sets the tail before returning None");
        let mut state = empty_state(tail);
        state.segments = self.seqs.iter().copied().collect();
        state.free_pool = self.free_pool;
        state.free_next = self.free_next;
        let wal = Wal {
            disk: self.disk,
            dir: self.dir,
            config: self.config,
            state: RefCell::new(state),
            notify: Notify::default(),
        };
        // Segments after the tail hold nothing durable, and a tail segment
        // whose header never became durable is recreated: recycle them.
        let torn = self.tail_header_torn;
        let stale: Vec<u64> =
            self.seqs.iter().copied().filter(|&s| s > tail.segment() || (s == tail.segment() && torn)).collect();
        for seq in stale {
            wal.retire_segment(seq).await?;
        }
        if wal.state.borrow().segments.contains(&tail.segment()) {
            let path = wal.dir.join(segment_name(tail.segment()));
            let file = wal.disk.open(&path, false).await?;
            wal.state.borrow_mut().active = Some((tail.segment(), Rc::new(file)));
        }
        // The remains of a torn write stay where they are (durable blocks are
        // never rewritten) and new batches start after them. Say so durably
        // before anything else is written, or the next recovery would take
        // those remains, followed by intact batches, for corruption.
        if let Some(bad) = self.cut {
            let meta = RecordMeta { partition: 0, term: 0, index: 0, kind: KIND_CUT };
            let cut = |e| WalOpenError::Cut(Box::new(e));
            wal.submit_record(meta, &bad.0.to_le_bytes()).map_err(cut)?;
            wal.flush().await.map_err(cut)?;
        }
        Ok(wal)
    }
}
