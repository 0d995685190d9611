//! The export loop: hold the cursor's lease, read the records after it, turn them into spans,
//! send them in requests of bounded size, and move the cursor past each request the endpoint
//! took. Failures wait with backoff and try again; only a refusal for good (or a record that no
//! longer reads) gives spans up, and that is counted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use tokio::sync::{watch, Notify};

use super::config::ExportConfig;
use super::span::{capture_span, Converted, SpanOptions};
use super::transport::{Sent, Transport};
use crate::http::AppState;
use crate::metrics::SpanCount;
use crate::store::{CaptureStore as _, Cursor};

/// The name of the exporter's cursor in the store.
pub const CURSOR: &str = "otlp";
/// How long a claim on the cursor lasts; it is renewed every third of that.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often the store is looked at when ingest has not said there is something new (records
/// other collectors store on a shared database arrive this way).
pub const POLL: Duration = Duration::from_secs(1);
/// How long to wait before asking an unavailable store again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Largest encoded request: below the 4 MiB that gRPC servers take by default.
pub const MAX_REQUEST_BYTES: usize = 3 << 20;
/// The first wait after a failed request; it doubles up to `--otlp-retry-max-ms`.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The exporter's handle in the collector's state: its settings, its connection, and the
/// signals ingest and shutdown send it.
pub struct Exporter {
    /// The checked settings.
    pub config: ExportConfig,
    transport: Transport,
    /// Who this exporter is when it claims the cursor.
    holder: String,
    wake: Notify,
    stop: watch::Sender<bool>,
}

impl Exporter {
    /// An exporter for `config` (connects on first use). Must be called inside a Tokio runtime.
    pub fn new(config: ExportConfig) -> anyhow::Result<Exporter> {
        let transport = Transport::new(&config)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "collector".to_owned());
        let holder = format!("{host}/{}/{:x}", std::process::id(), seed());
        Ok(Exporter {
            config,
            transport,
            holder,
            wake: Notify::new(),
            stop: watch::channel(false).0,
        })
    }

    /// Something was stored: look now rather than at the next poll. Never waits.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Asks the loop to finish: the request in flight completes and its cursor is saved, then
    /// the lease is given up.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// A seed from the clock and the process id.
pub(crate) fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Exponential backoff with jitter: each wait is the current step scaled into [½, 1] by the
/// caller's random number, and the step doubles up to the maximum.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `first`, never above `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let first = first.min(max);
        Backoff {
            first,
            max,
            step: first,
        }
    }

    /// The wait before the next attempt; `random` is uniform in [0, 1).
    pub fn next(&mut self, random: f64) -> Duration {
        let wait = self.step.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0));
        self.step = (self.step * 2).min(self.max);
        wait
    }

    /// After a success: the next failure starts from the first step again.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

/// xorshift64: jitter needs no more.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One request's worth of converted records.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The spans to send.
    pub spans: Vec<Span>,
    /// The cursor of its last record: where reading resumes once it is sent.
    pub last: Cursor,
    /// Records that became no span (not LLM calls, under `--otlp-non-llm skip`).
    pub skipped: u64,
    /// Records that no longer read as v1 records, with why.
    pub unreadable: Vec<(String, String)>,
}

/// Splits converted records, in order, into requests of at most `max_bytes` encoded spans
/// (a single larger span goes alone).
pub fn chunks(converted: Vec<(Cursor, String, Converted)>, max_bytes: usize) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut chunk = Chunk::default();
    let mut bytes = 0;
    for (cursor, id, c) in converted {
        if let Converted::Span(span) = &c {
            let size = span.encoded_len();
            if !chunk.spans.is_empty() && bytes + size > max_bytes {
                out.push(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += size;
        }
        match c {
            Converted::Span(span) => chunk.spans.push(*span),
            Converted::Skipped => chunk.skipped += 1,
            Converted::Unreadable(why) => chunk.unreadable.push((id, why)),
        }
        chunk.last = cursor;
    }
    if chunk.last != Cursor::START || !chunk.spans.is_empty() {
        out.push(chunk);
    }
    out
}

/// How an attempt to get something done ended, when it did not.
enum Interrupted {
    /// Shutdown was asked for.
    Stopped,
    /// Another collector holds the cursor now.
    LostLease,
    /// Captures were erased while a request waited to be sent again: read the batch anew, so
    /// an erased capture is never sent.
    Erased,
}

struct Run<'a> {
    state: &'a AppState,
    ex: &'a Exporter,
    stop: watch::Receiver<bool>,
    /// The cursor while this exporter holds its lease, and when the lease was last renewed.
    lease: Option<(Cursor, Instant)>,
    /// Set once this collector has said it is standing by (another holds the lease).
    standing_by: bool,
    backoff: Backoff,
    rng: Rng,
    /// Failed attempts since the last success, and when the first of them failed.
    failing: Option<(u64, Instant)>,
    /// How many captures were erased when the batch in hand was read.
    erased_at_read: Option<u64>,
}

