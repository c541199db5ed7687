//! The `keel` CLI against an in-process keel-node on loopback.

// Indexing a serde_json Value yields Null for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use keel_node::server::{NodeConfig, run};
use serde_json::{Value, json};

struct Server {
    address: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("temp dir on ext4");
        let mut config = NodeConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().expect("address"));
        config.shards = 2;
        config.pin = false;
        config.page_cache_bytes = 16 * 1024 * 1024;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            run(config, flag, move |listening| {
                let _ = tx.send(listening.entry.to_string());
            })
            .expect("serve");
        });
        let address = rx.recv().expect("server listening");
        Self { address, stop, thread: Some(thread), _dir: dir }
    }

    /// Runs `keel ARGS…`; returns the exit code and stdout parsed as JSON.
    fn keel(&self, args: &[&str]) -> (i32, Value) {
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("--endpoint")
            .arg(&self.address)
            .args(args)
            .output()
            .expect("run keel");
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), json)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn the_cli_speaks_dynamodb_json_and_aws_cli_shapes() {
    let server = Server::start();
    let (code, out) = server.keel(&["table", "create", "music", "--pk", "artist:S", "--sk", "song:S"]);
    assert_eq!(code, 0);
    assert_eq!(out["TableDescription"]["KeySchema"][1], json!({"AttributeName": "song", "KeyType": "RANGE"}));
    for (song, year) in [("a", "1990"), ("b", "1995"), ("c", "2001")] {
        let item = json!({"artist": {"S": "X"}, "song": {"S": song}, "year": {"N": year}}).to_string();
        assert_eq!(server.keel(&["put", "music", &item, "--condition", "attribute_not_exists(song)"]).0, 0);
    }
    let again = json!({"artist": {"S": "X"}, "song": {"S": "a"}}).to_string();
    assert_eq!(server.keel(&["put", "music", &again, "--condition", "attribute_not_exists(song)"]).0, 254);

    let key = json!({"artist": {"S": "X"}, "song": {"S": "b"}}).to_string();
    let (_, got) = server.keel(&["get", "music", &key]);
    assert_eq!(got["Item"]["year"], json!({"N": "1995"}));
    let (_, projected) = server.keel(&["get", "music", &key, "--projection", "#y", "--names", r##"{"#y":"year"}"##]);
    assert_eq!(projected, json!({"Item": {"year": {"N": "1995"}}}));

    let (_, updated) = server.keel(&[
        "update",
        "music",
        &key,
        "--update",
        "SET #y = #y + :one",
        "--names",
        r##"{"#y":"year"}"##,
        "--values",
        r#"{":one":{"N":"1"}}"#,
        "--return",
        "ALL_NEW",
    ]);
    assert_eq!(updated["Attributes"]["year"], json!({"N": "1996"}));

    let (_, page) = server.keel(&[
        "query",
        "music",
        "--key-condition",
        "artist = :a",
        "--values",
        r#"{":a":{"S":"X"}}"#,
        "--limit",
        "2",
    ]);
    assert_eq!(page["Count"], json!(2));
    assert_eq!(page["LastEvaluatedKey"], json!({"artist": {"S": "X"}, "song": {"S": "b"}}));
    let start = page["LastEvaluatedKey"].to_string();
    let (_, rest) = server.keel(&[
        "query",
        "music",
        "--key-condition",
        "artist = :a",
        "--values",
        r#"{":a":{"S":"X"}}"#,
        "--start-key",
        &start,
    ]);
    assert_eq!(rest["Items"][0]["song"], json!({"S": "c"}));
    let (_, scanned) = server.keel(&["scan", "music", "--projection", "song"]);
    assert_eq!(scanned["Count"], json!(3));
    assert_eq!(scanned["Items"][0], json!({"song": {"S": "a"}}), "projection applies to Scan");

    assert_eq!(server.keel(&["delete", "music", &key]).0, 0);
    assert_eq!(server.keel(&["get", "music", &key]).1, json!({}));
    assert_eq!(server.keel(&["table", "list"]).1, json!({"TableNames": ["music"]}));
    assert_eq!(server.keel(&["table", "describe", "nope"]).0, 254);
    assert_eq!(server.keel(&["put", "music", "{not json"]).0, 2);
    assert_eq!(server.keel(&["table", "delete", "music"]).0, 0);

    // A standalone node is one healthy node with no replicated partitions;
    // an unreachable endpoint is listed as such.
    let both = format!("{},127.0.0.1:1", server.address);
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["--endpoint", &both, "cluster", "status", "--json"])
        .output()
        .expect("run keel");
    assert_eq!(out.status.code(), Some(0));
    let status: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["Nodes"][0]["Health"], json!("up"));
    assert_eq!(status["Nodes"][0]["Name"], json!("standalone"));
    assert_eq!(status["Partitions"], json!([]));
    assert_eq!(status["Unreachable"][0]["Endpoint"], json!("127.0.0.1:1"));
}

#[test]
fn the_cli_reports_an_unreachable_endpoint() {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["--endpoint", "127.0.0.1:1", "table", "list"])
        .output()
        .expect("run keel");
    assert_eq!(out.status.code(), Some(255));
}
