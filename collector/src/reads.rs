//! The reads, once for every surface: the JSON API (`GET /v1/captures`, `GET /v1/captures/{id}`)
//! and the web view call the same functions, so a filter means the same in both and a page shows
//! what the API returns.

use crate::audit::{AuditView, Protocol};
use crate::digest;
use crate::http::AppState;
use crate::record::{CaptureRecord, Outcome};
use crate::search;
use crate::store::erase::{EraseStore, Tombstone};
use crate::store::{
    CaptureStore, CaptureSummary, ListFilter, ListQuery, Page, Sort, StatusFilter, StoreError,
};
use crate::timestamp;

/// Default page size of the list.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size of the list.
pub const MAX_LIMIT: u32 = 1000;

/// Every parameter the list takes (`GET /v1/captures`, `/`, `/ui`).
pub const LIST_PARAMS: [&str; 18] = [
    "limit",
    "before",
    "after",
    "since",
    "until",
    "outcome",
    "protocol",
    "model",
    "path",
    "status",
    "mark",
    "q",
    "ttft_above",
    "duration_above",
    "sort",
    "verdict",
    "score_below",
    "erased",
];

/// The values of `sort`.
pub const SORTS: [&str; 3] = ["newest", "ttft", "duration"];

/// The values of `mark`.
pub const MARKS: [&str; 3] = ["truncated", "incomplete", "problems"];

/// A list parameter that cannot be used; the message names it and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadParam(pub String);

/// A parsed list request, and the filter parameters as given (for links to other pages).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListRequest {
    /// What the store is asked.
    pub query: ListQuery,
    /// The non-empty filter parameters (not `before`/`after`), in the order given.
    pub filters: Vec<(String, String)>,
    /// `erased=show`: erased captures are listed as tombstone rows in their places.
    pub show_erased: bool,
}

