//! The real binary: durability across SIGKILL, clean exit on SIGTERM, `--help`.
// This whole crate is tests; its helpers may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{ndjson, post, sqlite_count, sqlite_has, Process};

#[tokio::test]
async fn every_acknowledged_record_survives_sigkill_right_after_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("durable.db");
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for round in 0..5 {
        let mut proc = Process::start(&db);
        let ids: Vec<String> = (0..20).map(|i| format!("k{round}-{i}")).collect();
        let resp = post(&client, &proc.base(), ndjson(&ids), None).await;
        assert_eq!(resp.status(), 200);
        // SIGKILL the moment the 2xx arrives: no chance to flush anything after answering.
        proc.child.kill().unwrap();
        proc.child.wait().unwrap();
        acknowledged.extend(ids);
    }
    let proc = Process::start(&db);
    for id in &acknowledged {
        let r = client
            .get(format!("{}/v1/captures/{id}", proc.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged record {id} lost");
    }
    drop(proc);
    assert_eq!(sqlite_count(&db), acknowledged.len() as u64);
}

#[tokio::test]
async fn sigterm_exits_zero_and_leaves_a_clean_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("term.db");
    let client = reqwest::Client::new();
    let mut proc = Process::start(&db);
    let ids: Vec<String> = (0..3).map(|i| format!("t-{i}")).collect();
    assert_eq!(
        post(&client, &proc.base(), ndjson(&ids), None)
            .await
            .status(),
        200
    );
    proc.sigterm();
    let status = proc.wait(20);
    assert!(status.success(), "exit status {status:?}");
    // Closing checkpointed the log into the database file.
    let wal = dir.path().join("term.db-wal");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0,
        "WAL left non-empty after a clean shutdown"
    );
    assert_eq!(sqlite_count(&db), 3);
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inflight.db");
    let mut proc = Process::start(&db);
    let body = ndjson(&["slow-1".to_owned(), "slow-2".to_owned()]);
    let (first, second) = body.as_bytes().split_at(body.len() / 2);
    let mut conn = TcpStream::connect(proc.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "POST /v1/captures HTTP/1.1\r\nhost: collector\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(first).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    proc.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    conn.write_all(second).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "got {answer:?}");
    let status = proc.wait(20);
    assert!(status.success(), "exit status {status:?}");
    assert!(sqlite_has(&db, "slow-1"));
    assert!(sqlite_has(&db, "slow-2"));
}

#[test]
fn help_explains_flags_defaults_and_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--listen",
        "127.0.0.1:8081",
        "--db",
        "./truthtable.db",
        "--max-body-bytes",
        "TRUTHTABLE_INGEST_TOKEN",
        "TRUTHTABLE_READ_TOKEN",
        "SIGTERM",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn an_unusable_database_path_fails_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .args(["--listen", "127.0.0.1:0", "--db", "/nonexistent-dir/x/t.db"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening the store"), "{err}");
}
