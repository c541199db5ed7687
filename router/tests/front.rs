//! The front end's three binaries as processes on loopback, with no
//! storage node to reach: the router answers with typed errors, keeps
//! sending one MemDS lookup per keyed request, reports its services, and
//! goes on through the second MemDS server when the first is killed.
//! (`ops/tests/dev.rs` runs them in front of a real cluster.)

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_wire::client::{BlockingClient, ClientConfig, ClientError};
use keel_wire::frame::{FrameDecoder, encode_frame};
use keel_wire::item::{AttributeValue, Item};
use keel_wire::protocol::ErrorCode;
use keel_wire::routing::{self, Body, MapStatus};

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(binary: &str, args: &[&str]) -> Child {
    Command::new(binary).args(args).stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("start a binary")
}

/// `count` consecutive free ports below the ephemeral range.
fn free_ports(count: u16) -> u16 {
    let mut base = 32_000 - u16::try_from(std::process::id() % 60).unwrap_or(0) * 10;
    loop {
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
        base -= count;
    }
}

/// One routing-protocol request.
fn ask(endpoint: &str, body: &Body) -> std::io::Result<Body> {
    let mut stream = TcpStream::connect(endpoint)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut frame = Vec::new();
    encode_frame(&routing::encode(7, body), &mut frame);
    stream.write_all(&frame)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some(span)) = FrameDecoder::default().decode(&buf) {
            let body = buf.get(span.body_start..span.end).unwrap_or(&[]);
            return routing::decode(body).map(|(_, b)| b).map_err(std::io::Error::other);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    }
}

fn status(endpoint: &str) -> Option<MapStatus> {
    match ask(endpoint, &Body::Status) {
        Ok(Body::StatusAnswer(status)) => Some(status),
        _ => None,
    }
}

/// Polls `check` every 50 ms for up to 20 s.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn without_storage_nodes_the_router_answers_typed_errors_and_fails_over_between_memds_servers() {
    let base = free_ports(6);
    let at = |i: u16| format!("127.0.0.1:{}", base + i);
    let (router, admin, control, memds1, memds2) = (at(0), at(1), at(2), at(3), at(4));
    // Nothing listens at the node's address (the port after the others).
    let dead_node = at(5);
    let mut processes = Processes(Vec::new());
    processes.0.push(spawn(env!("CARGO_BIN_EXE_keel-control"), &["--nodes", &dead_node, "--listen", &control]));
    processes.0.push(spawn(env!("CARGO_BIN_EXE_keel-memds"), &["--control", &control, "--listen", &memds1]));
    processes.0.push(spawn(env!("CARGO_BIN_EXE_keel-memds"), &["--control", &control, "--listen", &memds2]));
    let memds_list = format!("{memds1},{memds2}");
    let router_args = ["--listen", &router, "--admin-listen", &admin, "--memds", &memds_list, "--control", &control];
    processes.0.push(spawn(env!("CARGO_BIN_EXE_keel-router"), &router_args));

    // Both MemDS servers follow the control plane's epoch.
    let epoch = eventually("the control plane", || status(&control)).epoch;
    for memds in [&memds1, &memds2] {
        eventually("a MemDS server to follow", || status(memds).filter(|s| s.epoch == epoch));
    }
    eventually("the router's admin port", || status(&admin));

    let mut config = ClientConfig::new(router.clone());
    config.retries_max = 0;
    config.request_timeout = Duration::from_secs(10);
    let client = eventually("the router's client port", || BlockingClient::connect(config.clone()).ok());
    let key = Item::from([("id".to_owned(), AttributeValue::S("k".into()))]);
    let get = || client.run(async |c| c.get_item("t", key.clone(), None, Vec::new(), true).await);
    match get() {
        Err(ClientError::Service { code, message }) => {
            assert_eq!(code, ErrorCode::ServiceUnavailable, "{message}");
        }
        other => panic!("expected ServiceUnavailable, got {other:?}"),
    }
    let counters = status(&admin).expect("router status");
    assert_eq!(counters.counter("requests"), 1);
    assert!(counters.counter("lookups_sent") >= 1, "{counters:?}");
    assert!(counters.counter("lookups_answered") >= 1, "a MemDS server answered: {counters:?}");

    // Cluster status through the router names every service.
    let services = eventually("both MemDS servers healthy in the router's view", || {
        let status = client.run(async |c| c.cluster_status().await).ok()?;
        let healthy = status.services.iter().filter(|s| s.role == "memds" && s.healthy).count();
        (healthy == 2).then_some(status.services)
    });
    let roles: Vec<&str> = services.iter().map(|s| s.role.as_str()).collect();
    assert_eq!(roles, ["router", "memds", "memds", "control"]);

    // Kill the first MemDS server: lookups go on through the second.
    let first = processes.0.get_mut(1).expect("memds-1");
    first.kill().expect("kill -9 memds-1");
    let _ = first.wait();
    for _ in 0..3 {
        let before = status(&admin).expect("router status").counter("lookups_answered");
        assert!(matches!(get(), Err(ClientError::Service { code: ErrorCode::ServiceUnavailable, .. })));
        let after = status(&admin).expect("router status").counter("lookups_answered");
        assert!(after > before, "the second MemDS server answered the lookups ({before} → {after})");
    }
    let flushed = ask(&admin, &Body::FlushCache).expect("flush");
    assert!(matches!(flushed, Body::StatusAnswer(s) if s.tables == 0 && s.partitions == 0));
}
