//! The shipped `deploy/istio/wasmplugin.yaml` as Istio really hands it to a sidecar's Envoy, run in
//! a real Envoy with real traffic into the real collector.
//!
//! No Kubernetes or Istio runs here, so the two Istio steps are done by the test, each by the rules
//! of Istio's source at tag 1.28.0 (b8d1df54465060428c2a2a38286e360beb85fb31):
//!
//! - **istiod** (`pilot/pkg/model/extensions.go`, `buildPluginConfig`, `buildDataSource`,
//!   `buildVMConfig`; `pilot/pkg/networking/core/extension/wasmplugin.go`, `toEnvoyHTTPFilter`)
//!   turns a `WasmPlugin` into an ECDS resource named `extensions.istio.io/wasmplugin/<ns>.<name>`:
//!   an `envoy.extensions.filters.http.wasm.v3.Wasm` whose plugin `name` is `<ns>.<name>`,
//!   `root_id` is `pluginName` (empty when unset), `configuration` is a `StringValue` holding
//!   `pluginConfig` marshalled by the legacy Go `jsonpb` (`pkg/util/protomarshal.ToJSON`: keys
//!   sorted, compact, every number a double printed as Go prints a float64) — and no configuration
//!   at all when `pluginConfig` is empty; `vm_config` has no `vm_id`, runtime V8, the code as a
//!   remote HTTP source (`http_uri` with cluster `_` and a 30 s timeout, `sha256` from the
//!   WasmPlugin) and the environment `ISTIO_META_WASM_IMAGE_PULL_POLICY` (when `imagePullPolicy`
//!   is set) and `ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION`; `failStrategy` becomes
//!   `failure_policy` (proxies 1.25 and later; older ones get `fail_open`). The listener names the
//!   filter by the resource name and discovers it over ADS with `initial_fetch_timeout: 0s`; here
//!   the same `ExtensionConfigSource` reads a file instead of ADS.
//! - **istio-agent** (`pkg/wasm/convert.go`, `rewriteVMConfig` and `MaybeConvertWasmExtensionConfig`)
//!   intercepts that resource before Envoy sees it: it fetches the module (`http(s)://` as is;
//!   `oci://` through the registry, checking the manifest digest), checks `sha256`, stores it and
//!   rewrites the code to that local file, and strips every `ISTIO_META_*` variable from the VM's
//!   environment. When the fetch or the check fails it hands Envoy, under the same name, an RBAC
//!   filter instead: deny-all (stat prefix `wasm-default-deny`) unless the plugin fails open, then
//!   allow-all.
//!
//! The manifest's `url` names an OCI image in a registry that does not exist here; the test serves
//! the built module over HTTP on loopback instead and sets `url` and `sha256` as a user who
//! publishes it at an `http://` URL would. Everything else is the manifest as shipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::planes::*;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const WASMPLUGIN: &str = "deploy/istio/wasmplugin.yaml";
const WASMPLUGIN_1_20: &str = "deploy/istio/wasmplugin-istio-1.20-1.26.yaml";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

// ---------------------------------------------------------------------------------------------
// istiod

/// A JSON value as Go's legacy `jsonpb` prints a `google.protobuf.Struct`: compact, object keys
/// sorted, every number a double printed like Go's `encoding/json` prints a float64 (`1048576`,
/// `0.5`, `1e+21`), `<`, `>` and `&` escaped as Go does.
fn jsonpb(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", go_string(k), jsonpb(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(jsonpb).collect();
            format!("[{}]", items.join(","))
        }
        Value::Number(n) => go_float(n.as_f64().expect("a JSON number")),
        Value::String(s) => go_string(s),
        other => other.to_string(),
    }
}

