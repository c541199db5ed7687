//! End to end: the `keel-node` binary on loopback, spoken to with frames
//! over TCP; graceful stop with SIGTERM and a kill -9, each followed by a
//! restart that still holds every acknowledged write.

#![allow(clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use keel_wire::frame::{FRAME_HEADER_BYTES, FrameDecoder, encode_frame};
use keel_wire::item;
use keel_wire::protocol::{self, ExpressionArgs, KeyKind, Reply, Request, ReturnValues};
use serde_json::json;

struct Node {
    child: Child,
    stream: TcpStream,
    next_id: u64,
    address: String,
    shard_addresses: Vec<String>,
}

/// Starts a standalone keel-node on `dir` with `args` and reads its stdout
/// until it listens; returns it with its entry address and shard addresses.
fn spawn_node(dir: &Path, args: &[&str], notify_socket: Option<&Path>) -> (Child, String, Vec<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel-node"));
    if let Some(socket) = notify_socket {
        command.env("NOTIFY_SOCKET", socket);
    }
    let mut child = command
        .args(["--standalone", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start keel-node");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut shard_addresses = Vec::new();
    let address = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).expect("read stdout") > 0, "keel-node exited before listening");
        if let Some(rest) = line.trim().strip_prefix("keel-node shard ") {
            let (_, address) = rest.split_once(" listening on ").expect("shard line");
            shard_addresses.push(address.to_owned());
        } else if let Some(address) = line.trim().strip_prefix("keel-node listening on ") {
            break address.to_owned();
        }
    };
    (child, address, shard_addresses)
}

impl Node {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, None, &[])
    }

    fn start_with(dir: &Path, notify_socket: Option<&Path>, extra: &[&str]) -> Self {
        let mut args = vec!["--shards", "2", "--no-pin"];
        args.extend_from_slice(extra);
        let (child, address, shard_addresses) = spawn_node(dir, &args, notify_socket);
        assert_eq!(shard_addresses.len(), 2, "one port per shard");
        let stream = TcpStream::connect(&address).expect("connect");
        // A failure must fail the test, not hang it.
        stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).expect("timeout");
        Self { child, stream, next_id: 0, address, shard_addresses }
    }

    fn call(&mut self, request: &Request<'_>) -> Reply {
        self.next_id += 1;
        let mut frame = Vec::new();
        encode_frame(&protocol::encode_request(self.next_id, 0, request), &mut frame);
        self.stream.write_all(&frame).expect("send");
        let mut buf = vec![0u8; FRAME_HEADER_BYTES];
        self.stream.read_exact(&mut buf).expect("response header");
        let decoder = FrameDecoder::default();
        let needed = decoder.needed_bytes(&buf);
        buf.resize(needed, 0);
        self.stream.read_exact(buf.get_mut(FRAME_HEADER_BYTES..).unwrap_or(&mut [])).expect("response body");
        let span = decoder.decode(&buf).expect("valid frame").expect("complete frame");
        let (id, reply) =
            protocol::decode_response(buf.get(span.body_start..span.end).unwrap_or(&[])).expect("valid response");
        assert_eq!(id, self.next_id);
        reply
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait for keel-node");
        assert!(exit.success(), "keel-node exits cleanly on SIGTERM: {exit:?}");
    }

    fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }
}

