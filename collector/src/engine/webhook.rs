//! Any HTTP engine, over Standard Webhooks (<https://www.standardwebhooks.com>): each capture is
//! `POST`ed as `{"type": "truthtable.capture.audit", "timestamp", "data": {"capture_id",
//! "audit"}}`, signed with every configured `whsec_` secret (several during a rotation) in
//! `webhook-signature`, with the capture id as `webhook-id` (the same on every retry, the
//! receiver's idempotency key) and the time as `webhook-timestamp`. A 2xx answer carries the
//! verdict; a 2xx without a body (202, 204) means it comes later through
//! `POST /v1/captures/{id}/verdicts`.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use ring::hmac;

use super::request::Handoff;
use super::verdict::{self, PostedVerdict, Verdict};
use super::Attempt;

/// Largest answer read from an engine.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;
/// The event type of a hand-off.
pub const EVENT_TYPE: &str = "truthtable.capture.audit";

/// A `whsec_` secret, decoded.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl Secret {
    /// Reads `whsec_<base64>`; the error never shows the secret.
    pub fn parse(text: &str) -> anyhow::Result<Secret> {
        let b64 = text
            .trim()
            .strip_prefix("whsec_")
            .context("a webhook secret must start with whsec_")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
            .map_err(|_| anyhow::anyhow!("a webhook secret is not whsec_ and base64"))?;
        anyhow::ensure!(!bytes.is_empty(), "a webhook secret is empty");
        Ok(Secret(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of id.timestamp.body>` for each
/// secret, space-separated.
pub fn signature(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(id.len() + 24 + body.len());
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    secrets
        .iter()
        .map(|s| {
            let tag = hmac::sign(&s.0, &signed);
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Standard Webhooks endpoint.
#[derive(Clone)]
pub struct WebhookEngine {
    client: reqwest::Client,
    url: String,
    secrets: Vec<Secret>,
}

impl WebhookEngine {
    /// An engine at `url`, signing with `secrets` (at least one).
    pub fn new(url: &str, secrets: &[String], timeout: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !secrets.is_empty(),
            "--audit-engine {url}: a webhook engine needs a signing secret (TRUTHTABLE_WEBHOOK_SECRETS=whsec_...)"
        );
        let secrets = secrets
            .iter()
            .map(|s| Secret::parse(s))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("TRUTHTABLE_WEBHOOK_SECRETS")?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("truthtable-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the webhook client")?;
        Ok(WebhookEngine {
            client,
            url: url.to_owned(),
            secrets,
        })
    }

    /// Posts the capture; the verdict in the answer, `None` when it comes later.
    pub async fn judge(&self, engine: &str, h: &Handoff) -> Attempt<Option<Verdict>> {
        let now = time::OffsetDateTime::now_utc();
        let body = serde_json::json!({
            "type": EVENT_TYPE,
            "timestamp": super::now(),
            "data": h.json,
        })
        .to_string();
        let ts = now.unix_timestamp();
        let sent = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &h.capture_id)
            .header("webhook-timestamp", ts.to_string())
            .header(
                "webhook-signature",
                signature(&self.secrets, &h.capture_id, ts, body.as_bytes()),
            )
            .body(body)
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(format!("POST {}: {e}", self.url)),
        };
        let status = resp.status();
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            return Attempt::Retry(format!("the webhook answered {status}"));
        }
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Attempt::Bad(format!(
                            "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Attempt::Retry(format!("reading the webhook's answer: {e}")),
            }
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(bytes.get(..200).unwrap_or(&bytes)).into_owned();
            return Attempt::Bad(format!("the webhook refused the capture: {status} {text}"));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Attempt::Done(None);
        }
        let posted: PostedVerdict = match serde_json::from_slice(&bytes) {
            Ok(p) => p,
            Err(e) => return Attempt::Bad(format!("the webhook's answer is not a verdict: {e}")),
        };
        match verdict::from_posted(engine, posted, h.answer_complete, super::now()) {
            Ok(v) => Attempt::Done(Some(v)),
            Err(e) => Attempt::Bad(e.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The specification's example: secret, id, timestamp, body and signature.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &[secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_signs_during_a_rotation_and_bad_secrets_are_refused() {
        let a = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = Secret::parse("whsec_c2Vjb25kLXNlY3JldA==").unwrap();
        let sig = signature(&[a, b], "id", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        let e = Secret::parse("whsec_***").err().unwrap().to_string();
        assert!(!e.contains("***"), "{e}");
    }
}
