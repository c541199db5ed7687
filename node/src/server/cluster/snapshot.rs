//! Snapshots of a partition's B-tree, streamed from a full replica to a log
//! replica, which becomes a full replica with them (`docs/format/snapshot.md`).
//!
//! The stream is logical: the source scans its tree in key order, a chunk at
//! a time, holding its engine only for each scan, so its writes go on
//! meanwhile. Every chunk carries the position (index, term) the source had
//! applied when it was read; the receiver keeps the first one. Its tree then
//! holds, for every key, a value the key had at some moment between that
//! position and the end of the stream; replaying the log from the first
//! position on (every entry writes or deletes whole items) brings every key
//! to its value at the end. The log replica has that log already (it never
//! compacts), which is why the rebuild needs nothing else from the source.
//!
//! A stream that breaks resumes after the last key received (up to
//! [`ATTEMPTS_MAX`] times); the positions argument holds across resumes
//! because the first position is kept. Each chunk's bytes are covered by
//! the frame's crc32c, and a running crc32c over every item of the
//! session, which the receiver checks, catches a lost or repeated chunk.
//! Both ends run in the shard's low-share task queue, so foreground
//! latency stays flat.

use std::ops::Bound;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use keel_wire::frame::{FRAME_BODY_MAX_BYTES, FrameDecoder, encode_frame};

use super::super::{READ_CHUNK_BYTES, Shard};
use super::{PEER_CONNECT_TIMEOUT, durable};
use crate::btree::page::{KEY_MAX_BYTES, VALUE_MAX_BYTES};
use crate::btree::{Applied, Direction};
use crate::replica::ENTRY_KIND_ROLES;

/// First bytes of a snapshot request.
pub(super) const REQUEST_MAGIC: &[u8; 4] = b"KSNQ";
/// First bytes of a chunk.
const CHUNK_MAGIC: &[u8; 4] = b"KSNC";
/// First bytes of "the rebuild is done" (receiver → leader).
pub(super) const DONE_MAGIC: &[u8; 4] = b"KSND";
/// Items read from the tree per scan.
const CHUNK_ITEMS_MAX: usize = 256;
/// A chunk stops growing past this many bytes of items.
const CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Connection attempts of one rebuild (resuming after the last key).
pub(super) const ATTEMPTS_MAX: u32 = 3;
/// The building tree is checkpointed (its pages written) past this many
/// dirty bytes, so a big partition does not sit in memory.
const BUILD_DIRTY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How often the shard looks for log replicas to rebuild.
const REBUILD_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a chunk may take to arrive.
const CHUNK_WAIT_MAX: Duration = Duration::from_secs(30);

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
}

/// `[KSNQ][u64 partition][u64 node][u16 after length][after key]`.
#[derive(Debug)]
pub(super) struct Request {
    partition: u64,
    node: u64,
    after: Option<Vec<u8>>,
}

impl Request {
    fn encode(&self) -> Vec<u8> {
        let after = self.after.as_deref().unwrap_or_default();
        let mut out = REQUEST_MAGIC.to_vec();
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.extend_from_slice(&self.node.to_le_bytes());
        out.extend_from_slice(&u16::try_from(after.len()).expect("keys are short").to_le_bytes());
        out.extend_from_slice(after);
        out
    }

    pub(super) fn decode(body: &[u8]) -> Result<Self, &'static str> {
        let partition = u64_at(body, 4).ok_or("short snapshot request")?;
        let node = u64_at(body, 12).ok_or("short snapshot request")?;
        let len = body.get(20..22).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes).ok_or("short request")?;
        let after = body.get(22..).ok_or("short snapshot request")?;
        if after.len() != usize::from(len) || after.len() > KEY_MAX_BYTES {
            return Err("snapshot request key length");
        }
        Ok(Self { partition, node, after: (!after.is_empty()).then(|| after.to_vec()) })
    }
}

/// `[KSND][u64 partition][u64 node]`.
#[derive(Debug)]
pub(super) struct Done {
    partition: u64,
    node: u64,
}

impl Done {
    fn encode(&self) -> Vec<u8> {
        let mut out = DONE_MAGIC.to_vec();
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.extend_from_slice(&self.node.to_le_bytes());
        out
    }

    pub(super) fn decode(body: &[u8]) -> Result<Self, &'static str> {
        match (u64_at(body, 4), u64_at(body, 12), body.len()) {
            (Some(partition), Some(node), 20) => Ok(Self { partition, node }),
            _ => Err("malformed rebuild notice"),
        }
    }
}

/// A chunk: `[KSNC][u64 partition][u64 index][u64 term][u8 last][u32 count]
/// [u32 running crc32c]` then `count × ([u16 key length][key][u32 value
/// length][value])`.
struct Chunk {
    partition: u64,
    index: u64,
    term: u64,
    last: bool,
    crc: u32,
    items: Vec<(Vec<u8>, Vec<u8>)>,
}

