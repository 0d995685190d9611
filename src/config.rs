//! The filter's configuration: parsed once in `on_configure`, every error naming its key.
//!
//! Keys and defaults follow `CONTRACT.md` §1; the delivery-tuning keys below them are ours.

use crate::record::Format;
use crate::redact::{self, Names};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// What `configuration` in the Envoy/Istio YAML becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub audit_cluster: String,
    pub audit_path: String,
    pub audit_authority: String,
    pub audit_timeout_ms: u64,
    pub audit_headers: Vec<(String, String)>,
    pub max_body_bytes: usize,
    /// The built-in credential headers plus `redact_headers`.
    pub redact_headers: Names,
    /// The built-in credential query parameters plus `redact_query_params`.
    pub redact_query_params: Names,
    /// How records travel to the audit cluster.
    pub delivery_format: Format,
    /// Which way batches travel: a callout each, or a message on a long-lived gRPC stream.
    pub audit_transport: Transport,
    pub delivery: DeliveryLimits,
    /// How long a root context that is shut down with no successor keeps delivering what it
    /// holds before the rest is counted as dropped.
    pub drain_timeout_ms: u64,
    /// `complete_after_stored`: hold the end of each response until its record is stored.
    pub hold: Option<HoldPolicy>,
}

/// `audit_transport`: how a batch reaches the audit cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `POST {audit_path}`, one callout per batch (CONTRACT.md §2).
    Http,
    /// A message on one of at most `max_inflight` long-lived streams of
    /// `truthtable.ingest.v1.IngestService/Deliver`, each answered by an acknowledgement (the
    /// cluster must speak HTTP/2).
    Grpc,
}

/// What `complete_after_stored`, `hold_timeout_ms` and `on_hold_timeout` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    /// The longest an end waits for its record's acknowledgement.
    pub timeout_ms: u64,
    pub on_timeout: OnHoldTimeout,
}

/// What happens to an end still held after `hold_timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHoldTimeout {
    /// The end goes out; the record stays queued and the end is counted as released unrecorded.
    Release,
    /// The client's stream is reset: it never sees a complete answer without a record.
    Reset,
}

/// How the root context batches, bounds and retries deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryLimits {
    /// A batch is sent once it holds this many bytes of NDJSON.
    pub batch_max_bytes: usize,
    /// A record waits at most this long before its batch is sent; also the tick period.
    pub flush_interval_ms: u64,
    /// Bytes of records a worker holds (waiting, in flight, awaiting retry) before it drops new ones.
    pub queue_max_bytes: usize,
    /// Callouts a worker has open at once.
    pub max_inflight: usize,
    /// First pause after a failed delivery; doubled on each further failure.
    pub retry_initial_ms: u64,
    /// Longest pause between delivery attempts.
    pub retry_max_ms: u64,
}

/// Why a configuration was refused. `Display` is the one line Envoy logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "truthtable: invalid configuration: {}: {}",
            self.key, self.problem
        )
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    audit_cluster: String,
    #[serde(default = "default_audit_path")]
    audit_path: String,
    #[serde(default)]
    audit_authority: Option<String>,
    #[serde(default = "default_audit_timeout_ms", deserialize_with = "integer")]
    audit_timeout_ms: u64,
    #[serde(default)]
    audit_headers: BTreeMap<String, String>,
    #[serde(default = "default_max_body_bytes", deserialize_with = "integer")]
    max_body_bytes: u64,
    #[serde(default)]
    redact_headers: Vec<String>,
    #[serde(default)]
    redact_query_params: Vec<String>,
    #[serde(default = "default_delivery_format")]
    delivery_format: String,
    #[serde(default = "default_audit_transport")]
    audit_transport: String,
    #[serde(default = "default_batch_max_bytes", deserialize_with = "integer")]
    batch_max_bytes: u64,
    #[serde(default = "default_flush_interval_ms", deserialize_with = "integer")]
    flush_interval_ms: u64,
    #[serde(default = "default_queue_max_bytes", deserialize_with = "integer")]
    queue_max_bytes: u64,
    #[serde(default = "default_max_inflight", deserialize_with = "integer")]
    max_inflight: u64,
    #[serde(default = "default_retry_initial_ms", deserialize_with = "integer")]
    retry_initial_ms: u64,
    #[serde(default = "default_retry_max_ms", deserialize_with = "integer")]
    retry_max_ms: u64,
    #[serde(default = "default_drain_timeout_ms", deserialize_with = "integer")]
    drain_timeout_ms: u64,
    #[serde(default)]
    complete_after_stored: bool,
    #[serde(default = "default_hold_timeout_ms")]
    hold_timeout_ms: u64,
    #[serde(default = "default_on_hold_timeout")]
    on_hold_timeout: String,
}

