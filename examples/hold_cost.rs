//! What `complete_after_stored` costs, measured side by side in one Envoy: two listeners with the
//! same filter build and configuration but for the hold, one upstream, one receiver that answers
//! 200 at once (the collector's own ingest time is measured elsewhere, BENCHMARKS.md).
//!
//! - **Latency** at a fixed rate (open loop): for each exchange, the time from the upstream handing
//!   its last byte to its HTTP server (stamped into an `x-sent-ns` header of the same write) to the
//!   client reading the last byte — p50 and p99 per listener.
//! - **Throughput** (closed loop, `HOLD_CONNS` connections): exchanges per second, held ÷ unheld,
//!   on 1 KiB and 32 KiB answers; the listeners alternate, rounds are paired.
//! - **Envoy's CPU per exchange** in both phases: only one listener has traffic at a time, so the
//!   CPU Envoy's threads ran (`/proc/<pid>/task/*/schedstat`) over a listener's round is that
//!   listener's, its callouts included; unheld ÷ held is the proxy's own capacity ratio, which
//!   the closed-loop throughput cannot show when the load process (client, upstream and receiver
//!   on one thread) is the bottleneck. The load process's own CPU per exchange is shown beside
//!   it in the throughput table.
//! - **Callouts**: exchanges per callout the receiver answered, per listener (each listener sends
//!   to an audit path of its own). A third listener, unheld but sending each record in a callout
//!   of its own (`batch_max_bytes` at its 1 KiB minimum), is the control that tells the hold's
//!   own cost (pause, wake-up, resume) from the cost of the callouts it makes.
//! - **Over gRPC streams**: two more listeners, unheld and held, send their records with
//!   `audit_transport: "grpc"` to a receiver of `truthtable.ingest.v1.IngestService` that
//!   acknowledges each batch at once (its messages are counted as their callouts): what the hold
//!   costs when a batch is a message on an open stream instead of a callout.
//! - **A/B of two builds**: `HOLD_BASELINE_WASM=path/to/other.wasm` adds a third listener, held,
//!   running that build in a VM of its own, measured in the same rounds (a design change is kept
//!   only if it beats the baseline build round by round); `HOLD_BASELINE_TRANSPORT=grpc` sends
//!   its records over gRPC streams instead of callouts.
//! - **A real collector**: `HOLD_COLLECTORS=target/release/truthtable-collector` adds an unheld
//!   and a held listener over gRPC streams whose records that collector stores (one process
//!   each, SQLite as shipped); two binaries separated by `;` add two listeners each (an A/B of
//!   collector builds); `HOLD_COLLECTOR_TRANSPORT=http` sends those records in callouts.
//! - **A/B of two configurations**: `HOLD_VARIANT_CONFIG='"max_inflight": 1'` adds the held
//!   listener over gRPC streams again, in a VM of its own, with those keys added.
//!
//! `bench/run` runs it (part `hold`) with Envoy alone on CPU 1; by hand, from the repository root:
//! `cargo run --release --example hold_cost` (knobs: `HOLD_RATE` 1000, `HOLD_DURATION_S` 5,
//! `HOLD_ROUNDS` 3, `HOLD_CONNS` 16, `ENVOY` the binary, `ENVOY_CPU` to pin it with `taskset`,
//! `HOLD_LISTENERS` the listeners to run by name, separated by `;`, the first the baseline).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use truthtable_collector::lanes::proto as ingest;

#[path = "../tests/common/clusters.rs"]
mod clusters;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Serves `handler` on a loopback port, HTTP/1.1 with keep-alive.
async fn serve<F, Fut>(handler: F) -> u16
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A listener of the benchmark's Envoy: its port, the filter's configuration, the `.wasm` it
/// runs and the VM that runs it (listeners on different builds need VMs of their own).
struct Side {
    name: &'static str,
    /// The audit path its records go to (`/{audit}`): callouts are counted per listener.
    audit: &'static str,
    port: u16,
    config: String,
    wasm: std::path::PathBuf,
    vm: &'static str,
    /// A real collector its records go to (`HOLD_COLLECTORS`).
    collector: Option<Collector>,
}

