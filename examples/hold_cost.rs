//! What `complete_after_stored` costs, measured side by side in one Envoy: two listeners with the
//! same filter build and configuration but for the hold, one upstream, one receiver that answers
//! 200 at once (the collector's own ingest time is measured elsewhere, BENCHMARKS.md).
//!
//! - **Latency** at a fixed rate (open loop): for each exchange, the time from the upstream handing
//!   its last byte to its HTTP server (stamped into an `x-sent-ns` header of the same write) to the
//!   client reading the last byte — p50 and p99 per listener.
//! - **Throughput** (closed loop, `HOLD_CONNS` connections): exchanges per second, held ÷ unheld,
//!   on 1 KiB and 32 KiB answers; the listeners alternate, rounds are paired.
//!
//! `bench/run` runs it (part `hold`) with Envoy alone on CPU 1; by hand, from the repository root:
//! `cargo run --release --example hold_cost` (knobs: `HOLD_RATE` 1000, `HOLD_DURATION_S` 5,
//! `HOLD_ROUNDS` 3, `HOLD_CONNS` 16, `ENVOY` the binary, `ENVOY_CPU` to pin it with `taskset`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

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

fn envoy_yaml(admin: u16, listeners: &[(u16, &str)], upstream: u16, audit: u16) -> String {
    let wasm = std::env::current_dir()
        .unwrap()
        .join("target/wasm32-wasip1/release/truthtable_filter.wasm");
    assert!(wasm.exists(), "build the filter first: {}", wasm.display());
    let mut out = format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}\n\
         static_resources:\n  listeners:\n"
    );
    for (port, config) in listeners {
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
                  vm_id: truthtable
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
    for (name, port) in [("upstream", upstream), ("audit", audit)] {
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
    out
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
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let audit = serve(move |req: hyper::Request<hyper::body::Incoming>| {
        let r = r.clone();
        async move {
            let _ = req.into_body().collect().await;
            r.fetch_add(1, Ordering::Relaxed);
            hyper::Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    let (admin, unheld, held) = (free_port(), free_port(), free_port());
    let base = r#""audit_cluster": "audit", "delivery_format": "framed""#;
    let yaml = envoy_yaml(
        admin,
        &[
            (unheld, &format!("{{{base}}}")),
            (
                held,
                &format!(r#"{{{base}, "complete_after_stored": true}}"#),
            ),
        ],
        upstream,
        audit,
    );
    let dir = std::env::temp_dir().join(format!("hold_cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("envoy.yaml");
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
    for port in [unheld, held] {
        for _ in 0..200 {
            exchange(&http, port, 1024).await;
        }
    }
    let listeners = [("unheld", unheld), ("held", held)];

    // Latency at a fixed rate, open loop.
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
    let mut failed = [0u64; 2];
    for round in 0..rounds {
        for k in 0..2 {
            let k = if round % 2 == 0 { k } else { 1 - k };
            let port = listeners[k].1;
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
            samples[k].extend(got.lock().unwrap().iter());
            failed[k] += fails.load(Ordering::Relaxed);
        }
    }
    println!(
        "## complete_after_stored: latency at {rate} req/s, 1 KiB answers ({rounds} rounds of {}s per listener)\n",
        duration.as_secs()
    );
    println!("| listener | exchanges | failed | upstream's last byte → client's last byte, p50 (ms) | p99 (ms) |");
    println!("|---|---|---|---|---|");
    let mut p = [(0.0, 0.0); 2];
    for k in 0..2 {
        samples[k].sort_unstable();
        p[k] = (percentile(&samples[k], 0.5), percentile(&samples[k], 0.99));
        println!(
            "| {} | {} | {} | {:.3} | {:.3} |",
            listeners[k].0,
            samples[k].len(),
            failed[k],
            p[k].0,
            p[k].1
        );
    }
    println!(
        "\nadded by the hold: p50 {:+.3} ms, p99 {:+.3} ms\n",
        p[1].0 - p[0].0,
        p[1].1 - p[0].1
    );

    // Throughput, closed loop, paired rounds.
    println!("## complete_after_stored: throughput, {conns} connections, held ÷ unheld (paired rounds)\n");
    println!("| answer | unheld req/s (median) | held req/s (median) | held ÷ unheld per round | median |");
    println!("|---|---|---|---|---|");
    for size in [1024usize, 32 * 1024] {
        let mut rps = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for k in 0..2 {
                let k = if round % 2 == 0 { k } else { 1 - k };
                let port = listeners[k].1;
                let done = Arc::new(AtomicU64::new(0));
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
                rps[k].push(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64());
            }
        }
        let mut ratios: Vec<f64> = rps[1].iter().zip(&rps[0]).map(|(h, u)| h / u).collect();
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let list = ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {} KiB | {:.0} | {:.0} | {list} | {:.3} |",
            size / 1024,
            median(&mut rps[0].clone()),
            median(&mut rps[1].clone()),
            median(&mut ratios)
        );
    }
    println!(
        "\nreceiver: {} callouts answered",
        received.load(Ordering::Relaxed)
    );
    let _ = envoy.kill();
    let _ = envoy.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
