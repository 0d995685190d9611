//! Erasure as an accountable operation: a capture's content leaves the store, a tombstone stays,
//! and the erasure itself becomes an entry of the verifiable log — so the tree, every checkpoint
//! and every other capture's proof still verify, and `verify` tells an erased capture from a
//! deleted one.
//!
//! Three ways in, one path: an erasure on request (`POST /v1/erasures`, [`http`]), retention
//! ([`run_retention`], `--retain`), both skipping what a legal hold holds ([`held`]). Each step
//! erases at most [`step`] captures in one transaction of the store
//! ([`crate::store::erase::EraseStore::erase`]): a capture is erased entirely or not at all, and
//! once (its tombstone's id is unique), so a pass cut short finishes on the next one.

pub mod http;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::reads::ListRequest;
use crate::store::erase::{EraseRequest, EraseStore};
use crate::store::{CaptureStore, ListFilter, ListQuery, Page, Store, StoreError};

/// Captures erased in one transaction at most (PostgreSQL; see [`step`]).
pub const STEP: usize = 500;
/// Captures erased in one transaction at most on SQLite: its one writer holds ingest for the
/// whole commit, and a step's commit writes back and syncs pages scattered over the file — on a
/// 1 000 000-capture store the longest batch beside a pass was 0.81 s with steps of 500, 0.37 s
/// with 100 and 0.20 s with 25, at 727 captures erased a second against 2 167 with 100
/// (BENCHMARKS.md, "Retention").
pub const SQLITE_STEP: usize = 25;

/// Captures erased in one transaction at most on `store`.
pub fn step(store: &Store) -> usize {
    match store {
        Store::Sqlite(_) => SQLITE_STEP,
        Store::Postgres(_) => STEP,
    }
}
/// How soon after start the first retention pass runs.
pub const FIRST_PASS: Duration = Duration::from_secs(5);
/// How often a retention pass runs after that.
pub const EVERY: Duration = Duration::from_secs(3600);
/// How soon a collector that found another running the pass looks again.
const RETRY: Duration = Duration::from_secs(60);
/// The lease that makes one collector (of several sharing a database) run the pass.
pub const LEASE_NAME: &str = "truthtable.retention";
const LEASE: Duration = Duration::from_secs(30);
/// The least pause between two steps of a pass.
const BETWEEN_STEPS: Duration = Duration::from_millis(20);
/// After each step a pass on SQLite pauses this many times as long as the step took, so it
/// holds the store's one writer at most a fifth of the time and ingest keeps most of its rate.
const PAUSE_FACTOR: u32 = 4;
/// The same on PostgreSQL: a pass there is busy at most a tenth of the time. Its steps are a
/// handful of statements whatever their size, and pausing four times a step's time it erased
/// about 2 900 captures a second and left ingest 0.47 and 0.88 of its rate beside two passes
/// over 100 000 captures; pausing nine times, 1 022 a second and 0.72–0.95 (median 0.91) beside
/// five passes over 1 000 000 (BENCHMARKS.md, "Retention").
const PG_PAUSE_FACTOR: u32 = 9;

/// How many times as long as a step took a pass on `store` pauses after it.
pub fn pause_factor(store: &Store) -> u32 {
    match store {
        Store::Sqlite(_) => PAUSE_FACTOR,
        Store::Postgres(_) => PG_PAUSE_FACTOR,
    }
}

/// Reads a retention duration: a whole number and a unit, `s`, `m`, `h` or `d` (`180d`,
/// `12h`); at least one minute.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("expected a number and a unit like 180d or 12h, got \"{text}\""))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => {
            return Err(format!(
                "expected a unit s, m, h or d after the number (180d, 12h), got \"{text}\""
            ))
        }
    }
    .ok_or_else(|| format!("\"{text}\" is too long"))?;
    if secs < 60 {
        return Err(format!(
            "\"{text}\" is shorter than the least retention, 1m"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// A duration as `--retain` spells it, in the largest unit that divides it.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match () {
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// Now, RFC 3339 in UTC.
pub fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A fresh id for an erasure or a hold: 16 hex digits.
pub fn fresh_id() -> String {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes = (nanos as u64).to_be_bytes();
    }
    crate::store::erase::hex(&bytes)
}

/// Which captures an erasure or a hold names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These ids.
    Ids(Vec<String>),
    /// What the list with these filters shows.
    Filter(Box<ListRequest>),
}

/// What an erasure did, or (dry) would do.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Report {
    /// The erasure's id (its log entry is `event/<id>`, `event/<id>.2`, … for each step).
    pub erasure: String,
    /// Nothing was erased: this is what would be.
    pub dry_run: bool,
    /// Captures erased (would be, dry).
    pub erased: Vec<String>,
    /// Captures a legal hold kept.
    pub held: Vec<String>,
    /// Captures erased before.
    pub already_erased: Vec<String>,
    /// Ids no capture has.
    pub unknown: Vec<String>,
}

