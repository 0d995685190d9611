//! The store's promises, checked against both backends: every case runs once on a SQLite file
//! and once on a fresh database of a real PostgreSQL server (`common::postgres`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::postgres::{Postgres, PASSWORD};
use truthtable_collector::config::{Config, DbTarget};
use truthtable_collector::store::{BatchOutcome, CaptureStore, Cursor, NewCapture, Store};

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
        let pg = Postgres::shared();
        Backend::Postgres(pg.url(&pg.database()))
    }

    async fn open(&self) -> Store {
        let mut config = Config::with_db(match self {
            Backend::Sqlite(dir) => DbTarget::Sqlite(dir.path().join("t.db")),
            Backend::Postgres(url) => DbTarget::Postgres(url.clone()),
        });
        config.db_password.env = Some(PASSWORD.to_owned());
        Store::open(&config).await.unwrap()
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
        model: Some("gpt-4o".into()),
        raw: format!("{{\"id\":\"{id}\"}}"),
    }
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
    assert_eq!(
        out,
        BatchOutcome {
            stored: 2,
            duplicates: 1
        }
    );
    let out = store
        .insert_batch(vec![capture("b"), capture("c")])
        .await
        .unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            stored: 1,
            duplicates: 1
        }
    );
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

async fn list_pages_newest_first(b: Backend) {
    let store = b.open().await;
    store.insert_batch(batch("r", 5)).await.unwrap();
    let page = store.list(2, None).await.unwrap();
    let ids: Vec<_> = page.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["r4", "r3"]);
    let page = store.list(10, Some(page[1].seq)).await.unwrap();
    let ids: Vec<_> = page.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["r2", "r1", "r0"]);
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
}

async fn summaries_keep_missing_status_and_model(b: Backend) {
    let store = b.open().await;
    let mut c = capture("none");
    c.status = None;
    c.model = None;
    store.insert_batch(vec![c]).await.unwrap();
    let s = store.list(1, None).await.unwrap().remove(0);
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
    let mut ids: Vec<String> = one
        .read_after(Cursor::START, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "an id stored twice");
    assert_eq!(n as u64, a.stored + c.stored);
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
    let read = store.read_after(Cursor::START, 2).await.unwrap();
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

store_suite!(
    duplicates_are_skipped_and_counted,
    the_copy_stored_first_is_kept,
    list_pages_newest_first,
    summaries_keep_missing_status_and_model,
    raw_records_are_kept_byte_for_byte_and_survive_a_reopen,
    read_after_walks_every_record_once_in_commit_order,
    two_collectors_on_one_database_store_each_id_once,
    a_reader_cursor_is_kept_under_its_holders_lease_and_survives_a_reopen,
    an_expired_lease_passes_to_the_next_claim,
    a_healthy_store_says_so,
);