const CHUNK_HEADER_BYTES: usize = 4 + 8 + 8 + 8 + 1 + 4 + 4;

fn encode_chunk(partition: u64, at: Applied, last: bool, crc: u32, items: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(CHUNK_HEADER_BYTES + items.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>());
    out.extend_from_slice(CHUNK_MAGIC);
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&at.index.to_le_bytes());
    out.extend_from_slice(&at.term.to_le_bytes());
    out.push(u8::from(last));
    out.extend_from_slice(&u32::try_from(items.len()).expect("bounded by the scan").to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    for (key, value) in items {
        out.extend_from_slice(&u16::try_from(key.len()).expect("keys are short").to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&u32::try_from(value.len()).expect("values are bounded").to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The item bytes a running crc covers.
fn items_crc(mut crc: u32, items: &[(Vec<u8>, Vec<u8>)]) -> u32 {
    for (key, value) in items {
        crc = crc32c::crc32c_append(crc, key);
        crc = crc32c::crc32c_append(crc, value);
    }
    crc
}

fn decode_chunk(body: &[u8]) -> Result<Chunk, &'static str> {
    if !body.starts_with(CHUNK_MAGIC) {
        return Err("not a snapshot chunk");
    }
    let short = "short snapshot chunk";
    let partition = u64_at(body, 4).ok_or(short)?;
    let index = u64_at(body, 12).ok_or(short)?;
    let term = u64_at(body, 20).ok_or(short)?;
    let last = match body.get(28) {
        Some(0) => false,
        Some(1) => true,
        _ => return Err("snapshot chunk flag"),
    };
    let word = |at: usize| body.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let count = usize::try_from(word(29).ok_or(short)?).map_err(|_| short)?;
    let crc = word(33).ok_or(short)?;
    if count > CHUNK_ITEMS_MAX {
        return Err("too many items in a snapshot chunk");
    }
    let mut rest = body.get(CHUNK_HEADER_BYTES..).ok_or(short)?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, after) = rest.split_at_checked(2).ok_or(short)?;
        let len = usize::from(u16::from_le_bytes(len.try_into().map_err(|_| short)?));
        let (key, after) = after.split_at_checked(len).ok_or(short)?;
        let (vlen, after) = after.split_at_checked(4).ok_or(short)?;
        let vlen = usize::try_from(u32::from_le_bytes(vlen.try_into().map_err(|_| short)?)).map_err(|_| short)?;
        let (value, after) = after.split_at_checked(vlen).ok_or(short)?;
        if key.is_empty() || key.len() > KEY_MAX_BYTES || value.len() > VALUE_MAX_BYTES {
            return Err("snapshot item outside the limits");
        }
        items.push((key.to_vec(), value.to_vec()));
        rest = after;
    }
    if !rest.is_empty() {
        return Err("trailing bytes in a snapshot chunk");
    }
    Ok(Chunk { partition, index, term, last, crc, items })
}

/// Takes over a peer connection that asked for a snapshot and streams it in
/// the low-share queue.
pub(super) async fn serve_in_background(shard: Rc<Shard>, stream: TcpStream, request: Request) -> Result<(), String> {
    let Some(queue) = shard.background_queue.get() else { return Err("no background queue".into()) };
    let task = glommio::spawn_local_into(
        async move {
            if let Err(e) = serve(&shard, stream, request).await {
                tracing::warn!(error = %e, "snapshot stream ended");
            }
        },
        queue,
    )
    .map_err(|e| e.to_string())?;
    task.detach();
    Ok(())
}

/// One scan of a snapshot: items after a key, and the position applied
/// when they were read.
#[derive(Debug)]
pub(in crate::server) struct ChunkRead {
    items: Vec<(Vec<u8>, Vec<u8>)>,
    at: Applied,
}

/// Reads the next items of a snapshot on the shard that hosts the partition.
pub(in crate::server) async fn read_chunk(
    shard: &Shard,
    partition: u64,
    after: Option<&[u8]>,
) -> Result<ChunkRead, String> {
    let engine = shard.engine.read().await.map_err(|e| e.to_string())?;
    let store = engine.store();
    let at = store.applied(partition).ok_or("this node holds no B-tree of the partition")?;
    let lo = after.map_or(Bound::Unbounded, Bound::Excluded);
    let items = store
        .scan(partition, lo, Bound::Unbounded, Direction::Forward, CHUNK_ITEMS_MAX)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ChunkRead { items, at })
}