/// The ids of every capture the list shows with `filter`, newest first.
pub async fn resolve(store: &Store, filter: &ListFilter) -> Result<Vec<String>, StoreError> {
    let mut ids = Vec::new();
    let mut page = Page::Newest;
    loop {
        let rows = store
            .list(ListQuery {
                filter: filter.clone(),
                limit: crate::reads::MAX_LIMIT,
                page,
                sort: crate::store::Sort::Newest,
                after_key: None,
            })
            .await?;
        let Some(last) = rows.last() else { break };
        page = Page::Before(last.seq);
        ids.extend(rows.into_iter().map(|r| r.id));
    }
    Ok(ids)
}

/// The ids every active legal hold holds.
pub async fn held(store: &Store) -> Result<HashSet<String>, StoreError> {
    let mut held = HashSet::new();
    for hold in store.holds().await? {
        if hold.lifted_at.is_some() {
            continue;
        }
        held.extend(hold.ids.into_iter().flatten());
        if let Some(filters) = &hold.filters {
            match http::filter_request(filters) {
                Ok(req) => held.extend(resolve(store, &req.query.filter).await?),
                Err(e) => {
                    tracing::error!(hold = %hold.id, error = %e, "a stored hold's filters cannot be read; it holds nothing by filter")
                }
            }
        }
    }
    Ok(held)
}

/// Erases `ids` but those held, in steps of [`step`], as one erasure `reason`, `by` a request or
/// a policy; then makes the erased bytes unrecoverable from the store's files.
pub async fn erase(
    store: &Store,
    eraser: &Eraser,
    ids: Vec<String>,
    reason: &str,
    by: &str,
    dry_run: bool,
) -> Result<Report, StoreError> {
    let held = held(store).await?;
    let (held, ids): (Vec<String>, Vec<String>) = ids.into_iter().partition(|id| held.contains(id));
    let mut report = Report {
        erasure: fresh_id(),
        dry_run,
        held,
        ..Report::default()
    };
    for (n, step) in ids.chunks(step(store)).enumerate() {
        let event = match n {
            0 => report.erasure.clone(),
            n => format!("{}.{}", report.erasure, n + 1),
        };
        let out = store
            .erase(EraseRequest {
                event,
                reason: reason.to_owned(),
                by: by.to_owned(),
                erased_at: now_text(),
                ids: step.to_vec(),
                dry_run,
            })
            .await?;
        report.erased.extend(out.erased);
        report.already_erased.extend(out.already_erased);
        report.unknown.extend(out.unknown);
    }
    if !dry_run {
        eraser
            .held
            .fetch_add(report.held.len() as u64, Ordering::Relaxed);
        if !report.erased.is_empty() {
            store.purge().await?;
        }
        tracing::info!(
            erasure = %report.erasure,
            erased = report.erased.len(),
            held = report.held.len(),
            unknown = report.unknown.len(),
            by,
            reason,
            "erased captures"
        );
    }
    Ok(report)
}

/// Erasure's running state: the retention setting, and what the metrics show.
pub struct Eraser {
    retain: Option<Duration>,
    holder: String,
    /// Captures past retention that retention has still to erase: counted when a pass starts,
    /// less what each step erased or found held, and counted again when it ends.
    pending: AtomicU64,
    /// Captures past retention the last pass kept because a hold holds them.
    retained_by_holds: AtomicU64,
    /// Captures an erasure or a pass left because a hold holds them (each time).
    held: AtomicU64,
    /// Retention passes this process finished.
    passes: AtomicU64,
}

impl Eraser {
    /// Erasure with retention `retain`, if any.
    pub fn new(retain: Option<Duration>) -> Eraser {
        Eraser {
            retain,
            holder: format!("{}/{}", std::process::id(), fresh_id()),
            pending: AtomicU64::new(0),
            retained_by_holds: AtomicU64::new(0),
            held: AtomicU64::new(0),
            passes: AtomicU64::new(0),
        }
    }

    /// The retention, when it is on.
    pub fn retain(&self) -> Option<Duration> {
        self.retain
    }

    /// Gives up the retention lease so another collector can run the pass at once.
    pub async fn release(&self, store: &Store) {
        let _ = store
            .release_cursor(LEASE_NAME.to_owned(), self.holder.clone())
            .await;
    }