/// A test that fails leaves no node behind (it would hold the test's
/// output open and outlive it).
impl Drop for Node {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Creates the table `users` (key `id`, a string) with `partitions`.
fn create_users(node: &mut Node, partitions: u32) {
    let create = Request::CreateTable {
        table: "users".into(),
        partition_key: ("id".into(), KeyKind::S),
        sort_key: None,
        partitions,
        placement: Vec::new(),
    };
    assert!(matches!(node.call(&create), Reply::Table(_)));
}

fn put(node: &mut Node, id: &str, n: u32) -> Reply {
    put_item(node, &json!({"id": {"S": id}, "n": {"N": n.to_string()}}))
}

/// Puts the item `item` (DynamoDB JSON) into `users`.
fn put_item(node: &mut Node, item: &serde_json::Value) -> Reply {
    let bytes = item::encode(&item::from_json(item).expect("item"));
    node.call(&Request::PutItem {
        table: "users".into(),
        item: &bytes,
        condition: None,
        args: ExpressionArgs::default(),
        return_values: ReturnValues::None,
    })
}

fn get_n(node: &mut Node, id: &str) -> Option<String> {
    let key = item::from_json(&json!({"id": {"S": id}})).expect("key");
    let request = Request::GetItem {
        table: "users".into(),
        key,
        projection: None,
        args: ExpressionArgs::default(),
        consistent_read: true,
    };
    match node.call(&request) {
        Reply::Item(Some(bytes)) => match item::decode(&bytes).expect("valid item").get("n") {
            Some(item::AttributeValue::N(n)) => Some(n.clone()),
            _ => None,
        },
        Reply::Item(None) => None,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn the_daemon_serves_stops_cleanly_and_keeps_acknowledged_writes() {
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let dir = tmp.path().join("data");
    let mut node = Node::start(&dir);
    create_users(&mut node, 4);
    for i in 0..50 {
        assert_eq!(put(&mut node, &format!("u{i}"), i), Reply::Item(None));
    }
    node.stop();

    let mut node = Node::start(&dir);
    assert_eq!(get_n(&mut node, "u7").as_deref(), Some("7"), "written before SIGTERM");
    for i in 50..80 {
        assert_eq!(put(&mut node, &format!("u{i}"), i), Reply::Item(None));
    }
    node.kill_9();

    let mut node = Node::start(&dir);
    for i in [0, 49, 50, 79] {
        assert_eq!(get_n(&mut node, &format!("u{i}")), Some(i.to_string()), "u{i} survives kill -9");
    }
    assert!(
        matches!(node.call(&Request::ListTables { start_after: None, limit: 0 }), Reply::TableNames { names, .. } if names == ["users"])
    );
    node.stop();
}

/// Bytes of every partition's B-tree file under a node's data directory.
fn btree_file_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list data directory")
        .flatten()
        .filter_map(|shard| std::fs::read_dir(shard.path().join("partitions")).ok())
        .flatten()
        .flatten()
        .filter_map(|file| file.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}

#[test]
fn a_node_that_stops_taking_writes_checkpoints_them_and_keeps_them_through_kill_9() {
    const ITEMS: u32 = 60;
    const PAD_BYTES: usize = 3000;
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let dir = tmp.path().join("data");
    // The dirty and WAL limits are far off (hundreds of MiB): only a quiet
    // checkpoint writes these pages.
    let mut node = Node::start_with(&dir, None, &["--quiet-checkpoint-ms", "100"]);
    create_users(&mut node, 1);
    let pad = "p".repeat(PAD_BYTES);
    for i in 0..ITEMS {
        let it = json!({"id": {"S": format!("u{i}")}, "n": {"N": i.to_string()}, "pad": {"S": pad}});
        assert_eq!(put_item(&mut node, &it), Reply::Item(None));
    }
    // Polled every 20 ms: the checkpoint comes 100–200 ms after the last
    // write, later on a loaded machine.
    let written = u64::from(ITEMS) * PAD_BYTES as u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while btree_file_bytes(&dir) < written {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint wrote the quiet node's partitions: their B-tree files hold {} bytes",
            btree_file_bytes(&dir)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    node.kill_9();
    let mut node = Node::start(&dir);
    for i in [0, ITEMS / 2, ITEMS - 1] {
        assert_eq!(get_n(&mut node, &format!("u{i}")), Some(i.to_string()), "u{i} survives kill -9");
    }
    node.stop();
}

#[test]
fn the_client_pipelines_requests_and_reports_typed_errors() {
    use keel_wire::client::{BlockingClient, ClientConfig, ClientError};
    use keel_wire::protocol::ErrorCode;
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let node = Node::start(&tmp.path().join("data"));
    let client = BlockingClient::connect(ClientConfig::new(node.address.clone())).expect("connect");
    let table = client.run(async |c| c.create_table("events", ("id", KeyKind::S), Some(("t", KeyKind::N)), 2).await);
    assert_eq!(table.expect("created").name, "events");
    // 200 writes in flight at once on one connection, matched by request id.
    let results = client.run(async |c| {
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let it = item::from_json(&json!({"id": {"S": "dev1"}, "t": {"N": i.to_string()}})).expect("item");
                c.put_item("events", it).send().await
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("task"));
        }
        results
    });
    assert!(results.iter().all(Result::is_ok), "every pipelined write succeeds");
    let page = client.run(async |c| {
        let request = Request::Query {
            table: "events".into(),
            key_condition: "id = :d".into(),
            filter: None,
            projection: None,
            args: ExpressionArgs {
                names: Vec::new(),
                values: vec![(":d".into(), item::AttributeValue::S("dev1".into()))],
            },
            limit: 0,
            exclusive_start_key: None,
            forward: false,
            consistent_read: false,
        };
        c.page(&request).await
    });
    let page = page.expect("query");
    assert_eq!(page.items.len(), 200);
    assert_eq!(page.items.first().and_then(|i| i.get("t")), Some(&item::AttributeValue::N("199".into())));
    let key = item::from_json(&json!({"id": {"S": "dev1"}, "t": {"N": "5"}})).expect("key");
    let failed =
        client.run(async |c| c.delete_item("events", key.clone()).condition("attribute_not_exists(id)").send().await);
    assert!(
        matches!(&failed, Err(ClientError::Service { code: ErrorCode::ConditionalCheckFailedException, .. })),
        "got {failed:?}"
    );
    let missing = client.run(async |c| c.describe_table("nope").await);
    assert_eq!(missing.err().and_then(|e| e.code()), Some(ErrorCode::ResourceNotFoundException));
    node.stop();
}

#[test]
fn the_daemon_tells_systemd_when_it_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let socket_path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket.set_read_timeout(Some(std::time::Duration::from_secs(30))).expect("timeout");
    let node = Node::start_with(&tmp.path().join("data"), Some(&socket_path), &[]);
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY notification");
    assert_eq!(buf.get(..n), Some(&b"READY=1"[..]));
    node.stop();
    let n = socket.recv(&mut buf).expect("STOPPING notification");
    assert_eq!(buf.get(..n), Some(&b"STOPPING=1"[..]));
}

fn scan_request(table: &str, limit: u32, start: Option<item::Item>, segment: u32, total: u32) -> Request<'static> {
    Request::Scan {
        table: table.into(),
        filter: None,
        projection: None,
        args: ExpressionArgs::default(),
        limit,
        exclusive_start_key: start,
        segment,
        total_segments: total,
        consistent_read: false,
    }
}