impl ListRequest {
    /// Reads query-string pairs. Empty values count as absent (what a form sends for an empty
    /// field); `outcome`, `protocol` and `mark` take several values, repeated or comma-separated.
    pub fn parse(pairs: &[(String, String)]) -> Result<ListRequest, BadParam> {
        let mut req = ListRequest {
            query: ListQuery {
                limit: DEFAULT_LIMIT,
                ..ListQuery::default()
            },
            filters: Vec::new(),
            show_erased: false,
        };
        let mut seen: Vec<&str> = Vec::new();
        let (mut before, mut after) = (None, None);
        let f = &mut req.query.filter;
        for (key, value) in pairs {
            let value = value.trim();
            let Some(known) = LIST_PARAMS.iter().find(|p| **p == key) else {
                return Err(BadParam(format!(
                    "unknown query parameter \"{key}\"; expected one of {}",
                    LIST_PARAMS.join(", ")
                )));
            };
            if value.is_empty() {
                continue;
            }
            let multi = matches!(*known, "outcome" | "protocol" | "mark");
            if !multi && seen.contains(known) {
                return Err(BadParam(format!("{key}: given more than once")));
            }
            seen.push(known);
            if !matches!(*known, "before" | "after") {
                req.filters.push((key.clone(), value.to_owned()));
            }
            let each = || value.split(',').map(str::trim).filter(|v| !v.is_empty());
            match *known {
                "limit" => {
                    req.query.limit = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            BadParam(format!(
                                "limit: expected an integer from 1 to {MAX_LIMIT}, got \"{value}\""
                            ))
                        })?
                }
                "before" => before = Some(value.to_owned()),
                "after" => after = Some(value.to_owned()),
                "since" | "until" => {
                    let us = timestamp::unix_micros(value).ok_or_else(|| {
                        BadParam(format!(
                            "{key}: expected a time like 2026-11-25T16:10:40Z, 2026-11-25T16:10 (UTC) or 2026-11-25, got \"{value}\""
                        ))
                    })?;
                    if *known == "since" {
                        f.since_us = Some(us);
                    } else {
                        f.until_us = Some(us);
                    }
                }
                "outcome" => {
                    for v in each() {
                        if !Outcome::ALL.iter().any(|o| o.as_str() == v) {
                            return Err(BadParam(format!(
                                "outcome: expected {}, got \"{v}\"",
                                Outcome::ALL.map(Outcome::as_str).join(", ")
                            )));
                        }
                        f.outcomes.push(v.to_owned());
                    }
                }
                "protocol" => {
                    for v in each() {
                        if !Protocol::ALL.iter().any(|p| p.as_str() == v) {
                            return Err(BadParam(format!(
                                "protocol: expected one of {}, got \"{v}\"",
                                Protocol::ALL.map(Protocol::as_str).join(", ")
                            )));
                        }
                        f.protocols.push(v.to_owned());
                    }
                }
                "model" => f.model = Some(value.to_owned()),
                "path" => f.path = Some(value.to_owned()),
                "status" => f.status = Some(parse_status(value)?),
                "mark" => {
                    for v in each() {
                        match v {
                            "truncated" => f.truncated = true,
                            "incomplete" => f.incomplete = true,
                            "problems" => f.problems = true,
                            other => {
                                return Err(BadParam(format!(
                                    "mark: expected {}, got \"{other}\"",
                                    MARKS.join(", ")
                                )))
                            }
                        }
                    }
                }
                "q" => {
                    f.terms = search::terms(value).map_err(|e| BadParam(format!("q: {e}")))?;
                }
                "ttft_above" => f.ttft_above_us = Some(parse_ms(key, value)?),
                "duration_above" => f.duration_above_us = Some(parse_ms(key, value)?),
                "sort" => {
                    req.query.sort = match value {
                        "newest" => Sort::Newest,
                        "ttft" => Sort::Ttft,
                        "duration" => Sort::Duration,
                        other => {
                            return Err(BadParam(format!(
                                "sort: expected {}, got \"{other}\"",
                                SORTS.join(", ")
                            )))
                        }
                    }
                }
                "verdict" => match value {
                    "flagged" => f.flagged = true,
                    other => {
                        return Err(BadParam(format!(
                            "verdict: expected flagged, got \"{other}\""
                        )))
                    }
                },
                "score_below" => {
                    let score = value
                        .parse::<f64>()
                        .ok()
                        .filter(|s| (0.0..=1.0).contains(s))
                        .ok_or_else(|| {
                            BadParam(format!(
                                "score_below: expected a score from 0 to 1, got \"{value}\""
                            ))
                        })?;
                    f.score_below = Some(score.to_string());
                }
                "erased" => {
                    req.show_erased = match value {
                        "show" => true,
                        "hide" => false,
                        other => {
                            return Err(BadParam(format!(
                                "erased: expected show or hide, got \"{other}\""
                            )))
                        }
                    }
                }
                _ => {}
            }
        }
        if req.show_erased && req.query.sort != Sort::Newest {
            return Err(BadParam(
                "erased=show: tombstones are listed in stored order only; leave sort out (newest)"
                    .to_owned(),
            ));
        }
        req.resolve_page(before, after)?;
        Ok(req)
    }

    /// `before` / `after`: a seq in stored order; a sorted list's `before` is `KEY:SEQ` (a
    /// `next_before`), and it has no `after`.
    fn resolve_page(
        &mut self,
        before: Option<String>,
        after: Option<String>,
    ) -> Result<(), BadParam> {
        let bad = |key: &str, value: &str| {
            BadParam(format!(
                "{key}: expected a cursor from next_before or prev_after, got \"{value}\""
            ))
        };
        let seq = |key: &str, value: &str| {
            value
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(key, value))
        };
        match (before, after, self.query.sort) {
            (Some(_), Some(_), _) => Err(BadParam(
                "before and after: give one of them, not both".to_owned(),
            )),
            (Some(b), None, Sort::Newest) => {
                self.query.page = Page::Before(seq("before", &b)?);
                Ok(())
            }
            (None, Some(a), Sort::Newest) => {
                self.query.page = Page::After(seq("after", &a)?);
                Ok(())
            }
            (Some(b), None, _) => {
                let (k, s) = b.split_once(':').ok_or_else(|| bad("before", &b))?;
                let k = k.parse::<i64>().map_err(|_| bad("before", &b))?;
                self.query.after_key = Some((k, seq("before", s)?));
                Ok(())
            }
            (None, Some(_), _) => Err(BadParam(
                "after: a sorted list is paged with before only".to_owned(),
            )),
            (None, None, _) => Ok(()),
        }
    }

    /// The value of a filter parameter as given (the first, for those given several times).
    pub fn filter_value(&self, key: &str) -> Option<&str> {
        self.filters
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Milliseconds (a decimal number), as microseconds.
fn parse_ms(key: &str, value: &str) -> Result<i64, BadParam> {
    value
        .parse::<f64>()
        .ok()
        .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 1e12)
        .map(|ms| (ms * 1000.0).round() as i64)
        .ok_or_else(|| {
            BadParam(format!(
                "{key}: expected milliseconds (a number, 0 or more), got \"{value}\""
            ))
        })
}

