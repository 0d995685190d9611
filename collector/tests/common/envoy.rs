//! A real Envoy running the built filter from the shipped `envoy/envoy.yaml`, its audit cluster
//! pointed at any number of collector endpoints, in front of a small JSON upstream.

use super::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A blocking GET on the admin port; the body of a 200, else `None`.
fn admin_get(admin: u16, path: &str) -> Option<String> {
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

/// An upstream that answers every request with a small chat-completion JSON.
pub async fn upstream() -> u16 {
    let app = axum::Router::new().fallback(|| async {
        (
            [("content-type", "application/json")],
            r#"{"object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}]}"#,
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// An Envoy process; killed on drop.
pub struct Envoy {
    child: Child,
    pub port: u16,
    pub admin: u16,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Envoy with the filter (`filter_config` is its JSON configuration) delivering to a
    /// round-robin audit cluster of `audit_ports`.
    pub fn start(upstream: u16, audit_ports: &[u16], filter_config: &str) -> Envoy {
        let wasm = repo().join("target/wasm32-wasip1/release/truthtable_filter.wasm");
        assert!(
            wasm.exists(),
            "no filter at {} (cargo build --release --target wasm32-wasip1)",
            wasm.display()
        );
        let envoy_bin = std::env::var_os("ENVOY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join(".venv/bin/envoy"));
        let (admin, port) = (free_port(), free_port());
        let mut yaml = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
        let mut replace = |from: &str, to: &str| {
            assert_eq!(
                yaml.matches(from).count(),
                1,
                "envoy.yaml should hold {from:?} once"
            );
            yaml = yaml.replace(from, to);
        };
        replace("port_value: 9901", &format!("port_value: {admin}"));
        replace("port_value: 10000", &format!("port_value: {port}"));
        replace("port_value: 8000", &format!("port_value: {upstream}"));
        let endpoints: Vec<String> = audit_ports
            .iter()
            .map(|p| {
                format!(
                    "        - endpoint:\n            address:\n              socket_address: {{ address: 127.0.0.1, port_value: {p} }}"
                )
            })
            .collect();
        replace(
            "        - endpoint:\n            address:\n              socket_address: { address: 127.0.0.1, port_value: 8081 }",
            &endpoints.join("\n"),
        );
        replace(
            "filename: target/wasm32-wasip1/release/truthtable_filter.wasm",
            &format!("filename: {}", wasm.display()),
        );
        replace(
            r#"value: '{"audit_cluster": "truthtable_audit", "audit_path": "/v1/captures", "delivery_format": "framed"}'"#,
            &format!("value: '{}'", filter_config.replace('\'', "''")),
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new(envoy_bin)
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .arg("--log-path")
            .arg(dir.path().join("envoy.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy (scripts/setup installs it in .venv)");
        let log = dir.path().join("envoy.log");
        let mut envoy = Envoy {
            child,
            port,
            admin,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while admin_get(admin, "/ready").is_none_or(|b| !b.starts_with("LIVE")) {
            let exited = envoy.child.try_wait().ok().flatten().is_some();
            assert!(
                Instant::now() < deadline && !exited,
                "Envoy did not become ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        envoy
    }

    /// A metric from `/stats/prometheus`, summed over its series.
    pub fn metric(&self, name: &str) -> f64 {
        admin_get(self.admin, "/stats/prometheus")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