/// Every page of a Scan (segment `segment` of `total`), `limit` at a time.
fn scan_all(client: &keel_wire::client::BlockingClient, limit: u32, segment: u32, total: u32) -> Vec<item::Item> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .run(async |c| c.page(&scan_request("songs", limit, start.clone(), segment, total)).await)
            .expect("scan page");
        assert!(page.items.len() <= limit as usize);
        items.extend(page.items);
        match page.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return items,
        }
    }
}

#[test]
fn every_operation_works_across_shards_through_every_port() {
    use keel_wire::client::{BlockingClient, ClientConfig, ClientError};
    use keel_wire::protocol::{BatchGetTable, BatchWrite, ErrorCode};
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let node = Node::start(&tmp.path().join("data"));
    let connect = |address: &str| BlockingClient::connect(ClientConfig::new(address.to_owned())).expect("connect");
    let entry = connect(&node.address);
    let ports: Vec<BlockingClient> = node.shard_addresses.iter().map(|a| connect(a)).collect();
    let created =
        entry.run(async |c| c.create_table("songs", ("artist", KeyKind::S), Some(("n", KeyKind::N)), 4).await);
    assert_eq!(created.expect("created").partitions, 4);
    // The catalog change reached every shard before CreateTable answered.
    for port in &ports {
        assert_eq!(port.run(async |c| c.describe_table("songs").await).expect("described").name, "songs");
    }
    let song = |artist: u32, n: u32| {
        item::from_json(&json!({"artist": {"S": format!("a{artist}")}, "n": {"N": n.to_string()}, "len": {"N": "200"}}))
            .expect("item")
    };
    // Writes through each shard's own port, whichever shard owns the item.
    for artist in 0..10 {
        for n in 0..4 {
            let port = &ports[(artist + n) as usize % ports.len()];
            port.run(async |c| c.put_item("songs", song(artist, n)).send().await).expect("put");
        }
    }
    // Reads through the other port.
    for artist in 0..10 {
        let port = &ports[(artist as usize + 1) % ports.len()];
        let key = item::from_json(&json!({"artist": {"S": format!("a{artist}")}, "n": {"N": "3"}})).expect("key");
        let got = port.run(async |c| c.get_item("songs", key.clone(), None, Vec::new(), false).await).expect("get");
        assert_eq!(got, Some(song(artist, 3)));
        // The zero-copy read sees the same attributes, in place.
        let in_place = port
            .run(async |c| {
                let names = |i: Option<keel_wire::fb::Item<'_>>| {
                    i.map(|i| {
                        i.attributes().iter().map(|a| a.name().to_owned()).collect::<std::collections::BTreeSet<_>>()
                    })
                };
                c.get_item_with("songs", key.clone(), None, Vec::new(), false, names).await
            })
            .expect("get in place");
        assert_eq!(in_place, Some(song(artist, 3).into_keys().collect()));
    }
    let absent = item::from_json(&json!({"artist": {"S": "nobody"}, "n": {"N": "1"}})).expect("key");
    let seen = entry.run(async |c| c.get_item_with("songs", absent, None, Vec::new(), false, |i| i.is_some()).await);
    assert!(!seen.expect("get in place"), "a missing item is None");
    // A Scan crosses both shards' partitions; pages of 7 see every item once.
    let mut everything: Vec<String> =
        scan_all(&entry, 7, 0, 1).iter().map(|i| format!("{:?}/{:?}", i.get("artist"), i.get("n"))).collect();
    assert_eq!(everything.len(), 40);
    everything.sort();
    everything.dedup();
    assert_eq!(everything.len(), 40, "no item twice");
    let segments: usize = (0..3).map(|s| scan_all(&ports[0], 5, s, 3).len()).sum();
    assert_eq!(segments, 40, "segments split the table");
    // Read in place, a page lends the same items, in the same order.
    let owned = entry.run(async |c| c.page(&scan_request("songs", 9, None, 0, 1)).await).expect("scan page");
    let names = |i: keel_wire::fb::Item<'_>| {
        i.attributes().iter().map(|a| a.name().to_owned()).collect::<std::collections::BTreeSet<_>>()
    };
    let (seen, summary) = entry
        .run(async |c| {
            let mut seen = Vec::new();
            let summary = c
                .page_with(&scan_request("songs", 9, None, 0, 1), |i| {
                    seen.push(names(i));
                    Ok(())
                })
                .await?;
            Ok::<_, ClientError>((seen, summary))
        })
        .expect("scan page in place");
    let owned_names: Vec<_> = owned.items.iter().map(|i| i.keys().cloned().collect()).collect();
    assert_eq!(seen, owned_names);
    assert_eq!((summary.count, summary.last_evaluated_key), (9, owned.last_evaluated_key));
    // The first error the caller's function returns ends the page.
    let mut calls = 0;
    let stopped = entry.run(async |c| {
        c.page_with(&scan_request("songs", 9, None, 0, 1), |_| {
            calls += 1;
            Err(item::ItemError::Set { path: "stop".into(), reason: "the caller's own error" })
        })
        .await
    });
    assert!(matches!(stopped, Err(ClientError::Item(item::ItemError::Set { .. }))), "got {stopped:?}");
    assert_eq!(calls, 1);
    // Query order and pagination on a partition another shard may own.
    let query = |start: Option<item::Item>| Request::Query {
        table: "songs".into(),
        key_condition: "artist = :a AND n >= :one".into(),
        filter: None,
        projection: Some("n".into()),
        args: ExpressionArgs {
            names: Vec::new(),
            values: vec![
                (":a".into(), item::AttributeValue::S("a5".into())),
                (":one".into(), item::AttributeValue::N("1".into())),
            ],
        },
        limit: 2,
        exclusive_start_key: start,
        forward: true,
        consistent_read: false,
    };
    let first = ports[0].run(async |c| c.page(&query(None)).await).expect("query");
    let second = ports[1].run(async |c| c.page(&query(first.last_evaluated_key.clone())).await).expect("query");
    let numbers: Vec<_> =
        first.items.iter().chain(&second.items).map(|i| i.get("n").cloned().expect("projected n")).collect();
    let want: Vec<_> = (1..4).map(|n| item::AttributeValue::N(n.to_string())).collect();
    assert_eq!(numbers, want);
    // Batches split over the shards and come back whole.
    let items: Vec<Vec<u8>> = (0..25).map(|n| item::encode(&song(100, n))).collect();
    let batch =
        Request::BatchWriteItem { tables: vec![("songs".into(), items.iter().map(|b| BatchWrite::Put(b)).collect())] };
    assert_eq!(entry.run(async |c| c.call(&batch).await).expect("batch write"), Reply::BatchWrite);
    let keys: Vec<item::Item> = (0..10)
        .flat_map(|a| (0..4).map(move |n| (a, n)))
        .chain((0..25).map(|n| (100, n)))
        .map(|(a, n)| {
            item::from_json(&json!({"artist": {"S": format!("a{a}")}, "n": {"N": n.to_string()}})).expect("k")
        })
        .take(60)
        .collect();
    let batch_get = Request::BatchGetItem {
        tables: vec![BatchGetTable {
            table: "songs".into(),
            keys,
            projection: None,
            args: ExpressionArgs::default(),
            consistent_read: true,
        }],
    };
    match entry.run(async |c| c.call(&batch_get).await).expect("batch get") {
        Reply::BatchGet(tables) => assert_eq!(tables.iter().map(|(_, i)| i.len()).sum::<usize>(), 60),
        other => panic!("unexpected {other:?}"),
    }
    // Conditional failures come back typed, from whichever shard.
    let key = item::from_json(&json!({"artist": {"S": "a2"}, "n": {"N": "0"}})).expect("key");
    let failed = ports[1].run(async |c| {
        c.update_item("songs", key.clone(), "SET len = :l")
            .value(":l", item::AttributeValue::N("1".into()))
            .condition("len < :l")
            .send()
            .await
    });
    assert!(matches!(failed, Err(ClientError::Service { code: ErrorCode::ConditionalCheckFailedException, .. })));
    // DeleteTable through a shard's port removes the table everywhere.
    ports[1].run(async |c| c.delete_table("songs").await).expect("deleted");
    for port in &ports {
        let gone = port.run(async |c| c.describe_table("songs").await);
        assert_eq!(gone.err().and_then(|e| e.code()), Some(ErrorCode::ResourceNotFoundException));
    }
    node.stop();
}

