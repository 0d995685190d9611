//! A record's [`Digest`]: the part of its audit view the list shows, filters and searches on.
//!
//! Deriving an audit view decodes and parses both bodies, far too slow to do for every row of a
//! filtered list of a large store, so it is derived once, just behind ingest (`crate::indexer`),
//! and the store keeps the digest beside the record, indexed. The record stays the truth (a
//! capture's own page derives its view afresh); the digest is a cache of one derivation, stamped
//! with [`VERSION`]. [`backfill`] gives every record without a current digest — not reached
//! before a stop, stored before digests existed, or digested by an older derivation — one: at
//! every start (and when the indexer asks), in batches, while the collector serves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::audit::{self, AuditView};
use crate::record::CaptureRecord;
use crate::search;
use crate::store::{CaptureStore, Digest};
use crate::timestamp;

/// The derivation a digest was made by. Raise it when the audit view changes what a digest
/// holds: the backfill then re-derives every stored record's digest.
pub const VERSION: i32 = 2;

/// Characters kept of the question and of the answer for the list.
pub const PREVIEW_CHARS: usize = 200;

/// Records read and re-derived in the backfill's first step; later steps take as many as make
/// about [`BACKFILL_STEP_BYTES`] at the size of the records just read, up to [`BACKFILL_MAX`].
const BACKFILL_FIRST: u32 = 200;
/// Most records a backfill step reads.
const BACKFILL_MAX: u32 = 2000;
/// Bytes of records (raw lines) a backfill step aims to read.
const BACKFILL_STEP_BYTES: usize = 16 << 20;

/// How many records the next step reads, after one that read `records` of `bytes` in all: many
/// small records make few transactions, large ones never many megabytes at once.
fn next_step(records: usize, bytes: usize) -> u32 {
    let average = (bytes / records.max(1)).max(1);
    u32::try_from(BACKFILL_STEP_BYTES / average)
        .unwrap_or(BACKFILL_MAX)
        .clamp(1, BACKFILL_MAX)
}

