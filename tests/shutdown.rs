//! What Envoy allows the filter when it stops: a hot restart lets the old process deliver what it
//! holds through its drain time; a plain SIGTERM stops the VMs a few milliseconds after telling
//! them, so what is still held is lost — counted as dropped, and said in Envoy's log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An Envoy process of the shipped config, with hot restart enabled (`base_id` kept apart from
/// other tests' Envoys), its admin and listener ports chosen by the caller.
fn envoy(
    dir: &std::path::Path,
    base_id: u32,
    epoch: u32,
    ports: (u16, u16, u16, u16),
    filter: &str,
) -> Child {
    let (admin, listen, upstream, audit) = ports;
    let config = dir.join("envoy.yaml");
    std::fs::write(
        &config,
        render_envoy_yaml(admin, listen, upstream, audit, Some(filter)),
    )
    .unwrap();
    Command::new(envoy_bin())
        .arg("-c")
        .arg(&config)
        .args(["--concurrency", "2", "--base-id", &base_id.to_string()])
        .args(["--restart-epoch", &epoch.to_string()])
        .args(["--drain-time-s", "3", "--parent-shutdown-time-s", "8"])
        .args(["-l", "warning", "--component-log-level", "wasm:info"])
        .args(["--file-flush-interval-msec", "20", "--log-path"])
        .arg(dir.join(format!("envoy-{epoch}.log")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_ready(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !admin_get(admin, "/ready").is_some_and(|b| b.starts_with("LIVE")) {
        assert!(Instant::now() < deadline, "Envoy not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_queued(admin: u16, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while prometheus_metric(admin, "truthtable_queue_records") != Some(n) {
        assert!(Instant::now() < deadline, "{n} records not queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A base id no other test's Envoy uses (hot restart keys its shared memory by it).
fn base_id() -> u32 {
    std::process::id() % 10_000 * 10 + 7
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_hot_restart_the_old_process_delivers_what_it_holds_during_its_drain_time() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let mut collector = Collector::down(None);
    let filter = filter_config("");
    let (admin0, admin1, listen) = (free_port(), free_port(), free_port());
    let base = base_id();
    let mut parent = envoy(
        dir.path(),
        base,
        0,
        (admin0, listen, upstream.port, collector.port),
        &filter,
    );
    wait_ready(admin0);
    for i in 0..10 {
        fetch(
            client()
                .get(format!("http://127.0.0.1:{listen}/json"))
                .header("x-test-case", format!("before-restart-{i}")),
        )
        .await;
    }
    wait_queued(admin0, 10.0).await;

    let mut child = envoy(
        dir.path(),
        base,
        1,
        (admin1, listen, upstream.port, collector.port),
        &filter,
    );
    wait_ready(admin1);
    // The audit cluster comes back while the old process drains: it still delivers.
    collector.start().await;
    let records = collector.wait_records(10, Duration::from_secs(8)).await;
    let mut cases: Vec<&str> = records
        .iter()
        .filter_map(|r| header(&r["request"], "x-test-case"))
        .collect();
    cases.sort();
    let want: Vec<String> = (0..10).map(|i| format!("before-restart-{i}")).collect();
    assert_eq!(cases, want, "each record of the old process stored once");
    assert!(
        parent.try_wait().unwrap().is_none(),
        "delivered before the parent's shutdown time"
    );
    let _ = child.kill();
    let _ = parent.kill();
    let _ = child.wait();
    let _ = parent.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_with_records_held_counts_them_as_dropped_and_logs_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let (admin, listen, audit) = (free_port(), free_port(), free_port());
    let mut envoy = envoy(
        dir.path(),
        base_id() + 1,
        0,
        (admin, listen, upstream.port, audit),
        &filter_config(""),
    );
    wait_ready(admin);
    for _ in 0..7 {
        fetch(client().get(format!("http://127.0.0.1:{listen}/json"))).await;
    }
    wait_queued(admin, 7.0).await;
    Command::new("kill")
        .arg("-TERM")
        .arg(envoy.id().to_string())
        .status()
        .unwrap();
    let status = envoy.wait().unwrap();
    assert!(status.success(), "Envoy exits cleanly on SIGTERM");
    let log = std::fs::read_to_string(dir.path().join("envoy-0.log")).unwrap();
    let said: u64 = log
        .lines()
        .filter(|l| l.contains("[warning]") && l.contains("records dropped: Envoy is stopping"))
        .filter_map(|l| {
            let at = l.rfind("truthtable: ")? + "truthtable: ".len();
            l[at..].split(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(said, 7, "Envoy's log:\n{log}");
}
