//! The shipped `deploy/envoy-gateway/` manifests as Envoy Gateway really hands them to the
//! gateway's Envoy, run in a real Envoy with real traffic into the real collector.
//!
//! No Kubernetes or Envoy Gateway runs here, so the test renders the Envoy configuration by the
//! rules of Envoy Gateway's translator at tag v1.9.0 (39763b1c07ec30a5526fe70434a2cfe4181de642):
//!
//! - `internal/gatewayapi/envoyextensionpolicy.go` (`buildWasm`, `irConfigNameForWasm`) and
//!   `helpers.go` (`irConfigName`): entry `i` of a policy's `spec.wasm` is named
//!   `envoyextensionpolicy/<ns>/<policy>/wasm/<i>`; its plugin name is the entry's `name` (that IR
//!   name when unset). Envoy Gateway pulls the `Image` (or `HTTP`) module itself, checks the
//!   `sha256` the user gave, and serves the module from its own wasm HTTP server
//!   (`internal/wasm/httpserver.go`) with the module's own checksum.
//! - `internal/xds/translator/wasm.go` (`buildHCMWasmFilter`, `wasmConfig`, `patchRoute`): one
//!   `envoy.filters.http.wasm` filter per entry in the connection manager, named
//!   `envoy.filters.http.wasm/<IR name>`, `disabled: true`, and enabled on each route of the target
//!   by a `typed_per_filter_config` entry holding an empty `envoy.config.route.v3.FilterConfig`; its
//!   `configuration` is a `StringValue` holding the raw JSON of `config` (`""` without one),
//!   `fail_open` is `failOpen`, `root_id` is `rootID`, and `vm_config` has `vm_id` = the IR name,
//!   runtime V8 and the code as a remote source: the serving URL through the bootstrap's
//!   `wasm_cluster` (`globalresources.go`), a 10 s timeout (`utils.go`), the checksum, and 10
//!   retries backing off from 1 s to 30 s.
//! - `internal/gatewayapi/helpers.go` (`irRouteDestinationName`): the cluster of rule `r` of an
//!   HTTPRoute is `httproute/<ns>/<name>/rule/<r>` (EDS, with `per_connection_buffer_limit_bytes:
//!   32768`, `translator/testdata/out/xds-ir/wasm.clusters.yaml`) — the name the filter's
//!   `audit_cluster` must use for the collector's route.
//!
//! The module is served on loopback by the test in place of Envoy Gateway's wasm server, and the
//! clusters have static loopback endpoints in place of EDS; everything else is as rendered.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::planes::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// `config` as the API server hands it to Envoy Gateway: the JSON kubectl made of the YAML
/// (`sigs.k8s.io/yaml`: object keys sorted, compact).
fn raw_json(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), raw_json(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(raw_json).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// The cluster Envoy Gateway makes for rule `rule` of `route`.
fn route_cluster(route: &Value, rule: usize) -> String {
    format!(
        "httproute/{}/{}/rule/{rule}",
        route["metadata"]["namespace"].as_str().unwrap(),
        route["metadata"]["name"].as_str().unwrap()
    )
}

/// The route match Envoy Gateway renders for an HTTPRoute match (`translator/route.go`).
fn route_match(m: &Value) -> Value {
    let mut out = serde_json::Map::new();
    match (m["path"]["type"].as_str(), m["path"]["value"].as_str()) {
        (Some("PathPrefix"), Some("/")) | (None, None) => {
            out.insert("prefix".into(), json!("/"));
        }
        (Some("PathPrefix"), Some(p)) => {
            out.insert(
                "path_separated_prefix".into(),
                json!(p.trim_end_matches('/')),
            );
        }
        (Some("Exact"), Some(p)) => {
            out.insert("path".into(), json!(p));
        }
        other => panic!("a path match this test does not render: {other:?}"),
    }
    if let Some(method) = m["method"].as_str() {
        out.insert(
            "headers".into(),
            json!([{"name": ":method", "string_match": {"exact": method}}]),
        );
    }
    Value::Object(out)
}

/// One virtual host per route (its hostnames), one Envoy route per match of each rule, the
/// route's wasm filters enabled on it.
fn virtual_host(route: &Value, enabled: &[String]) -> Value {
    let mut routes = Vec::new();
    for (r, rule) in route["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for m in rule["matches"].as_array().unwrap() {
            let mut per_filter = serde_json::Map::new();
            for name in enabled {
                per_filter.insert(
                    name.clone(),
                    json!({"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}),
                );
            }
            routes.push(json!({
                "match": route_match(m),
                "route": {"cluster": route_cluster(route, r), "timeout": "0s"},
                "typed_per_filter_config": per_filter,
            }));
        }
    }
    json!({
        "name": format!("{}/{}", route["metadata"]["namespace"].as_str().unwrap(), route["metadata"]["name"].as_str().unwrap()),
        "domains": route["spec"]["hostnames"],
        "routes": routes,
    })
}

/// The connection manager's filter for wasm entry `index` of `policy`, its module served at
/// `serving_url` with `checksum`.
fn wasm_filter(policy: &Value, index: usize, serving_url: &str, checksum: &str) -> (String, Value) {
    let ir_name = format!(
        "envoyextensionpolicy/{}/{}/wasm/{index}",
        policy["metadata"]["namespace"].as_str().unwrap(),
        policy["metadata"]["name"].as_str().unwrap()
    );
    let entry = &policy["spec"]["wasm"][index];
    let configuration = if entry["config"].is_null() {
        String::new()
    } else {
        raw_json(&entry["config"])
    };
    let mut config = json!({
        "name": entry["name"].as_str().unwrap_or(&ir_name),
        "vm_config": {
            "vm_id": ir_name,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"remote": {
                "http_uri": {"uri": serving_url, "cluster": "wasm_cluster", "timeout": "10s"},
                "sha256": checksum,
                "retry_policy": {"num_retries": 10, "retry_back_off": {"base_interval": "1s", "max_interval": "30s"}},
            }},
        },
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
        "fail_open": entry["failOpen"].as_bool().unwrap_or(false),
    });
    if let Some(root) = entry["rootID"].as_str() {
        config["root_id"] = json!(root);
    }
    let name = format!("envoy.filters.http.wasm/{ir_name}");
    let filter = json!({
        "name": name,
        "disabled": true,
        "typed_config": {"@type": WASM_TYPE, "config": config},
    });
    (name, filter)
}

struct Gateway {
    envoy: BootEnvoy,
    port: u16,
}

/// The gateway's Envoy for the shipped policy, its target route and the collector's route, the
/// module's checksum as given.
fn gateway(module: &ModuleServer, checksum: &str, upstream: u16, collector: u16) -> Gateway {
    let policy = manifest(
        "deploy/envoy-gateway/envoyextensionpolicy.yaml",
        "EnvoyExtensionPolicy",
    );
    let llm = manifest("deploy/envoy-gateway/httproute.yaml", "HTTPRoute");
    let collector_route = manifest("deploy/envoy-gateway/collector-route.yaml", "HTTPRoute");
    let (filter_name, filter) = wasm_filter(&policy, 0, &module.url(), checksum);
    let port = free_port();
    let listener = json!({
        "name": "llm/eg/http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "http-10080",
                "route_config": {"name": "llm/eg/http", "virtual_hosts": [
                    virtual_host(&llm, std::slice::from_ref(&filter_name)),
                    virtual_host(&collector_route, &[]),
                ]},
                "http_filters": [filter, router()],
            },
        }]}],
    });
    let mut collector_cluster = loopback_cluster(&route_cluster(&collector_route, 0), collector);
    collector_cluster["per_connection_buffer_limit_bytes"] = json!(32768);
    let bootstrap = json!({
        "node": {"id": "envoy-gateway", "cluster": "envoy-gateway"},
        "static_resources": {
            "listeners": [listener],
            "clusters": [
                loopback_cluster(&route_cluster(&llm, 0), upstream),
                collector_cluster,
                loopback_cluster("wasm_cluster", module.port),
            ],
        },
    });
    let dir = tempfile::tempdir().unwrap();
    Gateway {
        envoy: BootEnvoy::spawn(dir, bootstrap, 2),
        port,
    }
}

