//! Erasure end to end, on the real binary over SQLite and a real PostgreSQL: by ids and by
//! filter, with a dry run, bad input and a legal hold; the erased question and answer appear
//! nowhere afterwards (API, web page, the SQLite file and its write-ahead log), an erased capture
//! answers 410 with its tombstone (on PostgreSQL the tombstones are analyzed as erasures grow
//! them), and `verify` names the erased captures as erased while a row deleted by hand is still
//! tampering. Retention erases what is older and keeps what is held; on
//! SQLite it gives the erased captures' space back to the file system, and a store created
//! before that (auto_vacuum NONE) keeps its size until `truthtable-collector vacuum` converts it.
// This whole crate is tests; its helpers may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::captures::rag_chat;
use common::postgres::Postgres;
use common::{metric, Process};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-tests";
/// Words only the captures to be erased hold: in the question, and in the answer.
const SECRET_Q: &str = "zanzibarquokka";
const SECRET_A: &str = "marmaladeplatypus";
/// A word a kept capture holds (the byte scan finds it, so the scan is not blind).
const KEPT_Q: &str = "lighthousewalrus";

fn records() -> Vec<Value> {
    vec![
        rag_chat(
            "keep-1",
            "2026-11-25T16:10:40Z",
            &format!("Can I return opened items? {KEPT_Q}"),
            "Yes, within 30 days for store credit.",
        ),
        rag_chat(
            "secret-1",
            "2026-11-25T16:11:40Z",
            &format!("My name is {SECRET_Q}, refund me"),
            &format!("Dear {SECRET_A}, refunds take 60 days."),
        ),
        rag_chat(
            "keep-2",
            "2026-11-25T16:12:40Z",
            "What about unopened items?",
            "Refunded within 60 days.",
        ),
        rag_chat(
            "secret-2",
            "2026-11-25T16:13:40Z",
            &format!("Again {SECRET_Q} here"),
            &format!("Hello again {SECRET_A}."),
        ),
        rag_chat(
            "held-1",
            "2026-11-25T16:14:40Z",
            "Held question, asked again",
            "Held answer.",
        ),
    ]
}

