//! `keel dev` as a user runs it: a whole local cluster (four keel-node
//! processes in three zones, n1 and n4 in az1; a control plane, two MemDS
//! servers, a router) behind one router endpoint. Every operation goes
//! through the router; a storage node is killed with SIGKILL under a write
//! load, and the control plane has its replicas replaced on the spare node
//! of its zone; a MemDS server is killed; every acknowledged write is read
//! back; then the whole cluster is stopped and started again and the data
//! is intact.
//!
//! The binaries come from the directory of `keel` itself (`cargo test
//! --workspace` builds them all there).

// Indexing a serde_json Value yields Null for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::io::BufRead as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_wire::client::{Client, ClientConfig, ClientError};
use keel_wire::item::{self, AttributeValue, Item};
use keel_wire::protocol::{BatchGetTable, BatchWrite, ErrorCode, ExpressionArgs, KeyKind, ROLE_LEADER, Reply, Request};
use serde_json::Value;

/// A running `keel dev`.
struct Dev {
    child: Option<Child>,
    router: String,
    manifest: Value,
    /// The data directory (its `logs/` are printed when the test fails).
    dir: PathBuf,
}

impl Dev {
    fn start(dir: &Path, port: u16) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["dev", "--data-dir"])
            .arg(dir)
            .args(["--port", &port.to_string(), "--nodes", "4", "--shards", "2", "--page-cache-mb", "16"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start keel dev");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let router = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("keel dev: router at ") {
                        break rest.split_whitespace().next().unwrap_or_default().to_owned();
                    }
                }
                _ => {
                    let status = child.wait();
                    print_logs(dir);
                    panic!("keel dev did not come up ({status:?})");
                }
            }
        };
        // Keep reading so that keel dev never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let manifest =
            serde_json::from_slice(&std::fs::read(dir.join("dev.json")).expect("dev.json")).expect("dev.json is JSON");
        Self { child: Some(child), router, manifest, dir: dir.to_owned() }
    }

    fn pid(&self, name: &str) -> u32 {
        let processes = self.manifest["processes"].as_array().expect("processes");
        let found = processes.iter().find(|p| p["name"] == name).expect("a process of that name");
        u32::try_from(found["pid"].as_u64().expect("pid")).expect("pid fits")
    }

    fn kill(&self, name: &str) {
        let status = Command::new("kill").args(["-KILL", &self.pid(name).to_string()]).status().expect("kill");
        assert!(status.success(), "kill -9 {name}");
    }

    /// Ctrl-C, and waits for keel dev to stop everything.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let status = child.wait().expect("keel dev exits");
            assert!(status.success(), "keel dev stopped cleanly: {status}");
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_logs(&self.dir);
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

/// The end of every process's log, for a failure's report.
fn print_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("logs")) else { return };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("==== {} (last 30 lines)", entry.path().display());
        if let Some(at) = lines.iter().position(|l| l.contains("panicked") || l.starts_with("Error")) {
            for line in lines.iter().skip(at).take(4) {
                eprintln!("{line}");
            }
            eprintln!("…");
        }
        for line in lines.iter().skip(lines.len().saturating_sub(30)) {
            eprintln!("{line}");
        }
    }
}

