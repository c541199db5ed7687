//! WAL behaviour on the simulated disk: recovery, torn tails, corruption,
//! rotation, reclaim and group commit.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use futures_lite::future::block_on;
use keel_node::io::sim::SimDisk;
use keel_node::wal::{Lsn, Record, RecordMeta, USER_KIND_MIN, Wal, WalAppendError, WalConfig, WalOpenError};

fn config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 64 * 1024,
        payload_max_bytes: 16 * 1024,
        recycle_pool_max: 2,
        zero_fill: true,
        ..WalConfig::default()
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/data/wal")
}

fn meta(index: u64) -> RecordMeta {
    RecordMeta { partition: index % 3, term: 1, index, kind: USER_KIND_MIN }
}

fn payload(index: u64) -> Vec<u8> {
    let len = usize::try_from(index * 37 % 3000).unwrap_or(0);
    (0..len).map(|i| u8::try_from((i as u64 + index) % 251).unwrap_or(0)).collect()
}

fn open(disk: &SimDisk) -> Result<(Wal<SimDisk>, Vec<Record>), WalOpenError> {
    block_on(Wal::open(disk.clone(), &dir(), config()))
}

/// Appends records `from..to`, each acknowledged before the next.
fn append_all(wal: &Wal<SimDisk>, from: u64, to: u64) -> Vec<Lsn> {
    (from..to).map(|i| block_on(wal.append(meta(i), &payload(i))).expect("append")).collect()
}

fn check_records(records: &[Record], count: u64) {
    assert_eq!(records.len() as u64, count);
    for (i, record) in (0..count).zip(records) {
        assert_eq!(record.meta, meta(i));
        assert_eq!(record.payload, payload(i), "payload of record {i}");
    }
}

fn segment_path(seq: u64) -> PathBuf {
    dir().join(format!("wal-{seq:016x}.seg"))
}

#[test]
fn wal_recovers_every_acknowledged_record_across_segments() {
    let disk = SimDisk::new(1);
    let (wal, records) = open(&disk).expect("open empty");
    assert!(records.is_empty());
    append_all(&wal, 0, 200);
    assert!(wal.segments().len() > 3, "rotation happened: {:?}", wal.segments());
    drop(wal);
    disk.crash();
    let (wal, records) = open(&disk).expect("reopen");
    check_records(&records, 200);
    // Appending continues after the recovered tail.
    append_all(&wal, 200, 260);
    drop(wal);
    disk.crash();
    let (_, records) = open(&disk).expect("reopen again");
    check_records(&records, 260);
}

#[test]
fn wal_recovery_discards_torn_tail() {
    for seed in 0..200 {
        let disk = SimDisk::new(seed);
        let (wal, _) = open(&disk).expect("open");
        append_all(&wal, 0, 20);
        // Crash somewhere inside the next appends (writes and syncs).
        disk.crash_at_op(seed % 7);
        let mut acked = 20;
        for i in 20..40 {
            if block_on(wal.append(meta(i), &payload(i))).is_err() {
                break;
            }
            acked += 1;
        }
        drop(wal);
        disk.crash();
        let (wal, records) = open(&disk).unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
        assert!(records.len() as u64 >= acked, "seed {seed}: lost acknowledged records");
        assert!(records.len() as u64 <= acked + 1, "seed {seed}: invented records");
        check_records(&records, records.len() as u64);
        // And the log stays usable after a torn tail.
        let n = records.len() as u64;
        append_all(&wal, n, n + 5);
        drop(wal);
        disk.crash();
        let (_, records) = open(&disk).expect("reopen after more appends");
        check_records(&records, n + 5);
    }
}

