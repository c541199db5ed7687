//! Raft state in the shard WAL: the entries and hard states of every group
//! of a shard go into the one shard WAL, so that one group commit (one write
//! and one fdatasync) persists a whole [`super::ReadyBatch`].
//!
//! Three record kinds (byte layout in `docs/format/wal.md`):
//! - **18 raft entry**: header `partition`, `term`, `index`; payload
//!   `[u8 entry type][data]`.
//! - **19 raft hard state**: header `partition`, `term`, `index` = commit;
//!   payload `[u64 term][u64 vote][u64 commit]`, little-endian.
//! - **20 raft group state**: the configuration, the log replicas, whether
//!   this node is one of them, and where the log restarts after a snapshot
//!   ([`GroupState`]); written when it changes and again before WAL
//!   segments are reclaimed.
//!
//! Within a group's write the entries come first and the hard state last
//! (see [`super::GroupWrite::hard_state`]). Replaying the records in log
//! order rebuilds each group's log: an entry at an index already present
//! replaces it and everything after it (a new leader overwrote an
//! uncommitted tail), exactly as when it was first appended.

use std::collections::BTreeMap;

use raft::eraftpb::{Entry, EntryType, HardState};

use raft::eraftpb::ConfState;

use super::log::GroupLog;
use super::shard::{GroupState, GroupWrite};
use crate::io::Disk;
use crate::wal::{Lsn, Record, RecordMeta, USER_KIND_MIN, Wal, WalAppendError};

/// WAL record kind of a Raft log entry.
pub const KIND_RAFT_ENTRY: u8 = USER_KIND_MIN + 2;
/// WAL record kind of a Raft hard state.
pub const KIND_RAFT_HARD_STATE: u8 = USER_KIND_MIN + 3;
/// WAL record kind of a group's state (configuration, log replicas).
pub const KIND_RAFT_GROUP_STATE: u8 = USER_KIND_MIN + 4;

const GROUP_STATE_VERSION: u8 = 1;
/// Most members in one list of a group state.
const GROUP_MEMBERS_MAX: usize = 64;
const FLAG_LOG_ONLY: u8 = 1;
const FLAG_RESTART: u8 = 2;

fn put_list(out: &mut Vec<u8>, ids: &[u64]) {
    assert!(ids.len() <= GROUP_MEMBERS_MAX, "groups are small");
    out.push(u8::try_from(ids.len()).expect("bounded above"));
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

fn take_list(bytes: &mut &[u8]) -> Option<Vec<u64>> {
    let (&count, rest) = bytes.split_first()?;
    if usize::from(count) > GROUP_MEMBERS_MAX {
        return None;
    }
    let (ids, rest) = rest.split_at_checked(usize::from(count) * 8)?;
    *bytes = rest;
    Some(ids.chunks_exact(8).filter_map(|c| c.try_into().ok().map(u64::from_le_bytes)).collect())
}

/// A group state's record payload: `[u8 version 1][u8 flags: 1 log only,
/// 2 restart][u64 restart index][u64 restart term]`, then five lists
/// `[u8 count][count × u64]` (voters, learners, outgoing voters, next
/// learners, log replicas) and `[u8 auto_leave]`.
#[must_use]
pub fn encode_group_state(state: &GroupState) -> Vec<u8> {
    let flags = u8::from(state.log_only) * FLAG_LOG_ONLY + u8::from(state.restart.is_some()) * FLAG_RESTART;
    let (index, term) = state.restart.unwrap_or_default();
    let mut out = vec![GROUP_STATE_VERSION, flags];
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    let cs = &state.conf_state;
    for list in [&cs.voters, &cs.learners, &cs.voters_outgoing, &cs.learners_next, &state.log_replicas] {
        put_list(&mut out, list);
    }
    out.push(u8::from(cs.auto_leave));
    out
}

/// Reads [`encode_group_state`]'s form.
pub fn decode_group_state(bytes: &[u8]) -> Option<GroupState> {
    let (&version, rest) = bytes.split_first()?;
    let (&flags, rest) = rest.split_first()?;
    if version != GROUP_STATE_VERSION || flags & !(FLAG_LOG_ONLY | FLAG_RESTART) != 0 {
        return None;
    }
    let (index, rest) = rest.split_at_checked(8)?;
    let (term, mut rest) = rest.split_at_checked(8)?;
    let index = u64::from_le_bytes(index.try_into().ok()?);
    let term = u64::from_le_bytes(term.try_into().ok()?);
    let mut lists = Vec::with_capacity(5);
    for _ in 0..5 {
        lists.push(take_list(&mut rest)?);
    }
    let (&auto_leave, rest) = rest.split_first()?;
    if !rest.is_empty() || auto_leave > 1 {
        return None;
    }
    let mut lists = lists.into_iter();
    let mut next = || lists.next().unwrap_or_default();
    let conf_state = ConfState {
        voters: next(),
        learners: next(),
        voters_outgoing: next(),
        learners_next: next(),
        auto_leave: auto_leave == 1,
        ..ConfState::default()
    };
    Some(GroupState {
        log_only: flags & FLAG_LOG_ONLY != 0,
        restart: (flags & FLAG_RESTART != 0).then_some((index, term)),
        conf_state,
        log_replicas: next(),
    })
}

/// The context of a configuration change: the group's log replicas once it
/// is applied, `[u8 count][count × u64]`.
#[must_use]
pub fn encode_log_replicas(ids: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + ids.len() * 8);
    put_list(&mut out, ids);
    out
}

