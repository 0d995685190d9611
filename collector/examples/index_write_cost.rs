//! What writing digests costs SQLite, by the order of the statements in a transaction:
//! `cargo run --release -p truthtable-collector --example index_write_cost`.
//!
//! Writes 40 000 digests — a `capture_digests` row with its indexes and the words of an 18-word
//! question and answer into the FTS5 table, in the schema the collector's store creates — in transactions of 88 (an
//! ingest batch) and of 2000 records (an indexer step), WAL and `synchronous=FULL` as the
//! collector opens its file, and prints records/s and µs a record for:
//! - interleaved: each record's row, then its words (the collector before c1344ae);
//! - rows then words: every row of the transaction, then every record's words (the collector);
//! - each table alone, for scale.
//!
//! An FTS5 table writes out the words it holds in memory at each statement that needs a statement
//! journal, which `INSERT OR REPLACE` into a table with indexes does: interleaved, every record
//! makes a segment of the word index of its own. See BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use rusqlite::{params, Connection, Transaction};
use truthtable_collector::store::sqlite::SqliteStore;

const RECORDS: usize = 40_000;

const WORDS: &str =
    "what does the refund policy say about opened items can be returned within 30 days";

#[derive(Clone, Copy)]
enum Order {
    Interleaved,
    RowsThenWords,
    RowsOnly,
    WordsOnly,
}

fn row(tx: &Transaction<'_>, seq: i64) {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO capture_digests VALUES (?1, 1, ?2, 'complete', 200,
         'openai.chat', 'gpt-4o', 'What does the refund policy say about opened items?',
         'Opened items can be returned within 30 days.', 0, NULL, 0)",
    )
    .unwrap()
    .execute(params![seq, seq * 1000])
    .unwrap();
}

fn words(tx: &Transaction<'_>, seq: i64) {
    tx.prepare_cached("INSERT INTO capture_search (rowid, words) VALUES (?1, ?2)")
        .unwrap()
        .execute(params![seq, WORDS])
        .unwrap();
}

fn run(order: Order, step: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.db");
    // The collector's own schema, as its store creates it (WAL and `synchronous=FULL` are the
    // file's and the connection's; set again here for this connection).
    drop(SqliteStore::open(&path).unwrap());
    let mut conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    let started = Instant::now();
    for first in (1..=RECORDS as i64).step_by(step) {
        let seqs = first..first + step as i64;
        let tx = conn.transaction().unwrap();
        match order {
            Order::Interleaved => seqs.for_each(|s| {
                row(&tx, s);
                words(&tx, s);
            }),
            Order::RowsThenWords => {
                seqs.clone().for_each(|s| row(&tx, s));
                seqs.for_each(|s| words(&tx, s));
            }
            Order::RowsOnly => seqs.for_each(|s| row(&tx, s)),
            Order::WordsOnly => seqs.for_each(|s| words(&tx, s)),
        }
        tx.commit().unwrap();
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    println!("| order | records a transaction | records/s | µs a record |");
    println!("|---|---|---|---|");
    for step in [88, 2000] {
        for (name, order) in [
            (
                "interleaved (row, words, row, words, …)",
                Order::Interleaved,
            ),
            ("rows then words", Order::RowsThenWords),
            ("rows only", Order::RowsOnly),
            ("words only", Order::WordsOnly),
        ] {
            let s = run(order, step);
            println!(
                "| {name} | {step} | {:.0} | {:.1} |",
                RECORDS as f64 / s,
                s * 1e6 / RECORDS as f64
            );
        }
    }
}