#[test]
fn wal_refuses_corruption_before_the_tail() {
    let disk = SimDisk::new(3);
    let (wal, _) = open(&disk).expect("open");
    let lsns = append_all(&wal, 0, 30);
    drop(wal);
    let victim = lsns.get(5).copied().expect("30 records");
    disk.flip_bit(&segment_path(victim.segment()), u64::from(victim.offset()) + 60, 3);
    match open(&disk) {
        Err(WalOpenError::Corrupt { segment, offset, .. }) => {
            assert_eq!(segment, segment_path(victim.segment()));
            assert_eq!(offset, u64::from(victim.offset()));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn wal_detects_misdirected_write_as_corruption() {
    let disk = SimDisk::new(4);
    let (wal, _) = open(&disk).expect("open");
    append_all(&wal, 0, 10);
    // The next batch lands one block too far; the block it should have
    // filled stays empty while later batches are intact.
    disk.misdirect_next_write(4096);
    append_all(&wal, 10, 20);
    drop(wal);
    assert!(matches!(open(&disk), Err(WalOpenError::Corrupt { .. })), "misdirected write not detected");
}

#[test]
fn wal_rejects_a_damaged_segment_header_in_the_middle() {
    let disk = SimDisk::new(5);
    let (wal, _) = open(&disk).expect("open");
    append_all(&wal, 0, 120);
    drop(wal);
    disk.flip_bit(&segment_path(1), 20, 0);
    match open(&disk) {
        Err(WalOpenError::Corrupt { segment, offset: 0, .. }) => assert_eq!(segment, segment_path(1)),
        other => panic!("expected Corrupt header, got {other:?}"),
    }
}

#[test]
fn wal_missing_middle_segment_is_an_error() {
    let disk = SimDisk::new(6);
    let (wal, _) = open(&disk).expect("open");
    append_all(&wal, 0, 120);
    drop(wal);
    block_on(keel_node::io::Disk::remove(&disk, &segment_path(2))).expect("remove");
    assert!(matches!(open(&disk), Err(WalOpenError::MissingSegment { missing: 2, .. })));
}

#[test]
fn wal_reclaims_and_recycles_segments_below_the_watermark() {
    let disk = SimDisk::new(7);
    let (wal, _) = open(&disk).expect("open");
    let lsns = append_all(&wal, 0, 200);
    let before = wal.segments();
    let keep_from = lsns.get(150).copied().expect("200 records");
    let reclaimed = block_on(wal.reclaim_below(keep_from)).expect("reclaim");
    assert!(reclaimed > 0);
    assert_eq!(wal.segments().first().copied(), Some(keep_from.segment()));
    // Recycled files are reused for new segments without confusing recovery.
    append_all(&wal, 200, 400);
    drop(wal);
    disk.crash();
    let (_, records) = open(&disk).expect("reopen");
    let first = records.first().expect("records").meta.index;
    assert!(first <= 150, "record 150 must still be there, first is {first}");
    assert_eq!(records.last().expect("records").meta.index, 399);
    assert!(before.len() > 1);
}

#[test]
fn wal_poisons_itself_after_a_failed_commit() {
    let disk = SimDisk::new(8);
    let (wal, _) = open(&disk).expect("open");
    append_all(&wal, 0, 3);
    // A one-batch commit is one synchronized write; it fails.
    disk.fail_after(0);
    let failed = block_on(wal.append(meta(3), &payload(3)));
    assert!(matches!(failed, Err(WalAppendError::Io(_))), "got {failed:?}");
    let next = block_on(wal.append(meta(4), &payload(4)));
    assert!(matches!(next, Err(WalAppendError::Poisoned(_))), "got {next:?}");
}

/// The usual commit (one batch in one segment) is one synchronized write:
/// one round trip to the device instead of a write and then an fdatasync.
#[test]
fn wal_commits_a_batch_as_one_synchronized_write() {
    let disk = SimDisk::new(10);
    let (wal, _) = open(&disk).expect("open");
    append_all(&wal, 0, 2);
    let before = disk.stats();
    append_all(&wal, 2, 7);
    let after = disk.stats();
    assert_eq!(after.durable_writes - before.durable_writes, 5, "one synchronized write per commit");
    assert_eq!(after.writes - before.writes, 5, "and no other write");
    assert_eq!(after.syncs, before.syncs, "and no fdatasync");
    drop(wal);
    disk.crash();
    let (_, records) = open(&disk).expect("reopen");
    check_records(&records, 7);
}

#[test]
fn wal_group_commit_puts_concurrent_appends_in_one_batch() {
    let disk = SimDisk::new(9);
    let (wal, _) = open(&disk).expect("open");
    let before = wal.stats();
    // Submit 50 records, then wait for all of them: one write, one sync.
    let lsns: Vec<Lsn> = (0..50).map(|i| wal.submit(meta(i), &payload(i)).expect("submit")).collect();
    block_on(async {
        for lsn in &lsns {
            wal.wait_durable(*lsn).await.expect("durable");
        }
    });
    let after = wal.stats();
    assert_eq!(after.records - before.records, 50);
    assert!(after.batches - before.batches <= 2, "50 records took {} batches", after.batches - before.batches);
}

/// Appends started side by side (each submit, then wait) share one write:
/// the first to lead a commit lets the others submit before it takes the
/// batch. Without that gather a write that completes at once (here the
/// simulated disk's; in keel-node an inline durable write, which blocks the
/// shard) would carry only its leader's record, and the rest would commit
/// one by one.
#[test]
fn wal_commit_gathers_the_appends_of_tasks_ready_beside_its_leader() {
    let disk = SimDisk::new(11);
    let (wal, _) = open(&disk).expect("open");
    append_all(&wal, 0, 1);
    let before = (wal.stats(), disk.stats());
    let payloads: Vec<Vec<u8>> = (1..11).map(payload).collect();
    let appends = (1..11).zip(&payloads).map(|(i, bytes)| wal.append(meta(i), bytes));
    let lsns: Vec<Lsn> =
        block_on(futures_util::future::join_all(appends)).into_iter().collect::<Result<_, _>>().expect("append");
    let after = (wal.stats(), disk.stats());
    assert_eq!(after.0.records - before.0.records, 10);
    assert_eq!(after.0.batches - before.0.batches, 1, "ten appends ready together, one batch");
    assert_eq!(after.1.durable_writes - before.1.durable_writes, 1, "and one synchronized write");
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "in the order they were submitted");
    drop(wal);
    disk.crash();
    let (_, records) = open(&disk).expect("reopen");
    check_records(&records, 11);
}

#[test]
fn wal_rejects_oversized_and_reserved_records() {
    let disk = SimDisk::new(10);
    let (wal, _) = open(&disk).expect("open");
    let big = vec![0u8; 16 * 1024 + 1];
    assert!(matches!(wal.submit(meta(0), &big), Err(WalAppendError::TooLarge { .. })));
    let reserved = RecordMeta { kind: 2, ..meta(0) };
    assert!(matches!(wal.submit(reserved, b"x"), Err(WalAppendError::ReservedKind(2))));
}

#[test]
fn wal_refuses_submissions_beyond_its_backlog_limit() {
    let disk = SimDisk::new(11);
    let config = WalConfig { pending_bytes_max: 8 * 1024, ..config() };
    let (wal, _) = block_on(Wal::open(disk.clone(), &dir(), config)).expect("open");
    let record = vec![1u8; 2000];
    let mut accepted = Vec::new();
    let refused = loop {
        match wal.submit(meta(accepted.len() as u64), &record) {
            Ok(lsn) => accepted.push(lsn),
            Err(e) => break e,
        }
    };
    assert!(matches!(refused, WalAppendError::Backlog { max: 8192, .. }), "got {refused:?}");
    assert_eq!(accepted.len(), 3, "3 records of 2056 bytes fit in 8 KiB, a 4th does not");
    // Once the backlog is written, submissions are accepted again.
    block_on(wal.wait_durable(*accepted.last().expect("some accepted"))).expect("durable");
    assert!(wal.submit(meta(3), &record).is_ok());
}

#[test]
fn wal_refuses_to_open_with_another_segment_size() {
    let disk = SimDisk::new(12);
    let (wal, _) = open(&disk).expect("open");
    append_all(&wal, 0, 5);
    drop(wal);
    let other = WalConfig { segment_size_bytes: 128 * 1024, ..config() };
    let reopened = block_on(Wal::open(disk.clone(), &dir(), other));
    assert!(
        matches!(reopened, Err(WalOpenError::SegmentSizeMismatch { found: 65_536, configured: 131_072, .. })),
        "got {:?}",
        reopened.map(|(_, r)| r.len())
    );
}

/// Many records in one batch, with every distance of a record's end to the
/// next 4 KiB block boundary from 0 to 80 bytes: a header that would not fit
/// in what is left of a block starts at the next block (docs/format/wal.md),
/// and recovery finds every record. (The writer once packed headers across
/// block boundaries while recovery skipped to the next block: a batch of
/// several records then read as corrupt, or as a torn tail that dropped
/// acknowledged records.)
#[test]
fn wal_recovers_batches_whose_record_headers_meet_block_boundaries() {
    const HEADER: usize = 56;
    for gap in 0..=80usize {
        let disk = SimDisk::new(gap as u64);
        let (wal, _) = open(&disk).expect("create");
        // The segment header is one block; the first record ends `gap`
        // bytes before the next block, the rest are small and varied.
        let first = vec![7u8; 4096 - HEADER - gap];
        let mut payloads = vec![first];
        payloads.extend((0..40u8).map(|i| vec![i; usize::from(i) * 13 % 300]));
        let lsns: Vec<Lsn> =
            payloads.iter().enumerate().map(|(i, p)| wal.submit(meta(i as u64), p).expect("submit")).collect();
        block_on(wal.wait_durable(*lsns.last().expect("records"))).expect("durable");
        assert_eq!(wal.stats().batches, 1, "gap {gap}: one batch");
        drop(wal);
        disk.crash();
        let (_, records) = open(&disk).unwrap_or_else(|e| panic!("gap {gap}: reopen: {e}"));
        assert_eq!(records.len(), payloads.len(), "gap {gap}: every record recovered");
        for ((record, p), lsn) in records.iter().zip(&payloads).zip(&lsns) {
            assert_eq!(&record.payload, p, "gap {gap}");
            assert_eq!(record.lsn, *lsn, "gap {gap}: the LSN submit returned");
        }
    }
}

/// A spare segment made ahead of time (in the background) is what the next
/// rotation uses, so the commit path renames a zero-filled file instead of
/// zero-filling a new one; a spare torn by a crash is finished when used.
#[test]
fn wal_rotates_into_a_spare_segment_made_ahead() {
    use keel_node::io::Disk;
    for crash_during_spare in [false, true] {
        let disk = SimDisk::new(21);
        let (wal, _) = open(&disk).expect("create");
        assert!(wal.wants_spare_segment(), "a new log has no spare");
        if crash_during_spare {
            // Power fails while the spare is made: its zeros (or the file
            // itself, before the directory sync) may be lost.
            disk.crash_at_op(2);
            assert!(block_on(wal.replenish_pool()).is_err());
            drop(wal);
            disk.crash();
        } else {
            assert!(block_on(wal.replenish_pool()).expect("spare"));
            assert!(!wal.wants_spare_segment());
            assert!(!block_on(wal.replenish_pool()).expect("one spare is enough"), "the pool has one");
            drop(wal);
        }
        let (wal, _) = open(&disk).expect("reopen");
        let names = block_on(disk.list(&dir())).expect("list");
        let spares = names.iter().filter(|n| n.starts_with("wal-free-")).count();
        assert!(spares == 1 || (crash_during_spare && spares == 0), "{names:?}");
        // Enough records to fill the first segment and rotate.
        let count = 60;
        append_all(&wal, 0, count);
        assert!(wal.segment_count() >= 2, "rotated");
        assert!(wal.wants_spare_segment(), "the spare was used");
        let names = block_on(disk.list(&dir())).expect("list");
        assert!(!names.iter().any(|n| n.starts_with("wal-free-")), "{names:?}");
        drop(wal);
        disk.crash();
        let (_, records) = open(&disk).expect("reopen after rotation");
        check_records(&records, count);
    }
}

/// A flush whose records fill a segment exactly (no room for a seal) and go
/// on in the next one syncs both segments before it acknowledges anything.
/// (It used to sync only the last: the full segment's records were lost to
/// a crash after they were acknowledged.)
#[test]
fn wal_flush_that_fills_a_segment_exactly_syncs_it_before_the_next() {
    // A crash keeps, loses or tears each unsynced write at random: 20 seeds.
    for seed in 0..20 {
        fill_a_segment_exactly_then_crash(seed);
    }
}

fn fill_a_segment_exactly_then_crash(seed: u64) {
    let disk = SimDisk::new(seed);
    let (wal, _) = open(&disk).expect("create");
    // Segment 1 holds 64 KiB − the 4 KiB header = 15 blocks: five records of
    // three blocks each (header + payload) fill it to the last byte.
    let full = vec![9u8; 3 * 4096 - 56];
    let mut lsns: Vec<Lsn> = (0..5).map(|i| wal.submit(meta(i), &full).expect("submit")).collect();
    lsns.push(wal.submit(meta(5), b"next segment").expect("submit"));
    assert_eq!(lsns[4].segment(), 1);
    assert_eq!(lsns[5].segment(), 2, "the sixth record starts the next segment");
    block_on(wal.wait_durable(lsns[5])).expect("durable");
    drop(wal);
    disk.crash();
    let (_, records) = open(&disk).unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
    assert_eq!(records.len(), 6, "seed {seed}: every acknowledged record survives");
    assert_eq!(records[5].payload, b"next segment");
}

/// A torn batch can leave its first records intact and the rest damaged in
/// the middle of a block. Recovery cuts the log there and new batches start
/// at the next block, after the damage; the next recovery must read past
/// that damage (the cut marker says what it is) instead of calling it
/// corruption. Found by the cluster simulator (seed 10007587 of the busy run).
#[test]
fn wal_recovers_again_after_cutting_a_torn_tail_in_the_middle_of_a_block() {
    let disk = SimDisk::new(9);
    let (wal, _) = open(&disk).expect("open");
    append_all(&wal, 0, 3);
    let first = wal.submit(meta(3), &payload(3)).expect("submit");
    let second = wal.submit(meta(4), &payload(4)).expect("submit");
    block_on(wal.wait_durable(second)).expect("durable");
    assert_eq!(first.segment(), second.segment());
    assert_ne!(second.offset() % 4096, 0, "the second record sits in the middle of a block");
    drop(wal);
    // What a torn write leaves: the second record's sector never landed.
    disk.poke(&segment_path(second.segment()), u64::from(second.offset()) + 8, &[0xab; 16]);
    disk.crash();
    let (wal, records) = open(&disk).expect("the first recovery cuts the torn tail");
    check_records(&records, 4);
    append_all(&wal, 4, 10);
    drop(wal);
    disk.crash();
    let (wal, records) = open(&disk).expect("the second recovery reads past the cut");
    check_records(&records, 10);
    // Damage before a batch that does not name it is still corruption.
    append_all(&wal, 10, 12);
    drop(wal);
    let victim = records.get(6).map(|r| r.lsn).expect("ten records");
    disk.flip_bit(&segment_path(victim.segment()), u64::from(victim.offset()) + 60, 1);
    assert!(matches!(open(&disk), Err(WalOpenError::Corrupt { .. })));
}
