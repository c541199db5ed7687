//! One replication group's Raft log, as raft-rs reads it through its
//! [`Storage`] trait.
//!
//! The log here is the in-memory image of what the node has made durable (or
//! is making durable: raft-rs requires that entries be readable from storage
//! before their `Ready` is handed back, so the shell appends them here when it
//! submits their write). After a restart the shell rebuilds it from its
//! durable records with [`GroupLog::append`] and [`GroupLog::set_hard_state`],
//! in the order they were written.
//!
//! The log starts after a compaction point (`first_index - 1`, with its
//! term): a replica that restarts keeps only the entries after its B-tree's
//! last checkpoint (those before are in the tree and their WAL records may
//! be reclaimed), and a running replica drops entries its tree holds once
//! its peers no longer need them ([`GroupLog::compact`]). A peer that needs
//! an entry from before the compaction point needs a snapshot of the B-tree;
//! snapshots of the B-tree are not streamed yet, so [`Storage::snapshot`]
//! answers "temporarily unavailable" and raft-rs tries again later — except
//! for a log replica, which holds no B-tree: its snapshot is the metadata
//! alone (where the log restarts and the configuration there).

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// A replication group's log and persistent Raft state.
#[derive(Debug, Clone)]
pub struct GroupLog {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index of the last compacted entry (0: none); `entries[0]` has index
    /// `offset + 1`.
    offset: u64,
    /// Term of the entry at `offset`.
    offset_term: u64,
    entries: Vec<Entry>,
    /// Voters that keep only the log (no B-tree); see `repl` docs.
    log_replicas: Vec<u64>,
    /// The last applied entry (index, term): where `conf_state` holds.
    applied: (u64, u64),
}

impl GroupLog {
    /// An empty log of a group whose members are `voters` (Raft peer ids,
    /// which are node ids). Every member starts from the same configuration,
    /// so none needs a configuration-change entry to begin.
    #[must_use]
    pub fn new(voters: &[u64]) -> Self {
        assert!(!voters.is_empty(), "a group needs at least one voter");
        Self::after(voters, 0, 0)
    }

    /// An empty log that continues after the entry at `index` with `term`
    /// (a replica whose B-tree checkpoint holds every entry up to it). The
    /// commit index starts there: applied entries are committed.
    #[must_use]
    pub fn after(voters: &[u64], index: u64, term: u64) -> Self {
        Self::with_learners(voters, &[], index, term)
    }

    /// [`Self::after`] for a group that also has learners (members that
    /// receive and apply every entry but neither vote nor campaign).
    #[must_use]
    pub fn with_learners(voters: &[u64], learners: &[u64], index: u64, term: u64) -> Self {
        assert!(index == 0 || term > 0, "entries after the first are of a term ≥ 1");
        assert!(learners.iter().all(|l| !voters.contains(l)), "a learner is not a voter");
        let conf_state = ConfState { voters: voters.to_vec(), learners: learners.to_vec(), ..ConfState::default() };
        let hard_state = HardState { term, commit: index, ..HardState::default() };
        Self {
            hard_state,
            conf_state,
            offset: index,
            offset_term: term,
            entries: Vec::new(),
            log_replicas: Vec::new(),
            applied: (index, term),
        }
    }

    /// The group's configuration (as of the last applied change).
    #[must_use]
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Sets the configuration: after a change is applied, or as recovered.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// The voters that keep only the log.
    #[must_use]
    pub fn log_replicas(&self) -> &[u64] {
        &self.log_replicas
    }

    /// Sets the log replicas (with the configuration change that made them).
    pub fn set_log_replicas(&mut self, mut log_replicas: Vec<u64>) {
        log_replicas.sort_unstable();
        log_replicas.dedup();
        self.log_replicas = log_replicas;
    }

    /// The state machine applied up to `index` (for snapshots of a log
    /// replica: the configuration holds as of the last applied entry).
    pub fn set_applied(&mut self, index: u64) {
        let term = if index == self.offset { Some(self.offset_term) } else { self.entry(index).map(|e| e.term) };
        if let Some(term) = term {
            self.applied = (index, term);
        }
    }

    /// A log restart read back from the WAL. One at or below where the log
    /// already starts (its B-tree was checkpointed past it later) drops the
    /// entries read so far but does not move the log back: that would put
    /// the log's start below its commit index.
    pub fn replay_restart(&mut self, index: u64, term: u64) {
        if index < self.offset {
            let (offset, offset_term) = (self.offset, self.offset_term);
            self.restart_after(offset, offset_term);
        } else {
            self.restart_after(index, term);
        }
    }

    /// Restarts the log after a snapshot at `index` (`term`): every entry is
    /// dropped; the entries that follow come after it.
    pub fn restart_after(&mut self, index: u64, term: u64) {
        self.entries.clear();
        self.offset = index;
        self.offset_term = term;
        self.applied = (index, term);
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(term);
    }

    /// Drops the entries up to `index` (they are in the B-tree, and no peer
    /// needs them from this log any more). Never beyond the commit index.
    pub fn compact(&mut self, index: u64) {
        if index <= self.offset {
            return;
        }
        assert!(
            index <= self.hard_state.commit,
            "compacting uncommitted entries ({index} > {})",
            self.hard_state.commit
        );
        assert!(index <= self.last_index(), "compacting beyond the log");
        let term = self.entry(index).map(|e| e.term).expect("index is in the log");
        let drop = usize::try_from(index - self.offset).expect("log index fits in memory");
        self.entries.drain(..drop);
        self.offset = index;
        self.offset_term = term;
    }