fn default_audit_path() -> String {
    "/v1/captures".to_owned()
}
fn default_audit_timeout_ms() -> u64 {
    5000
}
fn default_max_body_bytes() -> u64 {
    1 << 20
}
fn default_batch_max_bytes() -> u64 {
    256 << 10
}
fn default_flush_interval_ms() -> u64 {
    100
}
fn default_queue_max_bytes() -> u64 {
    64 << 20
}
fn default_max_inflight() -> u64 {
    4
}
fn default_retry_initial_ms() -> u64 {
    250
}
fn default_retry_max_ms() -> u64 {
    30_000
}
fn default_delivery_format() -> String {
    "ndjson".to_owned()
}
fn default_audit_transport() -> String {
    "http".to_owned()
}
fn default_drain_timeout_ms() -> u64 {
    30_000
}
fn default_hold_timeout_ms() -> u64 {
    5000
}
fn default_on_hold_timeout() -> String {
    "release".to_owned()
}

const MIB: u64 = 1 << 20;

/// An integer key: any JSON number that denotes a non-negative integer, whichever way it is
/// written. Control planes and YAML tooling print `1048576` as `1048576.0` or `1.048576e6` (a
/// structured `pluginConfig` travels as a `google.protobuf.Struct`, whose numbers are doubles), and
/// all three mean the same. A fraction, a negative number or one beyond `u64` is refused here;
/// each key's own range is checked in [`RawConfig::validate`].
fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct Integer;
    impl serde::de::Visitor<'_> for Integer {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| {
                E::custom(format!(
                    "{v} is out of range (expected a non-negative integer)"
                ))
            })
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is exactly representable; every finite double below it converts exactly.
            const LIMIT: f64 = 18_446_744_073_709_551_616.0;
            if !v.is_finite() || v.fract() != 0.0 {
                return Err(E::custom(format!("{v} is not an integer")));
            }
            if !(0.0..LIMIT).contains(&v) {
                let shown = if v.abs() < 1e21 {
                    format!("{v}")
                } else {
                    format!("{v:e}")
                };
                return Err(E::custom(format!(
                    "{shown} is out of range (expected a non-negative integer)"
                )));
            }
            Ok(v as u64)
        }
    }
    deserializer.deserialize_any(Integer)
}

impl Config {
    /// Parses and validates the plugin configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        // Istio sends no configuration at all for a `WasmPlugin` without `pluginConfig`, Envoy
        // Gateway an empty string for an entry without `config`: what is missing is the cluster.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError {
                key: "audit_cluster".to_owned(),
                problem: "missing: the configuration is empty (expected a JSON object naming at least audit_cluster)".to_owned(),
            });
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let (key, problem) = name_serde_error(key, &inner);
            ConfigError { key, problem }
        })?;
        de.end().map_err(|e| ConfigError {
            key: "configuration".to_owned(),
            problem: format!("trailing characters after the JSON object: {e}"),
        })?;
        raw.validate()
    }

    /// The root context's tick period: the flush interval, shorter under `complete_after_stored`
    /// so that a held end's timeout is noticed within a quarter of `hold_timeout_ms`.
    pub fn tick_ms(&self) -> u64 {
        let flush = self.delivery.flush_interval_ms;
        match self.hold {
            Some(h) => flush.min((h.timeout_ms / 4).max(10)),
            None => flush,
        }
    }

    /// Whether a header of this name is recorded as `[REDACTED]` (names compare case-insensitively).
    pub fn is_redacted(&self, name: &[u8]) -> bool {
        self.redact_headers.contains(name)
    }
}

