//! `truthtable.ingest.v1.IngestService`: capture records over long-lived gRPC streams, what the
//! filter sends with `audit_transport: "grpc"`.
//!
//! Each `Batch` is handled exactly as the body of a `POST /v1/captures` carrying the stream's
//! initial metadata as its headers (the ingest token, the content type of the batch): the same
//! checks, the same store write, the same metrics. Its `Ack` carries the status that request
//! would have been answered with, and the answer's body when it was not a success. Batches on one
//! stream are handled one after another, and acknowledged in the order they came.
//!
//! A stream ends when its sender ends it, or when the collector shuts down: the batch being
//! stored is acknowledged first, then the stream closes with status OK, so a graceful shutdown
//! does not wait on streams a proxy keeps open.

/// The messages, server trait and client, generated at build time from
/// `proto/truthtable/ingest/v1/ingest.proto` (see `build.rs`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("truthtable.ingest.v1");
}

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use http_body_util::BodyExt;
use proto::ingest_service_server::{IngestService, IngestServiceServer};
use proto::{Ack, Batch};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::http::AppState;

/// The path the service answers at.
pub const PATH: &str = "/truthtable.ingest.v1.IngestService/Deliver";

/// An error answer's body kept in an `Ack`.
const MESSAGE_MAX: usize = 1024;

pub struct Lanes {
    state: Arc<AppState>,
    stop: watch::Receiver<bool>,
}

/// The service, stopping its streams once `stop` turns true.
pub fn service(state: Arc<AppState>, stop: watch::Receiver<bool>) -> IngestServiceServer<Lanes> {
    // A batch as large as a POST may be, plus its two fields' tags and lengths.
    let limit = state.max_body_bytes.saturating_add(1024);
    IngestServiceServer::new(Lanes { state, stop }).max_decoding_message_size(limit)
}

#[tonic::async_trait]
impl IngestService for Lanes {
    type DeliverStream = ReceiverStream<Result<Ack, Status>>;

    async fn deliver(
        &self,
        request: Request<Streaming<Batch>>,
    ) -> Result<Response<Self::DeliverStream>, Status> {
        let mut headers = request.metadata().clone().into_headers();
        if let Err(e) = crate::http::authorize(&headers, self.state.ingest_token.as_deref()) {
            self.state.metrics.ingest_request();
            self.state
                .metrics
                .rejected(crate::metrics::Rejection::Unauthorized);
            return Err(Status::unauthenticated(e.message().to_owned()));
        }
        // What the metadata says of the stream is not about a batch's body.
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::CONTENT_ENCODING);
        let mut batches = request.into_inner();
        let (acks, out) = mpsc::channel(1);
        let state = Arc::clone(&self.state);
        let mut stop = self.stop.clone();
        let open = Open::new(Arc::clone(&state));
        tokio::spawn(async move {
            let _open = open;
            loop {
                if *stop.borrow() {
                    break;
                }
                let next = tokio::select! {
                    next = batches.message() => next,
                    _ = stop.changed() => break,
                };
                let batch = match next {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "an ingest stream failed");
                        break;
                    }
                };
                state.metrics.stream_batch();
                let mut headers = headers.clone();
                match HeaderValue::from_str(&batch.content_type) {
                    Ok(ct) => headers.insert(header::CONTENT_TYPE, ct),
                    Err(_) => headers.remove(header::CONTENT_TYPE),
                };
                let answer =
                    crate::http::ingest(State(Arc::clone(&state)), headers, Body::from(batch.body))
                        .await;
                let status = answer.status();
                let message = if status.is_success() {
                    String::new()
                } else {
                    let body = answer.into_body().collect().await.map(|b| b.to_bytes());
                    let body = body.unwrap_or_default();
                    String::from_utf8_lossy(&body[..body.len().min(MESSAGE_MAX)]).into_owned()
                };
                let ack = Ack {
                    status: u32::from(status.as_u16()),
                    message,
                };
                if acks.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

/// A stream counted in `truthtable_collector_ingest_streams_open` while this lives.
struct Open(Arc<AppState>);

impl Open {
    fn new(state: Arc<AppState>) -> Open {
        state.metrics.stream_opened();
        Open(state)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.metrics.stream_closed();
    }
}
