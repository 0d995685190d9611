//! WebSocket sessions through the shipped Envoy configuration (`upgrade_configs: websocket`)
//! running the filter: a session closed normally by either side is a `complete` exchange; one
//! that breaks off is a failure with Envoy's detail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that echoes each text message; on `close` it closes the session normally,
/// on `fail` with 1011 (internal error), on `drop` it drops the connection without a close frame.
async fn ws_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t.as_str() == "close" || t.as_str() == "fail" => {
                            let code = if t.as_str() == "close" {
                                CloseCode::Normal
                            } else {
                                CloseCode::Error
                            };
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code,
                                    reason: "bye".into(),
                                }))
                                .await;
                            while let Some(Ok(_)) = ws.next().await {}
                            return;
                        }
                        Message::Text(t) if t.as_str() == "drop" => return,
                        Message::Text(t) => {
                            let _ = ws.send(Message::Text(t)).await;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    port
}

async fn rig() -> (Envoy, Receiver) {
    let upstream = ws_upstream().await;
    let receiver = Receiver::start().await;
    let config = filter_config("");
    // The shipped envoy/envoy.yaml, as it is: it lets WebSocket upgrades through.
    let envoy = Envoy::start(EnvoyOpts {
        upstream,
        audit: receiver.port,
        filter: Some(&config),
        workers: 2,
    });
    (envoy, receiver)
}

async fn session(
    envoy: &Envoy,
    case: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://127.0.0.1:{}/ws", envoy.port)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-test-case", case.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `text` and reads what comes back until the session ends.
async fn say(envoy: &Envoy, case: &str, text: &str) {
    let mut ws = session(envoy, case).await;
    ws.send(Message::Text(text.into())).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_closed_normally_by_either_side_is_complete() {
    let (envoy, receiver) = rig().await;
    let mut ws = session(&envoy, "client-closes").await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    say(&envoy, "server-closes", "close").await;
    for case in ["client-closes", "server-closes"] {
        let rec = receiver.record_of(case).await;
        assert_eq!(rec["response"]["status"], 101, "{case}");
        assert_eq!(rec["outcome"], "complete", "{case}: {rec}");
        // Envoy's own account stays in the record, verbatim.
        assert!(
            rec["detail"]
                .as_str()
                .unwrap()
                .starts_with("upstream_reset_after_response_started"),
            "{case}: {}",
            rec["detail"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_that_breaks_off_or_closes_on_an_error_is_a_failure_with_its_detail() {
    let (envoy, receiver) = rig().await;
    say(&envoy, "server-drops", "drop").await;
    say(&envoy, "server-fails", "fail").await;
    for case in ["server-drops", "server-fails"] {
        let rec = receiver.record_of(case).await;
        assert_eq!(rec["response"]["status"], 101, "{case}");
        assert_eq!(rec["outcome"], "upstream_failed", "{case}: {rec}");
        assert_eq!(
            rec["detail"], "upstream_reset_after_response_started{connection_termination}",
            "{case}"
        );
    }
}
