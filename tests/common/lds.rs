//! An Envoy that reads its listeners from a file (file-based LDS), so a test can change the
//! filter's configuration — or remove it — the way a control plane does, and watch what happens to
//! the records the old configuration held.
//!
//! Listeners are rendered from the shipped `envoy/envoy.yaml`: the same HTTP connection manager,
//! route and filter chain, with the filter's configuration, plugin name and `vm_config` as the
//! test says (Envoy's own layout, or the one istiod renders for a `WasmPlugin`).

use super::{admin_get, free_port, repo, wasm_path};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How the filter's VM is configured.
#[derive(Clone, Copy, Debug)]
pub enum VmLayout<'a> {
    /// `vm_config.vm_id` as in `envoy/envoy.yaml`: configurations that differ only in the
    /// filter's `configuration` share the VM.
    Shared(&'a str),
    /// As istiod renders a `WasmPlugin`: no `vm_id`, and the plugin's resource version as an
    /// environment variable, so every edit makes a new VM.
    Istio { resource_version: &'a str },
}

/// One listener with the filter.
#[derive(Clone, Debug)]
pub struct Listener<'a> {
    pub name: &'a str,
    pub port: u16,
    /// The wasm filter's plugin name (`config.name`).
    pub plugin: &'a str,
    /// The filter's JSON configuration.
    pub config: &'a str,
    pub vm: VmLayout<'a>,
}

impl<'a> Listener<'a> {
    /// A listener with the filter as `envoy/envoy.yaml` has it: plugin `truthtable` in the VM
    /// `truthtable`, which configurations that differ only in `config` share.
    pub fn shipped(name: &'a str, port: u16, config: &'a str) -> Listener<'a> {
        Listener {
            name,
            port,
            plugin: "truthtable",
            config,
            vm: VmLayout::Shared("truthtable"),
        }
    }
}

pub struct LdsEnvoy {
    child: Child,
    pub admin: u16,
    pub log: PathBuf,
    dir: tempfile::TempDir,
    updates: u32,
}

fn shipped() -> Value {
    let text = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).expect("envoy/envoy.yaml");
    serde_norway::from_str(&text).expect("envoy/envoy.yaml parses")
}

