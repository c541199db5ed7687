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
//! Entries are kept from index 1: the log is not compacted yet. Compaction
//! comes with snapshots (a replica rebuilt from a snapshot of the B-tree);
//! until then [`Storage::snapshot`] answers "temporarily unavailable", which
//! raft-rs never asks for while every entry is still here.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// A replication group's log and persistent Raft state.
#[derive(Debug, Clone)]
pub struct GroupLog {
    hard_state: HardState,
    conf_state: ConfState,
    /// `entries[0]` has index 1.
    entries: Vec<Entry>,
}

impl GroupLog {
    /// An empty log of a group whose members are `voters` (Raft peer ids,
    /// which are node ids). Every member starts from the same configuration,
    /// so none needs a configuration-change entry to begin.
    #[must_use]
    pub fn new(voters: &[u64]) -> Self {
        assert!(!voters.is_empty(), "a group needs at least one voter");
        let conf_state = ConfState { voters: voters.to_vec(), ..ConfState::default() };
        Self { hard_state: HardState::default(), conf_state, entries: Vec::new() }
    }

    /// Appends entries that follow on from index `entries[0].index - 1`,
    /// replacing any existing entries from that index on (a new leader
    /// overwriting an uncommitted tail). Entries must be consecutive.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(first.index >= 1, "Raft indexes start at 1");
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
        let keep = usize::try_from(first.index - 1).expect("log index fits in memory");
        self.entries.truncate(keep);
        for (entry, expected) in entries.iter().zip(first.index..) {
            assert_eq!(entry.index, expected, "appended entries are consecutive");
            self.entries.push(entry.clone());
        }
    }

    /// Replaces the persistent state (term, vote, commit).
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        assert!(hard_state.term >= self.hard_state.term, "a node's term never goes back");
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
        u64::try_from(self.entries.len()).expect("usize fits in u64")
    }

    /// The entry at `index`, if present.
    #[must_use]
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let at = usize::try_from(index.checked_sub(1)?).ok()?;
        self.entries.get(at)
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
        if low == 0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(high <= self.last_index() + 1, "entries [{low}, {high}) beyond the last index {}", self.last_index());
        let from = usize::try_from(low - 1).expect("log index fits in memory");
        let to = usize::try_from(high - 1).expect("log index fits in memory");
        let mut entries = self.entries.get(from..to).map(<[Entry]>::to_vec).unwrap_or_default();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == 0 {
            return Ok(0);
        }
        self.entry(index).map(|e| e.term).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(GroupLog::last_index(self))
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
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
    fn entries_are_limited_by_size_but_never_empty() {
        let mut log = GroupLog::new(&[1]);
        let mut big = entry(1, 1);
        big.data = vec![0_u8; 100].into();
        log.append(&[big.clone(), entry(2, 1)]);
        let got = log.entries(1, 3, Some(1), GetEntriesContext::empty(false)).unwrap_or_default();
        assert_eq!(got.len(), 1);
    }
}
