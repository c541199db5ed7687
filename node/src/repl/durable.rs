//! Raft state in the shard WAL: the entries and hard states of every group
//! of a shard go into the one shard WAL, so that one group commit (one write
//! and one fdatasync) persists a whole [`super::ReadyBatch`].
//!
//! Two record kinds (byte layout in `docs/format/wal.md`):
//! - **18 raft entry**: header `partition`, `term`, `index`; payload
//!   `[u8 entry type][data]`.
//! - **19 raft hard state**: header `partition`, `term`, `index` = commit;
//!   payload `[u64 term][u64 vote][u64 commit]`, little-endian.
//!
//! Within a group's write the entries come first and the hard state last
//! (see [`super::GroupWrite::hard_state`]). Replaying the records in log
//! order rebuilds each group's log: an entry at an index already present
//! replaces it and everything after it (a new leader overwrote an
//! uncommitted tail), exactly as when it was first appended.

use std::collections::BTreeMap;

use raft::eraftpb::{Entry, EntryType, HardState};

use super::log::GroupLog;
use super::shard::GroupWrite;
use crate::io::Disk;
use crate::wal::{Lsn, Record, RecordMeta, USER_KIND_MIN, Wal, WalAppendError};

/// WAL record kind of a Raft log entry.
pub const KIND_RAFT_ENTRY: u8 = USER_KIND_MIN + 2;
/// WAL record kind of a Raft hard state.
pub const KIND_RAFT_HARD_STATE: u8 = USER_KIND_MIN + 3;

const HARD_STATE_BYTES: usize = 24;

/// A recovered record that cannot be part of a valid Raft log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rebuild Raft log of partition {partition} from WAL record at {lsn}: {reason}")]
pub struct RebuildError {
    /// The group.
    pub partition: u64,
    /// Where the record is.
    pub lsn: Lsn,
    /// What is wrong.
    pub reason: &'static str,
}