fn render_listener(l: &Listener<'_>) -> Value {
    let mut listener = shipped()["static_resources"]["listeners"][0].clone();
    listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    listener["name"] = json!(l.name);
    listener["address"]["socket_address"]["port_value"] = json!(l.port);
    let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["stat_prefix"] = json!(l.name);
    let filter = &mut hcm["http_filters"][0];
    assert_eq!(
        filter["name"], "truthtable",
        "the shipped chain starts with the filter"
    );
    let config = &mut filter["typed_config"]["config"];
    config["name"] = json!(l.plugin);
    config["configuration"]["value"] = json!(l.config);
    let vm = &mut config["vm_config"];
    vm["code"]["local"]["filename"] = json!(wasm_path().display().to_string());
    match l.vm {
        VmLayout::Shared(id) => vm["vm_id"] = json!(id),
        VmLayout::Istio { resource_version } => {
            let vm = vm.as_object_mut().expect("vm_config");
            vm.remove("vm_id");
            vm.insert(
                "environment_variables".into(),
                json!({"key_values": {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": resource_version}}),
            );
        }
    }
    listener
}

/// Writes the listeners file and moves it into place, which is what Envoy's watch reacts to.
fn write_listeners(dir: &std::path::Path, listeners: &[Listener<'_>]) {
    let resources: Vec<Value> = listeners.iter().map(render_listener).collect();
    let tmp = dir.join(".lds.tmp");
    std::fs::write(&tmp, json!({ "resources": resources }).to_string()).expect("write lds");
    std::fs::rename(&tmp, dir.join("lds.yaml")).expect("move lds into place");
}

impl LdsEnvoy {
    /// Starts Envoy with `listeners`, the upstream and audit clusters of `envoy/envoy.yaml` aimed
    /// at the given ports, and `drain_time_s` for listeners that are replaced or removed.
    pub fn start(
        upstream: u16,
        audit: u16,
        workers: u32,
        drain_time_s: u32,
        listeners: &[Listener<'_>],
    ) -> LdsEnvoy {
        let dir = tempfile::tempdir().expect("temp dir");
        let admin = free_port();
        let mut clusters = shipped()["static_resources"]["clusters"].clone();
        for (cluster, port) in [("llm_upstream", upstream), ("truthtable_audit", audit)] {
            let c = clusters
                .as_array_mut()
                .and_then(|cs| cs.iter_mut().find(|c| c["name"] == cluster))
                .unwrap_or_else(|| panic!("envoy/envoy.yaml has no cluster {cluster}"));
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"] = json!(port);
        }
        // And `truthtable_lanes`: HTTP/2 to the same collector, for `audit_transport: "grpc"`.
        let lanes: serde_json::Value =
            serde_norway::from_str(&super::clusters::http2_cluster("truthtable_lanes", audit))
                .expect("the HTTP/2 cluster's YAML");
        if let (Some(cs), Some(lanes)) = (clusters.as_array_mut(), lanes.as_array()) {
            cs.extend(lanes.iter().cloned());
        }
        let bootstrap = json!({
            "node": {"id": "truthtable-test", "cluster": "truthtable-test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "dynamic_resources": {"lds_config": {"resource_api_version": "V3", "path_config_source": {
                "path": dir.path().join("lds.yaml").display().to_string(),
                "watched_directory": {"path": dir.path().display().to_string()}}}},
            "static_resources": {"clusters": clusters},
        });
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, bootstrap.to_string()).expect("write bootstrap");
        write_listeners(dir.path(), listeners);
        let log = dir.path().join("envoy.log");
        let child = super::envoy_command(&config, workers, &log)
            .args(["--drain-time-s", &drain_time_s.to_string()])
            .spawn()
            .expect("spawn envoy");
        let mut envoy = LdsEnvoy {
            child,
            admin,
            log,
            dir,
            updates: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = envoy.child.try_wait() {
                panic!("Envoy exited:\n{}", envoy.log_text());
            }
            if admin_get(admin, "/ready").is_some_and(|b| b.starts_with("LIVE"))
                && listeners
                    .iter()
                    .all(|l| std::net::TcpStream::connect(("127.0.0.1", l.port)).is_ok())
            {
                return envoy;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready:\n{}",
                envoy.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the listeners, as a control plane's push does, and waits until Envoy accepted it.
    pub fn update(&mut self, listeners: &[Listener<'_>]) {
        self.updates += 1;
        let before = self
            .stat("listener_manager.lds.update_success")
            .unwrap_or(0.0);
        write_listeners(self.dir.path(), listeners);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .stat("listener_manager.lds.update_success")
            .unwrap_or(0.0)
            <= before
        {
            assert!(
                Instant::now() < deadline,
                "Envoy did not take listener update {}:\n{}",
                self.updates,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let rejected = self
            .stat("listener_manager.lds.update_rejected")
            .unwrap_or(0.0);
        assert_eq!(
            rejected,
            0.0,
            "listener update rejected:\n{}",
            self.log_text()
        );
    }

    /// Waits until no listener is draining any more (the replaced filter chains are gone and
    /// their root contexts have been told `on_done`).
    pub fn wait_drained(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self
            .stat("listener_manager.total_listeners_draining")
            .unwrap_or(0.0)
            > 0.0
        {
            assert!(Instant::now() < deadline, "listeners still draining");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, port: u16, path: &str) -> String {
        format!("http://127.0.0.1:{port}{path}")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A plain stat from `/stats` (e.g. `listener_manager.lds.update_success`).
    pub fn stat(&self, name: &str) -> Option<f64> {
        let text = admin_get(self.admin, &format!("/stats?filter=^{name}$"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
    }

    /// A metric from `/stats/prometheus`, summed over its series.
    pub fn metric(&self, name: &str) -> Option<f64> {
        super::prometheus_metric(self.admin, name)
    }

    /// Sends SIGTERM and waits for Envoy to exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for LdsEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