fn parse_status(value: &str) -> Result<StatusFilter, BadParam> {
    let bad = || {
        BadParam(format!(
            "status: expected a status (200), a class (4xx) or none, got \"{value}\""
        ))
    };
    let lower = value.to_ascii_lowercase();
    if lower == "none" {
        return Ok(StatusFilter::NoResponse);
    }
    if let Some(class) = lower.strip_suffix("xx") {
        return match class.parse::<u16>() {
            Ok(c) if (1..=5).contains(&c) => Ok(StatusFilter::Class(c)),
            _ => Err(bad()),
        };
    }
    match value.parse::<u16>() {
        Ok(s) if (100..=599).contains(&s) => Ok(StatusFilter::Is(s)),
        _ => Err(bad()),
    }
}

/// One row of the list: a stored capture, or (with `erased=show`) an erased one's tombstone.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// A stored capture.
    Capture(CaptureSummary),
    /// An erased capture's tombstone, in the place (`seq`) its capture had.
    Erased(i64, Tombstone),
}

impl Row {
    /// Where the row stands in stored order.
    pub fn seq(&self) -> i64 {
        match self {
            Row::Capture(s) => s.seq,
            Row::Erased(seq, _) => *seq,
        }
    }
}

impl serde::Serialize for Row {
    /// A capture as its summary; a tombstone as its fields and `"erased": true`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Erased<'a> {
            erased: bool,
            #[serde(flatten)]
            tombstone: &'a Tombstone,
        }
        match self {
            Row::Capture(s) => s.serialize(serializer),
            Row::Erased(_, tombstone) => Erased {
                erased: true,
                tombstone,
            }
            .serialize(serializer),
        }
    }
}

/// One page of the list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// The captures (and, with `erased=show`, the tombstones), newest stored first.
    pub rows: Vec<Row>,
    /// `before` for the next page (older; a sorted list's next); `None` on the last.
    pub next_before: Option<String>,
    /// `after` for the previous, newer page; `None` on the newest (and for a sorted list).
    pub prev_after: Option<String>,
    /// Stored records are still being given their digests: filters and search skip those.
    pub indexing: bool,
}