fn entry_type_byte(entry_type: EntryType) -> u8 {
    match entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn entry_type_of(byte: u8) -> Option<EntryType> {
    match byte {
        0 => Some(EntryType::EntryNormal),
        1 => Some(EntryType::EntryConfChange),
        2 => Some(EntryType::EntryConfChangeV2),
        _ => None,
    }
}

/// Submits the batch's writes to the WAL (entries, then the hard state, of
/// each group), telling `logged` where each entry went (partition, index,
/// LSN). Returns the LSN to wait for with [`Wal::wait_durable`], or `None`
/// when there was nothing to write.
pub fn submit<D: Disk>(
    wal: &Wal<D>,
    writes: &[GroupWrite],
    mut logged: impl FnMut(u64, u64, Lsn),
) -> Result<Option<Lsn>, WalAppendError> {
    let mut last = None;
    let mut payload = Vec::new();
    for write in writes {
        for entry in &write.entries {
            payload.clear();
            payload.push(entry_type_byte(entry.get_entry_type()));
            payload.extend_from_slice(entry.get_data());
            let meta =
                RecordMeta { partition: write.partition, term: entry.term, index: entry.index, kind: KIND_RAFT_ENTRY };
            let lsn = wal.submit(meta, &payload)?;
            logged(write.partition, entry.index, lsn);
            last = Some(lsn);
        }
        if let Some(hs) = &write.hard_state {
            let mut bytes = [0_u8; HARD_STATE_BYTES];
            for (slot, value) in bytes.chunks_exact_mut(8).zip([hs.term, hs.vote, hs.commit]) {
                slot.copy_from_slice(&value.to_le_bytes());
            }
            let meta =
                RecordMeta { partition: write.partition, term: hs.term, index: hs.commit, kind: KIND_RAFT_HARD_STATE };
            last = Some(wal.submit(meta, &bytes)?);
        }
    }
    Ok(last)
}

/// Replays recovered WAL records (in log order) into the groups' logs.
/// Records of other kinds, of partitions not in `logs`, and entries at or
/// below a log's compaction point (already in the B-tree) are skipped.
pub fn rebuild(records: &[Record], logs: &mut BTreeMap<u64, GroupLog>) -> Result<(), RebuildError> {
    for record in records {
        let partition = record.meta.partition;
        let Some(log) = logs.get_mut(&partition) else { continue };
        let error = |reason| RebuildError { partition, lsn: record.lsn, reason };
        match record.meta.kind {
            KIND_RAFT_ENTRY => {
                let (&kind, data) = record.payload.split_first().ok_or_else(|| error("empty entry record"))?;
                let entry_type = entry_type_of(kind).ok_or_else(|| error("unknown entry type"))?;
                let index = record.meta.index;
                if index != 0 && index < log.first_index() {
                    continue;
                }
                if index == 0 || index > log.last_index() + 1 {
                    return Err(error("entry index leaves a gap in the log"));
                }
                // Raft appends only above its commit index, and the commit
                // index logged before this record was never ahead of it.
                if index <= log.hard_state().commit {
                    return Err(error("entry would replace a committed entry"));
                }
                let mut entry = Entry { index, term: record.meta.term, data: data.to_vec().into(), ..Entry::default() };
                entry.set_entry_type(entry_type);
                log.append(std::slice::from_ref(&entry));
            }
            KIND_RAFT_HARD_STATE => {
                let words: Vec<u64> =
                    record.payload.chunks_exact(8).filter_map(|c| c.try_into().ok().map(u64::from_le_bytes)).collect();
                let &[term, vote, commit] = words.as_slice() else {
                    return Err(error("hard state record is not 24 bytes"));
                };
                if record.payload.len() != HARD_STATE_BYTES {
                    return Err(error("hard state record is not 24 bytes"));
                }
                if term < log.hard_state().term {
                    return Err(error("hard state term goes back"));
                }
                if commit > log.last_index() {
                    return Err(error("hard state commits beyond the log"));
                }
                log.set_hard_state(HardState { term, vote, commit, ..HardState::default() });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use futures_lite::future::block_on;

    use super::*;
    use crate::io::sim::SimDisk;
    use crate::wal::WalConfig;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, data: data.to_vec().into(), ..Entry::default() }
    }

    fn config() -> WalConfig {
        WalConfig {
            segment_size_bytes: 64 * 1024,
            payload_max_bytes: 16 * 1024,
            zero_fill: false,
            ..WalConfig::default()
        }
    }

    #[test]
    fn raft_records_round_trip_through_the_wal_with_tail_replacement() {
        let disk = SimDisk::new(1);
        let dir = Path::new("/wal");
        block_on(async {
            let (wal, _) = Wal::open(disk.clone(), dir, config()).await.expect("open");
            let hs = |term, commit| Some(HardState { term, vote: 2, commit, ..HardState::default() });
            let writes = [
                GroupWrite { partition: 7, entries: vec![entry(1, 1, b"a"), entry(2, 1, b"b")], hard_state: hs(1, 1) },
                GroupWrite { partition: 9, entries: vec![entry(1, 1, b"x")], hard_state: None },
                GroupWrite { partition: 7, entries: vec![entry(2, 2, b"c")], hard_state: hs(2, 2) },
            ];
            let lsn = submit(&wal, &writes, |_, _, _| {}).expect("submit").expect("something to write");
            wal.wait_durable(lsn).await.expect("durable");
        });
        disk.crash();
        let records = block_on(Wal::open(disk, dir, config())).expect("reopen").1;
        let mut logs: BTreeMap<u64, GroupLog> = [7, 9].into_iter().map(|p| (p, GroupLog::new(&[1, 2, 3]))).collect();
        rebuild(&records, &mut logs).expect("rebuild");
        let seven = logs.get(&7).expect("group 7");
        assert_eq!(seven.last_index(), 2);
        assert_eq!(seven.entry(2).map(|e| (e.term, e.get_data().to_vec())), Some((2, b"c".to_vec())));
        assert_eq!((seven.hard_state().term, seven.hard_state().vote, seven.hard_state().commit), (2, 2, 2));
        assert_eq!(logs.get(&9).map(GroupLog::last_index), Some(1));
    }

    #[test]
    fn rebuild_refuses_records_that_break_the_log() {
        let record = |kind, index, term, payload: &[u8]| Record {
            lsn: Lsn::new(1, 4096),
            meta: RecordMeta { partition: 1, term, index, kind },
            payload: payload.to_vec(),
        };
        let check = |records: &[Record]| {
            let mut logs: BTreeMap<u64, GroupLog> = [(1, GroupLog::new(&[1]))].into_iter().collect();
            rebuild(records, &mut logs).map_err(|e| e.reason)
        };
        assert_eq!(check(&[record(KIND_RAFT_ENTRY, 2, 1, &[0])]), Err("entry index leaves a gap in the log"));
        assert_eq!(check(&[record(KIND_RAFT_ENTRY, 1, 1, &[])]), Err("empty entry record"));
        assert_eq!(check(&[record(KIND_RAFT_ENTRY, 1, 1, &[9])]), Err("unknown entry type"));
        assert_eq!(check(&[record(KIND_RAFT_HARD_STATE, 0, 1, &[0; 23])]), Err("hard state record is not 24 bytes"));
        let mut commits_two = [0_u8; 24];
        commits_two[16] = 2;
        assert_eq!(
            check(&[record(KIND_RAFT_HARD_STATE, 2, 0, &commits_two)]),
            Err("hard state commits beyond the log")
        );
    }
}