    /// The metrics in Prometheus text format (the counts are read from the store).
    pub async fn render_metrics(&self, store: &Store) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        if let Ok(counts) = store.erase_counts().await {
            metric(
                "truthtable_erased_captures",
                "Captures erased (tombstones in the store).",
                counts.erased,
            );
            metric(
                "truthtable_legal_holds",
                "Legal holds in force.",
                counts.holds,
            );
        }
        metric(
            "truthtable_held_captures_total",
            "Captures an erasure or a retention pass did not erase because a legal hold holds them (each time).",
            self.held.load(Ordering::Relaxed),
        );
        metric(
            "truthtable_retention_pending_captures",
            "Captures past retention still to be erased (held ones not counted), as of the running pass's last step or the last pass's end.",
            self.pending.load(Ordering::Relaxed),
        );
        metric(
            "truthtable_retention_held_captures",
            "Captures past retention the last retention pass kept because a legal hold holds them.",
            self.retained_by_holds.load(Ordering::Relaxed),
        );
        metric(
            "truthtable_retention_passes_total",
            "Retention passes this collector finished.",
            self.passes.load(Ordering::Relaxed),
        );
        out
    }
}

/// What a retention pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// Captures erased.
    pub erased: u64,
    /// Captures past retention a hold kept.
    pub held: u64,
}

/// One retention pass: erases every capture whose exchange started more than `retain` ago, but
/// those held, in steps; `None` when another collector holds the pass's lease. Only a database
/// several collectors share (PostgreSQL) needs the lease: a SQLite file has one collector, and
/// one restarted after a crash must not wait for its own dead lease.
pub async fn retention_pass(
    store: &Store,
    eraser: &Eraser,
    retain: Duration,
) -> Result<Option<Pass>, StoreError> {
    let leased = matches!(store, Store::Postgres(_));
    let claim = async || {
        if leased {
            store
                .claim_cursor(LEASE_NAME.to_owned(), eraser.holder.clone(), LEASE)
                .await
                .map(|c| c.is_some())
        } else {
            Ok(true)
        }
    };
    if !claim().await? {
        return Ok(None);
    }
    let now_us = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
    let cutoff = i64::try_from(now_us).unwrap_or(i64::MAX)
        - i64::try_from(retain.as_micros()).unwrap_or(i64::MAX);
    let by = format!("retention {}", format_duration(retain));
    let reason = format!(
        "retention: the exchange started more than {} ago",
        format_duration(retain)
    );
    let holds = held(store).await?;
    let mut pass = Pass::default();
    let mut after = 0i64;
    let past = store.count_started_before(cutoff).await?;
    eraser.pending.store(past, Ordering::Relaxed);
    loop {
        let due = store
            .started_before(cutoff, after, step(store) as u32)
            .await?;
        let Some(&(last, _)) = due.last() else { break };
        after = last;
        let (kept, ids): (Vec<String>, Vec<String>) = due
            .into_iter()
            .map(|(_, id)| id)
            .partition(|id| holds.contains(id));
        pass.held += kept.len() as u64;
        let step = std::time::Instant::now();
        if !ids.is_empty() {
            let out = store
                .erase(EraseRequest {
                    event: fresh_id(),
                    reason: reason.clone(),
                    by: by.clone(),
                    erased_at: now_text(),
                    ids,
                    dry_run: false,
                })
                .await?;
            pass.erased += out.erased.len() as u64;
            tracing::debug!(
                took_ms = step.elapsed().as_millis() as u64,
                erased = out.erased.len(),
                "erase step"
            );
        }
        eraser.pending.store(
            past.saturating_sub(pass.erased + pass.held),
            Ordering::Relaxed,
        );
        if !claim().await? {
            // The lease ran out and another collector took the pass over.
            break;
        }
        tokio::time::sleep(BETWEEN_STEPS.max(step.elapsed() * pause_factor(store))).await;
    }
    if pass.erased > 0 {
        store.purge().await?;
    }
    let left = store.count_started_before(cutoff).await?;
    eraser
        .pending
        .store(left.saturating_sub(pass.held), Ordering::Relaxed);
    eraser.retained_by_holds.store(pass.held, Ordering::Relaxed);
    eraser.held.fetch_add(pass.held, Ordering::Relaxed);
    eraser.passes.fetch_add(1, Ordering::Relaxed);
    eraser.release(store).await;
    Ok(Some(pass))
}

/// Runs a retention pass [`FIRST_PASS`] after start and then every [`EVERY`], until aborted.
pub async fn run_retention(state: &crate::AppState) {
    let Some(retain) = state.erase.retain() else {
        return;
    };
    tokio::time::sleep(FIRST_PASS).await;
    loop {
        let wait = match retention_pass(&state.store, &state.erase, retain).await {
            Ok(Some(pass)) => {
                tracing::info!(
                    erased = pass.erased,
                    held = pass.held,
                    retain = %format_duration(retain),
                    "retention pass finished"
                );
                EVERY
            }
            Ok(None) => RETRY,
            Err(e) => {
                tracing::warn!(error = %e, "a retention pass failed; trying again in a minute");
                RETRY
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_number_and_a_unit_and_at_least_a_minute() {
        assert_eq!(
            parse_duration("180d"),
            Ok(Duration::from_secs(180 * 86_400))
        );
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        for bad in ["", "d", "12", "12w", "-1d", "30s", "1.5d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(180 * 86_400)), "180d");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }
}