async fn serve(shard: &Shard, mut stream: TcpStream, request: Request) -> Result<(), String> {
    tracing::info!(partition = format!("{:#x}", request.partition), to = request.node, "streaming a snapshot");
    let mut after = request.after;
    let mut crc = 0_u32;
    let mut out = Vec::new();
    // The connection landed on any shard; the partition's own shard reads.
    let owner = crate::engine::Placement { shard: shard.index, shards: shard.shards }.shard_of(request.partition);
    loop {
        let read = if owner == shard.index {
            read_chunk(shard, request.partition, after.as_deref()).await
        } else {
            let op = super::super::Op::SnapshotChunk { partition: request.partition, after: after.clone() };
            match shard.call(owner, op).await {
                super::super::Answer::SnapshotChunk(read) => read,
                other => Err(format!("shard {owner}: {other:?}")),
            }
        };
        let ChunkRead { mut items, at } = read?;
        let exhausted = items.len() < CHUNK_ITEMS_MAX;
        let mut bytes = 0;
        let keep = items
            .iter()
            .position(|(k, v)| {
                bytes += k.len() + v.len();
                bytes > CHUNK_BYTES_MAX
            })
            .map_or(items.len(), |at| at.max(1));
        let last = exhausted && keep == items.len();
        items.truncate(keep);
        crc = items_crc(crc, &items);
        after = items.last().map(|(k, _)| k.clone()).or(after);
        out.clear();
        encode_frame(&encode_chunk(request.partition, at, last, crc, &items), &mut out);
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        if last {
            stream.flush().await.map_err(|e| e.to_string())?;
            return Ok(());
        }
        crate::io::glommio_disk::yield_to_reactor().await;
    }
}

/// The leader hears that `done.node` holds a full replica of the partition
/// now: it proposes the roles entry that takes the node off the group's log
/// replicas.
pub(super) async fn rebuilt(shard: &Shard, done: Done) {
    let Ok(mut engine) = shard.engine.write().await else { return };
    let Some(raft) = engine.raft_mut() else { return };
    let mut log_replicas = raft.log_replicas(done.partition);
    if !log_replicas.contains(&done.node) {
        return;
    }
    log_replicas.retain(|&n| n != done.node);
    let mut data = vec![ENTRY_KIND_ROLES];
    data.extend_from_slice(&durable::encode_log_replicas(&log_replicas));
    match raft.propose(done.partition, data) {
        Ok(_) => {
            tracing::info!(partition = format!("{:#x}", done.partition), node = done.node, "a log replica is full")
        }
        Err(e) => tracing::debug!(error = %e, "could not propose the roles change"),
    }
    drop(engine);
    shard.shell().wake.notify_all();
}

/// The shard's rebuild task (low-share queue): every log replica it holds
/// is rebuilt into a full replica from a snapshot of the group's leader;
/// a full replica the group still lists as a log replica tells the leader.
pub(in crate::server) async fn rebuild_log_replicas(shard: Rc<Shard>) {
    let shell = shard.shell();
    loop {
        futures_lite::future::or(glommio::timer::sleep(REBUILD_CHECK_EVERY), shell.stopping.wait()).await;
        if shell.stopping.is_fired() {
            return;
        }
        let work = {
            let Ok(engine) = shard.engine.read().await else { return };
            let (Some(raft), Some(cluster)) = (engine.raft(), engine.cluster()) else { return };
            let me = raft.node_id();
            raft.partitions()
                .into_iter()
                .filter(|&p| raft.log_replicas(p).contains(&me))
                .filter_map(|p| {
                    let leader = raft.status(p)?.leader;
                    let addr = cluster.members().iter().find(|m| m.id == leader && leader != me)?.addr;
                    Some((p, raft.is_log_only(p), addr))
                })
                .collect::<Vec<_>>()
        };
        for (partition, log_only, leader) in work {
            let me = shell.node_id;
            let result = if log_only { rebuild(&shard, partition, leader).await } else { Ok(()) };
            match result {
                Ok(()) => {
                    if let Err(e) = send(leader, &Done { partition, node: me }.encode()).await {
                        tracing::debug!(error = %e, "could not tell the leader about a rebuilt replica");
                    }
                }
                Err(e) => tracing::warn!(partition = format!("{partition:#x}"), error = %e, "rebuild failed"),
            }
        }
    }
}

async fn send(to: std::net::SocketAddr, body: &[u8]) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect_timeout(to, PEER_CONNECT_TIMEOUT).await.map_err(|e| e.to_string())?;
    let mut frame = Vec::new();
    encode_frame(body, &mut frame);
    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Builds the partition's B-tree from the leader's snapshot and installs it
