//! The store's promises, checked against both backends: every case runs once on a SQLite file
//! and once on a fresh database of a real PostgreSQL server (`common::postgres`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::postgres::{Postgres, PASSWORD};
use truthtable_collector::config::{Config, DbTarget};
use truthtable_collector::digest;
use truthtable_collector::search;
use truthtable_collector::store::erase::{EraseRequest, EraseStore};
use truthtable_collector::store::{
    BatchOutcome, CaptureStore, CaptureSummary, Cursor, Digest, ListFilter, ListQuery, NewCapture,
    NewVerdict, Page, Sort, StatusFilter, Store, StoredCapture,
};
use truthtable_collector::timestamp::unix_micros;

/// Where a case's store lives; `open` may be called again to reopen it.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Backend {
        Backend::Postgres(Postgres::shared().database())
    }

    async fn open(&self) -> Store {
        let mut config = Config::with_db(match self {
            Backend::Sqlite(dir) => DbTarget::Sqlite(dir.path().join("t.db")),
            Backend::Postgres(db) => DbTarget::Postgres(Postgres::shared().url(db)),
        });
        config.db_password.env = Some(PASSWORD.to_owned());
        Store::open(&config).await.unwrap()
    }

    /// Runs SQL on the store's database directly, beside the collector.
    fn sql(&self, sql: &str) {
        match self {
            Backend::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
                conn.execute_batch(sql).unwrap();
            }
            Backend::Postgres(db) => {
                Postgres::shared().sql(db, sql);
            }
        }
    }
}

fn capture(id: &str) -> NewCapture {
    NewCapture {
        id: id.into(),
        started_at: "2026-11-25T16:10:40.186Z".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: Some(200),
        outcome: "complete".into(),
        duration_ms: 12.5,
        raw: format!("{{\"id\":\"{id}\"}}"),
    }
}

/// The digest the tests give `capture(id)`.
fn digest_for(id: &str) -> Digest {
    Digest {
        version: digest::VERSION,
        started_us: unix_micros("2026-11-25T16:10:40.186Z"),
        outcome: "complete".into(),
        status: Some(200),
        protocol: "openai.chat".into(),
        model: Some("gpt-4o".into()),
        question: Some(format!("question of {id}")),
        answer: Some("an answer".into()),
        words: search::index_words(Some(&format!("question of {id}")), Some("an answer")),
        ..Digest::default()
    }
}

/// Each capture with its `digest_for`.
fn indexed(captures: Vec<NewCapture>) -> Vec<(NewCapture, Digest)> {
    captures
        .into_iter()
        .map(|c| {
            let d = digest_for(&c.id);
            (c, d)
        })
        .collect()
}

/// Stores the captures as ingest does, then writes the digests of those newly stored as the
/// indexer does behind it (`truthtable_collector::indexer`).
async fn store_indexed(store: &Store, rows: Vec<(NewCapture, Digest)>) -> BatchOutcome {
    let (captures, digests): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    let out = store.insert_batch(captures).await.unwrap();
    let put = out
        .new
        .iter()
        .map(|&(i, seq)| (seq, digests[i].clone()))
        .collect();
    assert_eq!(store.put_digests(put).await.unwrap(), out.stored);
    out
}

fn newest(limit: u32) -> ListQuery {
    ListQuery {
        limit,
        ..ListQuery::default()
    }
}

fn filtered(filter: ListFilter) -> ListQuery {
    ListQuery {
        limit: 100,
        filter,
        page: Page::Newest,
        ..ListQuery::default()
    }
}

fn ids(rows: &[CaptureSummary]) -> Vec<&str> {
    rows.iter().map(|s| s.id.as_str()).collect()
}

fn batch(prefix: &str, n: usize) -> Vec<NewCapture> {
    (0..n).map(|i| capture(&format!("{prefix}{i}"))).collect()
}

async fn duplicates_are_skipped_and_counted(b: Backend) {
    let store = b.open().await;
    let out = store
        .insert_batch(vec![capture("a"), capture("b"), capture("a")])
        .await
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (2, 1));
    // The records stored, by their place in the batch, with growing seqs.
    assert_eq!(out.new.iter().map(|n| n.0).collect::<Vec<_>>(), [0, 1]);
    assert!(out.new[0].1 < out.new[1].1);
    let again = store
        .insert_batch(vec![capture("b"), capture("c")])
        .await
        .unwrap();
    assert_eq!((again.stored, again.duplicates), (1, 1));
    assert_eq!(again.new.len(), 1);
    assert_eq!(again.new[0].0, 1);
    assert!(again.new[0].1 > out.new[1].1);
    assert_eq!(store.stats().await.unwrap().records, 3);
}

async fn the_copy_stored_first_is_kept(b: Backend) {
    let store = b.open().await;
    let mut first = capture("x");
    first.raw = "{\"id\":\"x\",\"n\":1}".into();
    let mut second = capture("x");
    second.raw = "{\"id\":\"x\",\"n\":2}".into();
    store
        .insert_batch(vec![first.clone(), second.clone()])
        .await
        .unwrap();
    store.insert_batch(vec![second]).await.unwrap();
    assert_eq!(store.get("x".into()).await.unwrap(), Some(first.raw));
}