    /// Index of the first entry kept (the one after the compaction point).
    #[must_use]
    pub fn first_index(&self) -> u64 {
        self.offset + 1
    }

    /// Appends entries that follow on from index `entries[0].index - 1`,
    /// replacing any existing entries from that index on (a new leader
    /// overwriting an uncommitted tail). Entries must be consecutive.
    /// Entries at or below the compaction point are committed and already
    /// held; they are skipped.
    pub fn append(&mut self, entries: &[Entry]) {
        let skip = entries.iter().take_while(|e| e.index <= self.offset).count();
        let entries = entries.get(skip..).unwrap_or_default();
        let Some(first) = entries.first() else { return };
        assert!(first.index > self.offset, "Raft indexes start at 1");
        assert!(
            first.index <= self.last_index() + 1,
            "append leaves a gap: {} after {}",
            first.index,
            self.last_index()
        );
        // Committed entries never change: any that are appended again (a
        // retransmission, or records replayed after a restart) must match.
        for entry in entries.iter().take_while(|e| e.index <= self.hard_state.commit) {
            if let Some(existing) = self.entry(entry.index) {
                assert_eq!(existing.term, entry.term, "committed entry {} would be replaced", entry.index);
            }
        }
        let keep = usize::try_from(first.index - 1 - self.offset).expect("log index fits in memory");
        self.entries.truncate(keep);
        for (entry, expected) in entries.iter().zip(first.index..) {
            assert_eq!(entry.index, expected, "appended entries are consecutive");
            self.entries.push(entry.clone());
        }
    }

    /// Replaces the persistent state (term, vote, commit). A commit index
    /// below the compaction point (a hard state logged before the entries it
    /// reached were checkpointed) is raised to it.
    pub fn set_hard_state(&mut self, mut hard_state: HardState) {
        assert!(hard_state.term >= self.hard_state.term, "a node's term never goes back");
        hard_state.commit = hard_state.commit.max(self.offset);
        self.hard_state = hard_state;
    }

    /// The persistent state.
    #[must_use]
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Index of the last entry (0 when empty).
    #[must_use]
    pub fn last_index(&self) -> u64 {
        self.offset + u64::try_from(self.entries.len()).expect("usize fits in u64")
    }

    /// The entry at `index`, if present (not compacted).
    #[must_use]
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let at = usize::try_from(index.checked_sub(self.offset + 1)?).ok()?;
        self.entries.get(at)
    }

    /// Entries kept in memory.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Storage for GroupLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.offset {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(high <= self.last_index() + 1, "entries [{low}, {high}) beyond the last index {}", self.last_index());
        let from = usize::try_from(low - 1 - self.offset).expect("log index fits in memory");
        let to = usize::try_from(high - 1 - self.offset).expect("log index fits in memory");
        let mut entries = self.entries.get(from..to).map(<[Entry]>::to_vec).unwrap_or_default();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.offset {
            return Ok(self.offset_term);
        }
        if index < self.offset {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entry(index).map(|e| e.term).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(GroupLog::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(GroupLog::last_index(self))
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        if !self.log_replicas.contains(&to) {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        // A log replica needs no data: its log restarts after the last
        // applied entry, with the configuration as of that entry (every
        // change up to it is applied; later ones are in the entries that
        // follow, which the leader holds: nothing above `applied` is
        // compacted).
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        (meta.index, meta.term) = self.applied;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Entry::default() }
    }

    #[test]
    fn append_replaces_a_conflicting_tail() {
        let mut log = GroupLog::new(&[1, 2, 3]);
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        log.append(&[entry(2, 2)]);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.term(2).ok(), Some(2));
        assert_eq!(log.term(3).ok(), None);
        let got = log.entries(1, 3, None, GetEntriesContext::empty(false)).unwrap_or_default();
        assert_eq!(got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn a_log_after_a_checkpoint_starts_there_and_compacts() {
        let mut log = GroupLog::after(&[1, 2, 3], 10, 3);
        assert_eq!((GroupLog::first_index(&log), log.last_index(), log.hard_state().commit), (11, 10, 10));
        assert_eq!(log.term(10).ok(), Some(3));
        assert!(matches!(log.term(9), Err(raft::Error::Store(StorageError::Compacted))));
        // Replayed records at or below the checkpoint are skipped.
        log.append(&[entry(9, 3), entry(10, 3), entry(11, 3), entry(12, 4)]);
        assert_eq!((log.last_index(), log.len()), (12, 2));
        log.set_hard_state(HardState { term: 4, commit: 5, ..HardState::default() });
        assert_eq!(log.hard_state().commit, 10, "a commit index below the checkpoint is raised to it");
        log.set_hard_state(HardState { term: 4, commit: 12, ..HardState::default() });
        log.compact(11);
        assert_eq!((GroupLog::first_index(&log), log.term(11).ok(), log.len()), (12, Some(3), 1));
        assert!(log.entries(11, 13, None, GetEntriesContext::empty(false)).is_err());
        assert_eq!(log.entries(12, 13, None, GetEntriesContext::empty(false)).map(|e| e.len()).ok(), Some(1));
    }

    #[test]
    fn entries_are_limited_by_size_but_never_empty() {
        let mut log = GroupLog::new(&[1]);
        let mut big = entry(1, 1);
        big.data = vec![0_u8; 100].into();
        log.append(&[big.clone(), entry(2, 1)]);
        let got = log.entries(1, 3, Some(1), GetEntriesContext::empty(false)).unwrap_or_default();
        assert_eq!(got.len(), 1);
    }
}
