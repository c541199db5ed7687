//! End to end: the `keel-node` binary on loopback, spoken to with frames
//! over TCP; graceful stop with SIGTERM and a kill -9, each followed by a
//! restart that still holds every acknowledged write.

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
}

impl Node {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, None)
    }

    fn start_with(dir: &Path, notify_socket: Option<&Path>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel-node"));
        if let Some(socket) = notify_socket {
            command.env("NOTIFY_SOCKET", socket);
        }
        let mut child = command
            .args(["--standalone", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start keel-node");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let address =
            line.trim().strip_prefix("keel-node listening on ").unwrap_or_else(|| panic!("unexpected: {line:?}"));
        let stream = TcpStream::connect(address).expect("connect");
        Self { child, stream, next_id: 0, address: address.to_owned() }
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

fn put(node: &mut Node, id: &str, n: u32) -> Reply {
    let bytes = item::encode(&item::from_json(&json!({"id": {"S": id}, "n": {"N": n.to_string()}})).expect("item"));
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
    let create = Request::CreateTable {
        table: "users".into(),
        partition_key: ("id".into(), KeyKind::S),
        sort_key: None,
        partitions: 4,
    };
    assert!(matches!(node.call(&create), Reply::Table(_)));
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
    let node = Node::start_with(&tmp.path().join("data"), Some(&socket_path));
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY notification");
    assert_eq!(buf.get(..n), Some(&b"READY=1"[..]));
    node.stop();
    let n = socket.recv(&mut buf).expect("STOPPING notification");
    assert_eq!(buf.get(..n), Some(&b"STOPPING=1"[..]));
}
