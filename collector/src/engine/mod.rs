//! The audit hand-off: every stored capture that an audit engine should judge is handed to each
//! configured engine (`--audit-engine`), and the engine's verdict is kept with the capture.
//!
//! Like the OpenTelemetry export, the hand-off reads the store, never the ingest path: each
//! engine walks the records in commit order behind a cursor of its own in the store
//! (`audit:<engine>`), under a lease, so a restart resumes where it stopped and of several
//! collectors sharing a database one hands off to each engine. The capture id is the idempotency
//! key: it is the engine's `request_id`, and a capture that already has this engine's verdict is
//! not handed over again (after a crash, the batch in flight is read again and only its
//! unjudged captures go out). While an engine is down its captures wait in the store and are
//! sent again with backoff; an engine's unusable answer is kept as an engine error on the
//! capture. Nothing here ever holds up ingest or another engine.
//!
//! [`request`] chooses the captures and builds what an engine is sent, [`grpc`] speaks
//! TruthTable's `AuditService`, [`verdict`] checks an answer and keeps it, [`handoff`] is the
//! loop.

pub mod annotate;
pub mod grpc;
pub mod handoff;
pub mod proto;
pub mod request;
pub mod verdict;
pub mod webhook;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{watch, Notify};

pub use request::Selection;
pub use verdict::Verdict;

/// How one attempt to get something from an engine ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt<T> {
    /// The engine answered.
    Done(T),
    /// Nothing usable yet; the same request may succeed later (the engine is down or busy).
    Retry(String),
    /// The engine's answer is unusable, and asking again will not change it.
    Bad(String),
}

/// The hand-off settings, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditInputs {
    /// `--audit-engine`: each engine's URL.
    pub engines: Vec<String>,
    /// Which captures are handed over.
    pub selection: Selection,
    /// Most captures one engine judges at once.
    pub concurrency: usize,
    /// Longest one call to an engine may take.
    pub call_timeout: Duration,
    /// Longest wait for one audit's result.
    pub deadline: Duration,
    /// Longest wait between attempts while an engine is down.
    pub retry_max: Duration,
    /// The `whsec_` secrets webhook engines are signed with (several during a rotation).
    pub webhook_secrets: Vec<String>,
}

impl Default for AuditInputs {
    fn default() -> Self {
        AuditInputs {
            engines: Vec::new(),
            selection: Selection {
                sample: 1.0,
                ..Selection::default()
            },
            concurrency: 8,
            call_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(600),
            retry_max: Duration::from_secs(30),
            webhook_secrets: Vec::new(),
        }
    }
}

/// What kind of engine, and how to reach it.
pub enum Kind {
    /// TruthTable's `AuditService` over gRPC.
    Grpc(grpc::GrpcEngine),
    /// Any HTTP endpoint, over Standard Webhooks.
    Webhook(webhook::WebhookEngine),
}

/// Counters of one engine, for `/metrics`.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Captures handed over (once each, however many attempts it took).
    pub sent: AtomicU64,
    /// Verdicts stored (`completed` or `failed`).
    pub judged: AtomicU64,
    /// Engine errors stored (an unusable answer).
    pub failed: AtomicU64,
    /// Attempts that failed and are made again later.
    pub retried: AtomicU64,
    /// Captures not handed over: not selected.
    pub skipped: AtomicU64,
    /// `started_at` (ms since the epoch) of the oldest capture in hand; 0 when caught up.
    pub oldest_in_hand_ms: AtomicI64,
    /// Whether the last attempt reached the engine.
    pub up: AtomicBool,
    /// Whether this collector holds the engine's cursor.
    pub handing_off: AtomicBool,
}

/// One configured engine: how to reach it, which captures it gets, and its loop's signals.
pub struct Engine {
    /// The engine's name: its URL without credentials, query or fragment.
    pub name: String,
    /// How to reach it.
    pub kind: Kind,
    /// Which captures it gets.
    pub selection: Selection,
    /// Most captures it judges at once.
    pub concurrency: usize,
    /// Longest wait between attempts while it is down.
    pub retry_max: Duration,
    /// Its counters.
    pub stats: EngineStats,
    /// Who this collector is when it claims the engine's cursor.
    pub(crate) holder: String,
    pub(crate) wake: Notify,
    pub(crate) stop: watch::Sender<bool>,
}

