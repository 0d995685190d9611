//! The verifiable log on a real PostgreSQL shared by two collector replicas: one sequences and
//! signs at a time, the other takes over when it is SIGKILLed under load, and the log never
//! forks — every record sequenced exactly once, every checkpoint consistent with every other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::{metric, ndjson, post, Process};

#[tokio::test]
async fn the_sequencing_replica_sigkilled_under_load_leaves_one_unforked_log() {
    let pg = Postgres::shared();
    let db = pg.database();
    let url = pg.url_with_password(&db);
    let dir = tempfile::tempdir().unwrap();
    let (key, vkey) = common::keygen(dir.path(), "replicas.test/log");
    let args = ["--db", url.as_str(), "--log-key", key.as_str()];
    let mut replicas = [
        Process::start_with(&args, &[]),
        Process::start_with(&args, &[]),
    ];
    let client = reqwest::Client::new();
    assert_eq!(
        post(&client, &replicas[0].base(), ndjson(&ids("warm", 10)), None)
            .await
            .status(),
        200
    );
    // Which replica holds the lease: the one that signs.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sequencer = loop {
        let mut signing = None;
        for (i, r) in replicas.iter().enumerate() {
            if metric(
                &client,
                &r.base(),
                "truthtable_log_checkpoints_signed_total",
            )
            .await
                > 0
            {
                signing = Some(i);
            }
        }
        if let Some(i) = signing {
            break i;
        }
        assert!(Instant::now() < deadline, "no replica signed a checkpoint");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let survivor = 1 - sequencer;
    let bases = [replicas[0].base(), replicas[1].base()];
    // Load on both, the sequencer SIGKILLed in the middle of it.
    let mut acknowledged = 10;
    let start = Instant::now();
    let mut killed = false;
    let mut round = 0;
    while start.elapsed() < Duration::from_secs(4) {
        if !killed && start.elapsed() > Duration::from_millis(1500) {
            replicas[sequencer].child.kill().unwrap();
            replicas[sequencer].child.wait().unwrap();
            killed = true;
        }
        let batch = ndjson(&ids(&format!("load{round}"), 20));
        let (a, b) = tokio::join!(
            client
                .post(format!("{}/v1/captures", bases[sequencer]))
                .header("content-type", "application/x-ndjson")
                .body(batch.clone())
                .send(),
            post(
                &client,
                &bases[survivor],
                batch.replace("load", "more"),
                None
            )
        );
        if a.is_ok_and(|r| r.status() == 200) {
            acknowledged += 20;
        }
        assert_eq!(b.status(), 200);
        acknowledged += 20;
        round += 1;
    }
    assert!(killed);
    // The survivor takes the lease over and sequences everything stored.
    let stored: u64 = pg
        .sql(&db, "SELECT count(*) FROM captures")
        .trim()
        .parse()
        .unwrap();
    assert!(
        stored >= acknowledged,
        "{stored} stored, {acknowledged} acknowledged"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let size = metric(&client, &bases[survivor], "truthtable_log_signed_size").await;
        if size == stored {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor signed {size} of {stored}; log {}; state {}; captures after the cursor {}; activity {}",
            pg.sql(&db, "SELECT count(*) || ' beyond; idx ' || min(e.idx) || '-' || max(e.idx) || ' tx ' || min(c.tx::text) || '-' || max(c.tx::text) FROM log_entries e JOIN captures c USING (seq), log_state s WHERE (c.tx, c.seq) > (split_part(s.cursor, '-', 1)::xid8, split_part(s.cursor, '-', 2)::int8)"),
            pg.sql(&db, "SELECT size || ' ' || cursor || ' ' || (SELECT count(*) FROM log_checkpoints) || ' ' || (SELECT max(size) FROM log_checkpoints) FROM log_state"),
            pg.sql(&db, "SELECT count(*) || ' ' || min(tx::text) || ' ' || pg_snapshot_xmin(pg_current_snapshot()) FROM captures c WHERE NOT EXISTS (SELECT 1 FROM log_entries e WHERE e.seq = c.seq)"),
            pg.sql(&db, "SELECT string_agg(state || ':' || coalesce(backend_xid::text, '-') || ':' || left(query, 40), ' | ') FROM pg_stat_activity WHERE datname = current_database()")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pg.sql(
            &db,
            "SELECT count(*) || ' ' || count(DISTINCT seq) || ' ' || coalesce(max(idx), -1) + 1 FROM log_entries"
        )
        .trim(),
        format!("{stored} {stored} {stored}"),
        "every record sequenced exactly once, at indexes 0 to {stored} - 1"
    );
    // Every kept checkpoint — signed by either replica — is a root of the one tree.
    let out = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .args(["verify", "--db", &url, "--key", &vkey])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.ends_with(&format!("{stored} of {stored} records verified\n")),
        "{report}"
    );
    let checkpoints: u64 = pg
        .sql(&db, "SELECT count(*) FROM log_checkpoints")
        .trim()
        .parse()
        .unwrap();
    assert!(checkpoints >= 2, "{checkpoints} checkpoints");
    assert!(
        report.contains(&format!(
            "{checkpoints} of {checkpoints} signed checkpoints match"
        )),
        "{report}"
    );
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}
