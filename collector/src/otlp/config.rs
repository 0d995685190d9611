//! Export settings, read the way OpenTelemetry SDKs read theirs: the standard `OTEL_*` variables
//! (a `TRACES_` one over the general one), with `--otlp-endpoint` and `--otlp-protocol` over both.
//! [`ExportConfig::resolve`] checks everything once, at start; each error names the flag or
//! variable and what was wrong with it, and never shows a header's value.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The OTLP endpoint's base URL (`/v1/traces` is added for HTTP).
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces endpoint, used as it is.
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Headers on every export request: `key=value,key2=value2`, values percent-decoded.
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// Headers of trace exports, instead of [`OTEL_EXPORTER_OTLP_HEADERS`].
pub const OTEL_EXPORTER_OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// `http/protobuf` (the default) or `grpc`.
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// The protocol of trace exports, instead of [`OTEL_EXPORTER_OTLP_PROTOCOL`].
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// Longest wait for one export request, in milliseconds (default 10000).
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// The timeout of trace exports, instead of [`OTEL_EXPORTER_OTLP_TIMEOUT`].
pub const OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
/// `gzip` or `none` (the default).
pub const OTEL_EXPORTER_OTLP_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
/// The compression of trace exports, instead of [`OTEL_EXPORTER_OTLP_COMPRESSION`].
pub const OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";
/// The resource's `service.name` (default `truthtable-collector`).
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// More resource attributes: `key=value,key2=value2`, values percent-decoded.
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Longest string attribute value, in characters.
pub const OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: &str = "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT";
/// Longest span string attribute value, instead of [`OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`].
pub const OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT: &str = "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT";
/// `true` turns export off, whatever else is set.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// `otlp` (export) or `none` (no export).
pub const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";

/// Every variable the collector reads for export.
pub const VARIABLES: [&str; 16] = [
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_TRACES_HEADERS,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
    OTEL_EXPORTER_OTLP_COMPRESSION,
    OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
    OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES,
    OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT,
    OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT,
    OTEL_SDK_DISABLED,
    OTEL_TRACES_EXPORTER,
];

/// The variable that may hold `--otlp-non-llm`.
pub const NON_LLM_ENV: &str = "TRUTHTABLE_OTLP_NON_LLM";

/// The resource's `service.name` when `OTEL_SERVICE_NAME` does not set one.
pub const DEFAULT_SERVICE_NAME: &str = "truthtable-collector";
/// Longest string attribute value when neither length-limit variable is set, in characters:
/// a span carries the question, context and answer for reading; the store keeps every byte.
pub const DEFAULT_VALUE_LENGTH_LIMIT: usize = 65_536;
/// Longest wait for one export request when no timeout variable is set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How spans travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Protobuf over HTTP/1.1 `POST …/v1/traces`.
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC `TraceService/Export`.
    #[value(name = "grpc")]
    Grpc,
}

impl Protocol {
    /// As `OTEL_EXPORTER_OTLP_PROTOCOL` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }
}

/// What becomes of an exchange that is not an LLM call (its audit view's protocol is `unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NonLlm {
    /// A plain HTTP client span.
    #[default]
    Http,
    /// No span at all.
    Skip,
}

/// How request bodies are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// As they are.
    None,
    /// `content-encoding: gzip` (HTTP), `grpc-encoding: gzip` (gRPC).
    Gzip,
}

/// What the command line and the environment said about export, before it is checked.
#[derive(Clone, Default)]
pub struct OtlpInputs {
    /// `--otlp-endpoint`.
    pub endpoint: Option<String>,
    /// `--otlp-protocol`.
    pub protocol: Option<Protocol>,
    /// `--otlp-non-llm`.
    pub non_llm: NonLlm,
    /// `--otlp-batch-size`.
    pub batch_size: u32,
    /// `--otlp-retry-max-ms`.
    pub retry_max: Duration,
    /// The [`VARIABLES`] that are set (non-empty).
    pub env: BTreeMap<String, String>,
}