fn go_string(s: &str) -> String {
    Value::String(s.to_owned())
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Go's `encoding/json` float64: plain digits for 1e-6 <= |f| < 1e21, else an exponent.
fn go_float(f: f64) -> String {
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        format!("{f}")
    } else {
        let s = format!("{f:e}"); // 1e21, 1.5e-7
        let (mantissa, exp) = s.split_once('e').expect("exponent form");
        let exp: i32 = exp.parse().expect("exponent");
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// What istiod sends a sidecar (1.25 or later) for `plugin`, edited `resource_version` times.
fn istiod_extension_config(plugin: &Value, resource_version: &str) -> Value {
    let (ns, name) = (
        plugin["metadata"]["namespace"].as_str().unwrap(),
        plugin["metadata"]["name"].as_str().unwrap(),
    );
    let spec = &plugin["spec"];
    let mut env = serde_json::Map::new();
    if let Some(policy) = spec["imagePullPolicy"].as_str() {
        env.insert("ISTIO_META_WASM_IMAGE_PULL_POLICY".into(), json!(policy));
    }
    env.insert(
        "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION".into(),
        json!(resource_version),
    );
    let mut config = json!({
        "name": format!("{ns}.{name}"),
        "root_id": spec["pluginName"].as_str().unwrap_or(""),
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"remote": {
                "http_uri": {"uri": spec["url"], "cluster": "_", "timeout": "30s"},
                "sha256": spec["sha256"],
            }},
            "environment_variables": {"key_values": env},
        },
    });
    if spec["pluginConfig"]
        .as_object()
        .is_some_and(|fields| !fields.is_empty())
    {
        config["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": jsonpb(&spec["pluginConfig"]),
        });
    }
    let policy = match spec["failStrategy"].as_str() {
        Some("FAIL_OPEN") => Some("FAIL_OPEN"),
        Some("FAIL_CLOSE") => Some("FAIL_CLOSED"),
        Some("FAIL_RELOAD") => Some("FAIL_RELOAD"),
        _ => None,
    };
    if let Some(policy) = policy {
        config["failure_policy"] = json!(policy);
    }
    json!({
        "name": format!("extensions.istio.io/wasmplugin/{ns}.{name}"),
        "typed_config": {"@type": WASM_TYPE, "config": config},
    })
}

/// The HTTP filter istiod puts in the listener for the plugin: discovered by name, waited for.
fn istiod_http_filter(resource_name: &str, ecds_dir: &Path) -> Value {
    json!({
        "name": resource_name,
        "config_discovery": {
            "config_source": {
                "path_config_source": {
                    "path": ecds_dir.join("ecds.json").display().to_string(),
                    "watched_directory": {"path": ecds_dir.display().to_string()},
                },
                "resource_api_version": "V3",
                "initial_fetch_timeout": "0s",
            },
            "type_urls": [WASM_TYPE, RBAC_TYPE],
        },
    })
}

// ---------------------------------------------------------------------------------------------
// istio-agent

/// What istio-agent makes of an extension config before Envoy sees it: the module fetched and
/// checked, the code a local file, the `ISTIO_META_*` environment gone — or, when the fetch or
/// the check fails, an RBAC filter of the same name (deny-all unless the plugin fails open).
/// `Err` carries why the module was refused.
async fn istio_agent(mut ext: Value, store: &Path) -> (Value, Result<(), String>) {
    let config = &mut ext["typed_config"]["config"];
    let vm = &mut config["vm_config"];
    if let Some(env) = vm["environment_variables"]["key_values"].as_object_mut() {
        env.retain(|k, _| !k.starts_with("ISTIO_META_"));
        if env.is_empty() {
            vm.as_object_mut().unwrap().remove("environment_variables");
        }
    }
    let remote = vm["code"]["remote"].clone();
    let uri = remote["http_uri"]["uri"].as_str().unwrap().to_owned();
    let want = remote["sha256"].as_str().unwrap_or("").to_owned();
    let fetched = async {
        let resp = client()
            .get(&uri)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| format!("cannot fetch {uri}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("cannot fetch {uri}: {}", resp.status()));
        }
        let bytes = resp.bytes().await.map_err(|e| format!("{uri}: {e}"))?;
        let got = sha256_hex(&bytes);
        if !want.is_empty() && got != want {
            return Err(format!(
                "module downloaded from {uri} has checksum {got}, which does not match: {want}"
            ));
        }
        let file = store.join(format!("{got}.wasm"));
        std::fs::write(&file, &bytes).map_err(|e| e.to_string())?;
        Ok(file)
    }
    .await;
    match fetched {
        Ok(file) => {
            vm["code"] = json!({"local": {"filename": file.display().to_string()}});
            (ext, Ok(()))
        }
        Err(why) => {
            let fail_open = config["failure_policy"] == "FAIL_OPEN" || config["fail_open"] == true;
            let rbac = if fail_open {
                json!({"@type": RBAC_TYPE, "rules_stat_prefix": "wasm-default-allow"})
            } else {
                json!({"@type": RBAC_TYPE, "rules": {}, "rules_stat_prefix": "wasm-default-deny"})
            };
            (json!({"name": ext["name"], "typed_config": rbac}), Err(why))
        }
    }
}

