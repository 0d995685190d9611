//! Counters the collector exposes at `GET /metrics`, in Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::store::StoreStats;

/// Why an ingest request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Missing or wrong bearer token (401).
    Unauthorized,
    /// A line that is not a valid v1 record, or no record at all (400).
    Invalid,
    /// Body over `--max-body-bytes` (413).
    TooLarge,
    /// A request `content-encoding` the collector does not accept (415).
    UnsupportedEncoding,
}

impl Rejection {
    const ALL: [Rejection; 4] = [
        Rejection::Unauthorized,
        Rejection::Invalid,
        Rejection::TooLarge,
        Rejection::UnsupportedEncoding,
    ];

    fn label(self) -> &'static str {
        match self {
            Rejection::Unauthorized => "unauthorized",
            Rejection::Invalid => "invalid",
            Rejection::TooLarge => "too_large",
            Rejection::UnsupportedEncoding => "unsupported_encoding",
        }
    }
}

/// What the OpenTelemetry exporter did with spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanCount {
    /// Accepted by the OTLP endpoint.
    Exported,
    /// In a request that failed and is sent again (counted once per attempt).
    Retried,
    /// Refused for good by the endpoint, or from a stored record that no longer reads.
    Failed,
    /// Not exported: not an LLM call, under `--otlp-non-llm skip`.
    Skipped,
}

/// Process-lifetime counters.
#[derive(Debug, Default)]
pub struct Metrics {
    ingest_requests: AtomicU64,
    stream_batches: AtomicU64,
    streams_open: AtomicU64,
    records_stored: AtomicU64,
    duplicates: AtomicU64,
    rejected: [AtomicU64; 4],
    store_errors: AtomicU64,
    store_unavailable: AtomicU64,
    otlp_spans: [AtomicU64; 4],
    otlp_exporting: AtomicBool,
}

/// What the indexer reports at scrape time (`crate::indexer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexGauges {
    /// Records stored and waiting for their digests in this process's queue.
    pub pending: u64,
    /// Digests this process wrote from its queue.
    pub written: u64,
}

/// What the store reports at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreGauges {
    /// Whether the store takes writes.
    pub up: bool,
    /// Records and bytes, when the store could tell (not while it is unreachable).
    pub stats: Option<StoreStats>,
}

