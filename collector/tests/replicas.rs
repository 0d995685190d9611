//! Several collector replicas on one PostgreSQL database behind one Envoy audit cluster, the
//! built filter delivering to all of them: every exchange is stored exactly once, also when a
//! replica is SIGKILLed or PostgreSQL restarts in the middle of the load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::envoy::{upstream, Envoy};
use common::postgres::{PgOptions, Postgres};
use common::{metric, Process};

/// Fast delivery and retries, as in the filter's own tests.
const FILTER: &str = r#"{"audit_cluster": "truthtable_audit", "flush_interval_ms": 20, "retry_initial_ms": 50, "retry_max_ms": 400, "audit_timeout_ms": 2000}"#;

/// Sends exchanges `from..to` through Envoy, `concurrency` at a time; each carries its number
/// in `x-test-case`, which the record keeps.
async fn load(envoy: &Envoy, from: usize, to: usize, concurrency: usize) {
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..concurrency {
        let (client, url) = (client.clone(), envoy.url("/v1/chat/completions"));
        tasks.spawn(async move {
            for case in (from + lane..to).step_by(concurrency) {
                let resp = client
                    .post(&url)
                    .header("x-test-case", case.to_string())
                    .header("content-type", "application/json")
                    .body(format!(
                        r#"{{"model":"m","messages":[{{"role":"user","content":"question {case}"}}]}}"#
                    ))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200, "exchange {case}");
                resp.bytes().await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// The `x-test-case` of every stored record, sorted (repeats kept).
fn stored_cases(pg: &Postgres, db: &str) -> Vec<usize> {
    let out = pg.sql(
        db,
        "SELECT h->>1 FROM captures, json_array_elements(record::json->'request'->'headers') h
         WHERE h->>0 = 'x-test-case'",
    );
    let mut cases: Vec<usize> = out.lines().map(|l| l.parse().unwrap()).collect();
    cases.sort_unstable();
    cases
}

/// Waits until the database holds `n` records, then checks they are exchanges 0..n, once each.
fn assert_each_stored_once(pg: &Postgres, db: &str, n: usize) {
    pg.wait_for(
        db,
        "SELECT count(*) FROM captures",
        Duration::from_secs(60),
        |c| c.parse::<usize>().unwrap() >= n,
    );
    // Give late redeliveries a moment: none may add a row.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stored_cases(pg, db), (0..n).collect::<Vec<_>>());
}

/// Polls `done` until it holds, failing with `what` after 30 s.
async fn wait_until<F, Fut>(what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ingest_requests(proc: &Process) -> u64 {
    let client = reqwest::Client::new();
    metric(
        &client,
        &proc.base(),
        "truthtable_collector_ingest_requests_total",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_one_cluster_store_every_exchange_exactly_once() {
    let pg = Postgres::shared();
    let db = pg.database();
    let url = pg.url_with_password(&db);
    let replicas = [
        Process::start_with(&["--db", &url], &[]),
        Process::start_with(&["--db", &url], &[]),
    ];
    let ports: Vec<u16> = replicas.iter().map(|r| r.addr.port()).collect();
    let envoy = Envoy::start(upstream().await, &ports, FILTER);
    load(&envoy, 0, 300, 8).await;
    assert_each_stored_once(pg, &db, 300);
    for (i, r) in replicas.iter().enumerate() {
        assert!(ingest_requests(r).await > 0, "replica {i} got no delivery");
    }
    assert_eq!(envoy.metric("truthtable_records_dropped"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sigkilled_mid_load_loses_nothing_after_the_filters_retries() {
    let pg = Postgres::shared();
    let db = pg.database();
    let url = pg.url_with_password(&db);
    let mut doomed = Process::start_with(&["--db", &url], &[]);
    let survivor = Process::start_with(&["--db", &url], &[]);
    let envoy = Envoy::start(
        upstream().await,
        &[doomed.addr.port(), survivor.addr.port()],
        FILTER,
    );
    let killer = async {
        // Kill it once it has taken a delivery, while the load goes on (a fast load of 400
        // exchanges makes only a few batches for each replica: waiting for five could outlast it).
        let deadline = Instant::now() + Duration::from_secs(30);
        while ingest_requests(&doomed).await < 1 {
            assert!(Instant::now() < deadline, "no delivery reached the replica");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        doomed.child.kill().unwrap();
        doomed.child.wait().unwrap();
    };
    tokio::join!(load(&envoy, 0, 400, 8), killer);
    assert_each_stored_once(pg, &db, 400);
    assert!(
        envoy.metric("truthtable_delivery_failures") > 0.0,
        "the dead replica cost some callouts"
    );
    assert_eq!(envoy.metric("truthtable_records_dropped"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_mid_load_loses_nothing_and_stores_nothing_twice() {
    let pg = Postgres::start(PgOptions::default());
    let db = pg.database();
    let url = pg.url_with_password(&db);
    let replicas = [
        Process::start_with(&["--db", &url], &[]),
        Process::start_with(&["--db", &url], &[]),
    ];
    let ports: Vec<u16> = replicas.iter().map(|r| r.addr.port()).collect();
    let envoy = Envoy::start(upstream().await, &ports, FILTER);
    // In phases, so the outage always falls inside the load (a load racing a restart could
    // finish first, the outage then refusing nothing): deliveries flow, the database crashes
    // (no clean shutdown, recovery from the WAL at start), exchanges go on while it is down
    // until a delivery has been refused, then it comes back and the load goes on.
    load(&envoy, 0, 100, 8).await;
    wait_until("a delivery reached a replica", || async {
        let mut delivered = 0;
        for r in &replicas {
            delivered += ingest_requests(r).await;
        }
        delivered >= 1
    })
    .await;
    tokio::task::block_in_place(|| pg.stop("immediate"));
    load(&envoy, 100, 300, 8).await;
    wait_until("the outage refused a delivery", || async {
        envoy.metric("truthtable_delivery_failures") > 0.0
    })
    .await;
    tokio::task::block_in_place(|| pg.start_again());
    load(&envoy, 300, 400, 8).await;
    assert_each_stored_once(&pg, &db, 400);
    assert!(
        envoy.metric("truthtable_delivery_failures") > 0.0,
        "the outage refused some deliveries"
    );
    for r in &replicas {
        assert!(
            r.log_count("database unavailable") >= 1,
            "{}",
            r.log().join("\n")
        );
    }
    assert_eq!(envoy.metric("truthtable_records_dropped"), 0.0);
}