/// Writes one ECDS response (`version_info`, one resource) where the listener's config source
/// watches, moved into place as a control plane's push would be.
fn push_ecds(dir: &Path, version: &str, resource: &Value) {
    let mut resource = resource.clone();
    resource["@type"] = json!("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig");
    let response = json!({"version_info": version, "resources": [resource]});
    let tmp = dir.join(".ecds.tmp");
    std::fs::write(&tmp, response.to_string()).unwrap();
    std::fs::rename(&tmp, dir.join("ecds.json")).unwrap();
}

/// The stats a sidecar keeps: Istio's bootstrap `stats_matcher` with no `proxyStatsMatcher` set
/// (`tools/packaging/common/envoy_bootstrap.json` and `pkg/bootstrap/config.go`'s required
/// inclusions at 1.28.0), plus `extension_config_discovery` so the test can follow ECDS.
fn istio_stats_matcher() -> Value {
    let mut patterns = vec![json!({"prefix": "reporter="})];
    for p in [
        "cluster_manager",
        "listener_manager",
        "server",
        "cluster.xds-grpc",
        "wasm",
    ] {
        patterns.push(json!({ "prefix": p }));
    }
    for s in [
        "rbac.allowed",
        "rbac.denied",
        "shadow_allowed",
        "shadow_denied",
        "downstream_cx_active",
    ] {
        patterns.push(json!({ "suffix": s }));
    }
    patterns.push(json!({"safe_regex": {"regex": r"vhost\..*\.route\..*"}}));
    for p in ["component", "istio", "extension_config_discovery"] {
        patterns.push(json!({ "prefix": p }));
    }
    json!({"stats_matcher": {"inclusion_list": {"patterns": patterns}}})
}

/// The shipped WasmPlugin with its module served by `module` at an `http://` URL.
fn shipped_plugin(path: &str, module: &ModuleServer) -> Value {
    let mut plugin = manifest(path, "WasmPlugin");
    plugin["spec"]["url"] = json!(module.url());
    plugin["spec"]["sha256"] = json!(module.sha256());
    plugin
}