/// A collector process a listener's records go to: its port, and whether over gRPC streams
/// (or in callouts).
#[derive(Clone, Copy)]
struct Collector {
    port: u16,
    grpc: bool,
    /// Its process, whose CPU per exchange the throughput table shows.
    pid: u32,
}

fn envoy_yaml(admin: u16, listeners: &[Side], upstream: u16, audit: u16, lanes: u16) -> String {
    let mut out = format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}\n\
         static_resources:\n  listeners:\n"
    );
    for Side {
        port,
        config,
        wasm,
        vm,
        ..
    } in listeners
    {
        out.push_str(&format!(
            r#"  - name: l{port}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l{port}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream, timeout: 0s }}
          http_filters:
          - name: truthtable
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: truthtable
                root_id: truthtable
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{config}'
                vm_config:
                  vm_id: {vm}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
            wasm = wasm.display()
        ));
    }
    out.push_str("  clusters:\n");
    // HTTP/1.1 clusters: the upstream, the receiver of callouts, collectors reached by callouts.
    let collectors = listeners.iter().filter_map(|side| side.collector);
    let mut plain = vec![
        ("upstream".to_owned(), upstream),
        ("audit".to_owned(), audit),
    ];
    plain.extend(
        collectors
            .clone()
            .filter(|c| !c.grpc)
            .map(|c| (format!("collector{}", c.port), c.port)),
    );
    for (name, port) in plain {
        out.push_str(&format!(
            r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
        ));
    }
    out.push_str(&clusters::http2_cluster("lanes", lanes));
    for c in collectors.filter(|c| c.grpc) {
        out.push_str(&clusters::http2_cluster(
            &format!("collector{}", c.port),
            c.port,
        ));
    }
    out
}

/// The receiver of `audit_transport: "grpc"`: acknowledges every batch at once (200), counting
/// them as callouts of `/{x-listener}` (the stream's metadata).
struct AckAll(Arc<Mutex<std::collections::HashMap<String, u64>>>);

type Acks = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<ingest::Ack, tonic::Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl ingest::ingest_service_server::IngestService for AckAll {
    type DeliverStream = Acks;

    async fn deliver(
        &self,
        request: tonic::Request<tonic::Streaming<ingest::Batch>>,
    ) -> Result<tonic::Response<Acks>, tonic::Status> {
        use futures_util::StreamExt;
        let received = self.0.clone();
        let listener = request
            .metadata()
            .get("x-listener")
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "/lanes".to_owned(), |v| format!("/{v}"));
        let acks = request.into_inner().map(move |batch| {
            batch.map(|_| {
                *received
                    .lock()
                    .unwrap()
                    .entry(listener.clone())
                    .or_default() += 1;
                ingest::Ack {
                    status: 200,
                    message: String::new(),
                }
            })
        });
        Ok(tonic::Response::new(Box::pin(acks)))
    }
}