async fn an_amendment_is_kept_beside_its_capture_whose_bytes_stay(b: Backend) {
    let store = b.open().await;
    let first = capture("held");
    let mut amendment = capture("held");
    amendment.outcome = "client_aborted".into();
    amendment.raw = r#"{"id":"held","outcome":"client_aborted","amendment":{"reason":"client_gone_during_hold","held_ms":3.5}}"#.into();
    store.insert_batch(vec![first.clone()]).await.unwrap();
    assert_eq!(
        store.amendments("held".into()).await.unwrap(),
        Vec::<String>::new()
    );
    // Delivered twice (a retry): kept once; the capture's stored bytes do not change.
    let out = store
        .insert_batch(vec![amendment.clone(), capture("other")])
        .await
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (1, 1));
    store.insert_batch(vec![amendment.clone()]).await.unwrap();
    assert_eq!(store.get("held".into()).await.unwrap(), Some(first.raw));
    assert_eq!(
        store.amendments("held".into()).await.unwrap(),
        vec![amendment.raw.clone()]
    );
    assert_eq!(
        store.amendments("other".into()).await.unwrap(),
        Vec::<String>::new()
    );
    // An amendment that arrives before its capture is a whole record: stored as the capture too.
    let mut early = capture("early");
    early.raw = amendment.raw.replace("held", "early");
    store.insert_batch(vec![early.clone()]).await.unwrap();
    assert_eq!(
        store.get("early".into()).await.unwrap(),
        Some(early.raw.clone())
    );
    assert_eq!(
        store.amendments("early".into()).await.unwrap(),
        vec![early.raw]
    );
    // A body that merely mentions the word is no amendment.
    let mut mention = capture("mention");
    mention.raw = r#"{"id":"mention","data":"say \"amendment\": {}"}"#.into();
    store.insert_batch(vec![mention]).await.unwrap();
    assert_eq!(
        store.amendments("mention".into()).await.unwrap(),
        Vec::<String>::new()
    );
}

async fn list_pages_newest_first(b: Backend) {
    let store = b.open().await;
    store_indexed(&store, indexed(batch("r", 5))).await;
    let page = store.list(newest(2)).await.unwrap();
    assert_eq!(ids(&page), ["r4", "r3"]);
    let older = store
        .list(ListQuery {
            page: Page::Before(page[1].seq),
            ..newest(10)
        })
        .await
        .unwrap();
    assert_eq!(ids(&older), ["r2", "r1", "r0"]);
    // After a seq: the page just newer than it, still newest first.
    let newer = store
        .list(ListQuery {
            page: Page::After(older[2].seq),
            ..newest(2)
        })
        .await
        .unwrap();
    assert_eq!(ids(&newer), ["r2", "r1"]);
    let page = older;
    let s = &page[0];
    assert_eq!(
        (
            s.method.as_str(),
            s.path.as_str(),
            s.status,
            s.outcome.as_str()
        ),
        ("POST", "/v1/chat/completions", Some(200), "complete")
    );
    assert_eq!((s.duration_ms, s.model.as_deref()), (12.5, Some("gpt-4o")));
    assert_eq!(s.protocol.as_deref(), Some("openai.chat"));
    assert_eq!(s.question.as_deref(), Some("question of r2"));
    assert_eq!(s.answer.as_deref(), Some("an answer"));
    assert_eq!(
        (s.body_truncated, s.stream_complete, s.problems),
        (Some(false), None, Some(0))
    );
}

/// Captures that differ in everything the list filters on.
fn varied() -> Vec<(NewCapture, Digest)> {
    let mut rows = Vec::new();
    let mut add = |id: &str, f: &dyn Fn(&mut NewCapture, &mut Digest)| {
        let (mut c, mut d) = (capture(id), digest_for(id));
        f(&mut c, &mut d);
        d.outcome = c.outcome.clone();
        d.status = c.status;
        d.words = search::index_words(d.question.as_deref(), d.answer.as_deref());
        rows.push((c, d));
    };
    add("early", &|_, d| {
        d.started_us = unix_micros("2026-11-24T08:00:00Z");
        d.question = Some("Who built Envoy?".into());
        d.answer = Some("Lyft built Envoy in 2016.".into());
    });
    add("aborted", &|c, d| {
        c.outcome = "client_aborted".into();
        d.protocol = "anthropic.messages".into();
        d.model = Some("claude-sonnet-4-5".into());
        d.stream_complete = Some(false);
        d.problems = 1;
        d.question = Some("Summarise the refund policy".into());
        d.answer = Some("Opened items can be".into());
    });
    add("failed", &|c, d| {
        c.outcome = "upstream_failed".into();
        c.status = Some(503);
        d.problems = 2;
        d.answer = None;
        d.question = Some("What is a sidecar proxy?".into());
    });
    add("none", &|c, d| {
        c.outcome = "upstream_failed".into();
        c.status = None;
        d.answer = None;
    });
    add("cut", &|c, d| {
        c.status = Some(404);
        d.body_truncated = true;
        d.protocol = "ollama.chat".into();
        d.model = Some("llama3.2".into());
        d.question = Some("Is Größe case-folded?".into());
        d.answer = Some("ENVOYS everywhere".into());
    });
    add("late", &|_, d| {
        d.started_us = unix_micros("2026-11-26T08:00:00+02:00");
        d.stream_complete = Some(true);
    });
    rows
}