/// The page `req` asks for.
pub async fn list(state: &AppState, req: &ListRequest) -> Result<ListPage, StoreError> {
    // Read before the query: a page says "not indexing" only when every digest it could need
    // was written before it was read (read after, a backfill finishing meanwhile would vouch for
    // a page that missed its last records).
    let indexing = state.indexing();
    let limit = req.query.limit;
    let mut query = ListQuery {
        limit: limit + 1,
        ..req.query.clone()
    };
    let mut rows = with_tombstones(
        state,
        req,
        query.page,
        state.store.list(query.clone()).await?,
    )
    .await?;
    if matches!(query.page, Page::After(_)) && rows.len() <= limit as usize {
        // Fewer newer captures than a page: that is the newest page.
        query.page = Page::Newest;
        rows = with_tombstones(
            state,
            req,
            query.page,
            state.store.list(query.clone()).await?,
        )
        .await?;
    }
    let more = rows.len() > limit as usize;
    if query.sort != Sort::Newest {
        let page: Vec<Row> = rows.into_iter().take(limit as usize).collect();
        let key = |r: &Row| match (r, query.sort) {
            (Row::Capture(s), Sort::Ttft) => s.keys.0,
            (Row::Capture(s), _) => s.keys.1,
            (Row::Erased(..), _) => None,
        };
        let next_before = page
            .last()
            .filter(|_| more)
            .and_then(|r| Some(format!("{}:{}", key(r)?, r.seq())));
        return Ok(ListPage {
            rows: page,
            next_before,
            prev_after: None,
            indexing,
        });
    }
    let (rows, next_before, prev_after) = match query.page {
        Page::After(_) => {
            let extra = rows.len().saturating_sub(limit as usize);
            let page: Vec<_> = rows.into_iter().skip(extra).collect();
            let older = page.last().map(Row::seq);
            let newer = page.first().map(Row::seq);
            (page, older, newer)
        }
        Page::Newest | Page::Before(_) => {
            let page: Vec<_> = rows.into_iter().take(limit as usize).collect();
            let older = if more {
                page.last().map(Row::seq)
            } else {
                None
            };
            let newer = match query.page {
                Page::Before(_) => page.first().map(Row::seq),
                _ => None,
            };
            (page, older, newer)
        }
    };
    Ok(ListPage {
        rows,
        next_before: next_before.map(|s| s.to_string()),
        prev_after: prev_after.map(|s| s.to_string()),
        indexing,
    })
}

/// The store's rows for `page` (at most a page and one, newest stored first), with the tombstones
/// that stand among them merged in when the request shows erased captures: the same window, in
/// the same order, cut to the same length. A tombstone has no content, so it matches no filter
/// but the time range (`since`, `until`, by the exchange's start).
async fn with_tombstones(
    state: &AppState,
    req: &ListRequest,
    page: Page,
    captures: Vec<CaptureSummary>,
) -> Result<Vec<Row>, StoreError> {
    let want = captures.len();
    let mut rows: Vec<Row> = captures.into_iter().map(Row::Capture).collect();
    let f = &req.query.filter;
    let content_filtered = ListFilter {
        since_us: None,
        until_us: None,
        ..f.clone()
    } != ListFilter::default();
    if !req.show_erased || content_filtered {
        return Ok(rows);
    }
    let full = want > req.query.limit as usize;
    // The window the captures span (a full page: up to its farthest row; else to the end).
    let (above, below, oldest_first) = match page {
        Page::Newest => (full.then(|| rows[want - 1].seq()), None, false),
        Page::Before(b) => (full.then(|| rows[want - 1].seq()), Some(b), false),
        Page::After(a) => (Some(a), full.then(|| rows[0].seq()), true),
    };
    let cap = req.query.limit + 1;
    let in_time = |t: &Tombstone| {
        let Some(at) = timestamp::unix_micros(&t.started_at) else {
            return f.since_us.is_none() && f.until_us.is_none();
        };
        f.since_us.is_none_or(|s| at >= s) && f.until_us.is_none_or(|u| at < u)
    };
    // Tombstones in the window, nearest the page's start first, until a page and one match.
    let mut found = Vec::new();
    let (mut lo, mut hi) = (above, below);
    while found.len() < cap as usize {
        let batch = state
            .store
            .tombstones_between(lo, hi, oldest_first, cap)
            .await?;
        let Some(&(last, _)) = batch.last() else {
            break;
        };
        let short = batch.len() < cap as usize;
        found.extend(batch.into_iter().filter(|(_, t)| in_time(t)));
        if short {
            break;
        }
        if oldest_first {
            lo = Some(last);
        } else {
            hi = Some(last);
        }
    }
    rows.extend(found.into_iter().map(|(seq, t)| Row::Erased(seq, t)));
    rows.sort_by_key(|r| std::cmp::Reverse(r.seq()));
    let keep = cap as usize;
    if rows.len() > keep {
        if oldest_first {
            rows.drain(..rows.len() - keep);
        } else {
            rows.truncate(keep);
        }
    }
    Ok(rows)
}