/// Starts keel-node expecting it to refuse; returns what it printed.
/// Runs keel-node on `dir` with `args`, which must make it refuse to
/// start; returns what it said.
fn refused(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-node"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "off")
        .output()
        .expect("run keel-node");
    assert!(!out.status.success(), "keel-node must refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_data_directory_serves_one_process_with_the_shard_count_it_was_made_with() {
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let dir = tmp.path().join("data");
    let node = Node::start(&dir);
    let message = refused(&dir, &["--no-pin", "--shards", "2"]);
    assert!(message.contains("in use by another keel-node process"), "{message}");
    node.stop();
    let message = refused(&dir, &["--no-pin", "--shards", "3"]);
    assert!(message.contains("was created with 2 shards"), "{message}");
    let stray = tmp.path().join("stray");
    std::fs::create_dir_all(&stray).expect("mkdir");
    std::fs::write(stray.join("notes.txt"), b"mine").expect("write");
    let message = refused(&stray, &["--no-pin", "--shards", "1"]);
    assert!(message.contains("not a keel-node data directory"), "{message}");
}

/// What a connection did with bad input.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// It closed (or reset) the connection.
    Closed,
    /// It answered with a typed error.
    Error(keel_wire::protocol::ErrorCode),
}

/// Sends `bytes` on a fresh connection (then, with `half_close`, ends the
/// writing side) and reports what the server did.
fn send_raw(address: &str, bytes: &[u8], half_close: bool) -> Outcome {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).expect("timeout");
    // The server may close before reading everything: a failed write is
    // fine, the read below tells what happened.
    let _ = stream.write_all(bytes);
    if half_close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let decoder = FrameDecoder::default();
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Outcome::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(span) = decoder.decode(&buf).expect("the server sends valid frames") {
            return match protocol::decode_response(&buf[span.body_start..span.end]).expect("valid response") {
                (_, Reply::Error { code, .. }) => Outcome::Error(code),
                (_, other) => panic!("bad input got a success: {other:?}"),
            };
        }
    }
}