async fn send(port: u16, case: &str, extra: Option<(&str, &str)>) -> u16 {
    let mut req = client()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("x-test-case", case)
        .body(format!(r#"{{"question": "{case}"}}"#));
    if let Some((name, value)) = extra {
        req = req.header(name, value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    resp.bytes().await.unwrap();
    status
}

fn case_of(record: &Value) -> String {
    header(&record["request"], "x-test-case")
        .unwrap_or_default()
        .to_owned()
}

async fn wait_stat(envoy: &BootEnvoy, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while envoy.stat(name).as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{name} is {:?}, not {want}:\n{}",
            envoy.stat(name),
            envoy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasmplugin_as_istio_renders_it_captures_through_its_cluster_and_an_edit_loses_nothing()
{
    let module = ModuleServer::start().await;
    let upstream = Upstream::start().await;
    let mut collector = Collector::down(None);
    collector.start().await;

    // istiod's rendering of the shipped WasmPlugin, checked field by field against its rules.
    let plugin = shipped_plugin(WASMPLUGIN, &module);
    let spec = &plugin["spec"];
    let rendered = istiod_extension_config(&plugin, "1001");
    let resource_name = rendered["name"].as_str().unwrap().to_owned();
    assert_eq!(
        resource_name,
        "extensions.istio.io/wasmplugin/llm.truthtable"
    );
    let config = &rendered["typed_config"]["config"];
    assert_eq!(config["name"], "llm.truthtable");
    assert_eq!(config["root_id"], "", "the manifest sets no pluginName");
    assert!(config["vm_config"].get("vm_id").is_none());
    assert_eq!(config["failure_policy"], "FAIL_RELOAD");
    let json_config = config["configuration"]["value"].as_str().unwrap();
    assert!(
        json_config.starts_with(r#"{"audit_authority":"#)
            && json_config.ends_with(r#""max_body_bytes":1048576}"#),
        "jsonpb: sorted keys, integers printed plainly: {json_config}"
    );
    truthtable_filter::config::Config::parse(json_config.as_bytes())
        .unwrap_or_else(|e| panic!("the filter refuses istiod's configuration: {e}"));
    let audit_cluster = spec["pluginConfig"]["audit_cluster"].as_str().unwrap();
    assert!(audit_cluster.starts_with("outbound|8081||"));

    // A sidecar's Envoy: the shipped listener with the plugin discovered by name, the collector
    // behind the cluster name the manifest uses, Istio's stats matcher.
    let dir = tempfile::tempdir().unwrap();
    let ecds_dir = dir.path().join("ecds");
    let store = dir.path().join("wasm-cache");
    std::fs::create_dir_all(&ecds_dir).unwrap();
    std::fs::create_dir_all(&store).unwrap();
    let (converted, fetched) = istio_agent(rendered.clone(), &store).await;
    fetched.unwrap();
    assert!(
        converted["typed_config"]["config"]["vm_config"]
            .get("environment_variables")
            .is_none(),
        "the agent strips the ISTIO_META_* environment"
    );
    push_ecds(&ecds_dir, "1", &converted);
    let port = free_port();
    let (listener, upstream_cluster) = shipped_listener_and_upstream(
        port,
        upstream.port,
        vec![istiod_http_filter(&resource_name, &ecds_dir), router()],
    );
    let bootstrap = json!({
        "node": {"id": "sidecar~127.0.0.1~llm-0.llm~llm.svc.cluster.local", "cluster": "llm.llm"},
        "stats_config": istio_stats_matcher(),
        "static_resources": {
            "listeners": [listener],
            "clusters": [upstream_cluster, loopback_cluster(audit_cluster, collector.port)],
        },
    });
    let envoy = BootEnvoy::start(dir, bootstrap, port, 2).unwrap_or_else(|log| panic!("{log}"));
    let version = format!("extension_config_discovery.http_filter.{resource_name}.version_text");
    wait_stat(&envoy, &version, "\"1\"").await;

    // Traffic is captured and delivered through the manifest's cluster name.
    assert_eq!(send(port, "istio-first", None).await, 200);
    let records = collector.wait_records(1, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(case_of(&records[0]), "istio-first");
    // The filter's metrics survive Istio's default stats matcher (its `wasm` prefix keeps
    // `wasmcustom.*`), while what the matcher leaves out is gone.
    assert!(envoy.metric("truthtable_records_captured").unwrap_or(0.0) >= 1.0);
    assert!(envoy
        .stat(&format!("http.{}.downstream_rq_total", "llm_ingress"))
        .is_none());

    // An edit whose sha256 does not match the module: the agent fetches it, refuses it, and hands
    // Envoy a deny-all filter in its place — the sidecar refuses traffic instead of running an
    // unverified module (the manifest fails closed).
    let served = module.served();
    let mut wrong = plugin.clone();
    wrong["spec"]["sha256"] = json!("0".repeat(64));
    let (denied, fetched) = istio_agent(istiod_extension_config(&wrong, "1002"), &store).await;
    let why = fetched.expect_err("a wrong sha256 is refused");
    assert!(why.contains("does not match"), "{why}");
    assert!(
        module.served() > served,
        "the module was fetched and checked"
    );
    push_ecds(&ecds_dir, "2", &denied);
    wait_stat(&envoy, &version, "\"2\"").await;
    assert_eq!(send(port, "istio-denied", None).await, 403);

    // The module again, then an edit while the collector is down: records queued under the old
    // configuration arrive, none lost, and the edit applies to what comes after it.
    push_ecds(&ecds_dir, "3", &converted);
    wait_stat(&envoy, &version, "\"3\"").await;
    collector.stop().await;
    for i in 0..10 {
        assert_eq!(send(port, &format!("istio-before-{i}"), None).await, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while envoy.metric("truthtable_delivery_failures").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "no delivery was attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut edited = plugin.clone();
    edited["spec"]["pluginConfig"]["redact_headers"] = json!(["x-tenant-key"]);
    let (converted, fetched) = istio_agent(istiod_extension_config(&edited, "1003"), &store).await;
    fetched.unwrap();
    push_ecds(&ecds_dir, "4", &converted);
    wait_stat(&envoy, &version, "\"4\"").await;
    for i in 0..10 {
        let case = format!("istio-after-{i}");
        assert_eq!(
            send(port, &case, Some(("x-tenant-key", "tenant-secret"))).await,
            200
        );
    }
    collector.start().await;
    let records = collector.wait_records(21, Duration::from_secs(30)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *seen.entry(case_of(r)).or_default() += 1;
    }
    for i in 0..10 {
        for case in [format!("istio-before-{i}"), format!("istio-after-{i}")] {
            assert_eq!(seen.get(&case), Some(&1), "{case}: {seen:?}");
        }
    }
    assert_eq!(records.len(), 21, "{seen:?}");
    for r in records
        .iter()
        .filter(|r| case_of(r).starts_with("istio-after-"))
    {
        assert_eq!(
            header(&r["request"], "x-tenant-key"),
            Some("[REDACTED]"),
            "the edit applies"
        );
    }
    assert_eq!(
        envoy.metric("truthtable_records_dropped").unwrap_or(0.0),
        0.0
    );
}

#[test]
fn the_variant_for_istio_1_20_to_1_26_differs_only_in_failing_open_and_envoy_takes_both_forms() {
    let current = manifest(WASMPLUGIN, "WasmPlugin");
    let older = manifest(WASMPLUGIN_1_20, "WasmPlugin");
    assert_eq!(current["spec"]["failStrategy"], "FAIL_RELOAD");
    assert_eq!(older["spec"]["failStrategy"], "FAIL_OPEN");
    let mut same = older.clone();
    same["spec"]["failStrategy"] = current["spec"]["failStrategy"].clone();
    assert_eq!(same, current, "the variant changes failStrategy only");

    // istiod renders FAIL_OPEN as failure_policy for 1.25 and 1.26 proxies, as the deprecated
    // fail_open for older ones; Envoy 1.40 takes both, and the current manifest's FAIL_RELOAD.
    let local = |mut ext: Value| {
        let config = &mut ext["typed_config"]["config"];
        config["vm_config"]["code"] =
            json!({"local": {"filename": wasm_path().display().to_string()}});
        config["vm_config"]
            .as_object_mut()
            .unwrap()
            .remove("environment_variables");
        ext
    };
    let current = local(istiod_extension_config(&current, "1"));
    let open = local(istiod_extension_config(&older, "1"));
    assert_eq!(
        open["typed_config"]["config"]["failure_policy"],
        "FAIL_OPEN"
    );
    let mut before_1_25 = open.clone();
    let config = before_1_25["typed_config"]["config"]
        .as_object_mut()
        .unwrap();
    config.remove("failure_policy");
    config.insert("fail_open".into(), json!(true));
    for ext in [current, open, before_1_25] {
        let filter = json!({"name": ext["name"], "typed_config": ext["typed_config"]});
        let (listener, upstream) =
            shipped_listener_and_upstream(10000, 8000, vec![filter, router()]);
        let audit = loopback_cluster(
            "outbound|8081||truthtable-collector.truthtable.svc.cluster.local",
            8081,
        );
        let bootstrap =
            json!({"static_resources": {"listeners": [listener], "clusters": [upstream, audit]}});
        envoy_validates(&bootstrap)
            .unwrap_or_else(|e| panic!("Envoy refuses {}:\n{e}", ext["typed_config"]["config"]));
    }
}

#[test]
fn jsonpb_prints_numbers_as_go_prints_a_float64() {
    for (n, go) in [
        (json!(1048576), "1048576"),
        (json!(1048576.0), "1048576"),
        (json!(0.5), "0.5"),
        (json!(1e21), "1e+21"),
        (json!(-3), "-3"),
        (json!(1.5e-7), "1.5e-07"),
    ] {
        assert_eq!(jsonpb(&n), go, "{n}");
    }
    assert_eq!(
        jsonpb(&json!({"b": 1, "a": {"d": [true, null], "c": "<&>"}})),
        r#"{"a":{"c":"\u003c\u0026\u003e","d":[true,null]},"b":1}"#
    );
}