fn ndjson(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// POSTs each batch of `records` (`per` records a request) to the collector at `base`; each is
/// stored (200).
async fn post_all(client: &reqwest::Client, base: &str, records: &[Value], per: usize) {
    for chunk in records.chunks(per) {
        let r = client
            .post(format!("{base}/v1/captures"))
            .body(ndjson(chunk))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

async fn admin(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = client
        .post(url)
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, url: String) -> (u16, String) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn ids(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// Waits until `name` reaches `want` (a generous bound: on SQLite a pass erases 25 captures a
/// step and rests four times as long as each step took, so 6 000 take tens of seconds on a
/// loaded machine).
async fn metric_at_least(client: &reqwest::Client, base: &str, name: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while metric(client, base, name).await < want {
        assert!(Instant::now() < deadline, "{name} did not reach {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stores the captures, erases the secret ones (one by ids, one by filter) around a hold, and
/// checks every answer; leaves the log signed over the records and the erasures.
async fn erase_by_ids_and_filter(client: &reqwest::Client, base: &str) {
    let r = client
        .post(format!("{base}/v1/captures"))
        .header("content-type", "application/x-ndjson")
        .body(ndjson(&records()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    common::when_indexed(
        client,
        &format!("{base}/v1/captures?q={SECRET_Q}"),
        Duration::from_secs(30),
    )
    .await;
    metric_at_least(client, base, "truthtable_log_signed_size", 5).await;

    // Bad input: named, and nothing erased.
    let erasures = format!("{base}/v1/erasures");
    let r = client
        .post(&erasures)
        .json(&json!({"ids": ["secret-1"], "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no admin token");
    let r = client
        .post(&erasures)
        .bearer_auth("read-or-ingest")
        .json(&json!({"ids": ["secret-1"], "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a wrong token");
    let (s, v) = admin(client, erasures.clone(), json!({"ids": ["secret-1"]})).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("reason"), "{v}");
    let (s, v) = admin(client, erasures.clone(), json!({"reason": "everything"})).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("confirm_all"), "{v}");

    // A legal hold on held-1 (by ids), listed.
    let (s, hold) = admin(
        client,
        format!("{base}/v1/holds"),
        json!({"ids": ["held-1"], "reason": "litigation 2026-17"}),
    )
    .await;
    assert_eq!(s, 201, "{hold}");
    let holds: Value = client
        .get(format!("{base}/v1/holds"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(holds["holds"][0]["id"], hold["id"]);

    // A dry run answers and erases nothing.
    let (s, v) = admin(
        client,
        erasures.clone(),
        json!({"ids": ["secret-1", "no-such-id"], "reason": "GDPR Art. 17 request #41", "dry_run": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids(&v["erased"]), ["secret-1"]);
    assert_eq!(ids(&v["unknown"]), ["no-such-id"]);
    assert_eq!(v["dry_run"], true);
    assert_eq!(
        get(client, format!("{base}/v1/captures/secret-1")).await.0,
        200
    );

    // By ids: the unknown id is reported, the rest erased.
    let (s, v) = admin(
        client,
        erasures.clone(),
        json!({"ids": ["secret-1", "no-such-id"], "reason": "GDPR Art. 17 request #41"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids(&v["erased"]), ["secret-1"]);
    assert_eq!(ids(&v["unknown"]), ["no-such-id"]);

    // By filter (a search word): the held capture matches and is kept.
    let (s, v) = admin(
        client,
        erasures.clone(),
        json!({"q": "again", "reason": "GDPR Art. 17 request #42"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids(&v["erased"]), ["secret-2"]);
    assert_eq!(ids(&v["held"]), ["held-1"]);
    // By path: a dry run names what the path selects, held ones apart.
    let (s, v) = admin(
        client,
        erasures.clone(),
        json!({"path": "/v1/chat/completions", "reason": "by path", "dry_run": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids(&v["erased"]), ["keep-1", "keep-2"]);
    assert_eq!(ids(&v["held"]), ["held-1"]);
    let (_, v) = admin(
        client,
        erasures.clone(),
        json!({"path": "/v1/messages", "reason": "by path", "dry_run": true}),
    )
    .await;
    assert_eq!(ids(&v["erased"]), Vec::<String>::new(), "{v}");

    // Erased: 410 with the tombstone; gone from the list, the search and the web page.
    let r = client
        .get(format!("{base}/v1/captures/secret-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    let gone: Value = r.json().await.unwrap();
    let t = &gone["tombstone"];
    assert_eq!(t["id"], "secret-1");
    assert_eq!(t["reason"], "GDPR Art. 17 request #41");
    assert_eq!(t["started_at"], "2026-11-25T16:11:40Z");
    assert!(t["log_index"].is_u64(), "{gone}");
    assert!(t["erased_at"].as_str().unwrap().starts_with("20"), "{gone}");
    let (_, list) = get(client, format!("{base}/v1/captures")).await;
    assert!(!list.contains("secret-"), "{list}");
    assert!(list.contains("keep-1") && list.contains("held-1"));
    let (_, found) = get(client, format!("{base}/v1/captures?q={SECRET_A}")).await;
    let found: Value = serde_json::from_str(&found).unwrap();
    assert_eq!(found["captures"].as_array().unwrap().len(), 0, "{found}");
    let (s, page) = get(client, format!("{base}/ui/captures/secret-2")).await;
    assert_eq!(s, 410);
    assert!(
        page.contains("erased on") && page.contains("request #42"),
        "{page}"
    );
    for text in [&list, &page, &gone.to_string()] {
        assert!(!text.contains(SECRET_Q) && !text.contains(SECRET_A));
    }
    let (_, tombstones) = get(client, format!("{base}/v1/erasures")).await;
    assert!(tombstones.contains("secret-1") && tombstones.contains("secret-2"));
    list_shows_tombstones_when_asked(client, base).await;

    // Erasing again reports it, and changes nothing.
    let (_, v) = admin(
        client,
        erasures.clone(),
        json!({"ids": ["secret-1"], "reason": "again"}),
    )
    .await;
    assert_eq!(ids(&v["already_erased"]), ["secret-1"]);
    assert_eq!(ids(&v["erased"]), Vec::<String>::new());

    // Lifting the hold is logged too; then held-1 can be erased.
    let r = client
        .delete(format!("{base}/v1/holds/{}", hold["id"].as_str().unwrap()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(metric(client, base, "truthtable_erased_captures").await, 2);
    assert_eq!(
        metric(client, base, "truthtable_held_captures_total").await,
        1
    );
    assert_eq!(metric(client, base, "truthtable_legal_holds").await, 0);
    // 5 records, 2 erasures, a hold placed and lifted.
    metric_at_least(client, base, "truthtable_log_signed_size", 9).await;
}

/// `erased=show`: the list (JSON and web) shows the erased captures as tombstone rows in their
/// places, pages through them, and keeps them out when a content filter is given.
async fn list_shows_tombstones_when_asked(client: &reqwest::Client, base: &str) {
    let rows = |v: &Value| -> Vec<(String, bool)> {
        v["captures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_str().unwrap().to_owned(), r["erased"] == true))
            .collect()
    };
    let json = |text: String| serde_json::from_str::<Value>(&text).unwrap();
    let (s, all) = get(client, format!("{base}/v1/captures?erased=show")).await;
    assert_eq!(s, 200, "{all}");
    let all = json(all);
    let row = |id: &str, erased: bool| (id.to_owned(), erased);
    assert_eq!(
        rows(&all),
        [
            row("held-1", false),
            row("secret-2", true),
            row("keep-2", false),
            row("secret-1", true),
            row("keep-1", false)
        ],
        "{all}"
    );
    let stone = &all["captures"][3];
    assert_eq!(stone["reason"], "GDPR Art. 17 request #41");
    assert_eq!(stone["started_at"], "2026-11-25T16:11:40Z");
    assert!(stone["erased_at"].is_string() && stone["leaf_hash"].is_string());
    // `hide` is the default.
    let (_, hidden) = get(client, format!("{base}/v1/captures?erased=hide")).await;
    assert_eq!(rows(&json(hidden)).len(), 3);

    // Paged two at a time, older and back newer: the tombstones keep their places.
    let mut seen = Vec::new();
    let mut cursors = Vec::new();
    let mut url = format!("{base}/v1/captures?erased=show&limit=2");
    loop {
        let page = json(get(client, url.clone()).await.1);
        seen.extend(rows(&page));
        cursors.push(page["prev_after"].as_str().map(str::to_owned));
        match page["next_before"].as_str() {
            Some(b) => url = format!("{base}/v1/captures?erased=show&limit=2&before={b}"),
            None => break,
        }
    }
    assert_eq!(seen, rows(&all), "paged");
    let back = cursors[2]
        .clone()
        .expect("the last page links to newer ones");
    let newer = json(
        get(
            client,
            format!("{base}/v1/captures?erased=show&limit=2&after={back}"),
        )
        .await
        .1,
    );
    assert_eq!(
        rows(&newer),
        [row("keep-2", false), row("secret-1", true)],
        "{newer}"
    );

    // A tombstone matches the time range only: a content filter leaves them out.
    let (_, timed) = get(
        client,
        format!(
            "{base}/v1/captures?erased=show&since=2026-11-25T16:11:00Z&until=2026-11-25T16:13:00Z"
        ),
    )
    .await;
    assert_eq!(
        rows(&json(timed)),
        [row("keep-2", false), row("secret-1", true)]
    );
    let (_, by_model) = get(
        client,
        format!("{base}/v1/captures?erased=show&model=gpt-4o"),
    )
    .await;
    assert!(rows(&json(by_model)).iter().all(|(_, erased)| !erased));
    let (s, bad) = get(client, format!("{base}/v1/captures?erased=all")).await;
    assert_eq!(s, 400);
    assert!(bad.contains("erased: expected show or hide"), "{bad}");
    let (s, bad) = get(client, format!("{base}/v1/captures?erased=show&sort=ttft")).await;
    assert_eq!(s, 400);
    assert!(bad.contains("erased=show"), "{bad}");

    // The web view: tombstone rows saying when and why, and nothing of the content.
    let (s, page) = get(client, format!("{base}/ui?erased=show")).await;
    assert_eq!(s, 200);
    assert_eq!(page.matches("<tr class=\"erased\"").count(), 2, "{page}");
    assert!(
        page.contains("request #41") && page.contains("request #42"),
        "{page}"
    );
    let (_, plain) = get(client, format!("{base}/ui")).await;
    assert!(!plain.contains("class=\"erased\"") && !plain.contains("request #41"));
    for text in [&all.to_string(), &page] {
        assert!(!text.contains(SECRET_Q) && !text.contains(SECRET_A));
    }
}

fn verify(db: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .args(["verify", "--db", db])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn file_holds(path: &Path, word: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(word.len()).any(|w| w == word.as_bytes())
}

#[tokio::test]
async fn sqlite_erasure_by_ids_and_filter_leaves_tombstones_a_whole_log_and_no_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("erase.db");
    let client = reqwest::Client::new();
    let mut proc = Process::start_with(
        &["--db", &db.display().to_string()],
        &[("TRUTHTABLE_ADMIN_TOKEN", ADMIN)],
    );
    let base = proc.base();
    erase_by_ids_and_filter(&client, &base).await;

    // The bytes are gone from the file and its write-ahead log while the collector runs…
    let wal = dir.path().join("erase.db-wal");
    for word in [SECRET_Q, SECRET_A] {
        assert!(!file_holds(&db, word), "{word} is in the database file");
        assert!(!file_holds(&wal, word), "{word} is in the write-ahead log");
    }
    assert!(
        file_holds(&db, KEPT_Q) || file_holds(&wal, KEPT_Q),
        "the scan finds a kept capture's words"
    );
    proc.sigterm();
    assert!(proc.wait(20).success());
    // …and after it stopped.
    for word in [SECRET_Q, SECRET_A] {
        assert!(!file_holds(&db, word), "{word} is in the database file");
    }

    let (ok, out) = verify(&db.display().to_string());
    assert!(ok, "{out}");
    assert!(out.contains("erased capture secret-1"), "{out}");
    assert!(out.contains("erased capture secret-2"), "{out}");
    assert!(out.contains("GDPR Art. 17 request #42"), "{out}");
    assert!(
        out.lines().last().unwrap().ends_with("records verified"),
        "{out}"
    );

    // A row deleted by hand is still tampering, and named as such.
    let copy = dir.path().join("tampered.db");
    std::fs::copy(&db, &copy).unwrap();
    rusqlite::Connection::open(&copy)
        .unwrap()
        .execute_batch("DELETE FROM captures WHERE id = 'keep-2'")
        .unwrap();
    let (ok, out) = verify(&copy.display().to_string());
    assert!(!ok, "{out}");
    assert!(
        out.contains("capture keep-2 (index 2): deleted from the store"),
        "{out}"
    );
    // So is a tombstone no logged erasure accounts for.
    let copy = dir.path().join("forged.db");
    std::fs::copy(&db, &copy).unwrap();
    rusqlite::Connection::open(&copy)
        .unwrap()
        .execute_batch(
            "INSERT INTO tombstones (seq, id, started_at, leaf_hash, erased_at, reason, erasure, erased_by)
             SELECT seq, id, started_at, '', 'now', 'forged', 'nope', 'request' FROM captures WHERE id = 'keep-1';
             DELETE FROM captures WHERE id = 'keep-1';",
        )
        .unwrap();
    let (ok, out) = verify(&copy.display().to_string());
    assert!(!ok, "{out}");
    assert!(out.contains("capture keep-1 (index 0): deleted"), "{out}");
}

#[tokio::test]
async fn postgres_erasure_by_ids_and_filter_leaves_tombstones_and_a_whole_log() {
    let pg = Postgres::shared();
    let name = pg.database();
    let url = pg.url_with_password(&name);
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = common::keygen(dir.path(), "erase.test/log");
    let client = reqwest::Client::new();
    let mut proc = Process::start_with(
        &["--db", &url, "--log-key", &key],
        &[("TRUTHTABLE_ADMIN_TOKEN", ADMIN)],
    );
    let base = proc.base();
    erase_by_ids_and_filter(&client, &base).await;
    proc.sigterm();
    assert!(proc.wait(20).success());

    let stored = pg.sql(
        &name,
        &format!(
            "SELECT count(*) FROM captures c JOIN capture_digests d USING (seq)
             WHERE c.record LIKE '%{SECRET_Q}%' OR d.answer LIKE '%{SECRET_A}%'"
        ),
    );
    assert_eq!(
        stored.trim(),
        "0",
        "no stored record or digest holds the erased words"
    );
    // The erased rows' space is given back (their TOAST with them) by a VACUUM after each
    // erasure, not left to autovacuum, which a few deleted rows never wake.
    let vacuumed = pg.sql(
        &name,
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_stat_user_tables
         WHERE relname IN ('captures', 'capture_digests', 'capture_verdicts', 'capture_amendments')
           AND last_vacuum >= (SELECT max(erased_at)::timestamptz FROM tombstones)",
    );
    assert_eq!(
        vacuumed, "capture_amendments,capture_digests,capture_verdicts,captures",
        "every content table vacuumed after the last erasure"
    );
    // The erasures grew the tombstones from none: the collector analyzed them (not left to
    // autovacuum), so the plan ingest caches for looking its ids up in them is made again for a
    // table that is not empty — one made for an empty table reads all of it for every record.
    let analyzed = pg.sql(
        &name,
        "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'tombstones'",
    );
    assert_eq!(
        analyzed.trim(),
        "t",
        "the tombstones analyzed after the first erasure"
    );
    let (ok, out) = verify(&url);
    assert!(ok, "{out}");
    assert!(out.contains("erased capture secret-1"), "{out}");
    assert!(out.contains("erased capture secret-2"), "{out}");

    pg.sql(&name, "DELETE FROM captures WHERE id = 'keep-2'");
    let (ok, out) = verify(&url);
    assert!(!ok, "{out}");
    assert!(
        out.contains("capture keep-2 (index 2): deleted from the store"),
        "{out}"
    );
}

fn aged(id: &str, started_at: &str) -> Value {
    let mut r = common::record(id);
    r["started_at"] = json!(started_at);
    r
}

#[tokio::test]
async fn retention_erases_what_is_older_keeps_what_is_held_and_a_pass_killed_midway_finishes_once()
{
    const OLD: usize = 6000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("retain.db");
    let db_arg = db.display().to_string();
    let client = reqwest::Client::new();
    let env = [("TRUTHTABLE_ADMIN_TOKEN", ADMIN)];

    // Without retention: old and recent captures, and a hold on one old one.
    let mut proc = Process::start_with(&["--db", &db_arg], &env);
    let base = proc.base();
    let old: Vec<Value> = (0..OLD)
        .map(|i| aged(&format!("old-{i}"), "2020-01-01T00:00:00Z"))
        .collect();
    post_all(&client, &base, &old, 500).await;
    let recent = [
        aged("recent-1", "2099-01-01T00:00:00Z"),
        aged("recent-2", "2099-01-01T00:00:01Z"),
    ];
    let r = client
        .post(format!("{base}/v1/captures"))
        .body(ndjson(&recent))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, v) = admin(
        &client,
        format!("{base}/v1/holds"),
        json!({"ids": ["old-7"], "reason": "litigation"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    common::when_indexed(
        &client,
        &format!("{base}/v1/captures?model=gpt-4o"),
        Duration::from_secs(60),
    )
    .await;
    proc.sigterm();
    assert!(proc.wait(30).success());

    // With retention: the first pass starts within a minute; SIGKILL it midway.
    let args = ["--db", db_arg.as_str(), "--retain", "180d"];
    let mut proc = Process::start_with(&args, &env);
    let base = proc.base();
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let n = metric(&client, &base, "truthtable_erased_captures").await;
        if n > 0 {
            // Midway, what is left to erase is counted.
            let pending = metric(&client, &base, "truthtable_retention_pending_captures").await;
            assert!(pending > 0, "pending {pending} with {n} erased");
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no retention pass within a minute"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
    assert!(
        (at_kill as usize) < OLD - 1,
        "the pass was killed midway ({at_kill} erased)"
    );

    // After restart the pass finishes: every old capture erased once, the held and recent kept.
    let proc = Process::start_with(&args, &env);
    let base = proc.base();
    metric_at_least(
        &client,
        &base,
        "truthtable_erased_captures",
        (OLD - 1) as u64,
    )
    .await;
    metric_at_least(&client, &base, "truthtable_retention_passes_total", 1).await;
    assert_eq!(
        metric(&client, &base, "truthtable_erased_captures").await,
        (OLD - 1) as u64
    );
    assert_eq!(
        get(&client, format!("{base}/v1/captures/old-7")).await.0,
        200
    );
    assert_eq!(
        get(&client, format!("{base}/v1/captures/recent-2")).await.0,
        200
    );
    let (s, body) = get(&client, format!("{base}/v1/captures/old-3")).await;
    assert_eq!(s, 410);
    assert!(body.contains("retention 180d"), "{body}");
    assert!(metric(&client, &base, "truthtable_held_captures_total").await >= 1);
    assert_eq!(
        metric(&client, &base, "truthtable_retention_pending_captures").await,
        0,
        "nothing left to erase"
    );
    assert_eq!(
        metric(&client, &base, "truthtable_retention_held_captures").await,
        1,
        "old-7, held"
    );
    // Every erasure and the hold in the log, then signed.
    let events = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM log_events", [], |r| r.get(0))
            .unwrap();
        n as u64
    };
    metric_at_least(
        &client,
        &base,
        "truthtable_log_signed_size",
        OLD as u64 + 2 + events,
    )
    .await;
    let mut proc = proc;
    proc.sigterm();
    assert!(proc.wait(30).success());
    let (ok, out) = verify(&db_arg);
    assert!(
        ok,
        "{}",
        out.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    assert!(
        out.contains(&format!("{} erased capture(s)", OLD - 1)),
        "each capture erased once: {}",
        out.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_erased_while_its_export_waits_is_never_sent() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    // An OTLP receiver that refuses (503) until told to take, and keeps every body it took.
    let taking = Arc::new(AtomicBool::new(false));
    let bodies = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let receiver = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let (taking, bodies) = (Arc::clone(&taking), Arc::clone(&bodies));
            move |body: axum::body::Bytes| async move {
                if !taking.load(Ordering::SeqCst) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                bodies.lock().unwrap().push(body.to_vec());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("otlp.db").display().to_string();
    let proc = Process::start_with(
        &[
            "--db",
            &db,
            "--otlp-endpoint",
            &endpoint,
            "--otlp-retry-max-ms",
            "300",
        ],
        &[("TRUTHTABLE_ADMIN_TOKEN", ADMIN)],
    );
    let base = proc.base();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/v1/captures"))
        .body(ndjson(&records()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The exporter has read the batch and is being refused.
    metric_at_least(
        &client,
        &base,
        "truthtable_collector_otlp_spans_retried_total",
        1,
    )
    .await;
    let (s, v) = admin(
        &client,
        format!("{base}/v1/erasures"),
        json!({"ids": ["secret-1", "secret-2"], "reason": "GDPR Art. 17 request #43"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    taking.store(true, Ordering::SeqCst);
    metric_at_least(
        &client,
        &base,
        "truthtable_collector_otlp_spans_exported_total",
        3,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = bodies.lock().unwrap().concat();
    assert!(
        sent.windows(KEPT_Q.len()).any(|w| w == KEPT_Q.as_bytes()),
        "the kept captures were exported"
    );
    for word in [SECRET_Q, "secret-1", "secret-2"] {
        assert!(
            !sent.windows(word.len()).any(|w| w == word.as_bytes()),
            "{word} was exported after its erasure"
        );
    }
    assert_eq!(
        metric(
            &client,
            &base,
            "truthtable_collector_otlp_spans_exported_total"
        )
        .await,
        3
    );
}

/// Two replicas on one PostgreSQL run retention: one holds the pass's lease at a time; SIGKILLed
/// midway, it leaves the rest to the other, which takes the lease over once it expires and
/// finishes. Nothing stored is lost (ingest to the survivor goes on throughout), every old
/// capture is erased exactly once — one tombstone, one erasure log entry naming it — and
/// `verify` counts each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_run_retention_one_at_a_time_and_a_killed_pass_holder_loses_nothing() {
    const OLD: usize = 6000;
    let pg = Postgres::shared();
    let name = pg.database();
    let url = pg.url_with_password(&name);
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = common::keygen(dir.path(), "retention.test/log");
    let client = reqwest::Client::new();

    // The store, without retention: old captures and two recent ones, indexed.
    let mut loader = Process::start_with(&["--db", &url, "--log-key", &key], &[]);
    let base = loader.base();
    let old: Vec<Value> = (0..OLD)
        .map(|i| aged(&format!("old-{i}"), "2020-01-01T00:00:00Z"))
        .collect();
    for chunk in old
        .chunks(500)
        .map(ndjson)
        .chain([ndjson(&[aged("recent-0", "2099-01-01T00:00:00Z")])])
    {
        let r = client
            .post(format!("{base}/v1/captures"))
            .body(chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    common::when_indexed(
        &client,
        &format!("{base}/v1/captures?model=gpt-4o"),
        Duration::from_secs(60),
    )
    .await;
    loader.sigterm();
    assert!(loader.wait(30).success());

    // Two replicas with retention; find the one holding the pass's lease once it erased some.
    let args = [
        "--db",
        url.as_str(),
        "--log-key",
        key.as_str(),
        "--retain",
        "180d",
    ];
    let mut replicas = [
        Process::start_with(&args, &[]),
        Process::start_with(&args, &[]),
    ];
    let erased = || {
        pg.sql(&name, "SELECT count(*) FROM tombstones")
            .parse::<usize>()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let holder = loop {
        let lease = pg.sql(
            &name,
            "SELECT coalesce(holder, '') FROM export_cursors WHERE name = 'truthtable.retention'",
        );
        let n = erased();
        if n > 0 {
            let pid = lease.split('/').next().unwrap_or_default().to_owned();
            let holder = replicas
                .iter()
                .position(|r| r.child.id().to_string() == pid)
                .unwrap_or_else(|| panic!("the lease holder {lease} is neither replica"));
            break holder;
        }
        assert!(
            Instant::now() < deadline,
            "no retention pass within a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    replicas[holder].child.kill().unwrap();
    replicas[holder].child.wait().unwrap();
    let at_kill = erased();
    assert!(
        at_kill < OLD,
        "the pass was killed midway ({at_kill} erased)"
    );
    let survivor = &replicas[1 - holder];
    let base = survivor.base();

    // Ingest goes on at the survivor while it waits for the lease and finishes the pass.
    let recent: Vec<Value> = (1..=200)
        .map(|i| aged(&format!("recent-{i}"), "2099-01-01T00:00:00Z"))
        .collect();
    post_all(&client, &base, &recent, 20).await;
    let deadline = Instant::now() + Duration::from_secs(150);
    while erased() < OLD {
        assert!(
            Instant::now() < deadline,
            "the survivor did not finish the pass ({} of {OLD} erased)",
            erased()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    metric_at_least(&client, &base, "truthtable_retention_passes_total", 1).await;

    // Nothing lost, nothing old left, each old capture erased once, in one logged erasure.
    assert_eq!(
        pg.sql(
            &name,
            "SELECT count(*) FROM captures WHERE id LIKE 'recent-%'"
        ),
        "201"
    );
    assert_eq!(
        pg.sql(&name, "SELECT count(*) FROM captures WHERE id LIKE 'old-%'"),
        "0"
    );
    assert_eq!(
        pg.sql(&name, "SELECT count(DISTINCT id) FROM tombstones"),
        OLD.to_string()
    );
    let named = pg.sql(
        &name,
        "SELECT count(*) || ' ' || count(DISTINCT c) FROM log_events e,
             jsonb_array_elements_text(e.entry::jsonb -> 'captures') AS c
         WHERE e.kind = 'truthtable.erasure/v1'",
    );
    assert_eq!(
        named,
        format!("{OLD} {OLD}"),
        "erasure entries name each old capture once"
    );
    let events: u64 = pg
        .sql(&name, "SELECT count(*) FROM log_events")
        .parse()
        .unwrap();
    metric_at_least(
        &client,
        &base,
        "truthtable_log_signed_size",
        OLD as u64 + 201 + events,
    )
    .await;
    let mut survivor = replicas.into_iter().nth(1 - holder).unwrap();
    survivor.sigterm();
    assert!(survivor.wait(30).success());
    let (ok, out) = verify(&url);
    let tail = out.lines().rev().take(5).collect::<Vec<_>>().join("\n");
    assert!(ok, "{tail}");
    assert!(
        out.contains(&format!("{OLD} erased capture(s)")),
        "each capture erased once: {tail}"
    );
}

/// A capture of about `bytes` bytes, started at `started_at`: its question is long.
fn large(id: &str, started_at: &str, bytes: usize) -> Value {
    let question: String = (0..)
        .map(|i| format!("{id}word{i} "))
        .take_while({
            let mut len = 0;
            move |w| {
                len += w.len();
                len <= bytes
            }
        })
        .collect();
    let mut r = aged(id, started_at);
    let req =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": question}]}).to_string();
    r["request"]["body"] = common::captures::body(&req);
    r
}

/// The database file and its write-ahead log, in bytes.
fn file_and_wal(db: &Path) -> u64 {
    let wal = db.with_extension("db-wal");
    [db, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Stores `OLD` large captures started in 2020 and a few recent ones (the collector stopped
/// after), then lets a retention pass erase the old ones. Returns the file and WAL's size before
/// the pass, after it (the collector still running), and the erased records' bytes.
async fn retention_over_large_captures(db: &Path) -> (u64, u64, u64) {
    const OLD: usize = 1500;
    let db_arg = db.display().to_string();
    let client = reqwest::Client::new();
    let mut proc = Process::start_with(&["--db", &db_arg], &[]);
    let base = proc.base();
    let old: Vec<Value> = (0..OLD)
        .map(|i| large(&format!("old-{i}"), "2020-01-01T00:00:00Z", 6000))
        .collect();
    let recent: Vec<Value> = (0..100)
        .map(|i| large(&format!("recent-{i}"), "2099-01-01T00:00:00Z", 6000))
        .collect();
    post_all(&client, &base, &old, 100).await;
    post_all(&client, &base, &recent, 100).await;
    proc.sigterm();
    assert!(proc.wait(30).success());
    let erased_bytes: u64 = old.iter().map(|r| r.to_string().len() as u64).sum();
    let before = file_and_wal(db);

    let mut proc = Process::start_with(&["--db", &db_arg, "--retain", "180d"], &[]);
    let base = proc.base();
    metric_at_least(&client, &base, "truthtable_retention_passes_total", 1).await;
    assert_eq!(
        metric(&client, &base, "truthtable_erased_captures").await,
        OLD as u64
    );
    let after = file_and_wal(db);
    proc.sigterm();
    assert!(proc.wait(30).success());
    (before, after, erased_bytes)
}

fn auto_vacuum(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn sqlite_retention_gives_the_erased_captures_space_back_to_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shrinks.db");
    let (before, after, erased) = retention_over_large_captures(&db).await;
    assert_eq!(auto_vacuum(&db), 2, "a new store vacuums incrementally");
    assert!(
        before.saturating_sub(after) >= erased / 2,
        "the file and its WAL went from {before} to {after} bytes after {erased} bytes of captures were erased"
    );
}

#[tokio::test]
async fn an_old_sqlite_store_keeps_its_size_until_the_vacuum_command_converts_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    // A store as collectors created them before incremental vacuum: the file's first page
    // written (by switching to WAL) before the collector sets auto_vacuum.
    rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    let (before, after, erased) = retention_over_large_captures(&db).await;
    assert_eq!(auto_vacuum(&db), 0);
    // Without incremental vacuum the freed pages stay in the file, for reuse.
    assert!(
        after + erased / 10 > before,
        "the file went from {before} to {after} bytes"
    );

    // The collector says so once at start, naming the command…
    let db_arg = db.display().to_string();
    let proc = Process::start_with(&["--db", &db_arg], &[]);
    assert_eq!(
        proc.log_count("truthtable-collector vacuum --db"),
        1,
        "{:?}",
        proc.log()
    );
    // …which refuses the file while a collector has it open, changing nothing…
    let vacuum = || {
        Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
            .args(["vacuum", "--db", &db_arg])
            .output()
            .unwrap()
    };
    let out = vacuum();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut proc = proc;
    proc.sigterm();
    assert!(proc.wait(30).success());
    assert_eq!(auto_vacuum(&db), 0);
    // …and converts it once the collector stopped: the erased captures' space leaves the file.
    let out = vacuum();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("converted to auto_vacuum=INCREMENTAL"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(auto_vacuum(&db), 2);
    let converted = file_and_wal(&db);
    assert!(
        before.saturating_sub(converted) >= erased / 2,
        "{before} bytes before the pass, {converted} after the conversion"
    );
    let out = vacuum();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do"));
    let (ok, out) = verify(&db_arg);
    assert!(
        ok,
        "{}",
        out.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}