async fn send(port: u16, host: &str, case: &str, body: String) -> u16 {
    let resp = client()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("host", host)
        .header("x-test-case", case)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    resp.bytes().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_as_envoy_gateway_renders_it_captures_the_route_into_the_collector() {
    let module = ModuleServer::start().await;
    let upstream = Upstream::start().await;
    let collector = Collector::running().await;

    // The names the manifests must agree on.
    let policy = manifest(
        "deploy/envoy-gateway/envoyextensionpolicy.yaml",
        "EnvoyExtensionPolicy",
    );
    let llm = manifest("deploy/envoy-gateway/httproute.yaml", "HTTPRoute");
    let collector_route = manifest("deploy/envoy-gateway/collector-route.yaml", "HTTPRoute");
    let target = &policy["spec"]["targetRefs"][0];
    assert_eq!(target["kind"], "HTTPRoute");
    assert_eq!(target["name"], llm["metadata"]["name"]);
    assert_eq!(
        policy["metadata"]["namespace"],
        llm["metadata"]["namespace"]
    );
    let config = &policy["spec"]["wasm"][0]["config"];
    assert_eq!(
        config["audit_cluster"].as_str().unwrap(),
        route_cluster(&collector_route, 0),
        "audit_cluster is Envoy Gateway's cluster of the collector's route"
    );
    let backend = &collector_route["spec"]["rules"][0]["backendRefs"][0];
    let service = manifest("deploy/istio/collector-sqlite.yaml", "Service");
    assert_eq!(backend["name"], service["metadata"]["name"]);
    assert_eq!(backend["port"], service["spec"]["ports"][0]["port"]);
    assert_eq!(
        collector_route["metadata"]["namespace"],
        service["metadata"]["namespace"]
    );
    let (_, filter) = wasm_filter(&policy, 0, &module.url(), &module.sha256());
    let rendered = &filter["typed_config"]["config"];
    assert_eq!(
        rendered["vm_config"]["vm_id"],
        "envoyextensionpolicy/llm/truthtable/wasm/0"
    );
    assert_eq!(rendered["name"], "truthtable");
    truthtable_filter::config::Config::parse(
        rendered["configuration"]["value"]
            .as_str()
            .unwrap()
            .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("the filter refuses Envoy Gateway's configuration: {e}"));

    let host = llm["spec"]["hostnames"][0].as_str().unwrap();
    let gw = gateway(&module, &module.sha256(), upstream.port, collector.port);
    let envoy = gw.envoy;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(envoy.is_live() && std::net::TcpStream::connect(("127.0.0.1", gw.port)).is_ok()) {
        assert!(
            Instant::now() < deadline,
            "Envoy is not ready:\n{}",
            envoy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        module.served(),
        1,
        "Envoy fetched the module from wasm_cluster once"
    );

    // Traffic on the targeted route is captured, bodies beyond the collector cluster's 32 KiB
    // connection buffer included.
    let big = "x".repeat(100 * 1024);
    for i in 0..5 {
        let body = if i == 0 {
            big.clone()
        } else {
            format!("{{\"q\": {i}}}")
        };
        assert_eq!(send(gw.port, host, &format!("eg-{i}"), body).await, 200);
    }
    let records = collector.wait_records(5, Duration::from_secs(10)).await;
    let mut cases: Vec<String> = records
        .iter()
        .map(|r| header(&r["request"], "x-test-case").unwrap().to_owned())
        .collect();
    cases.sort();
    assert_eq!(cases, ["eg-0", "eg-1", "eg-2", "eg-3", "eg-4"]);
    let first = records
        .iter()
        .find(|r| header(&r["request"], "x-test-case") == Some("eg-0"))
        .unwrap();
    assert_eq!(first["request"]["body"]["size"], 100 * 1024);
    assert_eq!(first["request"]["authority"], host);

    // The filter is enabled on the targeted route only: the collector's own route, served by the
    // same listener, is not captured.
    let status = send(
        gw.port,
        collector_route["spec"]["hostnames"][0].as_str().unwrap(),
        "eg-collector-route",
        String::new(),
    )
    .await;
    assert_eq!(
        status, 404,
        "POST /v1/chat/completions is not the collector's route"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(collector.records().await.len(), 5);
    assert!(envoy.metric("truthtable_records_captured").unwrap_or(0.0) >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_fails_its_checksum_is_refused_by_envoy_and_never_serves_the_route() {
    let module = ModuleServer::start().await;
    let upstream = Upstream::start().await;
    let collector = Collector::running().await;

    // Envoy fetches the module, finds the checksum wrong, and fetches again on Envoy Gateway's
    // retry policy (10 retries, 1 s to 30 s apart): the listener waits for a module that
    // verifies and never serves traffic with an unverified one.
    let gw = gateway(&module, &"0".repeat(64), upstream.port, collector.port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while module.served() < 2 {
        assert!(
            Instant::now() < deadline,
            "fetched {} times:\n{}",
            module.served(),
            gw.envoy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !gw.envoy.is_live(),
        "Envoy went live with an unverified module"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gw.port)).is_err(),
        "the gateway's listener took traffic"
    );
    assert!(collector.records().await.is_empty());
}