/// A base port with the 70 ports `keel dev` uses free, below the ephemeral
/// range and above the ports other tests take.
fn free_base() -> u16 {
    let mut base = 28_000 + u16::try_from(std::process::id() % 40).unwrap_or(0) * 100;
    loop {
        let free = (0..70).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
        base = if base > 32_000 { 28_000 } else { base + 100 };
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn key(artist: &str, song: &str) -> Item {
    Item::from([("artist".to_owned(), s(artist)), ("song".to_owned(), s(song))])
}

fn client(router: &str) -> Client {
    let mut config = ClientConfig::new(router);
    config.request_timeout = Duration::from_secs(15);
    config.retries_max = 8;
    futures_block(Client::connect(config)).expect("connect to the router")
}

fn futures_block<F: Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

async fn get(c: &Client, k: Item) -> Result<Option<Item>, ClientError> {
    c.get_item("music", k, None, Vec::new(), true).await
}

/// Every operation of the protocol, through the router.
async fn every_operation(c: &Client) -> keel_wire::protocol::TableInfo {
    let info = c.create_table("music", ("artist", KeyKind::S), Some(("song", KeyKind::S)), 4).await.expect("create");
    assert_eq!(info.partitions, 4);
    assert_eq!(c.describe_table("music").await.expect("describe").name, "music");
    let (names, _) = c.list_tables(None, 0).await.expect("list");
    assert_eq!(names, ["music"]);
    let mut item = key("Arvo", "Fratres");
    item.insert("year".into(), AttributeValue::N("1977".into()));
    // Right after CreateTable, whichever node the router picks (MemDS may
    // not know the table yet, nor that node's catalog): the router asks
    // again until one has it.
    c.put_item("music", item.clone()).send().await.expect("put");
    assert_eq!(get(c, key("Arvo", "Fratres")).await.expect("get"), Some(item.clone()));
    // A table that does not exist is still reported as such (after the
    // router's wait for a just-created one).
    let missing = c.put_item("no-such-table", item.clone()).send().await;
    assert_eq!(missing.err().and_then(|e| e.code()), Some(ErrorCode::ResourceNotFoundException));
    let updated = c
        .update_item("music", key("Arvo", "Fratres"), "SET plays = :one")
        .value(":one", AttributeValue::N("1".into()))
        .return_values(keel_wire::protocol::ReturnValues::AllNew)
        .send()
        .await
        .expect("update");
    assert_eq!(updated.and_then(|i| i.get("plays").cloned()), Some(AttributeValue::N("1".into())));
    let failed = c.put_item("music", item.clone()).condition("attribute_not_exists(artist)").send().await;
    assert_eq!(failed.err().and_then(|e| e.code()), Some(ErrorCode::ConditionalCheckFailedException));
    // BatchWriteItem across partitions, BatchGetItem, Query, Scan.
    let songs: Vec<Item> = (0..20).map(|i| key(&format!("a{}", i % 5), &format!("s{i}"))).collect();
    let bytes: Vec<Vec<u8>> = songs.iter().map(item::encode).collect();
    let writes = bytes.iter().map(|b| BatchWrite::Put(b)).collect();
    let reply = c.call(&Request::BatchWriteItem { tables: vec![("music".into(), writes)] }).await.expect("batch");
    assert_eq!(reply, Reply::BatchWrite);
    let keys = songs.iter().take(10).cloned().collect();
    let batch = BatchGetTable {
        table: "music".into(),
        keys,
        projection: None,
        args: ExpressionArgs::default(),
        consistent_read: true,
    };
    match c.call(&Request::BatchGetItem { tables: vec![batch] }).await.expect("batch get") {
        Reply::BatchGet(tables) => assert_eq!(tables.iter().map(|(_, items)| items.len()).sum::<usize>(), 10),
        other => panic!("unexpected {other:?}"),
    }
    let query = Request::Query {
        table: "music".into(),
        key_condition: "artist = :a AND song >= :s".into(),
        filter: None,
        projection: None,
        args: ExpressionArgs { names: Vec::new(), values: vec![(":a".into(), s("a1")), (":s".into(), s("s"))] },
        limit: 0,
        exclusive_start_key: None,
        forward: true,
        consistent_read: true,
    };
    assert_eq!(c.page(&query).await.expect("query").items.len(), 4);
    let scan = Request::Scan {
        table: "music".into(),
        filter: None,
        projection: None,
        args: ExpressionArgs::default(),
        limit: 0,
        exclusive_start_key: None,
        segment: 0,
        total_segments: 1,
        // A strongly consistent Scan crosses partitions led by different
        // nodes, which a node cannot serve yet (ARCHITECTURE.md, Routers).
        consistent_read: false,
    };
    // Eventually consistent: replicas catch up.
    until("a scan sees every item", async || c.page(&scan).await.expect("scan").items.len() == 21).await;
    c.delete_item("music", key("a0", "s0")).send().await.expect("delete");
    assert_eq!(get(c, key("a0", "s0")).await.expect("get deleted"), None);
    // Cluster status through the router: nodes, partitions, services.
    let status = c.cluster_status().await.expect("cluster status");
    assert_eq!(status.members.len(), 4);
    let replicas = status.groups.iter().filter(|g| g.partition == info.id_partition(3)).count();
    assert_eq!(replicas, 3, "the three replicas of the table's last partition are listed");
    until("a leader for every partition in the router's status", async || {
        let status = c.cluster_status().await.expect("cluster status");
        (0..4).all(|i| status.groups.iter().any(|g| g.partition == info.id_partition(i) && g.role == ROLE_LEADER))
    })
    .await;
    let roles: Vec<&str> = status.services.iter().filter(|s| s.role != "node").map(|s| s.role.as_str()).collect();
    assert_eq!(roles, ["router", "memds", "memds", "control"]);
    info
}

trait PartitionOf {
    fn id_partition(&self, index: u64) -> u64;
}

impl PartitionOf for keel_wire::protocol::TableInfo {
    fn id_partition(&self, index: u64) -> u64 {
        (u64::from(self.id) << 32) | index
    }
}

/// Writers putting new items until `stop`; returns the acknowledged ones.
fn writers(c: &Client, count: usize, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Item>>> {
    (0..count)
        .map(|w| {
            let (c, stop) = (c.clone(), Arc::clone(stop));
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut item = key(&format!("w{w}-{}", n % 16), &format!("{n:06}"));
                    item.insert("v".into(), AttributeValue::N(n.to_string()));
                    n += 1;
                    // An error (even "outcome unknown") is not an acknowledgement.
                    if c.put_item("music", item.clone()).send().await.is_ok() {
                        acked.push(item);
                    }
                }
                acked
            })
        })
        .collect()
}