async fn filters_narrow_the_list(b: Backend) {
    let store = b.open().await;
    store_indexed(&store, varied()).await;
    let list = |filter: ListFilter| {
        let store = &store;
        async move { store.list(filtered(filter)).await.unwrap() }
    };
    let all = list(ListFilter::default()).await;
    assert_eq!(
        ids(&all),
        ["late", "cut", "none", "failed", "aborted", "early"]
    );
    let cases: Vec<(ListFilter, Vec<&str>)> = vec![
        (
            ListFilter {
                since_us: unix_micros("2026-11-25"),
                ..Default::default()
            },
            vec!["late", "cut", "none", "failed", "aborted"],
        ),
        (
            ListFilter {
                since_us: unix_micros("2026-11-25"),
                until_us: unix_micros("2026-11-26T06:00:00Z"),
                ..Default::default()
            },
            vec!["cut", "none", "failed", "aborted"],
        ),
        (
            ListFilter {
                outcomes: vec!["upstream_failed".into(), "client_aborted".into()],
                ..Default::default()
            },
            vec!["none", "failed", "aborted"],
        ),
        (
            ListFilter {
                protocols: vec!["anthropic.messages".into(), "ollama.chat".into()],
                ..Default::default()
            },
            vec!["cut", "aborted"],
        ),
        (
            ListFilter {
                model: Some("llama3.2".into()),
                ..Default::default()
            },
            vec!["cut"],
        ),
        (
            ListFilter {
                status: Some(StatusFilter::Is(503)),
                ..Default::default()
            },
            vec!["failed"],
        ),
        (
            ListFilter {
                status: Some(StatusFilter::Class(4)),
                ..Default::default()
            },
            vec!["cut"],
        ),
        (
            ListFilter {
                status: Some(StatusFilter::NoResponse),
                ..Default::default()
            },
            vec!["none"],
        ),
        (
            ListFilter {
                truncated: true,
                ..Default::default()
            },
            vec!["cut"],
        ),
        (
            ListFilter {
                incomplete: true,
                ..Default::default()
            },
            vec!["aborted"],
        ),
        (
            ListFilter {
                problems: true,
                ..Default::default()
            },
            vec!["failed", "aborted"],
        ),
        (
            ListFilter {
                problems: true,
                outcomes: vec!["upstream_failed".into()],
                status: Some(StatusFilter::Class(5)),
                ..Default::default()
            },
            vec!["failed"],
        ),
    ];
    for (filter, want) in cases {
        assert_eq!(ids(&list(filter.clone()).await), want, "{filter:?}");
    }
    // Paging keeps the filter: older and newer pages of the failed and aborted.
    let filter = ListFilter {
        outcomes: vec!["upstream_failed".into(), "client_aborted".into()],
        ..Default::default()
    };
    let first = store
        .list(ListQuery {
            limit: 2,
            ..filtered(filter.clone())
        })
        .await
        .unwrap();
    assert_eq!(ids(&first), ["none", "failed"]);
    let older = store
        .list(ListQuery {
            limit: 2,
            page: Page::Before(first[1].seq),
            ..filtered(filter.clone())
        })
        .await
        .unwrap();
    assert_eq!(ids(&older), ["aborted"]);
    let newer = store
        .list(ListQuery {
            limit: 2,
            page: Page::After(older[0].seq),
            ..filtered(filter)
        })
        .await
        .unwrap();
    assert_eq!(ids(&newer), ["none", "failed"]);
}