impl Metrics {
    /// Counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// One `POST /v1/captures` arrived.
    pub fn ingest_request(&self) {
        self.ingest_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// An ingest stream opened (`crate::lanes`).
    pub fn stream_opened(&self) {
        self.streams_open.fetch_add(1, Ordering::Relaxed);
    }

    /// An ingest stream ended.
    pub fn stream_closed(&self) {
        self.streams_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A batch arrived on an ingest stream (`crate::lanes`); it is also an ingest request.
    pub fn stream_batch(&self) {
        self.stream_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch committed `stored` new records and skipped `duplicates`.
    pub fn batch_committed(&self, stored: u64, duplicates: u64) {
        self.records_stored.fetch_add(stored, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
    }

    /// An ingest request was refused.
    pub fn rejected(&self, why: Rejection) {
        if let Some(c) = self.rejected.get(why as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The store failed an operation (answered 500).
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The store could not take an operation because the database is unavailable (503).
    pub fn store_unavailable(&self) {
        self.store_unavailable.fetch_add(1, Ordering::Relaxed);
    }

    /// The exporter did `what` with `n` spans.
    pub fn otlp_spans(&self, what: SpanCount, n: u64) {
        if let Some(c) = self.otlp_spans.get(what as usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// How many spans the exporter did `what` with so far.
    pub fn otlp_count(&self, what: SpanCount) -> u64 {
        self.otlp_spans
            .get(what as usize)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or_default()
    }

    /// Whether this collector holds the export lease (is the one exporting).
    pub fn otlp_exporting(&self, exporting: bool) {
        self.otlp_exporting.store(exporting, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with what the store reports now.
    pub fn render(&self, store: StoreGauges, index: IndexGauges) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "truthtable_collector_ingest_requests_total",
            "counter",
            "Ingest requests received (POSTs and batches on ingest streams).",
            &[("", get(&self.ingest_requests))],
        );
        metric(
            "truthtable_collector_ingest_stream_batches_total",
            "counter",
            "Batches received on gRPC ingest streams (audit_transport \"grpc\").",
            &[("", get(&self.stream_batches))],
        );
        metric(
            "truthtable_collector_ingest_streams_open",
            "gauge",
            "gRPC ingest streams open now: up to max_inflight per Envoy worker whose filter sends over them.",
            &[("", get(&self.streams_open))],
        );
        metric(
            "truthtable_collector_records_stored_total",
            "counter",
            "Capture records newly stored by this process.",
            &[("", get(&self.records_stored))],
        );
        metric(
            "truthtable_collector_duplicates_total",
            "counter",
            "Capture records received whose id was already stored.",
            &[("", get(&self.duplicates))],
        );
        let labels: Vec<String> = Rejection::ALL
            .iter()
            .map(|r| format!("{{reason=\"{}\"}}", r.label()))
            .collect();
        let rejected: Vec<(&str, u64)> = Rejection::ALL
            .iter()
            .zip(&labels)
            .map(|(r, l)| {
                (
                    l.as_str(),
                    self.rejected.get(*r as usize).map(get).unwrap_or_default(),
                )
            })
            .collect();
        metric(
            "truthtable_collector_rejected_requests_total",
            "counter",
            "Ingest requests refused, by reason; nothing of them was stored.",
            &rejected,
        );
        metric(
            "truthtable_collector_store_errors_total",
            "counter",
            "Store operations that failed (answered 500).",
            &[("", get(&self.store_errors))],
        );
        metric(
            "truthtable_collector_store_unavailable_total",
            "counter",
            "Store operations refused because the database was unavailable (answered 503).",
            &[("", get(&self.store_unavailable))],
        );
        metric(
            "truthtable_collector_store_up",
            "gauge",
            "1 when the store takes writes, 0 while the database is unavailable.",
            &[("", u64::from(store.up))],
        );
        let spans = |what: SpanCount| [("", self.otlp_count(what))];
        metric(
            "truthtable_collector_otlp_spans_exported_total",
            "counter",
            "Spans the OTLP endpoint accepted.",
            &spans(SpanCount::Exported),
        );
        metric(
            "truthtable_collector_otlp_spans_retried_total",
            "counter",
            "Spans in export requests that failed and are sent again (once per attempt); they stay in the store meanwhile.",
            &spans(SpanCount::Retried),
        );
        metric(
            "truthtable_collector_otlp_spans_failed_total",
            "counter",
            "Spans the OTLP endpoint refused for good, or whose stored record no longer reads; the records stay in the store.",
            &spans(SpanCount::Failed),
        );
        metric(
            "truthtable_collector_otlp_spans_skipped_total",
            "counter",
            "Captures not exported because they are not LLM calls (--otlp-non-llm skip).",
            &spans(SpanCount::Skipped),
        );
        metric(
            "truthtable_collector_otlp_exporting",
            "gauge",
            "1 while this collector holds the export lease and exports; 0 when export is off or another collector exports.",
            &[("", u64::from(self.otlp_exporting.load(Ordering::Relaxed)))],
        );
        metric(
            "truthtable_collector_index_pending",
            "gauge",
            "Records this process stored whose digests (the list's filters and search) are not written yet.",
            &[("", index.pending)],
        );
        metric(
            "truthtable_collector_digests_written_total",
            "counter",
            "Digests this process wrote behind ingest (not counting those of a scan of the store).",
            &[("", index.written)],
        );
        // Sizes come from the store; while it cannot tell, the samples are left out.
        let sample = |f: fn(&StoreStats) -> u64| store.stats.as_ref().map(|s| ("", f(s)));
        metric(
            "truthtable_collector_records",
            "gauge",
            "Capture records in the store (all replicas' when the store is shared).",
            sample(|s| s.records).as_slice(),
        );
        metric(
            "truthtable_collector_store_bytes",
            "gauge",
            "Bytes the store takes on disk: the SQLite file and its write-ahead log, or the PostgreSQL table with its indexes and TOAST.",
            sample(|s| s.bytes).as_slice(),
        );
        out
    }
}

// ---- stream timing: TTFT and inter-token histograms per model ------------------------------------

/// Upper bounds (seconds) of the time-to-first-token buckets.
const TTFT_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Upper bounds (seconds) of the inter-token gap buckets.
const GAP_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Most models with series of their own; the rest share `model="other"`.
const MAX_MODELS: usize = 100;

/// A Prometheus histogram: counts per bucket (not cumulative), sum and count.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.len() != bounds.len() + 1 {
            self.buckets = vec![0; bounds.len() + 1];
        }
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// TTFT and inter-token gap histograms of the captures this process stored, per model (the
/// audit view's `timing`, observed when the indexer derives each new record's view).
#[derive(Debug, Default)]
pub struct StreamTiming {
    by_model: std::sync::Mutex<std::collections::BTreeMap<String, (Histogram, Histogram)>>,
}

impl StreamTiming {
    /// Observes one capture's timing: its TTFT and every gap between its content-bearing chunks.
    pub fn observe(&self, model: Option<&str>, timing: &crate::audit::timing::Timing) {
        let Some(ttft_ms) = timing.ttft_ms else {
            return;
        };
        let Ok(mut by_model) = self.by_model.lock() else {
            return;
        };
        let model = model.unwrap_or("unknown");
        let key = if by_model.contains_key(model) || by_model.len() < MAX_MODELS {
            model
        } else {
            "other"
        };
        let (ttft, gaps) = by_model.entry(key.to_owned()).or_default();
        ttft.observe(&TTFT_BUCKETS, ttft_ms / 1000.0);
        for pair in timing.points.windows(2) {
            let gap_us = pair[1].0.saturating_sub(pair[0].0);
            gaps.observe(&GAP_BUCKETS, gap_us as f64 / 1e6);
        }
    }

    /// The histograms in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(by_model) = self.by_model.lock() else {
            return out;
        };
        for (name, help, bounds, pick) in [
            (
                "truthtable_collector_ttft_seconds",
                "Time to first token of the streamed answers this process stored, by model (audit view timing.ttft_ms).",
                &TTFT_BUCKETS[..],
                0,
            ),
            (
                "truthtable_collector_inter_token_seconds",
                "Gaps between the content-bearing chunks of the streamed answers this process stored, by model.",
                &GAP_BUCKETS[..],
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (model, pair) in by_model.iter() {
                let h = if pick == 0 { &pair.0 } else { &pair.1 };
                let model = label_value(model);
                let mut cumulative = 0;
                for (i, bound) in bounds.iter().map(|b| b.to_string()).chain(["+Inf".to_owned()]).enumerate() {
                    cumulative += h.buckets.get(i).copied().unwrap_or_default();
                    let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"{bound}\"}} {cumulative}");
                }
                let _ = writeln!(out, "{name}_sum{{model=\"{model}\"}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{model=\"{model}\"}} {}", h.count);
            }
        }
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_reports_every_counter() {
        let m = Metrics::new();
        m.ingest_request();
        m.stream_batch();
        m.stream_opened();
        m.stream_opened();
        m.stream_closed();
        m.batch_committed(3, 2);
        m.rejected(Rejection::TooLarge);
        m.store_unavailable();
        m.otlp_spans(SpanCount::Exported, 5);
        m.otlp_spans(SpanCount::Retried, 2);
        m.otlp_spans(SpanCount::Retried, 2);
        m.otlp_exporting(true);
        let text = m.render(
            StoreGauges {
                up: true,
                stats: Some(StoreStats {
                    records: 8,
                    bytes: 4096,
                }),
            },
            IndexGauges {
                pending: 7,
                written: 9,
            },
        );
        for line in [
            "truthtable_collector_ingest_requests_total 1",
            "truthtable_collector_ingest_stream_batches_total 1",
            "truthtable_collector_ingest_streams_open 1",
            "truthtable_collector_records_stored_total 3",
            "truthtable_collector_duplicates_total 2",
            "truthtable_collector_rejected_requests_total{reason=\"too_large\"} 1",
            "truthtable_collector_rejected_requests_total{reason=\"invalid\"} 0",
            "truthtable_collector_records 8",
            "truthtable_collector_store_bytes 4096",
            "truthtable_collector_store_unavailable_total 1",
            "truthtable_collector_store_up 1",
            "truthtable_collector_otlp_spans_exported_total 5",
            "truthtable_collector_otlp_spans_retried_total 4",
            "truthtable_collector_otlp_spans_failed_total 0",
            "truthtable_collector_otlp_spans_skipped_total 0",
            "truthtable_collector_otlp_exporting 1",
            "truthtable_collector_index_pending 7",
            "truthtable_collector_digests_written_total 9",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn ttft_and_gaps_are_histograms_per_model() {
        let t = StreamTiming::default();
        let timing = crate::audit::timing::Timing {
            ttft_ms: Some(300.0),
            points: vec![(300_000, 5), (360_000, 9), (1_160_000, 12)],
            ..Default::default()
        };
        t.observe(Some("gpt-4o"), &timing);
        t.observe(Some("gpt-4o"), &crate::audit::timing::Timing::default());
        t.observe(Some("we\"ird"), &timing);
        let text = t.render();
        for line in [
            "# TYPE truthtable_collector_ttft_seconds histogram",
            "truthtable_collector_ttft_seconds_bucket{model=\"gpt-4o\",le=\"0.25\"} 0",
            "truthtable_collector_ttft_seconds_bucket{model=\"gpt-4o\",le=\"0.5\"} 1",
            "truthtable_collector_ttft_seconds_bucket{model=\"gpt-4o\",le=\"+Inf\"} 1",
            "truthtable_collector_ttft_seconds_count{model=\"gpt-4o\"} 1",
            "truthtable_collector_ttft_seconds_sum{model=\"gpt-4o\"} 0.3",
            "truthtable_collector_inter_token_seconds_bucket{model=\"gpt-4o\",le=\"0.05\"} 0",
            "truthtable_collector_inter_token_seconds_bucket{model=\"gpt-4o\",le=\"0.1\"} 1",
            "truthtable_collector_inter_token_seconds_bucket{model=\"gpt-4o\",le=\"1\"} 2",
            "truthtable_collector_inter_token_seconds_count{model=\"gpt-4o\"} 2",
            "truthtable_collector_ttft_seconds_count{model=\"we\\\"ird\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn sizes_are_left_out_while_the_store_cannot_tell() {
        let text = Metrics::new().render(
            StoreGauges {
                up: false,
                stats: None,
            },
            IndexGauges::default(),
        );
        assert!(text.lines().any(|l| l == "truthtable_collector_store_up 0"));
        assert!(text.contains("# TYPE truthtable_collector_records gauge"));
        assert!(!text
            .lines()
            .any(|l| l.starts_with("truthtable_collector_records ")));
    }
}