#[test]
fn bad_input_gets_a_typed_error_or_a_clean_close_and_the_server_keeps_serving() {
    use keel_wire::client::{BlockingClient, ClientConfig};
    use keel_wire::fb;
    use keel_wire::protocol::ErrorCode;
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let mut node = Node::start(&tmp.path().join("data"));
    create_users(&mut node, 4);
    let address = node.address.clone();
    let frame_of = |body: &[u8]| {
        let mut frame = Vec::new();
        encode_frame(body, &mut frame);
        frame
    };
    let good = frame_of(&protocol::encode_request(9, 0, &Request::ListTables { start_after: None, limit: 0 }));

    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for _ in 0..20 {
        let len = rng.random_range(1..20_000);
        let noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        assert_eq!(send_raw(&address, &noise, true), Outcome::Closed, "random bytes");
    }
    let mut wrong_crc = good.clone();
    wrong_crc[5] ^= 0x40;
    assert_eq!(send_raw(&address, &wrong_crc, false), Outcome::Closed, "wrong crc");
    assert_eq!(send_raw(&address, &good[..good.len() - 3], true), Outcome::Closed, "truncated frame");
    let mut oversized = Vec::new();
    oversized.extend_from_slice(&(17 * 1024 * 1024 + 1u32).to_le_bytes());
    oversized.extend_from_slice(&[0; 4]);
    assert_eq!(send_raw(&address, &oversized, false), Outcome::Closed, "oversized frame");
    assert_eq!(
        send_raw(&address, &frame_of(b"a valid crc over bytes that are no flatbuffer"), false),
        Outcome::Error(ErrorCode::ValidationException),
        "a frame that fails verification"
    );
    // A well-formed envelope whose request type this server does not know.
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let start = builder.start_table();
    let empty = builder.end_table(start);
    let envelope = fb::RequestEnvelope::create(
        &mut builder,
        &fb::RequestEnvelopeArgs {
            request_id: 3,
            timeout_ms: 0,
            body_type: fb::Request(250),
            body: Some(empty.as_union_value()),
        },
    );
    builder.finish(envelope, None);
    assert_eq!(
        send_raw(&address, &frame_of(builder.finished_data()), false),
        Outcome::Error(ErrorCode::ValidationException),
        "an unknown request type"
    );

    // Items over the limits and malformed expressions, through the client.
    let client = BlockingClient::connect(ClientConfig::new(address.clone())).expect("connect");
    let code = |r: Result<Option<item::Item>, keel_wire::client::ClientError>| r.err().and_then(|e| e.code());
    let big = item::from_json(&json!({"id": {"S": "big"}, "blob": {"S": "x".repeat(401 * 1024)}})).expect("item");
    assert!(matches!(
        code(client.run(async |c| c.put_item("users", big.clone()).send().await)),
        Some(ErrorCode::ItemTooLarge | ErrorCode::ValidationException)
    ));
    let long_key = item::from_json(&json!({"id": {"S": "k".repeat(2049)}})).expect("item");
    assert_eq!(
        code(client.run(async |c| c.put_item("users", long_key.clone()).send().await)),
        Some(ErrorCode::ValidationException)
    );
    let ok = item::from_json(&json!({"id": {"S": "u1"}})).expect("item");
    for expression in ["attribute_exists(", "a = = b", "size(id) > :missing", "id BETWEEN :a", ")("] {
        let result = client.run(async |c| c.put_item("users", ok.clone()).condition(expression).send().await);
        assert_eq!(code(result), Some(ErrorCode::ValidationException), "{expression}");
    }
    // The first connection and new ones still work.
    assert!(matches!(node.call(&Request::ListTables { start_after: None, limit: 0 }), Reply::TableNames { .. }));
    assert_eq!(put(&mut node, "after", 1), Reply::Item(None));
    assert!(client.run(async |c| c.describe_table("users").await).is_ok());
    node.stop();
}

#[test]
fn the_example_config_file_is_valid_and_flags_override_it() {
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/keel-node.toml");
    // The file says data_dir /var/lib/keel and port 7400; the flags win.
    let mut node = Node::start_with(&tmp.path().join("data"), None, &["--config", example]);
    assert!(matches!(node.call(&Request::ListTables { start_after: None, limit: 0 }), Reply::TableNames { .. }));
    node.stop();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "shards = 2\nlisten_port = 1\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_keel-node")).arg("--config").arg(&bad).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_port"), "unknown settings are named");
}

#[test]
fn kill_9_in_the_middle_of_a_write_load_loses_no_acknowledged_write() {
    write_load_interrupted_by(Node::kill_9, &[]);
}

/// The same with WAL commits written inline (`--wal-sync inline`: blocking
/// O_DSYNC writes on the shard's thread instead of io_uring).
#[test]
fn kill_9_with_inline_wal_commits_loses_no_acknowledged_write() {
    write_load_interrupted_by(Node::kill_9, &["--wal-sync", "inline"]);
}

#[test]
fn sigterm_in_the_middle_of_a_write_load_drains_and_exits_cleanly() {
    // `stop` asserts a zero exit status; the checks after the restart are
    // the same as after a kill -9.
    write_load_interrupted_by(Node::stop, &[]);
}