/// The first [`PREVIEW_CHARS`] characters of `text`, every run of whitespace one space.
pub fn preview(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        if out.chars().count() >= PREVIEW_CHARS {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.chars().take(PREVIEW_CHARS).collect()
}

/// What the answer column shows and search finds: the answer's text, else the tool calls the
/// model answered with (`get_weather({"city":"Paris"})`).
fn answer_text(view: &AuditView) -> Option<String> {
    if let Some(a) = view
        .answer
        .as_ref()
        .filter(|a| !a.trim().is_empty() || view.tool_calls.is_empty())
    {
        return Some(a.clone());
    }
    if view.tool_calls.is_empty() {
        return None;
    }
    let calls: Vec<String> = view
        .tool_calls
        .iter()
        .map(|t| format!("{}({})", t.name, t.arguments))
        .collect();
    Some(format!("tool call: {}", calls.join(", ")))
}

/// The digest of `record`, whose audit view is `view`.
pub fn of(record: &CaptureRecord, view: &AuditView) -> Digest {
    let answer = answer_text(view);
    Digest {
        version: VERSION,
        started_us: timestamp::unix_micros(&record.started_at),
        outcome: record.outcome.as_str().to_owned(),
        status: record.response.as_ref().map(|r| r.status),
        protocol: view.protocol.as_str().to_owned(),
        model: view.model.clone(),
        question: view.question.as_deref().map(preview),
        answer: answer.as_deref().map(preview),
        body_truncated: view.body_truncated,
        stream_complete: view.stream_complete,
        problems: u32::try_from(view.problems.len()).unwrap_or(u32::MAX),
        words: search::index_words(view.question.as_deref(), answer.as_deref()),
        ttft_us: view
            .timing
            .as_ref()
            .and_then(|t| t.ttft_ms)
            .map(|ms| (ms * 1000.0).round() as i64),
        duration_us: Some((record.duration_ms * 1000.0).round() as i64),
    }
}

/// The audit view of `record`; a derivation that panics gives an `unknown` view instead.
pub fn view_of(record: &CaptureRecord) -> AuditView {
    view_with(record, audit::timing::DEFAULT_STALL_THRESHOLD_MS)
}

/// [`view_of`], with gaps between content longer than `stall_threshold_ms` reported as stalls.
pub fn view_with(record: &CaptureRecord, stall_threshold_ms: u64) -> AuditView {
    std::panic::catch_unwind(|| audit::derive_with(record, stall_threshold_ms))
        .unwrap_or_else(|_| AuditView::unknown("the audit derivation failed on this record"))
}

/// The digest of a stored line. A line that no longer validates gets a digest that says so
/// (protocol `unknown`, one problem), so it is still listed and counted.
pub fn of_raw(raw: &str) -> Digest {
    match CaptureRecord::parse_line(raw) {
        Ok(record) => of(&record, &view_of(&record)),
        Err(_) => Digest {
            version: VERSION,
            protocol: audit::Protocol::Unknown.as_str().to_owned(),
            outcome: String::new(),
            problems: 1,
            ..Digest::default()
        },
    }
}

/// Gives every stored record a digest of the current [`VERSION`], oldest first, a batch at a
/// time (ingest goes on meanwhile), then clears `running`. While the store is unavailable it
/// waits and tries again. Ends when no record is left to digest.
pub async fn backfill(store: &impl CaptureStore, running: &AtomicBool) {
    running.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let mut after = 0;
    let mut done = 0u64;
    let mut step = BACKFILL_FIRST;
    loop {
        let stale = match store.stale_digests(after, VERSION, step).await {
            Ok(stale) => stale,
            Err(e) => {
                if !e.is_unavailable() {
                    tracing::error!(error = %e, "finding records to digest failed; trying again");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = stale.last().map(|s| s.seq) else {
            break;
        };
        step = next_step(stale.len(), stale.iter().map(|s| s.raw.len()).sum());
        if done == 0 {
            tracing::info!("deriving the digests of stored records (the list's filters and search skip them until done)");
        }
        let digests = match tokio::task::spawn_blocking(move || {
            stale
                .into_iter()
                .map(|s| (s.seq, of_raw(&s.raw)))
                .collect::<Vec<_>>()
        })
        .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "deriving digests failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let n = digests.len() as u64;
        loop {
            match store.put_digests(digests.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    if !e.is_unavailable() {
                        tracing::error!(error = %e, "storing digests failed; trying again");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        after = last;
        done += n;
        if done % 10_000 < n {
            tracing::info!(records = done, "digests derived so far");
        }
    }
    running.store(false, Ordering::SeqCst);
    if done > 0 {
        tracing::info!(
            records = done,
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "every stored record has its digest"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn backfill_steps_grow_for_small_records_and_shrink_for_large_ones() {
        assert_eq!(next_step(200, 200 * 3_000), BACKFILL_MAX);
        assert_eq!(next_step(200, 200 * 64 * 1024), 256);
        assert_eq!(next_step(3, 3 * (40 << 20)), 1, "always at least one");
        assert_eq!(next_step(0, 0), BACKFILL_MAX);
    }

    #[test]
    fn previews_collapse_whitespace_and_stop_at_the_limit() {
        assert_eq!(preview("  Who built\n\n Envoy?\t"), "Who built Envoy?");
        let long = "word ".repeat(100);
        let p = preview(&long);
        assert_eq!(p.chars().count(), PREVIEW_CHARS);
        assert!(p.starts_with("word word"));
        assert_eq!(preview(&"é".repeat(500)).chars().count(), PREVIEW_CHARS);
    }

    #[test]
    fn a_digest_carries_the_views_summary_and_words() {
        let record = CaptureRecord::from_value(&sample("a")).unwrap();
        let d = of(&record, &view_of(&record));
        assert_eq!(d.version, VERSION);
        assert_eq!(d.protocol, "openai.chat");
        assert_eq!(d.model.as_deref(), Some("gpt-4o"));
        assert_eq!(d.outcome, "complete");
        assert_eq!(d.status, Some(200));
        // 2026-11-25T16:10:40.186123Z
        assert_eq!(d.started_us, Some(1_795_623_040_186_123));
        assert_eq!(d.question.as_deref(), Some("hi"));
        assert_eq!(d.answer.as_deref(), Some("hello"));
        assert_eq!(d.words, "hi hello");
        assert_eq!(
            (d.body_truncated, d.stream_complete, d.problems),
            (false, None, 0)
        );
    }

    #[test]
    fn a_line_that_no_longer_validates_gets_an_unknown_digest() {
        let d = of_raw("{\"id\":\"x\"}");
        assert_eq!((d.protocol.as_str(), d.problems), ("unknown", 1));
    }
}