impl fmt::Debug for OtlpInputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, &str> = self
            .env
            .iter()
            .map(|(k, v)| {
                let shown = if k.ends_with("_HEADERS") {
                    "[hidden]"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("OtlpInputs")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("non_llm", &self.non_llm)
            .field("batch_size", &self.batch_size)
            .field("retry_max", &self.retry_max)
            .field("env", &env)
            .finish()
    }
}

/// Checked export settings.
#[derive(Clone)]
pub struct ExportConfig {
    /// Where requests go: the `…/v1/traces` URL (HTTP) or the server's URL (gRPC).
    pub url: String,
    /// How they travel.
    pub protocol: Protocol,
    /// Extra request headers (names lowercase). Their values are secrets: never logged.
    pub headers: Vec<(String, String)>,
    /// Longest wait for one request.
    pub timeout: Duration,
    /// Request compression.
    pub compression: Compression,
    /// The resource's attributes, `service.name` first.
    pub resource: Vec<(String, String)>,
    /// What becomes of exchanges that are not LLM calls.
    pub non_llm: NonLlm,
    /// Most captures per request.
    pub batch_size: u32,
    /// Longest wait between attempts while the endpoint is down.
    pub retry_max: Duration,
    /// Longest string attribute value, in characters (`None`: no limit).
    pub value_limit: Option<usize>,
    /// Gaps between content longer than this become stall events (`--stall-threshold-ms`).
    pub stall_threshold_ms: u64,
}

impl fmt::Debug for ExportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ExportConfig")
            .field("url", &self.url)
            .field("protocol", &self.protocol)
            .field("headers", &header_names)
            .field("timeout", &self.timeout)
            .field("compression", &self.compression)
            .field("resource", &self.resource)
            .field("non_llm", &self.non_llm)
            .field("batch_size", &self.batch_size)
            .field("retry_max", &self.retry_max)
            .field("value_limit", &self.value_limit)
            .finish()
    }
}