/// Runs 24 concurrent writers (puts and increments) against a node, stops
/// the node with `interrupt` once 3,000 puts were acknowledged, restarts it
/// and checks that every acknowledged write is there, whole (every fifth
/// put is a large item, whose value lies in overflow pages that only
/// checkpoints write: WAL replay must bring back the others). The node runs with
/// 1 MiB of dirty pages at most, so background checkpoints run throughout
/// the load (and are interrupted too), and with `args`.
fn write_load_interrupted_by(interrupt: fn(Node), args: &[&str]) {
    use keel_wire::client::{BlockingClient, ClientConfig};
    use std::sync::{Arc, Condvar, Mutex};
    const WRITERS: usize = 24;
    const COUNTERS: usize = 4;
    let pad_len = |i: u64| if i.is_multiple_of(5) { 20_000 } else { 3000 };
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let dir = tmp.path().join("data");
    let node = Node::start_with(&dir, None, &[&["--dirty-mb", "1"], args].concat());
    let mut config = ClientConfig::new(node.address.clone());
    config.connections = 4;
    config.retries_max = 0;
    let client = BlockingClient::connect(config).expect("connect");
    client.run(async |c| c.create_table("load", ("id", KeyKind::S), None, 4).await).expect("create");
    // Acknowledged puts by key, and acknowledged / attempted increments per counter.
    let acked: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
    let counted: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(vec![(0, 0); COUNTERS]));
    let load = {
        let (acked, counted) = (Arc::clone(&acked), Arc::clone(&counted));
        std::thread::spawn(move || {
            client.run(async |c| {
                let mut tasks = Vec::new();
                for writer in 0..WRITERS {
                    let (c, acked, counted) = (c.clone(), Arc::clone(&acked), Arc::clone(&counted));
                    tasks.push(tokio::spawn(async move {
                        for i in 0u64.. {
                            let result = if writer < COUNTERS {
                                counted.lock().expect("lock")[writer].1 += 1;
                                let key =
                                    item::from_json(&json!({"id": {"S": format!("counter{writer}")}})).expect("key");
                                let sent = c
                                    .update_item("load", key, "ADD n :one")
                                    .value(":one", item::AttributeValue::N("1".into()))
                                    .send()
                                    .await;
                                sent.map(|_| counted.lock().expect("lock")[writer].0 += 1)
                            } else {
                                let id = format!("w{writer}-{i}");
                                let pad = "p".repeat(pad_len(i));
                                let it = item::from_json(
                                    &json!({"id": {"S": id}, "i": {"N": i.to_string()}, "pad": {"S": pad}}),
                                )
                                .expect("item");
                                let sent = c.put_item("load", it).send().await;
                                sent.map(|_| {
                                    let (list, signal) = &*acked;
                                    list.lock().expect("lock").push(id);
                                    signal.notify_all();
                                })
                            };
                            if result.is_err() {
                                return;
                            }
                        }
                    }));
                }
                for task in tasks {
                    let _ = task.await;
                }
            });
            // Every writer stopped (a write failed): wake the wait below.
            let (list, signal) = &*acked;
            list.lock().expect("lock").push(String::new());
            signal.notify_all();
        })
    };
    {
        let (list, signal) = &*acked;
        let guard = list.lock().expect("lock");
        let acked =
            signal.wait_while(guard, |l| l.len() < 3000 && l.last().is_none_or(|id| !id.is_empty())).expect("wait");
        assert!(acked.last().is_none_or(|id| !id.is_empty()), "the writers stopped early: a write failed");
    }
    interrupt(node);
    load.join().expect("the load thread ends once the node is gone");
    // Checkpoints ran during the load: the B-tree files hold pages beyond
    // their initial few (9 MB of items against 1 MiB of dirty pages).
    let btree_bytes = btree_file_bytes(&dir);
    assert!(btree_bytes > 2 << 20, "B-tree files hold {btree_bytes} bytes: no checkpoint ran during the load");

    let mut node = Node::start(&dir);
    // (Without the empty id that marks the writers' end.)
    let acked: Vec<String> = acked.0.lock().expect("lock").iter().filter(|id| !id.is_empty()).cloned().collect();
    assert!(acked.len() >= 3000);
    for id in &acked {
        let key = item::from_json(&json!({"id": {"S": id}})).expect("key");
        let request = Request::GetItem {
            table: "load".into(),
            key,
            projection: None,
            args: ExpressionArgs::default(),
            consistent_read: true,
        };
        let Reply::Item(Some(bytes)) = node.call(&request) else { panic!("acknowledged write {id} is lost") };
        let i: u64 = id.rsplit('-').next().and_then(|i| i.parse().ok()).expect("an id of this test");
        let found = item::decode(&bytes).expect("item");
        assert_eq!(found.get("i"), Some(&item::AttributeValue::N(i.to_string())), "{id}");
        assert_eq!(found.get("pad"), Some(&item::AttributeValue::S("p".repeat(pad_len(i)))), "{id} is whole");
    }
    for (counter, (acknowledged, attempted)) in counted.lock().expect("lock").iter().enumerate() {
        let key = item::from_json(&json!({"id": {"S": format!("counter{counter}")}})).expect("key");
        let request = Request::GetItem {
            table: "load".into(),
            key,
            projection: None,
            args: ExpressionArgs::default(),
            consistent_read: true,
        };
        let n = match node.call(&request) {
            Reply::Item(Some(bytes)) => match item::decode(&bytes).expect("item").get("n") {
                Some(item::AttributeValue::N(n)) => n.parse::<u64>().expect("integer"),
                other => panic!("counter{counter} holds {other:?}"),
            },
            Reply::Item(None) => 0,
            other => panic!("unexpected {other:?}"),
        };
        // Every acknowledged increment counted once; an unacknowledged one may
        // or may not have landed.
        assert!((*acknowledged..=*attempted).contains(&n), "counter{counter}: {n} not in {acknowledged}..={attempted}");
    }
    node.stop();
}

#[test]
fn a_connection_lives_through_more_reads_than_a_task_has_references() {
    // Regression: each read of a connection used to leave a waker clone
    // behind, and glommio counts a task's references in an i16: after
    // 32,767 reads the shard panicked.
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let mut node = Node::start(&tmp.path().join("data"));
    for _ in 0..40_000 {
        assert!(matches!(node.call(&Request::ListTables { start_after: None, limit: 1 }), Reply::TableNames { .. }));
    }
    node.stop();
}