/// Exports until [`Exporter::stop`]; returns at once when export is off.
pub async fn run(state: Arc<AppState>) {
    let Some(ex) = state.otlp.as_ref() else {
        return;
    };
    tracing::info!(
        endpoint = %ex.config.url,
        protocol = ex.config.protocol.as_str(),
        "exporting stored captures as OpenTelemetry spans"
    );
    let mut run = Run {
        state: &state,
        ex,
        stop: ex.stop.subscribe(),
        lease: None,
        standing_by: false,
        backoff: Backoff::new(FIRST_RETRY, ex.config.retry_max),
        rng: Rng(seed()),
        failing: None,
        erased_at_read: None,
    };
    run.go().await;
    if run.lease.is_some() {
        if let Err(e) = state
            .store
            .release_cursor(CURSOR.to_owned(), ex.holder.clone())
            .await
        {
            tracing::debug!(error = %e, "could not give up the export lease; it runs out by itself");
        }
    }
    state.metrics.otlp_exporting(false);
    tracing::info!("OpenTelemetry export stopped");
}

impl Run<'_> {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits `d`; false when shutdown was asked for (at once, or meanwhile).
    async fn pause(&mut self, d: Duration) -> bool {
        if self.stopped() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.stopped(),
            _ = self.stop.changed() => false,
        }
    }

    /// Waits for ingest's word, the next poll, or shutdown (false).
    async fn idle(&mut self) -> bool {
        if self.stopped() {
            return false;
        }
        tokio::select! {
            _ = self.ex.wake.notified() => !self.stopped(),
            _ = tokio::time::sleep(POLL) => !self.stopped(),
            _ = self.stop.changed() => false,
        }
    }

    /// The cursor, claiming or renewing the lease when due. `Ok(None)`: another collector holds
    /// it; `Err(())`: the store cannot say now.
    async fn hold(&mut self) -> Result<Option<Cursor>, ()> {
        if let Some((cursor, renewed)) = self.lease {
            if renewed.elapsed() < LEASE / 3 {
                return Ok(Some(cursor));
            }
        }
        let claim = self
            .state
            .store
            .claim_cursor(CURSOR.to_owned(), self.ex.holder.clone(), LEASE)
            .await;
        match claim {
            Ok(Some(cursor)) => {
                if self.lease.is_none() {
                    tracing::info!(cursor = %cursor, "this collector exports (it holds the export cursor)");
                }
                self.lease = Some((cursor, Instant::now()));
                self.standing_by = false;
                self.state.metrics.otlp_exporting(true);
                Ok(Some(cursor))
            }
            Ok(None) => {
                if self.lease.take().is_some() || !self.standing_by {
                    tracing::info!("another collector holds the export cursor; standing by");
                }
                self.standing_by = true;
                self.state.metrics.otlp_exporting(false);
                Ok(None)
            }
            Err(e) => {
                tracing::debug!(error = %e, "export cursor not reachable");
                Err(())
            }
        }
    }

    /// Waits `d` while keeping the lease. Store trouble meanwhile is no reason to stop waiting.
    async fn wait_holding(&mut self, d: Duration) -> Result<(), Interrupted> {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            if !self.pause(left.min(LEASE / 3)).await {
                return Err(Interrupted::Stopped);
            }
            if let Ok(None) = self.hold().await {
                return Err(Interrupted::LostLease);
            }
        }
    }

    async fn go(&mut self) {
        while !self.stopped() {
            let cursor = match self.hold().await {
                Ok(Some(cursor)) => cursor,
                Ok(None) => {
                    if !self.pause(LEASE / 3).await {
                        return;
                    }
                    continue;
                }
                Err(()) => {
                    if !self.pause(STORE_RETRY).await {
                        return;
                    }
                    continue;
                }
            };
            self.erased_at_read = self.erased().await;
            let records = match self
                .state
                .store
                .read_after(cursor, self.ex.config.batch_size)
                .await
            {
                Ok(records) => records,
                Err(e) => {
                    tracing::debug!(error = %e, "export: reading the store failed");
                    if !self.pause(STORE_RETRY).await {
                        return;
                    }
                    continue;
                }
            };
            if records.is_empty() {
                if !self.idle().await {
                    return;
                }
                continue;
            }
            let options = SpanOptions {
                non_llm: self.ex.config.non_llm,
                value_limit: self.ex.config.value_limit,
                stall_threshold_ms: self.ex.config.stall_threshold_ms,
            };
            // Deriving views decodes bodies: CPU work, kept off the async workers.
            let converted = tokio::task::spawn_blocking(move || {
                records
                    .into_iter()
                    .map(|r| {
                        let span = capture_span(&r.raw, &options);
                        (r.cursor, r.id, span)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            let converted = match converted {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "export: building spans failed");
                    if !self.pause(STORE_RETRY).await {
                        return;
                    }
                    continue;
                }
            };
            for chunk in chunks(converted, MAX_REQUEST_BYTES) {
                let (last, skipped, unreadable) = (chunk.last, chunk.skipped, chunk.unreadable);
                if !chunk.spans.is_empty() {
                    match self.deliver(chunk.spans).await {
                        Ok(()) => {}
                        Err(Interrupted::Stopped) => return,
                        Err(Interrupted::LostLease | Interrupted::Erased) => break,
                    }
                }
                match self.save(last).await {
                    Ok(()) => {}
                    Err(Interrupted::Stopped) => return,
                    Err(Interrupted::LostLease | Interrupted::Erased) => break,
                }
                let metrics = &self.state.metrics;
                metrics.otlp_spans(SpanCount::Skipped, skipped);
                metrics.otlp_spans(SpanCount::Failed, unreadable.len() as u64);
                for (id, why) in unreadable {
                    tracing::warn!(capture = %id, "not exported: the stored record no longer reads ({why})");
                }
            }
        }
    }

    /// Moves the cursor to `cursor`, trying again while the store is unavailable.
    async fn save(&mut self, cursor: Cursor) -> Result<(), Interrupted> {
        loop {
            let saved = self
                .state
                .store
                .save_cursor(CURSOR.to_owned(), self.ex.holder.clone(), cursor, LEASE)
                .await;
            match saved {
                Ok(true) => {
                    self.lease = Some((cursor, Instant::now()));
                    return Ok(());
                }
                Ok(false) => {
                    tracing::warn!("another collector took the export cursor over; standing by");
                    self.lease = None;
                    self.standing_by = true;
                    self.state.metrics.otlp_exporting(false);
                    return Err(Interrupted::LostLease);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "export: saving the cursor failed");
                    if !self.pause(STORE_RETRY).await {
                        return Err(Interrupted::Stopped);
                    }
                }
            }
        }
    }

    fn request(&self, spans: Vec<Span>) -> ExportTraceServiceRequest {
        let string = |s: &str| {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s.to_owned())),
            })
        };
        let attributes = self
            .ex
            .config
            .resource
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: string(v),
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "truthtable-collector".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// How many captures the store has erased (by any collector sharing it), when it answers.
    async fn erased(&self) -> Option<u64> {
        use crate::store::erase::EraseStore as _;
        self.state.store.erase_counts().await.ok().map(|c| c.erased)
    }

    /// Sends `spans` until the endpoint has taken or refused every one of them.
    async fn deliver(&mut self, spans: Vec<Span>) -> Result<(), Interrupted> {
        let url = self.ex.config.url.clone();
        let mut parts = VecDeque::from([spans]);
        while let Some(part) = parts.pop_front() {
            let n = part.len() as u64;
            let request = self.request(part);
            loop {
                let sent = self.ex.transport.send(&request).await;
                let metrics = &self.state.metrics;
                match sent {
                    Sent::Accepted { rejected, message } => {
                        let rejected = rejected.min(n);
                        metrics.otlp_spans(SpanCount::Exported, n - rejected);
                        metrics.otlp_spans(SpanCount::Failed, rejected);
                        if rejected > 0 {
                            tracing::error!(endpoint = %url, rejected, "the OTLP endpoint rejected spans: {message}");
                        }
                        if let Some((attempts, since)) = self.failing.take() {
                            tracing::info!(
                                endpoint = %url,
                                "OTLP export works again after {attempts} failed attempt(s) over {:.1} s",
                                since.elapsed().as_secs_f64()
                            );
                        }
                        self.backoff.reset();
                        break;
                    }
                    Sent::Retry { after, why } => {
                        metrics.otlp_spans(SpanCount::Retried, n);
                        match &mut self.failing {
                            None => {
                                tracing::warn!(
                                    endpoint = %url,
                                    "OTLP export failed ({why}); the spans stay in the store and are sent again with backoff"
                                );
                                self.failing = Some((1, Instant::now()));
                            }
                            Some((attempts, _)) => {
                                *attempts += 1;
                                tracing::debug!(endpoint = %url, attempts = *attempts, "OTLP export failed again ({why})");
                            }
                        }
                        let backoff = self.backoff.next(self.rng.unit());
                        let wait = after.unwrap_or(backoff).min(self.ex.config.retry_max);
                        self.wait_holding(wait).await?;
                        if self.erased().await != self.erased_at_read {
                            return Err(Interrupted::Erased);
                        }
                    }
                    Sent::TooLarge(why) if n > 1 => {
                        let mut spans = request
                            .resource_spans
                            .into_iter()
                            .flat_map(|r| r.scope_spans)
                            .flat_map(|s| s.spans)
                            .collect::<Vec<_>>();
                        let second = spans.split_off(spans.len() / 2);
                        tracing::debug!(endpoint = %url, "request too large ({why}); splitting it");
                        parts.push_front(second);
                        parts.push_front(spans);
                        break;
                    }
                    Sent::TooLarge(why) | Sent::Refused(why) => {
                        metrics.otlp_spans(SpanCount::Failed, n);
                        tracing::error!(endpoint = %url, spans = n, "the OTLP endpoint refused spans for good ({why}); their captures stay in the store");
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        assert_eq!(b.next(1.0), Duration::from_millis(250));
        assert_eq!(b.next(0.0), Duration::from_millis(250));
        assert_eq!(b.next(1.0), Duration::from_millis(1000));
        assert_eq!(b.next(1.0), Duration::from_secs(2));
        assert_eq!(b.next(1.0), Duration::from_secs(2), "capped");
        b.reset();
        assert_eq!(b.next(1.0), Duration::from_millis(250));
        let mut rng = Rng(seed());
        for _ in 0..1000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }

    fn span_of(bytes: usize) -> Converted {
        Converted::Span(Box::new(Span {
            name: "x".repeat(bytes),
            ..Default::default()
        }))
    }

    fn at(seq: i64) -> Cursor {
        format!("0-{seq}").parse().unwrap()
    }

    #[test]
    fn chunks_keep_record_order_bound_request_size_and_end_at_their_last_record() {
        let converted = vec![
            (at(1), "a".into(), span_of(400)),
            (at(2), "b".into(), Converted::Skipped),
            (at(3), "c".into(), span_of(400)),
            (at(4), "d".into(), Converted::Unreadable("bad".into())),
            (at(5), "e".into(), span_of(2000)),
            (at(6), "f".into(), span_of(10)),
        ];
        let chunks = chunks(converted, 1000);
        let shape: Vec<(usize, Cursor, u64, usize)> = chunks
            .iter()
            .map(|c| (c.spans.len(), c.last, c.skipped, c.unreadable.len()))
            .collect();
        assert_eq!(
            shape,
            [(2, at(4), 1, 1), (1, at(5), 0, 0), (1, at(6), 0, 0)]
        );
        // Nothing but skipped records still moves the cursor.
        let only_skipped = super::chunks(vec![(at(9), "z".into(), Converted::Skipped)], 1000);
        assert_eq!((only_skipped.len(), only_skipped[0].last), (1, at(9)));
    }
}