/// An export setting that cannot work, named by its flag or variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {problem}")]
pub struct OtlpConfigError {
    /// The flag or variable.
    pub name: String,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(name: &str, problem: impl Into<String>) -> OtlpConfigError {
    OtlpConfigError {
        name: name.to_owned(),
        problem: problem.into(),
    }
}

impl ExportConfig {
    /// The settings `inputs` describe; `None` when export is off (no endpoint is set,
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
    pub fn resolve(inputs: &OtlpInputs) -> Result<Option<ExportConfig>, OtlpConfigError> {
        let var = |name: &str| {
            inputs
                .env
                .get(name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        // The signal's own variable, else the general one; either way, the name that was read.
        let pick = |traces: &'static str, general: &'static str| {
            var(traces)
                .map(|v| (traces, v))
                .or_else(|| var(general).map(|v| (general, v)))
        };

        if var(OTEL_SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(exporters) = var(OTEL_TRACES_EXPORTER) {
            let names: Vec<&str> = exporters.split(',').map(str::trim).collect();
            if names.iter().any(|n| n.eq_ignore_ascii_case("none")) {
                return Ok(None);
            }
            if let Some(other) = names.iter().find(|n| !n.eq_ignore_ascii_case("otlp")) {
                return Err(bad(
                    OTEL_TRACES_EXPORTER,
                    format!("only \"otlp\" (or \"none\") is supported, got {other:?}"),
                ));
            }
        }

        let protocol = match inputs.protocol {
            Some(p) => p,
            None => match pick(
                OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
                OTEL_EXPORTER_OTLP_PROTOCOL,
            ) {
                None => Protocol::HttpProtobuf,
                Some((_, "http/protobuf")) => Protocol::HttpProtobuf,
                Some((_, "grpc")) => Protocol::Grpc,
                Some((name, "http/json")) => {
                    return Err(bad(
                        name,
                        "http/json is not supported (receivers such as Phoenix take protobuf): use http/protobuf or grpc",
                    ))
                }
                Some((name, other)) => {
                    return Err(bad(
                        name,
                        format!("expected http/protobuf or grpc, got {other:?}"),
                    ))
                }
            },
        };

        // A base URL gets the traces path (HTTP); a traces endpoint is used as it is.
        let (name, url, is_base) = match (
            inputs
                .endpoint
                .as_deref()
                .map(str::trim)
                .filter(|e| !e.is_empty()),
            var(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
            var(OTEL_EXPORTER_OTLP_ENDPOINT),
        ) {
            (Some(flag), _, _) => ("--otlp-endpoint", flag, true),
            (None, Some(traces), _) => (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, traces, false),
            (None, None, Some(base)) => (OTEL_EXPORTER_OTLP_ENDPOINT, base, true),
            (None, None, None) => return Ok(None),
        };
        let parsed =
            reqwest::Url::parse(url).map_err(|e| bad(name, format!("not a URL ({e}): {url:?}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(bad(
                name,
                format!("expected an http:// or https:// URL with a host, got {url:?}"),
            ));
        }
        let url = if is_base && protocol == Protocol::HttpProtobuf {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        } else {
            url.to_owned()
        };

        let headers = match pick(
            OTEL_EXPORTER_OTLP_TRACES_HEADERS,
            OTEL_EXPORTER_OTLP_HEADERS,
        ) {
            None => Vec::new(),
            Some((name, list)) => {
                let pairs = key_values(name, list)?;
                for (key, value) in &pairs {
                    reqwest::header::HeaderName::from_bytes(key.as_bytes())
                        .map_err(|_| bad(name, format!("{key:?} is not a valid header name")))?;
                    reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                        bad(
                            name,
                            format!("the value of {key:?} is not a valid header value"),
                        )
                    })?;
                }
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect()
            }
        };

        let timeout = match pick(
            OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
            OTEL_EXPORTER_OTLP_TIMEOUT,
        ) {
            None => DEFAULT_TIMEOUT,
            Some((name, ms)) => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(bad(
                        name,
                        format!("expected a number of milliseconds above 0, got {ms:?}"),
                    ))
                }
            },
        };

        let compression = match pick(
            OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
            OTEL_EXPORTER_OTLP_COMPRESSION,
        ) {
            None => Compression::None,
            Some((_, c)) if c.eq_ignore_ascii_case("none") => Compression::None,
            Some((_, c)) if c.eq_ignore_ascii_case("gzip") => Compression::Gzip,
            Some((name, other)) => {
                return Err(bad(name, format!("expected gzip or none, got {other:?}")))
            }
        };

        let mut resource = vec![
            ("service.name".to_owned(), DEFAULT_SERVICE_NAME.to_owned()),
            (
                "service.version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        ];
        let mut set =
            |key: String, value: String| match resource.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => resource.push((key, value)),
            };
        if let Some(list) = var(OTEL_RESOURCE_ATTRIBUTES) {
            for (key, value) in key_values(OTEL_RESOURCE_ATTRIBUTES, list)? {
                set(key, value);
            }
        }
        if let Some(service) = var(OTEL_SERVICE_NAME) {
            set("service.name".to_owned(), service.to_owned());
        }

        let value_limit = match pick(
            OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT,
            OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT,
        ) {
            None => Some(DEFAULT_VALUE_LENGTH_LIMIT),
            Some((name, n)) => match n.parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    return Err(bad(
                        name,
                        format!("expected a number of characters, got {n:?}"),
                    ))
                }
            },
        };

        Ok(Some(ExportConfig {
            url,
            protocol,
            headers,
            timeout,
            compression,
            resource,
            non_llm: inputs.non_llm,
            batch_size: inputs.batch_size.max(1),
            retry_max: inputs.retry_max,
            value_limit,
            stall_threshold_ms: crate::audit::timing::DEFAULT_STALL_THRESHOLD_MS,
        }))
    }
}