/// Turns serde's message into (key, problem), naming the key even when serde's path is the root.
fn name_serde_error(path: String, e: &serde_json::Error) -> (String, String) {
    let message = e.to_string();
    // serde_json appends " at line L column C"; the key already says where.
    let message = match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    };
    if path.starts_with("audit_headers") {
        // Values there are credentials (an ingest token): the line Envoy logs never shows them.
        let expected = message.find(", expected ").map_or("", |i| &message[i..]);
        return (
            path,
            format!("invalid value (not shown: it may be a credential){expected}"),
        );
    }
    if path != "." && !path.is_empty() {
        return (path, message);
    }
    for marker in ["unknown field `", "missing field `"] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            if let Some(end) = rest.find('`') {
                return (rest[..end].to_owned(), message);
            }
        }
    }
    if e.is_syntax() || e.is_eof() {
        return (
            "configuration".to_owned(),
            format!("not valid JSON: {message}"),
        );
    }
    ("configuration".to_owned(), message)
}

fn out_of_range(key: &str, value: u64, range: &str) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        problem: format!("{value} is out of range (expected {range})"),
    }
}

fn check(key: &str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if value < min || value > max {
        return Err(out_of_range(key, value, &format!("{min}..={max}")));
    }
    Ok(value)
}

/// An HTTP header name as RFC 9110 defines a token, in lower case.
fn header_name(key: &str, name: &str) -> Result<String, ConfigError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(ConfigError {
            key: key.to_owned(),
            problem: format!("{name:?} is not a valid HTTP header name"),
        });
    }
    Ok(name.to_ascii_lowercase())
}

