//! TruthTable's own engine over gRPC (`truthtable.audit.v1.AuditService`): `SubmitAudit` with
//! the capture's audit view, then `GetAuditResult` until the audit is `COMPLETED` or `FAILED`;
//! `HealthCheck` says whether the engine can take audits.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use super::proto::audit_service_client::AuditServiceClient;
use super::proto::{self, AuditRequest, AuditResultRequest, AuditStatus, HealthRequest};
use super::Attempt;

/// Largest answer taken from the engine; a larger one is an engine error on the capture.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;
/// The first wait between two `GetAuditResult` calls; it doubles up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between two `GetAuditResult` calls.
const POLL_MAX: Duration = Duration::from_secs(2);

/// A connection to one `AuditService`.
#[derive(Clone)]
pub struct GrpcEngine {
    client: AuditServiceClient<Channel>,
    /// Longest wait for one audit's result.
    deadline: Duration,
}

/// Sorts a gRPC error: worth trying again later (the engine is down, busy, or refuses our
/// credentials for now), or an answer that will not get better.
fn classify(what: &str, s: &tonic::Status) -> Attempt<proto::AuditResult> {
    let why = format!("{what}: {:?}: {}", s.code(), s.message());
    match s.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal
        | Code::Unauthenticated
        | Code::PermissionDenied => Attempt::Retry(why),
        _ => Attempt::Bad(why),
    }
}

impl GrpcEngine {
    /// A client of the engine at `url` (`http://` or `https://` host and port; no connection is
    /// made yet). Each call may take `timeout`; an audit's result is awaited for `deadline`.
    pub fn new(
        url: &str,
        tls: bool,
        timeout: Duration,
        deadline: Duration,
    ) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("gRPC endpoint {url}"))?
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("truthtable-collector/", env!("CARGO_PKG_VERSION")))
            .context("the gRPC user agent")?;
        if tls {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .context("TLS for the audit engine")?;
        }
        let client = AuditServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_ANSWER_BYTES);
        Ok(GrpcEngine { client, deadline })
    }

    /// The engine's `HealthCheck`: healthy or not, and its version; an error when it does not
    /// answer.
    pub async fn health(&self) -> Result<proto::HealthResponse, String> {
        let mut client = self.client.clone();
        client
            .health_check(HealthRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }

    /// Submits `request` and polls until the audit finishes.
    pub async fn judge(&self, request: AuditRequest) -> Attempt<proto::AuditResult> {
        let mut client = self.client.clone();
        let submitted = match client.submit_audit(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return classify("SubmitAudit", &s),
        };
        if submitted.audit_id.is_empty() {
            return Attempt::Bad("SubmitAudit answered no audit_id".to_owned());
        }
        let started = Instant::now();
        let mut wait = POLL_FIRST;
        loop {
            let asked = AuditResultRequest {
                audit_id: submitted.audit_id.clone(),
            };
            match client.get_audit_result(asked).await {
                Ok(r) => {
                    let r = r.into_inner();
                    match AuditStatus::try_from(r.status) {
                        Ok(AuditStatus::Completed | AuditStatus::Failed) | Err(_) => {
                            return Attempt::Done(r)
                        }
                        Ok(_) => {}
                    }
                }
                // The engine lost the audit (a restart): submit it again.
                Err(s) if s.code() == Code::NotFound => {
                    return Attempt::Retry(format!(
                        "GetAuditResult: the engine no longer knows audit {}",
                        submitted.audit_id
                    ))
                }
                Err(s) => match classify("GetAuditResult", &s) {
                    Attempt::Bad(why) => return Attempt::Bad(why),
                    _ => {
                        tracing::debug!(audit = %submitted.audit_id, "GetAuditResult failed ({}); asking again", s.message())
                    }
                },
            }
            if started.elapsed() >= self.deadline {
                return Attempt::Bad(format!(
                    "audit {} not finished after {} s",
                    submitted.audit_id,
                    self.deadline.as_secs()
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(POLL_MAX);
        }
    }
}