/// The distinct models the list can be filtered by.
pub async fn models(state: &AppState) -> Result<Vec<String>, StoreError> {
    state.store.models().await
}

/// One stored capture: the line as received, the record (or why it no longer validates), and
/// its audit view, derived now.
#[derive(Debug, Clone)]
pub struct CaptureRead {
    /// The record exactly as received.
    pub raw: String,
    /// The typed record, or why the stored line does not validate.
    pub record: Result<CaptureRecord, String>,
    /// The audit view.
    pub view: AuditView,
    /// Where the verifiable log has it, when the log is on.
    pub log: Option<LogPlace>,
    /// The audit engines' verdicts, as stored, in the order they arrived.
    pub verdicts: Vec<crate::store::StoredVerdict>,
}

/// A capture's place in the verifiable log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LogPlace {
    /// Its index; `None` until the sequencer reaches it (a second or so after it is stored).
    pub index: Option<u64>,
    /// The size of the latest signed checkpoint; the capture is in it when `index` is below it.
    pub checkpoint_size: Option<u64>,
}

impl LogPlace {
    /// The capture is in the latest signed checkpoint, so its proof is served.
    pub fn proven(&self) -> bool {
        matches!((self.index, self.checkpoint_size), (Some(i), Some(n)) if i < n)
    }
}