/// (module docs).
async fn rebuild(shard: &Shard, partition: u64, leader: std::net::SocketAddr) -> Result<(), String> {
    tracing::info!(partition = format!("{partition:#x}"), "rebuilding a log replica from a snapshot");
    let mut tree = {
        let mut engine = shard.engine.write().await.map_err(|e| e.to_string())?;
        engine.store_mut().begin_building(partition).await.map_err(|e| e.to_string())?
    };
    let mut after: Option<Vec<u8>> = None;
    let mut first: Option<Applied> = None;
    let mut attempts = 0;
    loop {
        match receive(shard, &mut tree, partition, leader, &mut after, &mut first).await {
            Ok(()) => break,
            Err(e) if attempts + 1 < ATTEMPTS_MAX => {
                attempts += 1;
                tracing::info!(error = %e, attempts, "snapshot stream broke; resuming after the last key");
                glommio::timer::sleep(REBUILD_CHECK_EVERY).await;
            }
            Err(e) => return Err(e),
        }
    }
    let at = first.ok_or("the snapshot had no chunk")?;
    tree.checkpoint(at).await.map_err(|e| e.to_string())?;
    drop(tree);
    let mut engine = shard.engine.write().await.map_err(|e| e.to_string())?;
    // The group starts again taking its whole log as persisted: make it so.
    let wal = engine.wal();
    wal.sync().await.map_err(|e| e.to_string())?;
    let write = engine.finish_rebuild(partition).await.map_err(|e| e.to_string())?;
    if let Some(lsn) = durable::submit(&wal, std::slice::from_ref(&write), |_, _, _| {}).map_err(|e| e.to_string())? {
        wal.wait_durable(lsn).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn receive(
    shard: &Shard,
    tree: &mut crate::btree::BTree<<crate::io::glommio_disk::GlommioDisk as crate::io::Disk>::File>,
    partition: u64,
    leader: std::net::SocketAddr,
    after: &mut Option<Vec<u8>>,
    first: &mut Option<Applied>,
) -> Result<(), String> {
    let request = Request { partition, node: shard.shell().node_id, after: after.clone() };
    let mut stream = send(leader, &request.encode()).await?;
    let decoder = FrameDecoder::new(FRAME_BODY_MAX_BYTES);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut read = vec![0u8; READ_CHUNK_BYTES];
    let mut crc = 0_u32;
    loop {
        let mut consumed = 0;
        loop {
            let rest = buf.get(consumed..).unwrap_or(&[]);
            let Some(span) = decoder.decode(rest).map_err(|e| e.to_string())? else { break };
            let chunk = decode_chunk(rest.get(span.body_start..span.end).unwrap_or(&[]))?;
            consumed += span.end;
            if chunk.partition != partition {
                return Err("a chunk of another partition".into());
            }
            crc = items_crc(crc, &chunk.items);
            if crc != chunk.crc {
                return Err("snapshot checksum mismatch (a chunk lost or repeated)".into());
            }
            first.get_or_insert(Applied { index: chunk.index, term: chunk.term });
            for (key, value) in &chunk.items {
                tree.put(key, value).await.map_err(|e| e.to_string())?;
            }
            if let Some((key, _)) = chunk.items.last() {
                *after = Some(key.clone());
            }
            if tree.dirty_bytes() > BUILD_DIRTY_BYTES_MAX {
                tree.checkpoint(Applied::default()).await.map_err(|e| e.to_string())?;
            }
            if chunk.last {
                return Ok(());
            }
        }
        buf.drain(..consumed);
        let got = futures_lite::future::or(async { Some(stream.read(&mut read).await) }, async {
            glommio::timer::sleep(CHUNK_WAIT_MAX).await;
            None
        })
        .await;
        match got {
            None => return Err("no snapshot chunk in time".into()),
            Some(Ok(0)) => return Err("the source closed the stream".into()),
            Some(Ok(n)) => buf.extend_from_slice(read.get(..n).unwrap_or(&[])),
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_requests_round_trip_and_damage_is_refused() {
        let items = vec![(b"k1".to_vec(), b"v1".to_vec()), (b"k2".to_vec(), vec![7; 300])];
        let crc = items_crc(0, &items);
        let body = encode_chunk(5, Applied { index: 40, term: 3 }, true, crc, &items);
        let chunk = decode_chunk(&body).expect("decode");
        assert_eq!((chunk.partition, chunk.index, chunk.term, chunk.last, chunk.crc), (5, 40, 3, true, crc));
        assert_eq!(chunk.items, items);
        for len in 0..body.len() {
            assert!(decode_chunk(body.get(..len).unwrap_or_default()).is_err(), "length {len}");
        }
        let request = Request { partition: 5, node: 4, after: Some(b"k1".to_vec()) };
        let back = Request::decode(&request.encode()).expect("request");
        assert_eq!((back.partition, back.node, back.after), (5, 4, Some(b"k1".to_vec())));
        let done = Done::decode(&Done { partition: 5, node: 4 }.encode()).expect("done");
        assert_eq!((done.partition, done.node), (5, 4));
        assert!(Done::decode(b"KSND").is_err());
    }
}