/// The name an engine is shown and stored under: scheme, host, port and path of its URL.
pub fn engine_name(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

impl Engine {
    /// An engine for `url`: `grpc://host:port`, `grpcs://host:port`, or an `https://` (or, on a
    /// trusted network, `http://`) webhook URL. Connects on first use.
    pub fn new(url: &str, inputs: &AuditInputs, holder: &str) -> anyhow::Result<Engine> {
        let name = engine_name(url);
        let kind = if let Some(rest) = url.strip_prefix("grpc://") {
            Kind::Grpc(grpc::GrpcEngine::new(
                &format!("http://{rest}"),
                false,
                inputs.call_timeout,
                inputs.deadline,
            )?)
        } else if let Some(rest) = url.strip_prefix("grpcs://") {
            Kind::Grpc(grpc::GrpcEngine::new(
                &format!("https://{rest}"),
                true,
                inputs.call_timeout,
                inputs.deadline,
            )?)
        } else if url.starts_with("https://") || url.starts_with("http://") {
            Kind::Webhook(webhook::WebhookEngine::new(
                url,
                &inputs.webhook_secrets,
                inputs.call_timeout,
            )?)
        } else {
            anyhow::bail!(
                "--audit-engine {url}: expected grpc://HOST:PORT, grpcs://HOST:PORT or an https:// webhook URL"
            );
        };
        Ok(Engine {
            name,
            kind,
            selection: inputs.selection.clone(),
            concurrency: inputs.concurrency.max(1),
            retry_max: inputs.retry_max,
            stats: EngineStats::default(),
            holder: holder.to_owned(),
            wake: Notify::new(),
            stop: watch::channel(false).0,
        })
    }

    /// Every engine `inputs` names; an error names the one that cannot be used.
    pub fn all(inputs: &AuditInputs) -> anyhow::Result<Vec<std::sync::Arc<Engine>>> {
        if !(0.0..=1.0).contains(&inputs.selection.sample) {
            anyhow::bail!(
                "--audit-sample {}: expected a share from 0 to 1",
                inputs.selection.sample
            );
        }
        let holder = format!(
            "{}/{}/{:x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "collector".to_owned()),
            std::process::id(),
            crate::otlp::export::seed()
        );
        let mut out: Vec<std::sync::Arc<Engine>> = Vec::new();
        for url in &inputs.engines {
            let engine = Engine::new(url, inputs, &holder).context("audit engine")?;
            if out.iter().any(|e| e.name == engine.name) {
                anyhow::bail!("--audit-engine {url} is given twice");
            }
            out.push(std::sync::Arc::new(engine));
        }
        Ok(out)
    }

    /// The store cursor this engine's hand-off keeps.
    pub fn cursor_name(&self) -> String {
        format!("audit:{}", self.name)
    }

    /// Something was stored: look now rather than at the next poll. Never waits.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Asks the loop to finish; the captures in hand stay unjudged and are handed over after
    /// the next start.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Hands one capture to the engine and reads its verdict.
    pub async fn judge(&self, h: &request::Handoff) -> Attempt<Verdict> {
        match &self.kind {
            Kind::Grpc(g) => match g.judge(h.request.clone()).await {
                Attempt::Done(result) => {
                    match verdict::from_result(&self.name, result, h.answer_complete, now()) {
                        Ok(v) => Attempt::Done(v),
                        Err(bad) => Attempt::Bad(bad.0),
                    }
                }
                Attempt::Retry(why) => Attempt::Retry(why),
                Attempt::Bad(why) => Attempt::Bad(why),
            },
            Kind::Webhook(w) => match w.judge(&self.name, h).await {
                Attempt::Done(Some(v)) => Attempt::Done(v),
                Attempt::Done(None) => {
                    Attempt::Done(Verdict::pending(&self.name, h.answer_complete, now()))
                }
                Attempt::Retry(why) => Attempt::Retry(why),
                Attempt::Bad(why) => Attempt::Bad(why),
            },
        }
    }

    /// Asks the engine whether it can take audits (gRPC `HealthCheck`), for the log.
    pub async fn health(&self) -> Result<String, String> {
        match &self.kind {
            Kind::Grpc(g) => g.health().await.and_then(|h| {
                if h.healthy {
                    Ok(format!("healthy, version {:?}", h.version))
                } else {
                    Err(format!(
                        "unhealthy (version {:?}, dependencies {:?})",
                        h.version, h.dependencies
                    ))
                }
            }),
            Kind::Webhook(_) => Ok("a webhook (no health check; its answers tell)".to_owned()),
        }
    }
}

/// Now, RFC 3339 UTC.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default(),
    )
    .unwrap_or(i64::MAX)
}

