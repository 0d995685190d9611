//! Sending one `ExportTraceServiceRequest`, over HTTP (protobuf) or gRPC, and saying what the
//! answer means for the spans in it: accepted (perhaps with some rejected), worth sending again
//! later, too large to take whole, or refused for good. The classification follows the OTLP
//! specification, with one choice of ours: an endpoint that refuses our credentials or does not
//! know the path (401, 403, 404 and their gRPC kin) is retried too, so that a rotated key or a
//! moved endpoint costs no span; the store keeps them meanwhile, and the log says why.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

use super::config::{Compression, ExportConfig, Protocol};

/// What an export attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The receiver took the request; it may have rejected some spans (a partial success).
    Accepted {
        /// Spans it rejected.
        rejected: u64,
        /// What it said about them.
        message: String,
    },
    /// Nothing was taken; the same request may succeed later.
    Retry {
        /// How long the receiver asked us to wait, if it did.
        after: Option<Duration>,
        /// Why, for the log.
        why: String,
    },
    /// The request is too large for the receiver; smaller ones may pass.
    TooLarge(String),
    /// The receiver refused the spans for good (a malformed request, say).
    Refused(String),
}

/// A connection to the OTLP endpoint.
pub enum Transport {
    /// OTLP/HTTP with protobuf bodies.
    Http {
        /// The client, with the timeout set.
        client: reqwest::Client,
        /// The `…/v1/traces` URL.
        url: String,
        /// Headers for every request.
        headers: reqwest::header::HeaderMap,
        /// Whether to gzip bodies.
        gzip: bool,
    },
    /// OTLP/gRPC.
    Grpc {
        /// The generated client over a lazily connected channel.
        client: TraceServiceClient<tonic::transport::Channel>,
        /// Metadata for every request.
        metadata: tonic::metadata::MetadataMap,
    },
}

const USER_AGENT: &str = concat!("truthtable-collector/", env!("CARGO_PKG_VERSION"));

impl Transport {
    /// A transport for `config` (no connection is made yet).
    pub fn new(config: &ExportConfig) -> anyhow::Result<Transport> {
        match config.protocol {
            Protocol::HttpProtobuf => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &config.headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .with_context(|| format!("header name {k:?}"))?;
                    let mut value = reqwest::header::HeaderValue::from_str(v)
                        .with_context(|| format!("the value of header {k:?}"))?;
                    value.set_sensitive(true);
                    headers.append(name, value);
                }
                let client = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .user_agent(USER_AGENT)
                    .build()
                    .context("building the HTTP client")?;
                Ok(Transport::Http {
                    client,
                    url: config.url.clone(),
                    headers,
                    gzip: config.compression == Compression::Gzip,
                })
            }
            Protocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(config.url.clone())
                    .with_context(|| format!("gRPC endpoint {}", config.url))?
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .user_agent(USER_AGENT)
                    .context("the gRPC user agent")?;
                if config.url.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                        .context("TLS for the gRPC endpoint")?;
                }
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &config.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                        .with_context(|| format!("metadata key {k:?}"))?;
                    let value = tonic::metadata::MetadataValue::try_from(v.as_str())
                        .with_context(|| format!("the value of header {k:?}"))?;
                    metadata.append(key, value);
                }
                let mut client = TraceServiceClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(4 << 20);
                if config.compression == Compression::Gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Ok(Transport::Grpc { client, metadata })
            }
        }
    }

    /// Sends `request` once.
    pub async fn send(&self, request: &ExportTraceServiceRequest) -> Sent {
        match self {
            Transport::Http {
                client,
                url,
                headers,
                gzip,
            } => {
                let mut body = request.encode_to_vec();
                let mut post = client
                    .post(url)
                    .headers(headers.clone())
                    .header("content-type", "application/x-protobuf");
                if *gzip {
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    if gz.write_all(&body).is_ok() {
                        if let Ok(compressed) = gz.finish() {
                            body = compressed;
                            post = post.header("content-encoding", "gzip");
                        }
                    }
                }
                match post.body(body).send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let retry_after = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs);
                        let bytes = resp.bytes().await.unwrap_or_default();
                        http_outcome(status, retry_after, &bytes)
                    }
                    Err(e) => Sent::Retry {
                        after: None,
                        why: error_chain(&e),
                    },
                }
            }
            Transport::Grpc { client, metadata } => {
                let mut req = tonic::Request::new(request.clone());
                *req.metadata_mut() = metadata.clone();
                match client.clone().export(req).await {
                    Ok(resp) => partial(&resp.into_inner()),
                    Err(status) => grpc_outcome(&status),
                }
            }
        }
    }
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn partial(resp: &ExportTraceServiceResponse) -> Sent {
    match &resp.partial_success {
        Some(p) => Sent::Accepted {
            rejected: u64::try_from(p.rejected_spans).unwrap_or_default(),
            message: p.error_message.clone(),
        },
        None => Sent::Accepted {
            rejected: 0,
            message: String::new(),
        },
    }
}

