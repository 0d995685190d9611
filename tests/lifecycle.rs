//! What becomes of the records a root context holds when Envoy replaces the filter's
//! configuration, removes it, or stops: a real Envoy reading its listeners from a file (as a
//! control plane pushes them), the built filter, a real upstream and the real collector — down
//! while records queue up, back later.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::lds::{LdsEnvoy, Listener, VmLayout};
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const OLD_TOKEN: &str = "ingest-token-before-rotation";
const NEW_TOKEN: &str = "ingest-token-after-rotation";

/// The tests' filter configuration with the collector's ingest token and `extra` keys.
fn config(token: &str, extra: &str) -> String {
    let token = format!(r#""audit_headers": {{"authorization": "Bearer {token}"}}"#);
    let keys = if extra.is_empty() {
        token
    } else {
        format!("{token}, {extra}")
    };
    filter_config(&keys)
}

async fn send(port: u16, cases: impl IntoIterator<Item = String>) {
    for case in cases {
        let body = fetch(
            client()
                .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                .header("x-test-case", &case)
                .body(format!(r#"{{"question": "{case}"}}"#)),
        )
        .await;
        assert!(!body.is_empty(), "{case}: the client got its answer");
    }
}

fn cases(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Waits until `check` holds for Envoy's metrics, or fails with what they were.
async fn until(envoy: &LdsEnvoy, what: &str, timeout: Duration, check: impl Fn(&Metrics) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let m = Metrics::of(envoy);
        if check(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: metrics are {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The filter's metrics, summed over workers.
#[derive(Debug)]
struct Metrics {
    captured: f64,
    delivered: f64,
    dropped: f64,
    handed_on: f64,
    taken_over: f64,
    queue_records: f64,
    queue_bytes: f64,
}

impl Metrics {
    fn of(envoy: &LdsEnvoy) -> Metrics {
        let m = |name| envoy.metric(name).unwrap_or(0.0);
        Metrics {
            captured: m("truthtable_records_captured"),
            delivered: m("truthtable_records_delivered"),
            dropped: m("truthtable_records_dropped"),
            handed_on: m("truthtable_records_handed_on"),
            taken_over: m("truthtable_records_taken_over"),
            queue_records: m("truthtable_queue_records"),
            queue_bytes: m("truthtable_queue_bytes"),
        }
    }
}

/// How many stored records each `x-test-case` has.
fn stored_cases(records: &[Value]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in records {
        if let Some(case) = header(&r["request"], "x-test-case") {
            *seen.entry(case.to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

/// Records held under one configuration survive its replacement by another that rotates the
/// ingest token and changes the delivery format: the collector, which by then only accepts the
/// new token, stores each once.
async fn queued_records_survive_a_configuration_change(old_vm: VmLayout<'_>, new_vm: VmLayout<'_>) {
    let upstream = Upstream::start().await;
    let mut collector = Collector::down(Some(NEW_TOKEN));
    let port = free_port();
    let plugin = match old_vm {
        VmLayout::Istio { .. } => "istio-system.truthtable",
        VmLayout::Shared(_) => "truthtable",
    };
    // The format changes too: batches written under the old one are sent as they were written.
    let (old_format, new_format) = match old_vm {
        VmLayout::Istio { .. } => ("framed", "ndjson"),
        VmLayout::Shared(_) => ("ndjson", "framed"),
    };
    let old = config(OLD_TOKEN, &format!(r#""delivery_format": "{old_format}""#));
    let new = config(NEW_TOKEN, &format!(r#""delivery_format": "{new_format}""#));
    let listener = |config, vm| Listener {
        name: "llm_ingress",
        port,
        plugin,
        config,
        vm,
    };
    let mut envoy = LdsEnvoy::start(
        upstream.port,
        collector.port,
        2,
        1,
        &[listener(&old, old_vm)],
    );
    send(port, cases("queued", 20)).await;
    until(&envoy, "20 records queued", Duration::from_secs(10), |m| {
        m.queue_records == 20.0
    })
    .await;

    envoy.update(&[listener(&new, new_vm)]);
    envoy.wait_drained(Duration::from_secs(20));
    until(
        &envoy,
        "the old configuration handed its records on",
        Duration::from_secs(10),
        |m| m.handed_on == 20.0 && m.taken_over == 20.0 && m.queue_records == 20.0,
    )
    .await;

    collector.start().await;
    until(&envoy, "all delivered", Duration::from_secs(20), |m| {
        m.delivered >= 20.0 && m.queue_records == 0.0 && m.queue_bytes == 0.0
    })
    .await;
    let stored = stored_cases(&collector.wait_records(20, Duration::from_secs(10)).await);
    for case in cases("queued", 20) {
        assert_eq!(
            stored.get(&case),
            Some(&1),
            "{case} stored once: {stored:?}"
        );
    }
    assert_eq!(Metrics::of(&envoy).dropped, 0.0);
    assert_eq!(
        collector
            .metric("truthtable_collector_duplicates_total")
            .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_queued_under_a_replaced_configuration_arrive_under_the_new_one_in_the_same_vm() {
    queued_records_survive_a_configuration_change(
        VmLayout::Shared("truthtable"),
        VmLayout::Shared("truthtable"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_queued_under_a_replaced_wasmplugin_arrive_from_its_new_vm() {
    queued_records_survive_a_configuration_change(
        VmLayout::Istio {
            resource_version: "41",
        },
        VmLayout::Istio {
            resource_version: "42",
        },
    )
    .await;
}

/// Two plugins in one VM: listener A's and listener B's. Removing A leaves its roots with no
/// successor while the VM lives on for B.
struct TwoPlugins {
    upstream: Upstream,
    collector: Collector,
    envoy: LdsEnvoy,
    a: u16,
    b: u16,
    config: String,
}

impl TwoPlugins {
    async fn start(extra: &str) -> TwoPlugins {
        let upstream = Upstream::start().await;
        let collector = Collector::down(None);
        let (a, b) = (free_port(), free_port());
        let config = filter_config(extra);
        let envoy = LdsEnvoy::start(upstream.port, collector.port, 2, 1, &[]);
        let mut two = TwoPlugins {
            upstream,
            collector,
            envoy,
            a,
            b,
            config,
        };
        let config = two.config.clone();
        two.envoy
            .update(&[two.listener("a", &config), two.listener("b", &config)]);
        two
    }

    fn listener<'a>(&self, which: &'static str, config: &'a str) -> Listener<'a> {
        Listener {
            name: if which == "a" {
                "listener_a"
            } else {
                "listener_b"
            },
            port: if which == "a" { self.a } else { self.b },
            plugin: if which == "a" {
                "truthtable-a"
            } else {
                "truthtable-b"
            },
            config,
            vm: VmLayout::Shared("truthtable"),
        }
    }

    async fn remove_a_with_records_queued(&mut self) {
        wait_listening(self.a).await;
        send(self.a, cases("held-by-a", 6)).await;
        until(
            &self.envoy,
            "6 records queued",
            Duration::from_secs(10),
            |m| m.queue_records == 6.0,
        )
        .await;
        let config = self.config.clone();
        let only_b = [self.listener("b", &config)];
        self.envoy.update(&only_b);
        self.envoy.wait_drained(Duration::from_secs(20));
    }
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_without_successor_counts_what_it_could_not_deliver_within_drain_timeout_ms() {
    let mut two = TwoPlugins::start(r#""drain_timeout_ms": 1500"#).await;
    two.remove_a_with_records_queued().await;
    until(
        &two.envoy,
        "the loss is counted and the gauges are back to 0",
        Duration::from_secs(15),
        |m| m.dropped == 6.0 && m.queue_records == 0.0 && m.queue_bytes == 0.0,
    )
    .await;
    // Logged at warn, once per root that dropped records, naming the key.
    let log = two.envoy.log_text();
    let logged: u64 = log
        .lines()
        .filter(|l| l.contains("[warning]") && l.contains("not delivered within drain_timeout_ms"))
        .filter_map(|l| {
            let at = l.rfind("truthtable: ")? + "truthtable: ".len();
            l[at..].split(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(logged, 6, "warnings:\n{log}");

    // Plugin B was never affected, and none of A's records reach the collector later.
    two.collector.start().await;
    send(two.b, cases("through-b", 1)).await;
    let stored = stored_cases(&two.collector.wait_records(1, Duration::from_secs(10)).await);
    assert_eq!(stored.get("through-b-0"), Some(&1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = stored_cases(&two.collector.records().await);
    assert!(
        stored.keys().all(|c| !c.starts_with("held-by-a")),
        "{stored:?}"
    );
    drop(two.upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_without_successor_keeps_delivering_on_its_retry_schedule_until_drain_timeout_ms() {
    let mut two = TwoPlugins::start(r#""drain_timeout_ms": 60000"#).await;
    two.remove_a_with_records_queued().await;
    // A's roots are shutting down: still holding, still retrying.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(Metrics::of(&two.envoy).queue_records, 6.0);
    two.collector.start().await;
    until(
        &two.envoy,
        "the draining roots delivered everything",
        Duration::from_secs(15),
        |m| m.delivered == 6.0 && m.queue_records == 0.0 && m.queue_bytes == 0.0,
    )
    .await;
    let stored = stored_cases(&two.collector.wait_records(6, Duration::from_secs(10)).await);
    for case in cases("held-by-a", 6) {
        assert_eq!(stored.get(&case), Some(&1), "{case}: {stored:?}");
    }
    assert_eq!(Metrics::of(&two.envoy).dropped, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_stay_within_queue_max_bytes_however_many_configuration_changes_come_during_an_outage(
) {
    let upstream = Upstream::start().await;
    let mut collector = Collector::down(None);
    let port = free_port();
    // One worker: its queues (the current root's and any draining one's) share 64 KiB.
    let limits = r#""queue_max_bytes": 65536, "batch_max_bytes": 8192"#;
    let configs: Vec<String> = (0..5)
        .map(|i| filter_config(&format!(r#"{limits}, "audit_timeout_ms": {}"#, 2000 + i)))
        .collect();
    let listener = |config| Listener::shipped("llm_ingress", port, config);
    let mut envoy = LdsEnvoy::start(
        upstream.port,
        collector.port,
        1,
        1,
        &[listener(&configs[0])],
    );
    let mut sent = 0;
    let mut peak: f64 = 0.0;
    for round in 0..configs.len() {
        wait_listening(port).await;
        for i in 0..15 {
            fetch(
                client()
                    .post(envoy.url(port, "/json"))
                    .header("x-test-case", format!("round-{round}-{i}"))
                    .body("x".repeat(4096)),
            )
            .await;
            sent += 1;
            peak = peak.max(Metrics::of(&envoy).queue_bytes);
        }
        if round + 1 < configs.len() {
            envoy.update(&[listener(&configs[round + 1])]);
            envoy.wait_drained(Duration::from_secs(20));
        }
        peak = peak.max(Metrics::of(&envoy).queue_bytes);
    }
    assert!(
        peak > 0.0 && peak <= 65536.0,
        "queue bytes peaked at {peak}"
    );
    // Every exchange is held (some without their bodies) or counted as dropped; handing records
    // on within the VM loses none.
    until(&envoy, "all written", Duration::from_secs(5), |m| {
        m.captured + m.dropped == f64::from(sent) && m.queue_records == m.captured
    })
    .await;
    // What is held, read from the counter the queue was just found equal to (the queue gauge is
    // republished by each root as records are handed on, and a read between two roots' updates
    // can see a passing value).
    let held = Metrics::of(&envoy).captured;
    collector.start().await;
    until(
        &envoy,
        "what was held is delivered",
        Duration::from_secs(20),
        |m| m.delivered == held && m.queue_records == 0.0,
    )
    .await;
    let stored = collector
        .wait_records(held as usize, Duration::from_secs(10))
        .await;
    assert_eq!(stored.len(), held as usize);
    assert!(stored_cases(&stored).values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_crashes_leaves_no_phantom_gauges_and_its_records_count_as_dropped() {
    let upstream = Upstream::start().await;
    let audit = free_port(); // down throughout: records stay queued
    let filter = filter_config("");
    let envoy = Envoy::try_start_with(
        EnvoyOpts {
            upstream: upstream.port,
            audit,
            filter: Some(&filter),
            workers: 1,
        },
        |yaml| {
            yaml.replace(
                &wasm_path().display().to_string(),
                &test_panic_wasm_path().display().to_string(),
            )
        },
    )
    .unwrap();
    for _ in 0..5 {
        fetch(client().get(envoy.url("/json"))).await;
    }
    let metric = |name| envoy.metric(name).unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric("truthtable_queue_records") != 5.0 {
        assert!(Instant::now() < deadline, "5 records not queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let crashed = client()
        .get(envoy.url("/json"))
        .header("x-truthtable-test-panic", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        crashed.status(),
        503,
        "the request that crashed the VM fails"
    );
    // FAIL_RELOAD: soon requests run in a new VM, captured as before.
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while after < 3 {
        let resp = client().get(envoy.url("/json")).send().await.unwrap();
        if resp.status() == 200 {
            after += 1;
        } else {
            assert!(Instant::now() < deadline, "the VM was not reloaded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let reloads = admin_get(envoy.admin, "/stats?filter=vm_reload_success").unwrap_or_default();
    assert!(reloads.contains("vm_reload_success: 1"), "{reloads}");
    // The crashed VM's 5 records are gone with it: once its registry entry is stale (10 s), a
    // live root subtracts them from the gauges and counts them as dropped.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let (held, dropped) = (
            metric("truthtable_queue_records"),
            metric("truthtable_records_dropped"),
        );
        if held == 3.0 && dropped == 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queue_records {held}, dropped {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric("truthtable_records_captured"), 8.0);
    let log = envoy.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("[warning]") && l.contains("5 records dropped: held by a root")),
        "the loss is logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_plugin_of_a_vm_counts_what_it_held_as_dropped_at_once() {
    let upstream = Upstream::start().await;
    let collector = Collector::down(None);
    let (a, b) = (free_port(), free_port());
    let config = filter_config(r#""drain_timeout_ms": 60000"#);
    let with_filter = Listener::shipped("llm_ingress", a, &config);
    let mut envoy = LdsEnvoy::start(upstream.port, collector.port, 2, 1, &[with_filter]);
    send(a, cases("held", 5)).await;
    until(&envoy, "5 records queued", Duration::from_secs(10), |m| {
        m.queue_records == 5.0
    })
    .await;
    // The only listener with the filter goes (another one, in a VM of its own, keeps Envoy busy).
    let other = filter_config("");
    envoy.update(&[Listener {
        name: "other",
        port: b,
        plugin: "other",
        config: &other,
        vm: VmLayout::Shared("another-vm"),
    }]);
    envoy.wait_drained(Duration::from_secs(20));
    // Nothing can deliver them any more: counted at once, the gauges back to 0.
    until(
        &envoy,
        "the loss is counted",
        Duration::from_secs(10),
        |m| m.dropped == 5.0 && m.queue_records == 0.0 && m.queue_bytes == 0.0,
    )
    .await;
    let log = envoy.log_text();
    let said: u64 = log
        .lines()
        .filter(|l| {
            l.contains("[warning]") && l.contains("removed the last configuration of this VM")
        })
        .filter_map(|l| {
            let at = l.rfind("truthtable: ")? + "truthtable: ".len();
            l[at..].split(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(said, 5, "Envoy's log:\n{log}");
}