#[test]
fn the_wal_and_btree_files_are_open_with_o_direct() {
    // glommio opens files through io_uring (IORING_OP_OPENAT), which strace
    // does not show as openat: the kernel's view of each open file is in
    // /proc/PID/fdinfo, whose `flags` (octal) hold O_DIRECT (040000).
    const O_DIRECT: u32 = 0o40000;
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let mut node = Node::start(&tmp.path().join("data"));
    create_users(&mut node, 4);
    for i in 0..20 {
        assert_eq!(put(&mut node, &format!("u{i}"), i), Reply::Item(None));
    }
    let pid = node.child.id();
    let mut data_files = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list fds").flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let name = target.to_string_lossy().into_owned();
        if !(name.ends_with(".seg") || name.ends_with(".btree")) {
            continue;
        }
        let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy()))
            .expect("fdinfo");
        let flags = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .expect("flags line");
        assert_ne!(flags & O_DIRECT, 0, "{name} is open without O_DIRECT (flags {flags:o})");
        data_files.push(name);
    }
    let wal = data_files.iter().filter(|n| n.ends_with(".seg")).count();
    let trees = data_files.iter().filter(|n| n.ends_with(".btree")).count();
    assert!(wal >= 2, "a WAL segment per shard is open: {data_files:?}");
    assert!(trees >= 6, "catalog and table partitions of both shards are open: {data_files:?}");
    node.stop();
}

#[test]
fn the_daemon_runs_without_transparent_huge_pages() {
    // keel-node turns THP off for itself (prctl PR_SET_THP_DISABLE): a
    // first touch of a 2 MiB page held a shard's thread for 5.5 ms here.
    // The kernel reports the process's setting in /proc/PID/status.
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let node = Node::start(&tmp.path().join("data"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).expect("process status");
    let thp = status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(str::trim);
    assert_eq!(thp, Some("0"), "THP is off for keel-node");
    node.stop();
}

/// Starts a one-shard keel-node with `extra` flags (the child inherits the
/// calling thread's CPU mask) and returns the CPU lists of its shard's
/// threads and of its main thread.
fn shard_and_main_cpus(extra: &[&str]) -> (Vec<String>, String) {
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let mut args = vec!["--shards", "1"];
    args.extend_from_slice(extra);
    let (mut child, _, _) = spawn_node(&tmp.path().join("data"), &args, None);
    let cpus_of = |task: &Path| {
        let status = std::fs::read_to_string(task.join("status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|c| c.trim().to_owned())
    };
    let pid = child.id();
    let shard: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list threads")
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|name| name.starts_with("keel-shard-0"))
        })
        .filter_map(|task| cpus_of(&task.path()))
        .collect();
    let main = cpus_of(Path::new(&format!("/proc/{pid}/task/{pid}"))).expect("main thread's CPUs");
    child.kill().expect("kill keel-node");
    let _ = child.wait();
    // The executor's thread and glommio's helper thread beside it.
    assert!(!shard.is_empty(), "keel-node has a shard thread");
    (shard, main)
}

#[test]
fn a_pinned_shard_runs_on_a_cpu_the_process_is_allowed() {
    // An operator places shards with the process's affinity mask (taskset,
    // systemd's CPUAffinity=): keel-node started on the last CPU of this
    // thread's mask must pin its one shard there, not to CPU 0.
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let here = Pid::from_raw(0);
    let mask = sched_getaffinity(here).expect("this thread's CPUs");
    let last = *keel_node::server::allowed_cpus().last().expect("some CPU allowed");
    let mut only_last = CpuSet::new();
    only_last.set(last).expect("a valid CPU");
    // The child inherits the mask of the thread that starts it.
    sched_setaffinity(here, &only_last).expect("restrict this thread");
    let started = std::panic::catch_unwind(|| shard_and_main_cpus(&[]));
    sched_setaffinity(here, &mask).expect("restore this thread");
    let (shard, _) = started.expect("keel-node started");
    assert!(shard.iter().all(|cpus| *cpus == last.to_string()), "shard threads on CPU {last} only: {shard:?}");
}

#[test]
fn cpus_pins_the_shards_and_leaves_the_other_threads_free() {
    // --cpus pins only the shards: the node's other threads (and the
    // kernel's io_uring workers, which inherit their mask) may run on any
    // CPU of the process, which they need when the shard's CPU is busy.
    let allowed = keel_node::server::allowed_cpus();
    let last = *allowed.last().expect("some CPU allowed");
    let (shard, main) = shard_and_main_cpus(&["--cpus", &last.to_string()]);
    assert!(shard.iter().all(|cpus| *cpus == last.to_string()), "shard threads on CPU {last} only: {shard:?}");
    let main_cpus = keel_node::server::parse_cpu_list(&main).expect("a CPU list");
    assert_eq!(main_cpus, allowed, "the main thread keeps the process's CPUs");
}

#[test]
fn cpus_that_are_too_few_or_not_allowed_are_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let dir = tmp.path().join("data");
    assert!(refused(&dir, &["--shards", "2", "--cpus", "0"]).contains("cpus lists 1 CPUs for 2 shards"));
    assert!(refused(&dir, &["--shards", "2", "--cpus", "0-1", "--no-pin"]).contains("pinning is off"));
    assert!(refused(&dir, &["--shards", "2", "--cpus", "1000-1001"]).contains("not one this process may use"));
    assert!(refused(&dir, &["--shards", "2", "--cpus", "one"]).contains("is not a CPU list"));
}