async fn read_back(c: &Client, table: &str, acked: &[Item]) {
    for item in acked {
        let k = key(
            item.get("artist")
                .and_then(|v| if let AttributeValue::S(s) = v { Some(s.as_str()) } else { None })
                .unwrap_or(""),
            item.get("song")
                .and_then(|v| if let AttributeValue::S(s) = v { Some(s.as_str()) } else { None })
                .unwrap_or(""),
        );
        let got = c.get_item(table, k, None, Vec::new(), true).await.expect("read an acknowledged write back");
        assert_eq!(got.as_ref(), Some(item), "acknowledged write lost");
    }
}

fn count_acked(handles: Vec<tokio::task::JoinHandle<Vec<Item>>>) -> Vec<Item> {
    let mut all = Vec::new();
    for h in handles {
        all.extend(futures_block(h).expect("writer"));
    }
    all
}

/// Waits until `check` holds, for up to 30 s.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_cluster_serves_through_its_router_survives_kills_and_restarts_with_its_data() {
    let dir = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let base = free_base();
    let mut dev = tokio::task::block_in_place(|| Dev::start(dir.path(), base));
    let c = client(&dev.router);
    let info = every_operation(&c).await;

    // A write load; kill -9 one storage node in the middle of it.
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(&c, 6, &stop);
    // Which partitions have a replica on n1.
    let id = |status: &keel_wire::protocol::NodeStatus, name: &str| {
        status.members.iter().find(|m| m.name == name).map(|m| m.id).expect("a member of that name")
    };
    let before = c.cluster_status().await.expect("cluster status");
    let (n1, n4) = (id(&before, "n1"), id(&before, "n4"));
    let had_n1: Vec<u64> = (0..4)
        .map(|i| info.id_partition(i))
        .filter(|&p| before.groups.iter().any(|g| g.partition == p && g.voters.contains(&n1)))
        .collect();
    assert!(!had_n1.is_empty(), "n1 held replicas of the table");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    dev.kill("n1");
    let killed_at = Instant::now();
    // The router keeps serving: a write to each of 16 partition keys (all
    // four partitions, whose leaders were spread over the nodes, n1's too)
    // is acknowledged after the kill.
    for artist in 0..16 {
        until("writes acknowledged after the kill", async || {
            c.put_item("music", key(&format!("after-kill-{artist}"), "x")).send().await.is_ok()
        })
        .await;
    }
    let resumed = killed_at.elapsed();

    // The control plane sees n1 silent for 3 s and asks each of its
    // partitions' leaders to move n1's replica to n4, az1's other node
    // (the nodes' own healing is off under keel dev, so only the control
    // plane can have asked).
    until("n1's replicas moved to n4", async || {
        let status = c.cluster_status().await.expect("cluster status");
        let replaced = status.services.iter().find(|s| s.role == "control").map_or(0, |s| s.replacements);
        let moved = had_n1.iter().all(|&p| {
            status.groups.iter().any(|g| {
                g.partition == p
                    && g.role == ROLE_LEADER
                    && g.voters.len() == 3
                    && !g.voters.contains(&n1)
                    && g.voters.contains(&n4)
            })
        });
        moved && replaced >= u64::try_from(had_n1.len()).unwrap_or(u64::MAX)
    })
    .await;
    let healed = killed_at.elapsed();

    // A table created now is placed by the control plane, by load, on
    // healthy nodes: az1's replica of every partition goes to n4, none to
    // the dead n1 (the nodes' rotation would have put some there).
    // (Refused as ServiceUnavailable while fewer than three zones have a
    // node up: n4 may be busy rebuilding n1's replicas.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let placed = loop {
        match c.create_table("books", ("artist", KeyKind::S), Some(("song", KeyKind::S)), 4).await {
            Ok(info) => break info,
            Err(e) if e.code() == Some(ErrorCode::ResourceInUseException) => {
                break c.describe_table("books").await.expect("describe the table");
            }
            Err(e) if e.code() == Some(ErrorCode::ServiceUnavailable) => {
                assert!(Instant::now() < deadline, "timed out: the control plane places a new table (last: {e})");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("create a table with a node down: {e}"),
        }
    };
    until("the new table's partitions led, on n4 and not on n1", async || {
        let status = c.cluster_status().await.expect("cluster status");
        (0..4).all(|i| {
            status.groups.iter().any(|g| {
                g.partition == placed.id_partition(i)
                    && g.role == ROLE_LEADER
                    && g.voters.len() == 3
                    && g.voters.contains(&n4)
            }) && !status.groups.iter().any(|g| g.partition == placed.id_partition(i) && g.voters.contains(&n1))
        })
    })
    .await;
    let books: Vec<Item> = (0..16).map(|i| key(&format!("author-{i}"), "title")).collect();
    for book in &books {
        c.put_item("books", book.clone()).send().await.expect("write to the new table");
    }

    // Kill a MemDS server: routing goes on through the other, even with
    // the router's cache flushed (every request then waits for MemDS).
    dev.kill("memds-1");
    let admin = dev.manifest["admin"].as_str().expect("admin").to_owned();
    let flushed = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["router", "--admin", &admin, "flush"])
        .output()
        .expect("keel router flush");
    assert!(flushed.status.success(), "{}", String::from_utf8_lossy(&flushed.stderr));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = tokio::task::block_in_place(|| count_acked(load));
    assert!(acked.len() > 100, "the load ran ({} writes acknowledged)", acked.len());
    read_back(&c, "music", &acked).await;
    read_back(&c, "books", &books).await;
    let counters = Command::new(env!("CARGO_BIN_EXE_keel")).args(["router", "--admin", &admin, "status"]).output();
    let counters: Value = serde_json::from_slice(&counters.expect("keel router status").stdout).expect("JSON");
    assert!(counters["cache_misses"].as_u64() > Some(0), "{counters}");
    eprintln!(
        "writes to all partitions acknowledged {resumed:?} after kill -9 of n1, its replicas on n4 {healed:?} \
         after; {} acknowledged, all read back; {counters}",
        acked.len()
    );

    // Stop everything, start it again: the data is intact.
    drop(c);
    tokio::task::block_in_place(|| dev.stop());
    let dev = tokio::task::block_in_place(|| Dev::start(dir.path(), base));
    let c = client(&dev.router);
    read_back(&c, "music", &acked).await;
    read_back(&c, "books", &books).await;
    drop(dev);
}