/// Batches a collector stored from gRPC streams, or the ingest requests it answered (its
/// metrics).
async fn collector_batches(http: &reqwest::Client, c: Collector) -> u64 {
    let metric = if c.grpc {
        "truthtable_collector_ingest_stream_batches_total "
    } else {
        "truthtable_collector_ingest_requests_total "
    };
    let text = http
        .get(format!("http://127.0.0.1:{}/metrics", c.port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(metric)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// One exchange through `port`: the time from the upstream's last byte to the client's, or
/// `None` when it failed.
async fn exchange(http: &reqwest::Client, port: u16, size: usize) -> Option<u64> {
    let resp = http
        .get(format!("http://127.0.0.1:{port}/n/{size}"))
        .send()
        .await
        .ok()?;
    let sent: u64 = resp
        .headers()
        .get("x-sent-ns")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let body = resp.bytes().await.ok()?;
    let got = now_ns();
    (body.len() == size).then(|| got.saturating_sub(sent))
}

/// CPU time a process's live threads have run, in nanoseconds (the first field of each thread's
/// `schedstat`): Envoy's, the load process's, a collector's. A thread that ends during a round
/// drops out of the sum; Envoy's live as long as it does, and a collector's blocking threads end
/// only after 10 s idle, which under a round's load they are not.
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rate = env("HOLD_RATE", 1000);
    let duration = Duration::from_secs(env("HOLD_DURATION_S", 5));
    let rounds = env("HOLD_ROUNDS", 3);
    let conns = env("HOLD_CONNS", 16);
    let upstream = serve(|req: hyper::Request<hyper::body::Incoming>| async move {
        let size: usize = req
            .uri()
            .path()
            .strip_prefix("/n/")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1024);
        let body = Bytes::from(vec![b'x'; size]);
        hyper::Response::builder()
            .header("content-type", "application/json")
            .header("x-sent-ns", now_ns().to_string())
            .body(Full::new(body))
            .unwrap()
    })
    .await;
    // Callouts answered, by audit path: one path per listener.
    let received: Arc<Mutex<std::collections::HashMap<String, u64>>> = Arc::default();
    let r = received.clone();
    let audit = serve(move |req: hyper::Request<hyper::body::Incoming>| {
        let r = r.clone();
        async move {
            let path = req.uri().path().to_owned();
            let _ = req.into_body().collect().await;
            *r.lock().unwrap().entry(path).or_default() += 1;
            hyper::Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    let lanes = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let svc = ingest::ingest_service_server::IngestServiceServer::new(AckAll(received.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        port
    };
    let admin = free_port();
    let build = std::env::current_dir()
        .unwrap()
        .join("target/wasm32-wasip1/release/truthtable_filter.wasm");
    assert!(
        build.exists(),
        "build the filter first: {}",
        build.display()
    );
    let config = |audit: &str, hold: bool| {
        format!(
            r#"{{"audit_cluster": "audit", "audit_path": "/{audit}", "delivery_format": "framed", "complete_after_stored": {hold}}}"#
        )
    };
    let mut sides = vec![
        Side {
            name: "unheld",
            audit: "unheld",
            port: free_port(),
            config: config("unheld", false),
            wasm: build.clone(),
            vm: "truthtable",
            collector: None,
        },
        Side {
            name: "held",
            audit: "held",
            port: free_port(),
            config: config("held", true),
            wasm: build.clone(),
            vm: "truthtable",
            collector: None,
        },
    ];
    // The control: unheld, but each record (over 1 KiB) fills a batch of its own, and enough
    // callouts may be open that none waits for a slot.
    sides.push(Side {
        name: "unheld, a callout per record",
        audit: "percall",
        port: free_port(),
        config: concat!(
            r#"{"audit_cluster": "audit", "audit_path": "/percall", "delivery_format": "framed", "#,
            r#""batch_max_bytes": 1024, "max_inflight": 64}"#
        )
        .to_owned(),
        wasm: build.clone(),
        vm: "truthtable",
        collector: None,
    });
    // The same two listeners with their records sent as messages on gRPC streams instead of
    // callouts; the receiver counts each listener's batches by the header the filter sends as
    // the stream's metadata.
    let lanes_config = |audit: &str, hold: bool| {
        format!(
            r#"{{"audit_cluster": "lanes", "audit_transport": "grpc", "delivery_format": "framed", "audit_headers": {{"x-listener": "{audit}"}}, "complete_after_stored": {hold}}}"#
        )
    };
    sides.push(Side {
        name: "unheld, gRPC streams",
        audit: "lanes-unheld",
        port: free_port(),
        config: lanes_config("lanes-unheld", false),
        wasm: build.clone(),
        vm: "truthtable",
        collector: None,
    });
    sides.push(Side {
        name: "held, gRPC streams",
        audit: "lanes-held",
        port: free_port(),
        config: lanes_config("lanes-held", true),
        wasm: build.clone(),
        vm: "truthtable",
        collector: None,
    });
    // The held listener over gRPC streams again with more of the filter's keys (JSON members,
    // e.g. `"max_inflight": 1`): a configuration A/B in the same rounds.
    if let Ok(extra) = std::env::var("HOLD_VARIANT_CONFIG") {
        let base = lanes_config("lanes-variant", true);
        sides.push(Side {
            name: "held, gRPC streams, variant",
            audit: "lanes-variant",
            port: free_port(),
            config: format!("{}, {extra}}}", base.trim_end_matches('}')),
            wasm: build.clone(),
            vm: "variant",
            collector: None,
        });
    }
    // A/B of two builds in the same run: `HOLD_BASELINE_WASM` adds a held listener running that
    // build (in a VM of its own).
    if let Ok(baseline) = std::env::var("HOLD_BASELINE_WASM") {
        sides.push(Side {
            name: "held (baseline build)",
            audit: "baseline",
            port: free_port(),
            config: match std::env::var("HOLD_BASELINE_TRANSPORT").as_deref() {
                Ok("grpc") => lanes_config("baseline", true),
                _ => config("baseline", true),
            },
            wasm: std::path::PathBuf::from(baseline),
            vm: "baseline",
            collector: None,
        });
    }
    // `HOLD_COLLECTORS=path/to/truthtable-collector` (several separated by `;`): an unheld and a
    // held listener for each, their records stored by that collector binary (SQLite, in a
    // temporary directory): what the hold costs with a real store in it, or an A/B of two
    // collector builds.
    let run_dir = std::env::temp_dir().join(format!("hold_cost-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut collectors = Vec::new();
    // `HOLD_COLLECTOR_TRANSPORT=http`: their records go in callouts instead.
    let transport = std::env::var("HOLD_COLLECTOR_TRANSPORT").unwrap_or_else(|_| "grpc".to_owned());
    if let Ok(bins) = std::env::var("HOLD_COLLECTORS") {
        for (i, bin) in bins.split(';').map(str::trim).enumerate() {
            // Two collectors of each build, one per listener, so each counts its own batches.
            for hold in [false, true] {
                let port = free_port();
                let child = std::process::Command::new(bin)
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .arg("--db")
                    .arg(run_dir.join(format!("collector{i}-{hold}.db")))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("start the collector {bin}: {e}"));
                let pid = child.id();
                collectors.push(child);
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                    assert!(Instant::now() < deadline, "collector {bin} not listening");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let what = if hold { "held" } else { "unheld" };
                let name: &'static str =
                    Box::leak(format!("{what}, collector {}", i + 1).into_boxed_str());
                sides.push(Side {
                    name,
                    audit: name,
                    port: free_port(),
                    config: format!(
                        r#"{{"audit_cluster": "collector{port}", "audit_transport": "{transport}", "delivery_format": "framed", "complete_after_stored": {hold}}}"#
                    ),
                    wasm: build.clone(),
                    vm: "truthtable",
                    collector: Some(Collector {
                        port,
                        grpc: transport != "http",
                        pid,
                    }),
                });
            }
        }
    }
    // `HOLD_LISTENERS='held;unheld'` keeps only the listeners named (separated by `;`), in order:
    // a profile of one listener's path (`perf record -p` on Envoy) then sees only its traffic.
    if let Ok(names) = std::env::var("HOLD_LISTENERS") {
        let names: Vec<&str> = names.split(';').map(str::trim).collect();
        sides.retain(|s| names.contains(&s.name));
        sides.sort_by_key(|s| names.iter().position(|n| *n == s.name));
        assert!(!sides.is_empty(), "HOLD_LISTENERS names no listener");
    }
    let yaml = envoy_yaml(admin, &sides, upstream, audit, lanes);
    let config = run_dir.join("envoy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let envoy_bin = std::env::var("ENVOY").unwrap_or_else(|_| ".venv/bin/envoy".to_owned());
    let mut command = match std::env::var("ENVOY_CPU") {
        Ok(cpu) => {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", &cpu]).arg(&envoy_bin);
            c
        }
        Err(_) => std::process::Command::new(&envoy_bin),
    };
    let mut envoy = command
        .arg("-c")
        .arg(&config)
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "error"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start Envoy");
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("http://127.0.0.1:{admin}/ready"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "Envoy not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for side in &sides {
        for _ in 0..200 {
            exchange(&http, side.port, 1024).await;
        }
    }
    let n = sides.len();
    // Round r visits the listeners starting at r mod n: each is first, middle and last in turn.
    let order = |round: u64| (0..n).map(move |i| (i + round as usize) % n);
    let callouts = |audit: &str| {
        received
            .lock()
            .unwrap()
            .get(&format!("/{audit}"))
            .copied()
            .unwrap_or(0)
    };
    let mut exchanges = vec![0u64; n];

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Latency at a fixed rate, open loop.
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut failed = vec![0u64; n];
    // Envoy's CPU per exchange, per listener and round: only one listener has traffic at a time,
    // so Envoy's CPU over a listener's round is that listener's (its callouts included). At a
    // fixed rate below saturation this is the proxy's capacity, apart from the load process's.
    let mut cpu_us: Vec<Vec<f64>> = vec![Vec::new(); n];
    for round in 0..rounds {
        for k in order(round) {
            let port = sides[k].port;
            let cpu_before = cpu_ns(envoy.id());
            let got = Arc::new(Mutex::new(Vec::new()));
            let fails = Arc::new(AtomicU64::new(0));
            let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = Instant::now() + duration;
            let mut tasks = tokio::task::JoinSet::new();
            while Instant::now() < end {
                tick.tick().await;
                let (http, got, fails) = (http.clone(), got.clone(), fails.clone());
                tasks.spawn(async move {
                    match exchange(&http, port, 1024).await {
                        Some(ns) => got.lock().unwrap().push(ns),
                        None => {
                            fails.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            // The round's last held records leave with the root's next send.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let done = got.lock().unwrap().len() as f64;
            cpu_us[k]
                .push(cpu_ns(envoy.id()).saturating_sub(cpu_before) as f64 / 1e3 / done.max(1.0));
            samples[k].extend(got.lock().unwrap().iter());
            failed[k] += fails.load(Ordering::Relaxed);
        }
    }
    println!(
        "## complete_after_stored: latency at {rate} req/s, 1 KiB answers ({rounds} rounds of {}s per listener)\n",
        duration.as_secs()
    );
    println!("| listener | exchanges | failed | upstream's last byte → client's last byte, p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) |");
    println!("|---|---|---|---|---|---|---|");
    let mut p = vec![(0.0, 0.0); n];
    for k in 0..n {
        samples[k].sort_unstable();
        p[k] = (percentile(&samples[k], 0.5), percentile(&samples[k], 0.99));
        exchanges[k] += samples[k].len() as u64;
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:+.3} | {:+.3} |",
            sides[k].name,
            samples[k].len(),
            failed[k],
            p[k].0,
            p[k].1,
            p[k].0 - p[0].0,
            p[k].1 - p[0].1
        );
    }

    println!(
        "\n## complete_after_stored: Envoy's CPU per exchange at {rate} req/s, 1 KiB answers (paired rounds)\n"
    );
    println!("| listener | µs of Envoy CPU per exchange (median) | unheld ÷ this, per round (Envoy's capacity ratio) | median |");
    println!("|---|---|---|---|");
    for k in 0..n {
        let ratios: Vec<f64> = cpu_us[k]
            .iter()
            .zip(&cpu_us[0])
            .map(|(h, u)| u / h)
            .collect();
        let list = ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {} | {:.1} | {list} | {:.3} |",
            sides[k].name,
            median(&cpu_us[k]),
            median(&ratios)
        );
    }

    // Throughput, closed loop, paired rounds: each held listener ÷ the unheld one, per round.
    println!(
        "\n## complete_after_stored: throughput, {conns} connections, ÷ unheld (paired rounds)\n"
    );
    println!("| answer | listener | req/s (median) | ÷ unheld per round | median | µs of Envoy CPU per exchange (median) | Envoy's capacity ÷ unheld's, per round | median | µs of the load process's CPU per exchange (median) | µs of its collector's CPU per exchange (median) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for size in [1024usize, 32 * 1024] {
        let mut rps = vec![Vec::new(); n];
        let mut cpu = vec![Vec::new(); n];
        let mut load_cpu = vec![Vec::new(); n];
        let mut collector_cpu = vec![Vec::new(); n];
        for round in 0..rounds {
            for k in order(round) {
                let port = sides[k].port;
                let done = Arc::new(AtomicU64::new(0));
                let cpu_before = cpu_ns(envoy.id());
                let load_before = cpu_ns(std::process::id());
                let collector_pid = sides[k].collector.map(|c| c.pid);
                let collector_before = collector_pid.map_or(0, cpu_ns);
                let end = Instant::now() + duration;
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..conns {
                    let (http, done) = (http.clone(), done.clone());
                    tasks.spawn(async move {
                        while Instant::now() < end {
                            if exchange(&http, port, size).await.is_some() {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                let started = Instant::now();
                while tasks.join_next().await.is_some() {}
                let elapsed = started.elapsed().as_secs_f64();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let count = done.load(Ordering::Relaxed);
                exchanges[k] += count;
                rps[k].push(count as f64 / elapsed);
                let used = cpu_ns(envoy.id()).saturating_sub(cpu_before) as f64;
                cpu[k].push(used / 1e3 / (count as f64).max(1.0));
                let load = cpu_ns(std::process::id()).saturating_sub(load_before) as f64;
                load_cpu[k].push(load / 1e3 / (count as f64).max(1.0));
                if let Some(pid) = collector_pid {
                    let used = cpu_ns(pid).saturating_sub(collector_before) as f64;
                    collector_cpu[k].push(used / 1e3 / (count as f64).max(1.0));
                }
            }
        }
        for k in 0..n {
            let per_round = |ratio: &dyn Fn(usize) -> f64| {
                let r: Vec<f64> = (0..rps[k].len()).map(ratio).collect();
                let list = r.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>();
                (list.join(", "), median(&r))
            };
            let (rps_list, rps_median) = per_round(&|i| rps[k][i] / rps[0][i]);
            let (cpu_list, cpu_median) = per_round(&|i| cpu[0][i] / cpu[k][i]);
            println!(
                "| {} KiB | {} | {:.0} | {rps_list} | {rps_median:.3} | {:.1} | {cpu_list} | {cpu_median:.3} | {:.1} | {} |",
                size / 1024,
                sides[k].name,
                median(&rps[k]),
                median(&cpu[k]),
                median(&load_cpu[k]),
                if collector_cpu[k].is_empty() {
                    "—".to_owned()
                } else {
                    format!("{:.1}", median(&collector_cpu[k]))
                },
            );
        }
    }
    println!("\n| listener | exchanges | callouts answered | exchanges per callout |");
    println!("|---|---|---|---|");
    for k in 0..n {
        let c = match sides[k].collector {
            Some(c) => collector_batches(&http, c).await,
            None => callouts(sides[k].audit),
        };
        println!(
            "| {} | {} | {} | {:.2} |",
            sides[k].name,
            exchanges[k],
            c,
            exchanges[k] as f64 / c.max(1) as f64
        );
    }
    let _ = envoy.kill();
    let _ = envoy.wait();
    for mut c in collectors {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&run_dir);
}
