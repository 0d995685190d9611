//! `truthtable.ingest.v1.IngestService/Deliver`, the filter's `audit_transport: "grpc"`, against a
//! collector served in the test process: each batch on a stream is stored and acknowledged like
//! a `POST /v1/captures`, in order, on the same port as the HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{get_json, ndjson, InProcess};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use truthtable_collector::lanes::proto::ingest_service_client::IngestServiceClient;
use truthtable_collector::lanes::proto::{Ack, Batch};

fn batch(body: String) -> Batch {
    Batch {
        content_type: "application/x-ndjson".to_owned(),
        body: body.into_bytes(),
    }
}

/// Opens a stream to `server` (with `token` as the ingest token, if any): the sender of its
/// batches and its acknowledgements.
async fn open(
    server: &InProcess,
    token: Option<&str>,
) -> Result<(mpsc::Sender<Batch>, tonic::Streaming<Ack>), tonic::Status> {
    let mut client = IngestServiceClient::connect(server.base.clone())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    let acks = client.deliver(request).await?.into_inner();
    Ok((tx, acks))
}

async fn next_ack(acks: &mut tonic::Streaming<Ack>) -> Ack {
    tokio::time::timeout(Duration::from_secs(10), acks.message())
        .await
        .expect("an acknowledgement within 10 s")
        .unwrap()
        .expect("the stream is still open")
}

#[tokio::test]
async fn each_batch_on_a_stream_is_stored_and_acknowledged_in_order() {
    let server = InProcess::start(Some("in-tok"), None, None).await;
    let (tx, mut acks) = open(&server, Some("in-tok")).await.unwrap();
    let first: Vec<String> = (0..3).map(|i| format!("lane-a-{i}")).collect();
    tx.send(batch(ndjson(&first))).await.unwrap();
    assert_eq!(next_ack(&mut acks).await.status, 200);
    // A batch the HTTP API would refuse gets that answer, and the stream goes on.
    tx.send(batch("not json\n".to_owned())).await.unwrap();
    let refused = next_ack(&mut acks).await;
    assert_eq!(refused.status, 400);
    assert!(refused.message.contains("error"), "{}", refused.message);
    let second = vec!["lane-b-0".to_owned()];
    tx.send(batch(ndjson(&second))).await.unwrap();
    assert_eq!(next_ack(&mut acks).await.status, 200);
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let batches = common::metric(
        &client,
        &base,
        "truthtable_collector_ingest_stream_batches_total",
    )
    .await;
    assert_eq!(batches, 3);
    for id in first.iter().chain(&second) {
        let got = get_json(&client, server.url(&format!("/v1/captures/{id}"))).await;
        assert_eq!(got["capture"]["id"], id.as_str(), "{got}");
    }
    drop(tx);
    assert!(
        acks.message().await.unwrap().is_none(),
        "the stream ends with OK once the sender ends it"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_stream_without_the_ingest_token_is_refused() {
    let server = InProcess::start(Some("in-tok"), None, None).await;
    for token in [None, Some("wrong")] {
        let status = match open(&server, token).await {
            Err(status) => status,
            Ok((tx, mut acks)) => {
                tx.send(batch(ndjson(&["x".to_owned()]))).await.unwrap();
                acks.message().await.expect_err("refused")
            }
        };
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{token:?}: {status}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_an_open_stream_instead_of_waiting_on_it() {
    let server = InProcess::start(None, None, None).await;
    let (tx, mut acks) = open(&server, None).await.unwrap();
    tx.send(batch(ndjson(&["before-stop".to_owned()])))
        .await
        .unwrap();
    assert_eq!(next_ack(&mut acks).await.status, 200);
    // The sender keeps the stream open, as a proxy does; the collector still stops.
    tokio::time::timeout(Duration::from_secs(15), server.stop())
        .await
        .expect("the collector stopped with a stream open");
    drop(tx);
}

/// Batches of 64 KiB one after another on a stream, each sent when the one before it is
/// acknowledged (as a worker whose lanes are all busy sends): every acknowledgement comes as
/// soon as the batch is stored. Without TCP_NODELAY on the collector's connections an
/// acknowledgement written just after the stream's window update waited for the sender's
/// delayed ACK of that, about 44 ms for one batch in five, and the held ends it answers with it.
#[tokio::test]
async fn acknowledgements_of_large_batches_are_not_held_back_by_the_connection() {
    let server = InProcess::start(None, None, None).await;
    let (tx, mut acks) = open(&server, None).await.unwrap();
    let answer = "a".repeat(8 << 10);
    let mut took = Vec::new();
    for b in 0..41 {
        let body: String = (0..8)
            .map(|i| {
                let mut r = common::record(&format!("large-{b}-{i}"));
                r["response"]["body"]["data"] = answer.clone().into();
                r["response"]["body"]["size"] = answer.len().into();
                format!("{r}\n")
            })
            .collect();
        let t = std::time::Instant::now();
        tx.send(batch(body)).await.unwrap();
        assert_eq!(next_ack(&mut acks).await.status, 200);
        if b > 0 {
            took.push(t.elapsed());
        }
    }
    // Without TCP_NODELAY 8 of these 40 waited about 44 ms (every time); with it none over
    // 5 ms here. A loaded machine may delay one or two.
    let slow: Vec<_> = took
        .iter()
        .filter(|t| **t > Duration::from_millis(30))
        .collect();
    assert!(
        slow.len() < 4,
        "{} of {} acknowledgements waited over 30 ms: {took:?}",
        slow.len(),
        took.len()
    );
}