/// A `key=value,key2=value2` list (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS): keys
/// and values trimmed and percent-decoded, empty items skipped. An error never shows a value.
fn key_values(name: &str, list: &str) -> Result<Vec<(String, String)>, OtlpConfigError> {
    let decode = |s: &str, what: &str| {
        percent_encoding::percent_decode_str(s.trim())
            .decode_utf8()
            .map(|d| d.into_owned())
            .map_err(|_| bad(name, format!("{what} is not UTF-8 once percent-decoded")))
    };
    let mut out = Vec::new();
    for (i, item) in list.split(',').enumerate() {
        if item.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(bad(
                name,
                format!(
                    "item {} is not key=value (expected key=value,key2=value2)",
                    i + 1
                ),
            ));
        };
        let key = decode(key, &format!("the key of item {}", i + 1))?;
        if key.is_empty() {
            return Err(bad(name, format!("item {} has an empty key", i + 1)));
        }
        let value = decode(value, &format!("the value of {key:?}"))?;
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(env: &[(&str, &str)]) -> OtlpInputs {
        OtlpInputs {
            batch_size: 256,
            retry_max: Duration::from_secs(30),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..OtlpInputs::default()
        }
    }

    fn resolve(env: &[(&str, &str)]) -> Result<Option<ExportConfig>, OtlpConfigError> {
        ExportConfig::resolve(&inputs(env))
    }

    fn err(env: &[(&str, &str)]) -> String {
        match resolve(env) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("expected an error, got {c:?}"),
        }
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_when_disabled() {
        assert!(resolve(&[]).unwrap().is_none());
        assert!(resolve(&[(OTEL_SERVICE_NAME, "x")]).unwrap().is_none());
        let on = [(OTEL_EXPORTER_OTLP_ENDPOINT, "http://phoenix:6006")];
        assert!(resolve(&on).unwrap().is_some());
        for off in [(OTEL_SDK_DISABLED, "TRUE"), (OTEL_TRACES_EXPORTER, "none")] {
            assert!(resolve(&[on[0], off]).unwrap().is_none(), "{off:?}");
        }
        assert!(resolve(&[on[0], (OTEL_TRACES_EXPORTER, "otlp")])
            .unwrap()
            .is_some());
        assert_eq!(
            err(&[on[0], (OTEL_TRACES_EXPORTER, "zipkin")]),
            "OTEL_TRACES_EXPORTER: only \"otlp\" (or \"none\") is supported, got \"zipkin\""
        );
    }

    #[test]
    fn a_base_endpoint_gets_the_traces_path_and_a_traces_endpoint_is_used_as_it_is() {
        let url = |env: &[(&str, &str)]| resolve(env).unwrap().unwrap().url;
        assert_eq!(
            url(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://phoenix:6006/")]),
            "http://phoenix:6006/v1/traces"
        );
        assert_eq!(
            url(&[(
                OTEL_EXPORTER_OTLP_ENDPOINT,
                "https://cloud.langfuse.com/api/public/otel"
            )]),
            "https://cloud.langfuse.com/api/public/otel/v1/traces"
        );
        assert_eq!(
            url(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://ignored:4318"),
                (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://c:4318/custom"),
            ]),
            "http://c:4318/custom"
        );
        // gRPC endpoints name the server; no path is added.
        assert_eq!(
            url(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://otel-collector:4317"),
                (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
            ]),
            "http://otel-collector:4317"
        );
        assert!(err(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "phoenix:6006")])
            .starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: "));
    }

    #[test]
    fn the_flags_win_over_the_variables() {
        let mut i = inputs(&[
            (
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "http://env:4318/v1/traces",
            ),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
        ]);
        i.endpoint = Some("http://flag:4317".into());
        i.protocol = Some(Protocol::Grpc);
        let c = ExportConfig::resolve(&i).unwrap().unwrap();
        assert_eq!(
            (c.url.as_str(), c.protocol),
            ("http://flag:4317", Protocol::Grpc)
        );
        i.endpoint = Some("ftp://x".into());
        assert!(ExportConfig::resolve(&i)
            .unwrap_err()
            .to_string()
            .starts_with("--otlp-endpoint: expected an http:// or https:// URL"));
    }

    #[test]
    fn the_signal_variable_wins_over_the_general_one() {
        let c = resolve(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://x:4317"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "grpc"),
            (OTEL_EXPORTER_OTLP_TIMEOUT, "1000"),
            (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "2500"),
            (OTEL_EXPORTER_OTLP_HEADERS, "a=1"),
            (OTEL_EXPORTER_OTLP_TRACES_HEADERS, "b=2"),
            (OTEL_EXPORTER_OTLP_COMPRESSION, "none"),
            (OTEL_EXPORTER_OTLP_TRACES_COMPRESSION, "gzip"),
            (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, "10"),
            (OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, "20"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.headers, [("b".to_owned(), "2".to_owned())]);
        assert_eq!(c.compression, Compression::Gzip);
        assert_eq!(c.value_limit, Some(20));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = resolve(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://x:4318")])
            .unwrap()
            .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.compression, Compression::None);
        assert_eq!(c.value_limit, Some(DEFAULT_VALUE_LENGTH_LIMIT));
        assert_eq!(
            c.resource[0],
            ("service.name".into(), "truthtable-collector".into())
        );
        assert_eq!(c.non_llm, NonLlm::Http);
        assert!(c.headers.is_empty());
    }

    #[test]
    fn headers_are_percent_decoded_and_errors_never_show_a_value() {
        let c = resolve(&[
            (
                OTEL_EXPORTER_OTLP_ENDPOINT,
                "https://cloud.langfuse.com/api/public/otel",
            ),
            (
                OTEL_EXPORTER_OTLP_HEADERS,
                "Authorization=Basic%20cGstbGYtMTpzay1sZi0y, x-tenant = t1 ,",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.headers,
            [
                (
                    "authorization".to_owned(),
                    "Basic cGstbGYtMTpzay1sZi0y".to_owned()
                ),
                ("x-tenant".to_owned(), "t1".to_owned())
            ]
        );
        assert!(
            !format!("{c:?}").contains("cGstbGYt"),
            "Debug shows a secret"
        );
        let e = err(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://x"),
            (OTEL_EXPORTER_OTLP_HEADERS, "authorization=Bearer s3\ncret"),
        ]);
        assert_eq!(
            e,
            "OTEL_EXPORTER_OTLP_HEADERS: the value of \"authorization\" is not a valid header value"
        );
        let e = err(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://x"),
            (OTEL_EXPORTER_OTLP_HEADERS, "a=1,s3cret"),
        ]);
        assert!(
            e.contains("item 2 is not key=value") && !e.contains("s3cret"),
            "{e}"
        );
        let i = inputs(&[(OTEL_EXPORTER_OTLP_HEADERS, "authorization=Bearer s3cret")]);
        assert!(!format!("{i:?}").contains("s3cret"));
    }

    #[test]
    fn resource_attributes_and_service_name_build_the_resource() {
        let c = resolve(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://x"),
            (
                OTEL_RESOURCE_ATTRIBUTES,
                "openinference.project.name=rag%20audit,deployment.environment.name=prod,service.name=from-attrs",
            ),
            (OTEL_SERVICE_NAME, "gateway-audit"),
        ])
        .unwrap()
        .unwrap();
        let get = |k: &str| {
            c.resource
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("service.name"), Some("gateway-audit"));
        assert_eq!(get("openinference.project.name"), Some("rag audit"));
        assert_eq!(get("deployment.environment.name"), Some("prod"));
        assert_eq!(get("service.version"), Some(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn bad_values_are_named() {
        let base = (OTEL_EXPORTER_OTLP_ENDPOINT, "http://x");
        assert_eq!(
            err(&[base, (OTEL_EXPORTER_OTLP_PROTOCOL, "http/json")]),
            "OTEL_EXPORTER_OTLP_PROTOCOL: http/json is not supported (receivers such as Phoenix take protobuf): use http/protobuf or grpc"
        );
        assert_eq!(
            err(&[base, (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "thrift")]),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: expected http/protobuf or grpc, got \"thrift\""
        );
        assert_eq!(
            err(&[base, (OTEL_EXPORTER_OTLP_TIMEOUT, "10s")]),
            "OTEL_EXPORTER_OTLP_TIMEOUT: expected a number of milliseconds above 0, got \"10s\""
        );
        assert_eq!(
            err(&[base, (OTEL_EXPORTER_OTLP_COMPRESSION, "zstd")]),
            "OTEL_EXPORTER_OTLP_COMPRESSION: expected gzip or none, got \"zstd\""
        );
        assert_eq!(
            err(&[base, (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, "-1")]),
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: expected a number of characters, got \"-1\""
        );
        assert_eq!(
            err(&[base, (OTEL_RESOURCE_ATTRIBUTES, "=x")]),
            "OTEL_RESOURCE_ATTRIBUTES: item 1 has an empty key"
        );
    }
}