/// The capture stored under `id`, if any.
pub async fn capture(state: &AppState, id: String) -> Result<Option<CaptureRead>, StoreError> {
    use crate::store::log::LogStore as _;
    let log = match &state.log {
        Some(_) => {
            let index = state
                .store
                .log_entry(id.clone())
                .await?
                .and_then(|e| e.index);
            let checkpoint_size = state.store.log_checkpoint(None).await?.map(|c| c.0);
            Some(LogPlace {
                index,
                checkpoint_size,
            })
        }
        None => None,
    };
    let Some(raw) = state.store.get(id.clone()).await? else {
        return Ok(None);
    };
    let verdicts = state.store.verdicts(id).await?;
    // Deriving decodes and parses the bodies: CPU work, kept off the async workers.
    let stall_ms = state.stall_threshold_ms;
    let read = tokio::task::spawn_blocking(move || {
        let record = CaptureRecord::parse_line(&raw).map_err(|e| e.to_string());
        let view = match &record {
            Ok(r) => digest::view_with(r, stall_ms),
            Err(e) => AuditView::unknown(format!("stored record no longer validates: {e}")),
        };
        CaptureRead {
            raw,
            record,
            view,
            log,
            verdicts,
        }
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("deriving the audit view failed: {e}")))?;
    Ok(Some(read))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<ListRequest, BadParam> {
        let pairs: Vec<(String, String)> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        ListRequest::parse(&pairs)
    }

    #[test]
    fn every_filter_is_read() {
        let r = parse("since=2026-11-25&until=2026-11-26T00:00:00Z&outcome=client_aborted,upstream_failed&protocol=openai.chat&protocol=anthropic.messages&model=gpt-4o&status=5xx&mark=truncated,problems&q=Envoy proxy&limit=10&before=99&path=/v1/messages").unwrap();
        let f = &r.query.filter;
        assert_eq!(f.since_us, timestamp::unix_micros("2026-11-25"));
        assert_eq!(f.until_us, timestamp::unix_micros("2026-11-26"));
        assert_eq!(f.outcomes, ["client_aborted", "upstream_failed"]);
        assert_eq!(f.protocols, ["openai.chat", "anthropic.messages"]);
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert_eq!(f.path.as_deref(), Some("/v1/messages"));
        assert_eq!(f.status, Some(StatusFilter::Class(5)));
        assert!(f.truncated && f.problems && !f.incomplete);
        assert_eq!(f.terms, ["envoy", "proxy"]);
        assert_eq!((r.query.limit, r.query.page), (10, Page::Before(99)));
        assert_eq!(r.filter_value("model"), Some("gpt-4o"));
        let v = parse("verdict=flagged&score_below=0.5").unwrap();
        assert!(v.query.filter.flagged);
        assert_eq!(v.query.filter.score_below.as_deref(), Some("0.5"));
        assert!(r.filters.iter().all(|(k, _)| k != "before"));
    }

    #[test]
    fn empty_values_are_absent() {
        let r = parse("since=&until=&outcome=&protocol=&model=&status=&q=&limit=").unwrap();
        assert!(r.query.filter.is_empty());
        assert_eq!(r.query.limit, DEFAULT_LIMIT);
        assert!(r.filters.is_empty());
    }

    #[test]
    fn statuses_are_exact_a_class_or_none() {
        for (v, want) in [
            ("200", StatusFilter::Is(200)),
            ("4xx", StatusFilter::Class(4)),
            ("5XX", StatusFilter::Class(5)),
            ("none", StatusFilter::NoResponse),
        ] {
            assert_eq!(
                parse(&format!("status={v}")).unwrap().query.filter.status,
                Some(want)
            );
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        for (q, start) in [
            ("limit=0", "limit: expected an integer from 1 to 1000"),
            ("limit=x", "limit: expected"),
            ("before=-1", "before: expected a cursor"),
            ("before=5&after=3", "before and after: give one"),
            ("since=yesterday", "since: expected a time"),
            (
                "outcome=fine",
                "outcome: expected complete, client_aborted, upstream_failed",
            ),
            ("protocol=soap", "protocol: expected one of openai.chat"),
            ("status=700", "status: expected a status"),
            ("status=9xx", "status: expected a status"),
            ("mark=odd", "mark: expected truncated, incomplete, problems"),
            ("q=!!", "q: has no letters or digits"),
            ("model=a&model=b", "model: given more than once"),
            ("order=asc", "unknown query parameter \"order\""),
            ("sort=asc", "sort: expected newest, ttft, duration"),
            ("ttft_above=soon", "ttft_above: expected milliseconds"),
            ("duration_above=-3", "duration_above: expected milliseconds"),
            (
                "sort=ttft&after=5",
                "after: a sorted list is paged with before only",
            ),
            ("sort=ttft&before=12", "before: expected a cursor"),
            ("verdict=good", "verdict: expected flagged"),
            ("score_below=2", "score_below: expected a score from 0 to 1"),
            ("score_below=x", "score_below: expected a score"),
            ("erased=all", "erased: expected show or hide"),
            (
                "erased=show&sort=ttft",
                "erased=show: tombstones are listed in stored order",
            ),
        ] {
            let e = parse(q).unwrap_err().0;
            assert!(e.starts_with(start), "{q}: {e}");
        }
    }

    #[test]
    fn ttft_and_duration_filter_and_sort_the_list() {
        let r = parse("ttft_above=250.5&duration_above=2000&sort=ttft&before=300000:17").unwrap();
        assert_eq!(r.query.filter.ttft_above_us, Some(250_500));
        assert_eq!(r.query.filter.duration_above_us, Some(2_000_000));
        assert_eq!(r.query.sort, Sort::Ttft);
        assert_eq!(r.query.after_key, Some((300_000, 17)));
        assert_eq!(r.query.page, Page::Newest);
    }
}
