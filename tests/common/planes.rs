//! What the control planes' tests share: the module served over HTTP (as istio-agent and Envoy
//! Gateway fetch it), its checksum, and an Envoy started on a bootstrap a test builds.

use super::{admin_get, envoy_bin, repo, wasm_path};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every document of a YAML file, as JSON.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse as YAML: {e}", path.display()))
        })
        .filter(|d| !d.is_null())
        .collect()
}

/// The one document of `kind` in a manifest under `deploy/`.
pub fn manifest(rel: &str, kind: &str) -> Value {
    let docs = yaml_docs(&repo().join(rel));
    let mut of_kind: Vec<Value> = docs.into_iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(of_kind.len(), 1, "{rel}: one {kind}");
    of_kind.remove(0)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The built filter served over plain HTTP on loopback at `/truthtable_filter.wasm`, counting
/// what it served.
pub struct ModuleServer {
    pub port: u16,
    pub bytes: Arc<Vec<u8>>,
    served: Arc<AtomicUsize>,
}

impl ModuleServer {
    pub async fn start() -> ModuleServer {
        use axum::routing::get;
        let bytes = Arc::new(std::fs::read(wasm_path()).expect("the built filter"));
        let served = Arc::new(AtomicUsize::new(0));
        let (b, s) = (bytes.clone(), served.clone());
        let app = axum::Router::new().route(
            "/truthtable_filter.wasm",
            get(move || {
                let (b, s) = (b.clone(), s.clone());
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    (
                        [("content-type", "application/wasm")],
                        axum::body::Bytes::from(b.as_ref().clone()),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind module server");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        ModuleServer {
            port,
            bytes,
            served,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/truthtable_filter.wasm", self.port)
    }

    pub fn sha256(&self) -> String {
        sha256_hex(&self.bytes)
    }

    /// How many times the module was served.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// A STATIC cluster with one loopback endpoint.
pub fn loopback_cluster(name: &str, port: u16) -> Value {
    serde_json::json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    })
}

/// The listener of the shipped `envoy/envoy.yaml` (its connection manager and route to
/// `llm_upstream`) on `port`, with `http_filters` as given, and its `llm_upstream` cluster aimed
/// at `upstream`.
pub fn shipped_listener_and_upstream(
    port: u16,
    upstream: u16,
    http_filters: Vec<Value>,
) -> (Value, Value) {
    let text = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).expect("envoy/envoy.yaml");
    let shipped: Value = serde_norway::from_str(&text).expect("envoy/envoy.yaml parses");
    let mut listener = shipped["static_resources"]["listeners"][0].clone();
    listener["address"]["socket_address"]["port_value"] = serde_json::json!(port);
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] =
        Value::Array(http_filters);
    (listener, loopback_cluster("llm_upstream", upstream))
}

/// The router, last in every chain.
pub fn router() -> Value {
    serde_json::json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

/// An Envoy process on a bootstrap the test built; killed on drop.
pub struct BootEnvoy {
    child: Child,
    pub admin: u16,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl BootEnvoy {
    /// Writes `bootstrap` (with its admin port set) into `dir` and starts Envoy on it; waits until
    /// it is ready and `port` takes connections. `Err` carries the log.
    pub fn start(
        dir: tempfile::TempDir,
        bootstrap: Value,
        port: u16,
        workers: u32,
    ) -> Result<BootEnvoy, String> {
        let mut envoy = BootEnvoy::spawn(dir, bootstrap, workers);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = envoy.child.try_wait() {
                return Err(envoy.log_text());
            }
            if envoy.is_live() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                return Err(envoy.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether Envoy's admin `/ready` says it is live (initialised, listeners warmed).
    pub fn is_live(&self) -> bool {
        admin_get(self.admin, "/ready").is_some_and(|b| b.starts_with("LIVE"))
    }

    /// Starts Envoy on `bootstrap` (its admin port set) without waiting for anything.
    pub fn spawn(dir: tempfile::TempDir, mut bootstrap: Value, workers: u32) -> BootEnvoy {
        let admin = super::free_port();
        bootstrap["admin"] = serde_json::json!({"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": admin}}});
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, bootstrap.to_string()).expect("write bootstrap");
        let log = dir.path().join("envoy.log");
        let child = super::envoy_command(&config, workers, &log)
            .spawn()
            .expect("spawn envoy");
        BootEnvoy {
            child,
            admin,
            log,
            dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A stat from `/stats` as Envoy prints it (text readouts keep their quotes).
    pub fn stat(&self, name: &str) -> Option<String> {
        let text = admin_get(
            self.admin,
            &format!("/stats?filter=^{}$", regex_escape(name)),
        )?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(|v| v.trim().to_owned())
    }

    /// A metric from `/stats/prometheus`, summed over its series.
    pub fn metric(&self, name: &str) -> Option<f64> {
        super::prometheus_metric(self.admin, name)
    }
}

impl Drop for BootEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    // The admin endpoint takes the filter as a query parameter.
    out.replace('|', "%7C").replace('/', "%2F")
}

/// `envoy --mode validate` on a bootstrap given as JSON: `Ok` or Envoy's complaint.
pub fn envoy_validates(bootstrap: &Value) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap.to_string()).expect("write bootstrap");
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy --mode validate");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