async fn search_finds_word_prefixes_of_question_and_answer(b: Backend) {
    let store = b.open().await;
    store_indexed(&store, varied()).await;
    let search = |q: &str| {
        let terms = search::terms(q).unwrap();
        let store = &store;
        async move {
            let rows = store
                .list(filtered(ListFilter {
                    terms,
                    ..Default::default()
                }))
                .await
                .unwrap();
            rows.into_iter().map(|s| s.id).collect::<Vec<_>>()
        }
    };
    // Case-insensitive, in the question or the answer, whole words or their start.
    assert_eq!(search("envoy").await, ["cut", "early"]);
    assert_eq!(search("ENV").await, ["cut", "early"]);
    assert_eq!(
        search("lyft 2016").await,
        ["early"],
        "every term must match"
    );
    assert_eq!(search("lyft refund").await, Vec::<String>::new());
    assert_eq!(search("größe").await, ["cut"]);
    assert_eq!(search("opened").await, ["aborted"]);
    assert_eq!(search("sidecar").await, ["failed"]);
    // A word inside another word is not a match; nor are fields other than question and answer.
    assert_eq!(search("voy").await, Vec::<String>::new());
    assert_eq!(search("chat").await, Vec::<String>::new());
    // Search and filters together.
    let rows = store
        .list(filtered(ListFilter {
            terms: search::terms("envoy").unwrap(),
            truncated: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(ids(&rows), ["cut"]);
}

async fn models_are_listed_once_each_in_order(b: Backend) {
    let store = b.open().await;
    store_indexed(&store, varied()).await;
    store_indexed(&store, indexed(batch("more", 30))).await;
    assert_eq!(
        store.models().await.unwrap(),
        ["claude-sonnet-4-5", "gpt-4o", "llama3.2"]
    );
}

async fn stale_digests_are_found_and_replaced(b: Backend) {
    let store = b.open().await;
    store_indexed(&store, indexed(batch("d", 3))).await;
    let all: Vec<i64> = store
        .list(newest(10))
        .await
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert!(store
        .stale_digests(0, digest::VERSION, 10)
        .await
        .unwrap()
        .is_empty());
    // Records stored before digests existed have none: listed, but no filter or search finds them.
    b.sql("DELETE FROM capture_digests");
    let listed = store.list(newest(10)).await.unwrap();
    assert_eq!(ids(&listed), ["d2", "d1", "d0"]);
    assert!(listed
        .iter()
        .all(|s| s.protocol.is_none() && s.question.is_none()));
    let mut stale = store.stale_digests(0, digest::VERSION, 2).await.unwrap();
    assert_eq!(
        stale.iter().map(|s| s.seq).collect::<Vec<_>>(),
        [all[2], all[1]]
    );
    stale.extend(
        store
            .stale_digests(stale[1].seq, digest::VERSION, 2)
            .await
            .unwrap(),
    );
    assert_eq!(stale.len(), 3);
    assert!(stale[0].raw.contains("\"d0\""));
    // New digests: the words are replaced too.
    let put: Vec<(i64, Digest)> = stale
        .iter()
        .map(|s| {
            let mut d = digest_for("x");
            d.question = Some("rewritten question".into());
            d.words = search::index_words(Some("rewritten question"), None);
            (s.seq, d)
        })
        .collect();
    assert_eq!(store.put_digests(put).await.unwrap(), 3);
    assert!(store
        .stale_digests(0, digest::VERSION, 10)
        .await
        .unwrap()
        .is_empty());
    let found = store
        .list(filtered(ListFilter {
            terms: vec!["rewritten".into()],
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(ids(&found), ["d2", "d1", "d0"]);
    // A newer derivation's digests are stale to it; an older one never overwrites them.
    assert_eq!(
        store
            .stale_digests(0, digest::VERSION + 1, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    let mut old = digest_for("x");
    old.version = digest::VERSION - 1;
    old.words = "ancient".into();
    assert_eq!(store.put_digests(vec![(all[0], old)]).await.unwrap(), 0);
    let mut newer = digest_for("x");
    newer.version = digest::VERSION + 1;
    newer.words = "brandnew".into();
    assert_eq!(store.put_digests(vec![(all[0], newer)]).await.unwrap(), 1);
    let found = |word: &'static str| {
        let store = &store;
        async move {
            let rows = store
                .list(filtered(ListFilter {
                    terms: vec![word.into()],
                    ..Default::default()
                }))
                .await
                .unwrap();
            rows.into_iter().map(|s| s.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(found("brandnew").await, ["d2"]);
    assert_eq!(
        found("rewritten").await,
        ["d1", "d0"],
        "the old words are gone"
    );
    assert!(found("ancient").await.is_empty());
    // No digest for a record that does not exist.
    assert_eq!(
        store
            .put_digests(vec![(9_999_999, digest_for("x"))])
            .await
            .unwrap(),
        0
    );
}

async fn the_backfill_digests_every_stored_record(b: Backend) {
    let store = b.open().await;
    let lines: Vec<String> = (0..450)
        .map(|i| {
            let mut r = common::record(&format!("bf{i}"));
            if i == 7 {
                r["request"]["body"]["data"] = serde_json::json!(serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "needle in the haystack"}]}).to_string());
                r["request"]["body"]["size"] = serde_json::json!(r["request"]["body"]["data"].as_str().unwrap().len());
            }
            r.to_string()
        })
        .collect();
    let rows = truthtable_collector::ingest::parse_ndjson(lines.join("\n").as_bytes())
        .unwrap()
        .into_iter()
        .map(|line| truthtable_collector::ingest::to_row(line).0)
        .collect();
    // Stored as ingest stores them: no digest until the indexer or the backfill writes one.
    store.insert_batch(rows).await.unwrap();
    let running = std::sync::atomic::AtomicBool::new(false);
    digest::backfill(&store, &running).await;
    assert!(!running.load(std::sync::atomic::Ordering::SeqCst));
    assert!(store
        .stale_digests(0, digest::VERSION, 10)
        .await
        .unwrap()
        .is_empty());
    let found = store
        .list(filtered(ListFilter {
            terms: search::terms("haystack needle").unwrap(),
            protocols: vec!["openai.chat".into()],
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(ids(&found), ["bf7"]);
    assert_eq!(found[0].question.as_deref(), Some("needle in the haystack"));
}

async fn summaries_keep_missing_status_and_model(b: Backend) {
    let store = b.open().await;
    let (mut c, mut d) = (capture("none"), digest_for("none"));
    c.status = None;
    d.status = None;
    d.model = None;
    store_indexed(&store, vec![(c, d)]).await;
    let s = store.list(newest(1)).await.unwrap().remove(0);
    assert_eq!((s.status, s.model), (None, None));
}

async fn raw_records_are_kept_byte_for_byte_and_survive_a_reopen(b: Backend) {
    let store = b.open().await;
    let odd = [
        "{ \"id\" : \"z1\",  \"x\": 1.50 }",
        "{\"id\":\"z2\",\"t\":\"é 漢字 🦀 \\u0000 \\\" \\\\ \\n\",\"n\":1e400}",
    ];
    let mut rows: Vec<NewCapture> = odd
        .iter()
        .enumerate()
        .map(|(i, raw)| NewCapture {
            raw: (*raw).to_owned(),
            ..capture(&format!("z{}", i + 1))
        })
        .collect();
    let big = format!("{{\"id\":\"z3\",\"data\":\"{}\"}}", "ab".repeat(600_000));
    rows.push(NewCapture {
        raw: big.clone(),
        ..capture("z3")
    });
    store.insert_batch(rows).await.unwrap();
    store.close().await.unwrap();
    assert!(store.get("z1".into()).await.is_err(), "closed");
    let again = b.open().await;
    assert_eq!(
        again.get("z1".into()).await.unwrap().as_deref(),
        Some(odd[0])
    );
    assert_eq!(
        again.get("z2".into()).await.unwrap().as_deref(),
        Some(odd[1])
    );
    assert_eq!(again.get("z3".into()).await.unwrap(), Some(big));
    assert_eq!(again.get("nope".into()).await.unwrap(), None);
    let stats = again.stats().await.unwrap();
    assert_eq!(stats.records, 3);
    assert!(stats.bytes > 0);
}

async fn read_after_walks_every_record_once_in_commit_order(b: Backend) {
    let store = b.open().await;
    for round in 0..3 {
        store
            .insert_batch(batch(&format!("w{round}-"), 7))
            .await
            .unwrap();
    }
    let expected: Vec<String> = (0..3)
        .flat_map(|r| (0..7).map(move |i| format!("w{r}-{i}")))
        .collect();
    // A reader polls: on PostgreSQL a commit becomes readable once no older transaction is still
    // running anywhere on the server (other tests share it), so a page may come back empty first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut cursor = Cursor::START;
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let page = store.read_after(cursor, 4).await.unwrap();
        let Some(last) = page.last() else {
            assert!(std::time::Instant::now() < deadline, "read {seen:?} only");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // A reader persists the cursor as text and resumes from it.
        cursor = last.cursor.to_string().parse().unwrap();
        seen.extend(page.iter().map(|r| r.id.clone()));
        assert!(page.iter().all(|r| r.raw.contains(&r.id)));
    }
    assert_eq!(seen, expected);
    assert!(store.read_after(cursor, 100).await.unwrap().is_empty());
    store.insert_batch(batch("late-", 2)).await.unwrap();
    let mut more: Vec<String> = Vec::new();
    while more.len() < 2 {
        let page = store.read_after(cursor, 100).await.unwrap();
        if let Some(last) = page.last() {
            cursor = last.cursor;
        } else {
            assert!(std::time::Instant::now() < deadline, "read {more:?} only");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        more.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(more, ["late-0", "late-1"]);
    assert!(store.read_after(cursor, 100).await.unwrap().is_empty());
}

async fn two_collectors_on_one_database_store_each_id_once(b: Backend) {
    let (one, two) = (b.open().await, b.open().await);
    // Overlapping batches from both, at the same time: every id is stored exactly once.
    let work = |store: Store, offset: usize| async move {
        let mut totals = BatchOutcome::default();
        for round in 0..10 {
            let ids: Vec<NewCapture> = (0..20)
                .map(|i| capture(&format!("s{}", (round * 10 + i + offset) % 150)))
                .collect();
            let out = store.insert_batch(ids).await.unwrap();
            totals.stored += out.stored;
            totals.duplicates += out.duplicates;
        }
        (store, totals)
    };
    let ((one, a), (_two, c)) = tokio::join!(work(one, 0), work(two, 5));
    assert_eq!(a.stored + a.duplicates + c.stored + c.duplicates, 400);
    let stored = usize::try_from(a.stored + c.stored).unwrap();
    let mut ids: Vec<String> = read_at_least(&one, Cursor::START, 1000, stored)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "an id stored twice");
    assert_eq!(n as u64, a.stored + c.stored);
}

/// `read_after(after, limit)` once it returns at least `n` records. On PostgreSQL a commit is
/// readable in commit order only once no older transaction still runs anywhere on the server
/// (other tests share it), so a read right after a write can come back short, as an exporter's
/// would; it reads again.
async fn read_at_least(store: &Store, after: Cursor, limit: u32, n: usize) -> Vec<StoredCapture> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = store.read_after(after, limit).await.unwrap();
        if page.len() >= n || std::time::Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_reader_cursor_is_kept_under_its_holders_lease_and_survives_a_reopen(b: Backend) {
    const LEASE: Duration = Duration::from_secs(60);
    let store = b.open().await;
    store.insert_batch(batch("e", 3)).await.unwrap();
    async fn claim(store: &Store, holder: &str) -> Option<Cursor> {
        store
            .claim_cursor("otlp".into(), holder.into(), LEASE)
            .await
            .unwrap()
    }
    assert_eq!(claim(&store, "a").await, Some(Cursor::START));
    assert_eq!(claim(&store, "b").await, None, "a holds it");
    let read = read_at_least(&store, Cursor::START, 2, 2).await;
    let at = read[1].cursor;
    assert!(store
        .save_cursor("otlp".into(), "a".into(), at, LEASE)
        .await
        .unwrap());
    assert!(
        !store
            .save_cursor("otlp".into(), "b".into(), Cursor::START, LEASE)
            .await
            .unwrap(),
        "only the holder moves the cursor"
    );
    // Another reader's name is another cursor.
    assert_eq!(
        store
            .claim_cursor("other".into(), "b".into(), LEASE)
            .await
            .unwrap(),
        Some(Cursor::START)
    );
    store.close().await.unwrap();
    let store = b.open().await;
    assert_eq!(claim(&store, "b").await, None, "the lease is kept");
    assert_eq!(claim(&store, "a").await, Some(at), "renewed");
    store
        .release_cursor("otlp".into(), "a".into())
        .await
        .unwrap();
    assert_eq!(claim(&store, "b").await, Some(at), "released");
    let rest: Vec<_> = store
        .read_after(at, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(rest, ["e2"]);
}

async fn an_expired_lease_passes_to_the_next_claim(b: Backend) {
    let store = b.open().await;
    let short = Duration::from_millis(300);
    let claim = |holder: &str, lease| store.claim_cursor("otlp".into(), holder.into(), lease);
    assert_eq!(claim("a", short).await.unwrap(), Some(Cursor::START));
    assert_eq!(claim("b", short).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(claim("b", short).await.unwrap(), Some(Cursor::START));
    assert!(
        !store
            .save_cursor("otlp".into(), "a".into(), Cursor::START, short)
            .await
            .unwrap(),
        "a lost its lease to b"
    );
    assert_eq!(claim("a", short).await.unwrap(), None);
}

async fn a_healthy_store_says_so(b: Backend) {
    let store = b.open().await;
    assert!(store.health().is_up());
    assert!(matches!(store.backend(), "sqlite" | "postgres"));
}

async fn lists_filter_and_sort_by_ttft_and_duration(b: Backend) {
    let store = b.open().await;
    // (id, ttft ms, duration ms): "plain" has no TTFT (not streamed).
    let rows = [
        ("fast", Some(120), 900),
        ("slow", Some(2_400), 3_000),
        ("plain", None, 5_000),
        ("mid", Some(800), 1_200),
        ("tie", Some(800), 1_100),
    ];
    let batch = rows
        .iter()
        .map(|(id, ttft, duration)| {
            let d = Digest {
                ttft_us: ttft.map(|ms: i64| ms * 1000),
                duration_us: Some(duration * 1000),
                ..digest_for(id)
            };
            (capture(id), d)
        })
        .collect();
    store_indexed(&store, batch).await;
    let list = |filter: ListFilter, sort: Sort, after_key: Option<(i64, i64)>| {
        let store = &store;
        async move {
            store
                .list(ListQuery {
                    limit: 2,
                    sort,
                    after_key,
                    ..filtered(filter)
                })
                .await
                .unwrap()
        }
    };
    let above = ListFilter {
        ttft_above_us: Some(500_000),
        ..Default::default()
    };
    assert_eq!(
        ids(&list(above.clone(), Sort::Newest, None).await),
        ["tie", "mid"]
    );
    let first = list(ListFilter::default(), Sort::Ttft, None).await;
    assert_eq!(
        ids(&first),
        ["slow", "tie"],
        "slowest first, ties newest first"
    );
    assert_eq!(first[0].ttft_ms, Some(2_400.0));
    let last = &first[1];
    let next = list(
        ListFilter::default(),
        Sort::Ttft,
        Some((last.keys.0.unwrap(), last.seq)),
    )
    .await;
    assert_eq!(
        ids(&next),
        ["mid", "fast"],
        "captures without a TTFT are left out"
    );
    let longest = list(
        ListFilter {
            duration_above_us: Some(1_000_000),
            ..Default::default()
        },
        Sort::Duration,
        None,
    )
    .await;
    assert_eq!(ids(&longest), ["plain", "slow"]);
}

fn verdict(seq: i64, id: &str, engine: &str, score: Option<f64>, flagged: bool) -> NewVerdict {
    NewVerdict {
        capture_seq: seq,
        capture_id: id.into(),
        engine: engine.into(),
        status: if score.is_some() {
            "completed"
        } else {
            "error"
        }
        .into(),
        score,
        hallucination: score.map(|_| flagged),
        verdict: format!(
            "{{\"engine\":\"{engine}\",\"score\":{}}}",
            score.unwrap_or(-1.0)
        ),
        received_at: "2026-12-06T23:00:00Z".into(),
        annotate: false,
    }
}

async fn verdicts_to_annotate_wait_in_the_store_until_taken(b: Backend) {
    let store = b.open().await;
    let out = store_indexed(&store, indexed(batch("a", 2))).await;
    let seq = |i: usize| out.new[i].1;
    for (i, (id, annotate)) in [("a0", true), ("a0", false), ("a1", true)]
        .into_iter()
        .enumerate()
    {
        let engine = format!("grpc://{i}");
        store
            .add_verdict(NewVerdict {
                annotate,
                ..verdict(seq(usize::from(id == "a1")), id, &engine, Some(0.5), true)
            })
            .await
            .unwrap();
    }
    let queued = store.to_annotate(10).await.unwrap();
    let who: Vec<(&str, &str)> = queued
        .iter()
        .map(|q| (q.capture_id.as_str(), q.verdict.as_str()))
        .collect();
    assert_eq!(
        who,
        [
            ("a0", r#"{"engine":"grpc://0","score":0.5}"#),
            ("a1", r#"{"engine":"grpc://2","score":0.5}"#)
        ]
    );
    // Reopened (a restart), the queue is as it was; taken, a verdict leaves it.
    store.close().await.unwrap();
    let store = b.open().await;
    assert_eq!(store.to_annotate(10).await.unwrap(), queued);
    store.annotated(vec![queued[0].row]).await.unwrap();
    assert_eq!(store.to_annotate(10).await.unwrap(), queued[1..]);
    // An erased capture's verdicts leave it too.
    store
        .erase(EraseRequest {
            event: "erasure-a".into(),
            reason: "asked".into(),
            by: "request".into(),
            erased_at: "2026-12-07T01:00:00Z".into(),
            ids: vec!["a1".into()],
            dry_run: false,
        })
        .await
        .unwrap();
    assert!(store.to_annotate(10).await.unwrap().is_empty());
}

async fn verdicts_are_appended_per_engine_and_filter_the_list(b: Backend) {
    let store = b.open().await;
    let out = store_indexed(&store, indexed(batch("v", 3))).await;
    let seq = |i: usize| out.new[i].1;
    store
        .add_verdict(verdict(seq(0), "v0", "grpc://a", Some(0.2), true))
        .await
        .unwrap();
    store
        .add_verdict(verdict(seq(0), "v0", "grpc://b", Some(0.9), false))
        .await
        .unwrap();
    store
        .add_verdict(verdict(seq(1), "v1", "grpc://a", Some(0.7), false))
        .await
        .unwrap();
    store
        .add_verdict(verdict(seq(2), "v2", "grpc://a", None, false))
        .await
        .unwrap();
    // Every verdict is kept, in arrival order; a rerun adds one more.
    store
        .add_verdict(verdict(seq(1), "v1", "grpc://a", Some(0.6), false))
        .await
        .unwrap();
    let v0: Vec<String> = store
        .verdicts("v0".into())
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.json)
        .collect();
    assert_eq!(
        v0,
        [
            r#"{"engine":"grpc://a","score":0.2}"#,
            r#"{"engine":"grpc://b","score":0.9}"#
        ]
    );
    assert_eq!(store.verdicts("v1".into()).await.unwrap().len(), 2);
    assert!(store.verdicts("nope".into()).await.unwrap().is_empty());
    let mut judged = store
        .judged(
            "grpc://b".into(),
            vec!["v0".into(), "v1".into(), "v2".into()],
        )
        .await
        .unwrap();
    judged.sort();
    assert_eq!(judged, ["v0"]);
    let mut judged = store
        .judged(
            "grpc://a".into(),
            vec!["v0".into(), "v1".into(), "v2".into(), "x".into()],
        )
        .await
        .unwrap();
    judged.sort();
    assert_eq!(judged, ["v0", "v1", "v2"]);
    let list = |f: ListFilter| {
        let store = &store;
        async move { store.list(filtered(f)).await.unwrap() }
    };
    let flagged = list(ListFilter {
        flagged: true,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&flagged), ["v0"]);
    let low = list(ListFilter {
        score_below: Some("0.65".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&low), ["v1", "v0"]);
    let none = list(ListFilter {
        score_below: Some("0.1".into()),
        ..Default::default()
    })
    .await;
    assert!(none.is_empty());
}

macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::postgres()).await
                }
            )*
        }
    };
}

async fn erasing_a_capture_deletes_its_verdicts_and_amendments(b: Backend) {
    let store = b.open().await;
    let out = store_indexed(&store, indexed(batch("e", 2))).await;
    let seq = |i: usize| out.new[i].1;
    for (i, id) in ["e0", "e1"].into_iter().enumerate() {
        store
            .add_verdict(verdict(seq(i), id, "grpc://a", Some(0.4), true))
            .await
            .unwrap();
        let mut amendment = capture(id);
        amendment.raw =
            format!(r#"{{"id":"{id}","amendment":{{"reason":"client_gone_during_hold"}}}}"#);
        store.insert_batch(vec![amendment]).await.unwrap();
        assert_eq!(store.verdicts(id.into()).await.unwrap().len(), 1);
        assert_eq!(store.amendments(id.into()).await.unwrap().len(), 1);
    }
    let erased = store
        .erase(EraseRequest {
            event: "erasure-1".into(),
            reason: "a person asked".into(),
            by: "request".into(),
            erased_at: "2026-12-07T01:00:00Z".into(),
            ids: vec!["e0".into()],
            dry_run: false,
        })
        .await
        .unwrap();
    assert_eq!(erased.erased, ["e0"]);
    // What an engine said of the answer, and what happened after it was stored, go with it.
    assert!(store.verdicts("e0".into()).await.unwrap().is_empty());
    assert_eq!(
        store.amendments("e0".into()).await.unwrap(),
        Vec::<String>::new()
    );
    // The other capture keeps both.
    assert_eq!(store.verdicts("e1".into()).await.unwrap().len(), 1);
    assert_eq!(store.amendments("e1".into()).await.unwrap().len(), 1);
}

async fn an_erased_capture_is_not_stored_again_nor_judged(b: Backend) {
    let store = b.open().await;
    let out = store_indexed(&store, indexed(batch("r", 2))).await;
    let seq = out.new[0].1;
    let erase = |ids: Vec<String>| EraseRequest {
        event: "erasure-r".into(),
        reason: "a person asked".into(),
        by: "request".into(),
        erased_at: "2026-12-07T01:00:00Z".into(),
        ids,
        dry_run: false,
    };
    store.erase(erase(vec!["r0".into()])).await.unwrap();
    // The filter delivers at least once: the record (and an amendment of it) sent again after
    // the erasure is a duplicate, not a capture stored anew.
    let mut amendment = capture("r0");
    amendment.raw = r#"{"id":"r0","amendment":{"reason":"client_gone_during_hold"}}"#.into();
    let again = store
        .insert_batch(vec![capture("r0"), amendment, capture("r2")])
        .await
        .unwrap();
    assert_eq!((again.stored, again.duplicates), (1, 2));
    assert_eq!(store.get("r0".into()).await.unwrap(), None);
    assert_eq!(
        store.amendments("r0".into()).await.unwrap(),
        Vec::<String>::new()
    );
    assert!(store.tombstone("r0".into()).await.unwrap().is_some());
    // An engine's verdict arriving after the erasure is dropped; one on a kept capture is kept.
    store
        .add_verdict(verdict(seq, "r0", "grpc://a", Some(0.2), true))
        .await
        .unwrap();
    store
        .add_verdict(verdict(out.new[1].1, "r1", "grpc://a", Some(0.9), false))
        .await
        .unwrap();
    assert!(store.verdicts("r0".into()).await.unwrap().is_empty());
    assert_eq!(store.verdicts("r1".into()).await.unwrap().len(), 1);
}

/// PostgreSQL only (SQLite has one writer): the indexer writes a digest while the capture's
/// erasure is in flight — the erasure's transaction has deleted the capture and not committed.
/// The digest write waits for it and then writes nothing; before, it wrote the digest (question
/// and answer) beside no capture, where it outlived the erasure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_written_while_its_capture_is_erased_does_not_outlive_the_erasure() {
    let pg = Postgres::shared();
    let db = pg.database();
    let b = Backend::Postgres(db.clone());
    let store = b.open().await;
    let out = store.insert_batch(vec![capture("raced")]).await.unwrap();
    let seq = out.new[0].1;
    let (erasing, conn) =
        tokio_postgres::connect(&pg.url_with_password(&db), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    erasing
        .batch_execute(&format!("BEGIN; DELETE FROM captures WHERE seq = {seq}"))
        .await
        .unwrap();
    let (_, digest) = indexed(vec![capture("raced")]).pop().unwrap();
    let writer = {
        let store = b.open().await;
        tokio::spawn(async move { store.put_digests(vec![(seq, digest)]).await.unwrap() })
    };
    // Until the writer either finished (it did not wait) or waits on the erasure's lock.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = pg.sql(
            &db,
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        );
        if writer.is_finished() || waiting != "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer neither wrote nor waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    erasing.batch_execute("COMMIT").await.unwrap();
    writer.await.unwrap();
    assert_eq!(
        pg.sql(
            &db,
            &format!("SELECT count(*) FROM capture_digests WHERE seq = {seq}")
        ),
        "0",
        "a digest outlived its capture's erasure"
    );
}

async fn a_path_filter_keeps_the_captures_of_that_path(b: Backend) {
    let store = b.open().await;
    let mut rows = indexed(batch("p", 3));
    rows[1].0.path = "/v1/messages".into();
    store_indexed(&store, rows).await;
    let list = |path: &str| {
        let q = filtered(ListFilter {
            path: Some(path.into()),
            ..Default::default()
        });
        let store = &store;
        async move { store.list(q).await.unwrap() }
    };
    assert_eq!(ids(&list("/v1/messages").await), ["p1"]);
    assert_eq!(ids(&list("/v1/chat/completions").await), ["p2", "p0"]);
    assert!(list("/v1/chat").await.is_empty(), "exactly the path");
}

store_suite!(
    a_path_filter_keeps_the_captures_of_that_path,
    an_erased_capture_is_not_stored_again_nor_judged,
    duplicates_are_skipped_and_counted,
    the_copy_stored_first_is_kept,
    an_amendment_is_kept_beside_its_capture_whose_bytes_stay,
    list_pages_newest_first,
    summaries_keep_missing_status_and_model,
    filters_narrow_the_list,
    search_finds_word_prefixes_of_question_and_answer,
    models_are_listed_once_each_in_order,
    stale_digests_are_found_and_replaced,
    the_backfill_digests_every_stored_record,
    raw_records_are_kept_byte_for_byte_and_survive_a_reopen,
    read_after_walks_every_record_once_in_commit_order,
    two_collectors_on_one_database_store_each_id_once,
    a_reader_cursor_is_kept_under_its_holders_lease_and_survives_a_reopen,
    an_expired_lease_passes_to_the_next_claim,
    a_healthy_store_says_so,
    lists_filter_and_sort_by_ttft_and_duration,
    verdicts_are_appended_per_engine_and_filter_the_list,
    erasing_a_capture_deletes_its_verdicts_and_amendments,
    verdicts_to_annotate_wait_in_the_store_until_taken,
);