/// What an HTTP answer means (OTLP/HTTP "Failures" and "Retryable Response Codes").
pub fn http_outcome(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Sent {
    let said = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let text: String = text.chars().take(300).collect();
        if text.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {text}")
        }
    };
    match status {
        200..=299 => match ExportTraceServiceResponse::decode(body) {
            Ok(resp) => partial(&resp),
            // A 2xx whose body is not a response message still took the spans.
            Err(_) => Sent::Accepted {
                rejected: 0,
                message: String::new(),
            },
        },
        429 | 502 | 503 | 504 | 408 => Sent::Retry {
            after: retry_after,
            why: said(),
        },
        401 | 403 | 404 | 407 => Sent::Retry {
            after: retry_after,
            why: format!(
                "{} (check the endpoint and OTEL_EXPORTER_OTLP_HEADERS)",
                said()
            ),
        },
        413 => Sent::TooLarge(said()),
        _ => Sent::Refused(said()),
    }
}

/// What a gRPC status means (OTLP/gRPC "Failures").
pub fn grpc_outcome(status: &tonic::Status) -> Sent {
    use tonic::Code;
    let why = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::ResourceExhausted
            if status.message().contains("larger than max")
                || status.message().contains("too large") =>
        {
            Sent::TooLarge(why)
        }
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss
        | Code::ResourceExhausted
        // Transport failures tonic cannot name (a server that does not speak HTTP/2, say).
        | Code::Unknown => Sent::Retry { after: None, why },
        Code::Unauthenticated | Code::PermissionDenied | Code::NotFound | Code::Unimplemented => {
            Sent::Retry {
                after: None,
                why: format!("{why} (check the endpoint and OTEL_EXPORTER_OTLP_HEADERS)"),
            }
        }
        _ => Sent::Refused(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    #[test]
    fn http_answers_are_classified_as_the_otlp_specification_says() {
        assert_eq!(
            http_outcome(200, None, b""),
            Sent::Accepted {
                rejected: 0,
                message: String::new()
            }
        );
        let partial = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "bad spans".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            http_outcome(200, None, &partial),
            Sent::Accepted {
                rejected: 2,
                message: "bad spans".into()
            }
        );
        for retryable in [429, 502, 503, 504] {
            assert!(
                matches!(http_outcome(retryable, None, b""), Sent::Retry { .. }),
                "{retryable}"
            );
        }
        assert_eq!(
            http_outcome(503, Some(Duration::from_secs(7)), b"busy"),
            Sent::Retry {
                after: Some(Duration::from_secs(7)),
                why: "HTTP 503: busy".into()
            }
        );
        assert!(matches!(http_outcome(413, None, b""), Sent::TooLarge(_)));
        assert_eq!(
            http_outcome(400, None, b"bad protobuf"),
            Sent::Refused("HTTP 400: bad protobuf".into())
        );
        assert!(matches!(http_outcome(500, None, b""), Sent::Refused(_)));
    }

    #[test]
    fn credentials_and_wrong_paths_are_retried_so_a_rotation_loses_nothing() {
        for code in [401, 403, 404] {
            match http_outcome(code, None, b"") {
                Sent::Retry { why, .. } => {
                    assert!(why.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{why}")
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        assert!(matches!(
            grpc_outcome(&tonic::Status::unauthenticated("no key")),
            Sent::Retry { .. }
        ));
    }

    #[test]
    fn grpc_statuses_are_classified_as_the_otlp_specification_says() {
        assert!(matches!(
            grpc_outcome(&tonic::Status::unavailable("down")),
            Sent::Retry { .. }
        ));
        assert!(matches!(
            grpc_outcome(&tonic::Status::resource_exhausted(
                "Received message larger than max (5000000 vs. 4194304)"
            )),
            Sent::TooLarge(_)
        ));
        assert!(matches!(
            grpc_outcome(&tonic::Status::resource_exhausted("slow down")),
            Sent::Retry { .. }
        ));
        assert!(matches!(
            grpc_outcome(&tonic::Status::invalid_argument("bad span")),
            Sent::Refused(_)
        ));
    }
}