/// A query parameter name as it reads decoded: non-empty, no control characters, at most
/// [`redact::MAX_NAME`] bytes.
fn query_param_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let problem = if name.is_empty() {
        "must not be empty".to_owned()
    } else if name.len() > redact::MAX_NAME {
        format!("is longer than {} bytes", redact::MAX_NAME)
    } else if name.chars().any(char::is_control) {
        format!("{name:?} holds a control character")
    } else {
        return Ok(());
    };
    Err(ConfigError {
        key: key.to_owned(),
        problem,
    })
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        if self.audit_cluster.trim().is_empty() {
            return Err(ConfigError {
                key: "audit_cluster".to_owned(),
                problem: "must name an Envoy cluster, got an empty string".to_owned(),
            });
        }
        if !self.audit_path.starts_with('/') {
            return Err(ConfigError {
                key: "audit_path".to_owned(),
                problem: format!("must start with '/', got {:?}", self.audit_path),
            });
        }
        let audit_authority = match self.audit_authority {
            Some(a) if a.is_empty() => {
                return Err(ConfigError {
                    key: "audit_authority".to_owned(),
                    problem: "must not be empty".to_owned(),
                })
            }
            Some(a) => a,
            None => self.audit_cluster.clone(),
        };
        let audit_timeout_ms = check("audit_timeout_ms", self.audit_timeout_ms, 1, 600_000)?;
        let mut audit_headers = Vec::with_capacity(self.audit_headers.len());
        for (name, value) in self.audit_headers {
            let key = format!("audit_headers.{name}");
            let lower = header_name(&key, &name)?;
            if lower == "content-type" || lower == "content-length" || lower == "host" {
                return Err(ConfigError {
                    key,
                    problem: "is set by the filter itself".to_owned(),
                });
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(ConfigError {
                    key,
                    problem: "value must not contain CR, LF or NUL".to_owned(),
                });
            }
            audit_headers.push((lower, value));
        }
        let max_body_bytes = check("max_body_bytes", self.max_body_bytes, 0, 64 * MIB)?;
        let mut extra_headers = Vec::with_capacity(self.redact_headers.len());
        for (i, name) in self.redact_headers.iter().enumerate() {
            let key = format!("redact_headers[{i}]");
            let lower = header_name(&key, name)?;
            if lower.len() > redact::MAX_NAME {
                return Err(ConfigError {
                    key,
                    problem: format!("is longer than {} bytes", redact::MAX_NAME),
                });
            }
            extra_headers.push(lower);
        }
        let redact_headers = Names::new(
            redact::DEFAULT_HEADERS,
            extra_headers.iter().map(String::as_str),
        );
        for (i, name) in self.redact_query_params.iter().enumerate() {
            query_param_name(&format!("redact_query_params[{i}]"), name)?;
        }
        let delivery_format = match self.delivery_format.as_str() {
            "ndjson" => Format::Ndjson,
            "framed" => Format::Framed,
            other => {
                return Err(ConfigError {
                    key: "delivery_format".to_owned(),
                    problem: format!(
                        "{other:?} is not a delivery format (expected \"ndjson\" or \"framed\")"
                    ),
                })
            }
        };
        let audit_transport = match self.audit_transport.as_str() {
            "http" => Transport::Http,
            "grpc" => Transport::Grpc,
            other => {
                return Err(ConfigError {
                    key: "audit_transport".to_owned(),
                    problem: format!(
                        "{other:?} is not a transport (expected \"http\" or \"grpc\")"
                    ),
                })
            }
        };
        if audit_transport == Transport::Grpc
            && !crate::lane::fits(&self.audit_cluster, &audit_authority)
        {
            return Err(ConfigError {
                key: "audit_transport".to_owned(),
                problem: "\"grpc\" needs audit_cluster and audit_authority (when it differs) \
                          to fit in 123 bytes together"
                    .to_owned(),
            });
        }
        let redact_query_params = Names::new(
            redact::DEFAULT_QUERY_PARAMS,
            self.redact_query_params.iter().map(String::as_str),
        );
        let batch_max_bytes = check("batch_max_bytes", self.batch_max_bytes, 1024, 16 * MIB)?;
        let queue_max_bytes = check(
            "queue_max_bytes",
            self.queue_max_bytes,
            64 * 1024,
            1024 * MIB,
        )?;
        if queue_max_bytes < batch_max_bytes {
            return Err(out_of_range(
                "queue_max_bytes",
                queue_max_bytes,
                "at least batch_max_bytes",
            ));
        }
        let retry_initial_ms = check("retry_initial_ms", self.retry_initial_ms, 10, 60_000)?;
        let retry_max_ms = check("retry_max_ms", self.retry_max_ms, 10, 3_600_000)?;
        if retry_max_ms < retry_initial_ms {
            return Err(out_of_range(
                "retry_max_ms",
                retry_max_ms,
                "at least retry_initial_ms",
            ));
        }
        let hold_timeout_ms = check("hold_timeout_ms", self.hold_timeout_ms, 1, 600_000)?;
        let on_timeout = match self.on_hold_timeout.as_str() {
            "release" => OnHoldTimeout::Release,
            "reset" => OnHoldTimeout::Reset,
            other => {
                return Err(ConfigError {
                    key: "on_hold_timeout".to_owned(),
                    problem: format!(
                        "{other:?} is not a hold timeout policy (expected \"release\" or \"reset\")"
                    ),
                })
            }
        };
        let hold = self.complete_after_stored.then_some(HoldPolicy {
            timeout_ms: hold_timeout_ms,
            on_timeout,
        });
        Ok(Config {
            audit_cluster: self.audit_cluster,
            audit_path: self.audit_path,
            audit_authority,
            audit_timeout_ms,
            audit_headers,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            redact_headers,
            redact_query_params,
            delivery_format,
            audit_transport,
            delivery: DeliveryLimits {
                batch_max_bytes: usize::try_from(batch_max_bytes).unwrap_or(usize::MAX),
                flush_interval_ms: check("flush_interval_ms", self.flush_interval_ms, 10, 60_000)?,
                queue_max_bytes: usize::try_from(queue_max_bytes).unwrap_or(usize::MAX),
                max_inflight: check("max_inflight", self.max_inflight, 1, 64)? as usize,
                retry_initial_ms,
                retry_max_ms,
            },
            drain_timeout_ms: check("drain_timeout_ms", self.drain_timeout_ms, 0, 3_600_000)?,
            hold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ConfigError {
        Config::parse(json.as_bytes()).expect_err("config should be refused")
    }

    #[test]
    fn minimal_config_takes_contract_defaults() {
        let c = Config::parse(br#"{"audit_cluster":"audit"}"#).unwrap();
        assert_eq!(c.audit_cluster, "audit");
        assert_eq!(c.audit_path, "/v1/captures");
        assert_eq!(c.audit_authority, "audit");
        assert_eq!(c.audit_timeout_ms, 5000);
        assert!(c.audit_headers.is_empty());
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(c.redact_headers, Names::new(redact::DEFAULT_HEADERS, []));
        assert_eq!(
            c.redact_query_params,
            Names::new(redact::DEFAULT_QUERY_PARAMS, [])
        );
        assert_eq!(c.drain_timeout_ms, 30_000);
        assert_eq!(c.delivery_format, Format::Ndjson);
        assert_eq!(c.hold, None, "complete_after_stored is off by default");
    }

    #[test]
    fn the_hold_keys_are_read_with_their_defaults() {
        let c = Config::parse(br#"{"audit_cluster":"a","complete_after_stored":true}"#).unwrap();
        assert_eq!(
            c.hold,
            Some(HoldPolicy {
                timeout_ms: 5000,
                on_timeout: OnHoldTimeout::Release
            })
        );
        let c = Config::parse(
            br#"{"audit_cluster":"a","complete_after_stored":true,"hold_timeout_ms":250,"on_hold_timeout":"reset"}"#,
        )
        .unwrap();
        assert_eq!(
            c.hold,
            Some(HoldPolicy {
                timeout_ms: 250,
                on_timeout: OnHoldTimeout::Reset
            })
        );
        assert_eq!(
            c.tick_ms(),
            62,
            "a timeout is noticed within a quarter of it"
        );
        // The policy keys are checked even while the hold is off.
        assert_eq!(
            err(r#"{"audit_cluster":"a","on_hold_timeout":"wait"}"#).key,
            "on_hold_timeout"
        );
        assert_eq!(
            err(r#"{"audit_cluster":"a","hold_timeout_ms":0}"#).key,
            "hold_timeout_ms"
        );
        assert_eq!(
            err(r#"{"audit_cluster":"a","complete_after_stored":"yes"}"#).key,
            "complete_after_stored"
        );
    }

    #[test]
    fn every_key_is_read() {
        let c = Config::parse(
            br#"{"audit_cluster":"a","audit_path":"/in","audit_authority":"collector.local",
                "audit_timeout_ms":900,"audit_headers":{"X-Ingest-Token":"t0k"},
                "max_body_bytes":0,"redact_headers":["X-Secret","cookie"],
                "redact_query_params":["Tenant_Sig","key"],
                "batch_max_bytes":2048,"flush_interval_ms":50,"queue_max_bytes":65536,
                "max_inflight":2,"retry_initial_ms":20,"retry_max_ms":40,
                "drain_timeout_ms":0,"delivery_format":"framed"}"#,
        )
        .unwrap();
        assert_eq!(c.audit_path, "/in");
        assert_eq!(c.audit_authority, "collector.local");
        assert_eq!(c.audit_timeout_ms, 900);
        assert_eq!(
            c.audit_headers,
            vec![("x-ingest-token".into(), "t0k".into())]
        );
        assert_eq!(c.max_body_bytes, 0);
        assert_eq!(c.redact_headers.len(), redact::DEFAULT_HEADERS.len() + 1);
        assert_eq!(
            c.redact_query_params.len(),
            redact::DEFAULT_QUERY_PARAMS.len() + 1
        );
        assert!(c.redact_query_params.contains(b"tenant_sig"));
        assert_eq!(c.drain_timeout_ms, 0);
        assert_eq!(c.delivery_format, Format::Framed);
        assert!(c.is_redacted(b"X-SECRET"));
        assert!(c.is_redacted(b"Authorization"));
        assert!(!c.is_redacted(b"content-type"));
        assert_eq!(
            c.delivery,
            DeliveryLimits {
                batch_max_bytes: 2048,
                flush_interval_ms: 50,
                queue_max_bytes: 65536,
                max_inflight: 2,
                retry_initial_ms: 20,
                retry_max_ms: 40
            }
        );
    }

    #[test]
    fn missing_audit_cluster_is_named() {
        let e = err("{}");
        assert_eq!(e.key, "audit_cluster");
        assert!(e.problem.contains("missing field"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_value() {
        let e = err(r#"{"audit_cluster":"a","max_body_bytes":"lots"}"#);
        assert_eq!(e.key, "max_body_bytes");
        assert!(e.problem.contains("\"lots\""), "{e}");
        assert_eq!(
            e.to_string().lines().count(),
            1,
            "the error is one log line"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(r#"{"audit_cluster":"a","max_body_byte":5}"#);
        assert_eq!(e.key, "max_body_byte");
        assert!(e.problem.contains("unknown field"), "{e}");
    }

    #[test]
    fn not_json_is_refused() {
        let e = err("audit_cluster: a");
        assert_eq!(e.key, "configuration");
        assert!(e.problem.contains("not valid JSON"), "{e}");
        assert_eq!(err(r#"{"audit_cluster":"a"} x"#).key, "configuration");
    }

    #[test]
    fn out_of_range_values_are_named() {
        for (json, key) in [
            (
                r#"{"audit_cluster":"a","audit_timeout_ms":0}"#,
                "audit_timeout_ms",
            ),
            (
                r#"{"audit_cluster":"a","max_body_bytes":-1}"#,
                "max_body_bytes",
            ),
            (
                r#"{"audit_cluster":"a","max_body_bytes":1e12}"#,
                "max_body_bytes",
            ),
            (
                r#"{"audit_cluster":"a","max_body_bytes":99999999999}"#,
                "max_body_bytes",
            ),
            (r#"{"audit_cluster":"a","max_inflight":0}"#, "max_inflight"),
            (
                r#"{"audit_cluster":"a","batch_max_bytes":10}"#,
                "batch_max_bytes",
            ),
            (
                r#"{"audit_cluster":"a","queue_max_bytes":70000,"batch_max_bytes":80000}"#,
                "queue_max_bytes",
            ),
            (
                r#"{"audit_cluster":"a","retry_initial_ms":500,"retry_max_ms":100}"#,
                "retry_max_ms",
            ),
            (
                r#"{"audit_cluster":"a","flush_interval_ms":1}"#,
                "flush_interval_ms",
            ),
            (
                r#"{"audit_cluster":"a","drain_timeout_ms":3600001}"#,
                "drain_timeout_ms",
            ),
        ] {
            assert_eq!(err(json).key, key, "{json}");
        }
    }

    #[test]
    fn bad_strings_are_named() {
        assert_eq!(err(r#"{"audit_cluster":""}"#).key, "audit_cluster");
        assert_eq!(
            err(r#"{"audit_cluster":"a","audit_path":"v1"}"#).key,
            "audit_path"
        );
        assert_eq!(
            err(r#"{"audit_cluster":"a","audit_authority":""}"#).key,
            "audit_authority"
        );
        assert_eq!(
            err(r#"{"audit_cluster":"a","redact_headers":["ok","bad name"]}"#).key,
            "redact_headers[1]"
        );
        assert_eq!(
            err(r#"{"audit_cluster":"a","redact_headers":"authorization"}"#).key,
            "redact_headers"
        );
        for bad in [
            r#""""#,
            r#""a\u0000b""#,
            r#""tab\there""#,
            r#"5"#,
            r#"null"#,
        ] {
            let json = format!(r#"{{"audit_cluster":"a","redact_query_params":["ok",{bad}]}}"#);
            assert_eq!(err(&json).key, "redact_query_params[1]", "{json}");
        }
        let long = "n".repeat(redact::MAX_NAME + 1);
        assert_eq!(
            err(&format!(
                r#"{{"audit_cluster":"a","redact_query_params":["{long}"]}}"#
            ))
            .key,
            "redact_query_params[0]"
        );
        assert_eq!(
            err(r#"{"audit_cluster":"a","redact_query_params":"key"}"#).key,
            "redact_query_params"
        );
        for bad in [r#""json""#, r#""NDJSON""#, r#""""#, "1"] {
            let json = format!(r#"{{"audit_cluster":"a","delivery_format":{bad}}}"#);
            assert_eq!(err(&json).key, "delivery_format", "{json}");
        }
        assert_eq!(
            err(r#"{"audit_cluster":"a","audit_headers":{"x-t":"a\nb"}}"#).key,
            "audit_headers.x-t"
        );
        assert_eq!(
            err(r#"{"audit_cluster":"a","audit_headers":{"content-type":"x"}}"#).key,
            "audit_headers.content-type"
        );
        assert_eq!(
            err(r#"{"audit_cluster":"a","audit_headers":{"x-t":5}}"#).key,
            "audit_headers.x-t"
        );
    }

    #[test]
    fn a_wrong_audit_headers_value_is_named_but_never_shown() {
        for (json, key) in [
            (
                r#"{"audit_cluster":"a","audit_headers":"Bearer sk-canary-1"}"#,
                "audit_headers",
            ),
            (
                r#"{"audit_cluster":"a","audit_headers":{"authorization":1234567}}"#,
                "audit_headers.authorization",
            ),
            (
                r#"{"audit_cluster":"a","audit_headers":["Bearer sk-canary-1"]}"#,
                "audit_headers",
            ),
        ] {
            let e = err(json);
            assert_eq!(e.key, key, "{json}");
            let line = e.to_string();
            assert!(
                !line.contains("sk-canary-1") && !line.contains("1234567"),
                "{line}"
            );
            assert!(line.contains("expected"), "{line}");
        }
    }

    #[test]
    fn an_empty_configuration_is_refused_naming_audit_cluster() {
        // What Istio sends for a WasmPlugin without pluginConfig (nothing) and Envoy Gateway for
        // an entry without config (""), and an object without the one required key.
        for empty in ["", " ", "\n\t ", "{}", " { } "] {
            let e = err(empty);
            assert_eq!(e.key, "audit_cluster", "{empty:?}: {e}");
            assert!(e.problem.contains("missing"), "{empty:?}: {e}");
        }
    }

    #[test]
    fn audit_transport_is_http_by_default_grpc_on_request_and_nothing_else() {
        let c = Config::parse(br#"{"audit_cluster":"a"}"#).unwrap();
        assert_eq!(c.audit_transport, Transport::Http);
        let c = Config::parse(br#"{"audit_cluster":"a","audit_transport":"grpc"}"#).unwrap();
        assert_eq!(c.audit_transport, Transport::Grpc);
        let e = err(r#"{"audit_cluster":"a","audit_transport":"grpc-web"}"#);
        assert_eq!(e.key, "audit_transport");
        assert!(e.problem.contains("\"grpc-web\""), "{}", e.problem);
        // The stream's target must fit where the SDK can pass it.
        let (cluster, authority) = ("c".repeat(100), "d".repeat(100));
        let json = format!(
            r#"{{"audit_cluster":"{cluster}","audit_authority":"{authority}","audit_transport":"grpc"}}"#
        );
        assert_eq!(err(&json).key, "audit_transport");
        let json = format!(r#"{{"audit_cluster":"{cluster}","audit_authority":"{authority}"}}"#);
        assert!(
            Config::parse(json.as_bytes()).is_ok(),
            "callouts have no such limit"
        );
    }

    #[test]
    fn an_integer_key_takes_any_json_number_that_denotes_an_integer() {
        for written in [
            "1048576",
            "1048576.0",
            "1.048576e6",
            "1.048576E+6",
            "10485760e-1",
        ] {
            let json = format!(r#"{{"audit_cluster":"a","max_body_bytes":{written}}}"#);
            let c = Config::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(c.max_body_bytes, 1_048_576, "{written}");
        }
        let c =
            Config::parse(br#"{"audit_cluster":"a","drain_timeout_ms":0.0,"max_inflight":2e0}"#)
                .unwrap();
        assert_eq!((c.drain_timeout_ms, c.delivery.max_inflight), (0, 2));
    }

    #[test]
    fn a_fraction_or_out_of_range_number_is_refused_naming_the_key() {
        for (value, key, problem) in [
            ("1048576.5", "max_body_bytes", "1048576.5 is not an integer"),
            ("1.5e0", "audit_timeout_ms", "1.5 is not an integer"),
            ("-1", "max_inflight", "-1 is out of range"),
            ("-1.0", "retry_max_ms", "-1 is out of range"),
            ("1e300", "queue_max_bytes", "1e300 is out of range"),
            ("18446744073709551616", "batch_max_bytes", "out of range"),
            ("1e12", "max_body_bytes", "1000000000000 is out of range"),
            ("65.0e6", "drain_timeout_ms", "65000000 is out of range"),
        ] {
            let json = format!(r#"{{"audit_cluster":"a","{key}":{value}}}"#);
            let e = err(&json);
            assert_eq!(e.key, key, "{json}: {e}");
            assert!(e.problem.contains(problem), "{json}: {e}");
            assert_eq!(e.to_string().lines().count(), 1, "{e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_spelling_of_an_integer_reads_the_same(n in 0u64..=(64 << 20)) {
            for written in [n.to_string(), format!("{n}.0"), format!("{n:e}"), format!("{:e}", n as f64)] {
                let json = format!(r#"{{"audit_cluster":"a","max_body_bytes":{written}}}"#);
                let c = Config::parse(json.as_bytes()).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{written}: {e}")))?;
                proptest::prop_assert_eq!(c.max_body_bytes as u64, n, "{}", written);
            }
        }

        #[test]
        fn a_fraction_is_never_taken_for_an_integer(n in 0u64..(64 << 20), tenths in 1u64..10) {
            let json = format!(r#"{{"audit_cluster":"a","max_body_bytes":{n}.{tenths}}}"#);
            let e = Config::parse(json.as_bytes()).err();
            proptest::prop_assert_eq!(e.map(|e| e.key), Some("max_body_bytes".to_owned()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = Config::parse(&bytes);
        }
    }
}