#[test]
fn a_second_node_on_a_taken_port_refuses_to_start() {
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let node = Node::start(&tmp.path().join("one"));
    for taken in std::iter::once(&node.address).chain(&node.shard_addresses) {
        let out = Command::new(env!("CARGO_BIN_EXE_keel-node"))
            .args(["--no-pin", "--shards", "1", "--shard-port-base", "0", "--listen", taken, "--data-dir"])
            .arg(tmp.path().join("two"))
            .env("RUST_LOG", "off")
            .output()
            .expect("run keel-node");
        assert!(!out.status.success(), "a second node must not share {taken}");
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(message.contains(&format!("listen on {taken}")), "{message}");
    }
    node.stop();
}

/// A node whose page cache holds a fraction of its items (1 MiB per shard
/// against about 10 MB, a tenth of the items large), under concurrent reads and increments of random
/// items, while background checkpoints rewrite pages (1 MiB of dirty pages
/// at most): reads that miss the cache fetch their pages without holding
/// the shard's engine and run again, so every read must still see its own
/// item, and every acknowledged increment must be applied exactly once
/// (a request run again after a miss had logged nothing). A Scan of the
/// whole table, whose parts run again from their start after each miss,
/// returns every item once.
#[test]
fn reads_updates_and_scans_that_miss_the_page_cache_see_their_items_and_apply_once() {
    use keel_wire::client::{BlockingClient, ClientConfig};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::sync::{Arc, Mutex};
    const ITEMS: usize = 3000;
    const TASKS: usize = 16;
    const OPS_PER_TASK: usize = 300;
    let tmp = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
    let node = Node::start_with(&tmp.path().join("data"), None, &["--page-cache-mb", "1", "--dirty-mb", "1"]);
    let mut config = ClientConfig::new(node.address.clone());
    config.connections = 4;
    config.retries_max = 0; // an increment is sent once: exactly-once is the server's
    let client = BlockingClient::connect(config).expect("connect");
    let key = |i: usize| item::from_json(&json!({"id": {"S": format!("item{i}")}})).expect("key");
    // Every tenth item is large: its value lies in a chain of two overflow
    // pages, fetched whole on a miss and rewritten by each increment.
    let pad = |i: usize| if i.is_multiple_of(10) { format!("{i:>20000}") } else { format!("{i:>1000}") };
    let increments: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; ITEMS]));
    let reads = client.run(async |c| {
        c.create_table("cold", ("id", KeyKind::S), None, 4).await.expect("create");
        for i in 0..ITEMS {
            let it = item::from_json(&json!({"id": {"S": format!("item{i}")}, "n": {"N": "0"}, "pad": {"S": pad(i)}}))
                .expect("item");
            c.put_item("cold", it).send().await.expect("put");
        }
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let (c, increments) = (c.clone(), Arc::clone(&increments));
            tasks.push(tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(task as u64);
                let mut reads = 0;
                for _ in 0..OPS_PER_TASK {
                    let i = rng.random_range(0..ITEMS);
                    if rng.random_bool(0.5) {
                        c.update_item("cold", key(i), "ADD n :one")
                            .value(":one", item::AttributeValue::N("1".into()))
                            .send()
                            .await
                            .expect("increment");
                        increments.lock().expect("lock")[i] += 1;
                    } else {
                        let found = c.get_item("cold", key(i), None, Vec::new(), false).await.expect("get");
                        let found = found.expect("every item exists");
                        assert_eq!(found.get("id"), Some(&item::AttributeValue::S(format!("item{i}"))));
                        assert_eq!(found.get("pad"), Some(&item::AttributeValue::S(pad(i))), "item{i}'s own bytes");
                        reads += 1;
                    }
                }
                reads
            }));
        }
        let mut reads = 0;
        for task in tasks {
            reads += task.await.expect("task");
        }
        reads
    });
    assert!(reads > TASKS * OPS_PER_TASK / 4, "reads ran ({reads})");
    let increments = increments.lock().expect("lock").clone();
    client.run(async |c| {
        for (i, expected) in increments.iter().enumerate() {
            let found = c.get_item("cold", key(i), None, Vec::new(), true).await.expect("get").expect("exists");
            assert_eq!(
                found.get("n"),
                Some(&item::AttributeValue::N(expected.to_string())),
                "item{i}: each acknowledged increment applied once"
            );
        }
    });
    let mut seen = vec![0u32; ITEMS];
    let mut start = None;
    loop {
        let page =
            client.run(async |c| c.page(&scan_request("cold", 10, start.clone(), 0, 1)).await).expect("scan page");
        for found in page.items {
            let Some(item::AttributeValue::S(id)) = found.get("id") else { panic!("an item without its id") };
            let i: usize = id.strip_prefix("item").and_then(|n| n.parse().ok()).expect("an id of this test");
            assert_eq!(found.get("pad"), Some(&item::AttributeValue::S(pad(i))), "item{i}'s own bytes");
            assert_eq!(found.get("n"), Some(&item::AttributeValue::N(increments[i].to_string())));
            seen[i] += 1;
        }
        match page.last_evaluated_key {
            Some(key) => start = Some(key),
            None => break,
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "the Scan returned every item once");
    node.stop();
}