/// Reads a configuration change's context; None when it carries none (the
/// empty change that leaves a joint configuration).
#[must_use]
pub fn decode_log_replicas(context: &[u8]) -> Option<Vec<u64>> {
    let mut bytes = context;
    let ids = take_list(&mut bytes)?;
    bytes.is_empty().then_some(ids)
}

/// The partitions whose newest group state says this node is a log replica
/// of them (found among recovered records).
#[must_use]
pub fn log_only_groups(records: &[Record]) -> BTreeMap<u64, GroupState> {
    let mut latest = BTreeMap::new();
    for record in records.iter().filter(|r| r.meta.kind == KIND_RAFT_GROUP_STATE) {
        if let Some(state) = decode_group_state(&record.payload) {
            latest.insert(record.meta.partition, state);
        }
    }
    latest.retain(|_, state| state.log_only);
    latest
}

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

/// A hard-state record's payload: term, vote and commit, each a u64 LE.
fn encode_hard_state(term: u64, vote: u64, commit: u64) -> [u8; HARD_STATE_BYTES] {
    let mut bytes = [0_u8; HARD_STATE_BYTES];
    for (slot, value) in bytes.chunks_exact_mut(8).zip([term, vote, commit]) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
    bytes
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
        if let Some(state) = &write.state {
            let (index, term) = state.restart.unwrap_or_default();
            let meta = RecordMeta { partition: write.partition, term, index, kind: KIND_RAFT_GROUP_STATE };
            last = Some(wal.submit(meta, &encode_group_state(state))?);
        }
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
            let meta =
                RecordMeta { partition: write.partition, term: hs.term, index: hs.commit, kind: KIND_RAFT_HARD_STATE };
            last = Some(wal.submit(meta, &encode_hard_state(hs.term, hs.vote, hs.commit))?);
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
                    // A log restarted after its B-tree checkpoint starts at
                    // the checkpoint's term; hard states logged before the
                    // checkpoint are older and commit nothing after it: they
                    // are superseded, not a term going back. (A hard state of
                    // a lower term always commits below the checkpoint, whose
                    // entry was committed under a term at least its own.)
                    if commit < log.first_index() {
                        continue;
                    }
                    return Err(error("hard state term goes back"));
                }
                if commit > log.last_index() {
                    return Err(error("hard state commits beyond the log"));
                }
                log.set_hard_state(HardState { term, vote, commit, ..HardState::default() });
            }
            KIND_RAFT_GROUP_STATE => {
                let state = decode_group_state(&record.payload).ok_or_else(|| error("unreadable group state"))?;
                if let Some((index, term)) = state.restart {
                    log.replay_restart(index, term);
                }
                log.set_conf_state(state.conf_state);
                log.set_log_replicas(state.log_replicas);
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
    fn hard_states_from_before_the_checkpoint_are_skipped_and_a_later_lower_term_is_refused() {
        let disk = SimDisk::new(2);
        let dir = Path::new("/wal");
        let hs = |term, commit| Some(HardState { term, vote: 1, commit, ..HardState::default() });
        let write = |hard_state| GroupWrite { partition: 7, state: None, entries: Vec::new(), hard_state };
        block_on(async {
            let (wal, _) = Wal::open(disk.clone(), dir, config()).await.expect("open");
            // Logged while the term was 1, before a checkpoint at (5, term 2).
            let lsn = submit(&wal, &[write(hs(1, 3)), write(hs(2, 5))], |_, _, _| {}).expect("submit");
            wal.wait_durable(lsn.expect("written")).await.expect("durable");
        });
        let records = block_on(Wal::open(disk.clone(), dir, config())).expect("reopen").1;
        let restarted = || GroupLog::with_learners(&[1, 2, 3], &[], 5, 2);
        let mut logs: BTreeMap<u64, GroupLog> = [(7, restarted())].into_iter().collect();
        rebuild(&records, &mut logs).expect("the older hard state is superseded by the checkpoint");
        assert_eq!(logs.get(&7).map(|l| (l.hard_state().term, l.hard_state().commit)), Some((2, 5)));
        // A lower term that commits past the checkpoint is damage.
        block_on(async {
            let (wal, _) = Wal::open(disk.clone(), dir, config()).await.expect("open");
            let lsn = submit(&wal, &[write(hs(1, 7))], |_, _, _| {}).expect("submit");
            wal.wait_durable(lsn.expect("written")).await.expect("durable");
        });
        let records = block_on(Wal::open(disk, dir, config())).expect("reopen").1;
        let mut logs: BTreeMap<u64, GroupLog> = [(7, restarted())].into_iter().collect();
        let refused = rebuild(&records, &mut logs).expect_err("a term going back after the checkpoint");
        assert_eq!(refused.reason, "hard state term goes back");
    }

    #[test]
    fn raft_records_round_trip_through_the_wal_with_tail_replacement() {
        let disk = SimDisk::new(1);
        let dir = Path::new("/wal");
        block_on(async {
            let (wal, _) = Wal::open(disk.clone(), dir, config()).await.expect("open");
            let hs = |term, commit| Some(HardState { term, vote: 2, commit, ..HardState::default() });
            let writes = [
                GroupWrite {
                    partition: 7,
                    state: None,
                    entries: vec![entry(1, 1, b"a"), entry(2, 1, b"b")],
                    hard_state: hs(1, 1),
                },
                GroupWrite { partition: 9, state: None, entries: vec![entry(1, 1, b"x")], hard_state: None },
                GroupWrite { partition: 7, state: None, entries: vec![entry(2, 2, b"c")], hard_state: hs(2, 2) },
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
    fn group_states_round_trip_and_restart_the_log() {
        let state = GroupState {
            log_only: true,
            restart: Some((40, 3)),
            conf_state: ConfState { voters: vec![1, 3, 4], learners: vec![5], ..ConfState::default() },
            log_replicas: vec![4],
        };
        let bytes = encode_group_state(&state);
        assert_eq!(decode_group_state(&bytes), Some(state.clone()));
        for len in 0..bytes.len() {
            assert_eq!(decode_group_state(bytes.get(..len).unwrap_or_default()), None, "length {len}");
        }
        assert_eq!(decode_log_replicas(&encode_log_replicas(&[4, 7])), Some(vec![4, 7]));
        assert_eq!(decode_log_replicas(&[]), None);
        let record = |kind, index, payload: Vec<u8>| Record {
            lsn: Lsn::new(1, 4096),
            meta: RecordMeta { partition: 2, term: 3, index, kind },
            payload,
        };
        let records = [
            record(KIND_RAFT_ENTRY, 1, vec![0]),
            record(KIND_RAFT_GROUP_STATE, 40, bytes),
            record(KIND_RAFT_ENTRY, 41, vec![0]),
        ];
        assert_eq!(log_only_groups(&records).keys().copied().collect::<Vec<_>>(), vec![2]);
        let mut logs: BTreeMap<u64, GroupLog> = [(2, GroupLog::new(&[1, 2, 3]))].into_iter().collect();
        rebuild(&records, &mut logs).expect("rebuild");
        let log = logs.get(&2).expect("group 2");
        assert_eq!((log.first_index(), log.last_index()), (41, 41));
        assert_eq!(log.conf_state().voters, vec![1, 3, 4]);
        assert_eq!(log.log_replicas(), &[4]);
    }

    #[test]
    fn a_log_restart_from_before_the_checkpoint_does_not_move_the_log_back() {
        // As found on a node (2026-12-07): a snapshot install restarted the
        // log at 10; entries 11-13 followed and were applied; the B-tree was
        // then checkpointed at 13, so the log now starts after 13. The old
        // restart record must not move it back below its commit index.
        let state = GroupState {
            log_only: false,
            restart: Some((10, 2)),
            conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
            log_replicas: Vec::new(),
        };
        let record = |kind, index, payload: Vec<u8>| Record {
            lsn: Lsn::new(1, 4096),
            meta: RecordMeta { partition: 2, term: 2, index, kind },
            payload,
        };
        let hard_state = |commit: u64| encode_hard_state(2, 0, commit).to_vec();
        let records = [
            record(KIND_RAFT_ENTRY, 1, vec![0]),
            record(KIND_RAFT_GROUP_STATE, 10, encode_group_state(&state)),
            record(KIND_RAFT_HARD_STATE, 10, hard_state(10)),
            record(KIND_RAFT_ENTRY, 11, vec![0]),
            record(KIND_RAFT_ENTRY, 12, vec![0]),
            record(KIND_RAFT_ENTRY, 13, vec![0]),
            record(KIND_RAFT_HARD_STATE, 13, hard_state(13)),
            record(KIND_RAFT_ENTRY, 14, vec![0]),
        ];
        let mut logs: BTreeMap<u64, GroupLog> =
            [(2, GroupLog::with_learners(&[1, 2, 3], &[], 13, 2))].into_iter().collect();
        rebuild(&records, &mut logs).expect("the WAL is a legal one");
        let log = logs.get(&2).expect("group 2");
        assert_eq!((log.first_index(), log.last_index(), log.hard_state().commit), (14, 14, 13));
        // A restart at or after the log's start still restarts it there,
        // dropping the entries read before it.
        let later = GroupState { restart: Some((14, 3)), ..state };
        let mut logs: BTreeMap<u64, GroupLog> =
            [(2, GroupLog::with_learners(&[1, 2, 3], &[], 13, 2))].into_iter().collect();
        let records =
            [record(KIND_RAFT_ENTRY, 14, vec![0]), record(KIND_RAFT_GROUP_STATE, 14, encode_group_state(&later))];
        rebuild(&records, &mut logs).expect("rebuild");
        let log = logs.get(&2).expect("group 2");
        assert_eq!((log.first_index(), log.last_index(), log.hard_state().commit), (15, 14, 14));
        // A stale restart read after entries past the log's start drops them
        // too (they came before the snapshot that restarted the log).
        let mut logs: BTreeMap<u64, GroupLog> =
            [(2, GroupLog::with_learners(&[1, 2, 3], &[], 13, 2))].into_iter().collect();
        let stale = GroupState { restart: Some((10, 2)), ..later };
        let records =
            [record(KIND_RAFT_ENTRY, 14, vec![0]), record(KIND_RAFT_GROUP_STATE, 10, encode_group_state(&stale))];
        rebuild(&records, &mut logs).expect("rebuild");
        let log = logs.get(&2).expect("group 2");
        assert_eq!((log.first_index(), log.last_index(), log.hard_state().commit), (14, 13, 13));
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
        assert_eq!(
            check(&[record(KIND_RAFT_HARD_STATE, 2, 0, &encode_hard_state(0, 0, 2))]),
            Err("hard state commits beyond the log")
        );
    }
}