/// A metric family: name, type, help, and its sample for one engine.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Engine) -> String,
);

/// The hand-off's part of `/metrics`: one sample per engine of each.
pub fn render_metrics(engines: &[std::sync::Arc<Engine>]) -> String {
    let mut out = String::new();
    if engines.is_empty() {
        return out;
    }
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    let families: [Family; 8] = [
        ("truthtable_audit_sent_total", "counter", "Captures handed to the audit engine (once each, whatever the attempts).", |e| get(&e.stats.sent).to_string()),
        ("truthtable_audit_judged_total", "counter", "Verdicts the engine gave (completed or failed audits), stored with their captures.", |e| get(&e.stats.judged).to_string()),
        ("truthtable_audit_failed_total", "counter", "Engine answers that could not be used (malformed, out of range, unknown values, too large); kept as engine errors on their captures.", |e| get(&e.stats.failed).to_string()),
        ("truthtable_audit_retried_total", "counter", "Attempts that did not reach the engine and are made again with backoff.", |e| get(&e.stats.retried).to_string()),
        ("truthtable_audit_skipped_total", "counter", "Captures not handed over: not a recognised LLM call with an answer, or left out by --audit-path, --audit-model or --audit-sample.", |e| get(&e.stats.skipped).to_string()),
        ("truthtable_audit_lag_seconds", "gauge", "Age of the oldest capture handed over and not yet judged; 0 when the engine has caught up.", |e| {
            let oldest = e.stats.oldest_in_hand_ms.load(Ordering::Relaxed);
            if oldest == 0 { "0".to_owned() } else { format!("{:.3}", (now_ms() - oldest).max(0) as f64 / 1000.0) }
        }),
        ("truthtable_audit_engine_up", "gauge", "1 when the last attempt reached the engine, 0 while it is unreachable.", |e| u8::from(e.stats.up.load(Ordering::Relaxed)).to_string()),
        ("truthtable_audit_handing_off", "gauge", "1 while this collector holds the engine's cursor and hands captures over.", |e| u8::from(e.stats.handing_off.load(Ordering::Relaxed)).to_string()),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for e in engines {
            let label = e.name.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "{name}{{engine=\"{label}\"}} {}", value(e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_is_named_by_its_url_without_credentials_or_query() {
        assert_eq!(
            engine_name("grpc://127.0.0.1:50051"),
            "grpc://127.0.0.1:50051"
        );
        assert_eq!(
            engine_name("https://user:pw@judge.example.com/hooks/tt?token=x#f"),
            "https://judge.example.com/hooks/tt"
        );
    }

    #[tokio::test]
    async fn engines_are_checked_at_start() {
        let mut inputs = AuditInputs {
            engines: vec!["grpc://127.0.0.1:1".into(), "grpcs://judge:443".into()],
            ..AuditInputs::default()
        };
        let engines = Engine::all(&inputs).unwrap();
        assert_eq!(engines[1].cursor_name(), "audit:grpcs://judge:443");
        inputs.engines = vec!["ftp://x".into()];
        assert!(Engine::all(&inputs).is_err());
        inputs.engines = vec!["https://judge.example.com/hook".into()];
        let e = format!("{:#}", Engine::all(&inputs).err().unwrap());
        assert!(e.contains("TRUTHTABLE_WEBHOOK_SECRETS"), "{e}");
        inputs.webhook_secrets = vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()];
        assert!(Engine::all(&inputs).is_ok());
        inputs.engines = vec!["grpc://a:1".into(), "grpc://a:1".into()];
        assert!(format!("{:#}", Engine::all(&inputs).err().unwrap()).contains("twice"));
        inputs.engines = vec![];
        inputs.selection.sample = 1.5;
        assert!(Engine::all(&inputs).is_err());
    }
}
