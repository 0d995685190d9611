//! A real Arize Phoenix for tests: `phoenix serve` from the `arize-phoenix` package that
//! `scripts/setup` installs into `.venv-phoenix` (or `$PHOENIX_BIN`), on free loopback ports, with
//! a temporary working directory, no telemetry and no external resources. It takes OTLP
//! (protobuf over HTTP on its web port, gRPC on its gRPC port) and answers spans back through its
//! REST API.
//!
//! [`Phoenix::shared`] is one server per test binary; [`Phoenix::start`] one a test owns (to stop
//! and start again). A guardian shell stops the server when its handle is dropped or the test
//! process ends, however it ends.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::free_port;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long Phoenix may take to start (about 10 s warm here, 30 s the first time).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// `$PHOENIX_BIN`, else `.venv-phoenix/bin/phoenix` at the repository root.
pub fn phoenix_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PHOENIX_BIN") {
        return PathBuf::from(bin);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        manifest.join(".venv-phoenix/bin/phoenix"),
        manifest.join("../.venv-phoenix/bin/phoenix"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no Phoenix at {} (scripts/setup installs arize-phoenix into .venv-phoenix; or set PHOENIX_BIN)",
                candidates[0].display()
            )
        })
}

/// A running (or stopped) Phoenix server.
pub struct Phoenix {
    pub http_port: u16,
    pub grpc_port: u16,
    dir: tempfile::TempDir,
    guardian: Mutex<Option<(Child, ChildStdin)>>,
    pid: Mutex<Option<u32>>,
    /// The guardian removes the working directory when it stops Phoenix (the shared server,
    /// whose handle is never dropped).
    remove_dir: bool,
}

static SHARED: OnceLock<Phoenix> = OnceLock::new();

impl Phoenix {
    /// The server shared by the tests of this binary (started on first use).
    pub fn shared() -> &'static Phoenix {
        SHARED.get_or_init(|| Phoenix::new(true))
    }

    /// A server of the test's own; stopped when dropped.
    pub fn start() -> Phoenix {
        Phoenix::new(false)
    }

    fn new(remove_dir: bool) -> Phoenix {
        let phoenix = Phoenix {
            http_port: free_port(),
            grpc_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            guardian: Mutex::new(None),
            pid: Mutex::new(None),
            remove_dir,
        };
        phoenix.start_again();
        phoenix
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("phoenix.log")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Where Phoenix keeps its database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the (stopped) server on the same ports and working directory, and waits until it
    /// answers.
    pub fn start_again(&self) {
        let started = Instant::now();
        // The guardian runs Phoenix, says its pid, and stops it when its stdin closes.
        let mut child = Command::new("sh")
            .args([
                "-c",
                "\"$0\" serve >>\"$1\" 2>&1 & echo $!; read _; kill -TERM $! 2>/dev/null; wait; \
                 if [ -n \"$2\" ]; then rm -rf \"$2\"; fi",
            ])
            .arg(phoenix_bin())
            .arg(self.log_path())
            .arg(if self.remove_dir {
                self.dir.path().as_os_str()
            } else {
                std::ffi::OsStr::new("")
            })
            .env("PHOENIX_WORKING_DIR", self.dir.path())
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", self.http_port.to_string())
            .env("PHOENIX_GRPC_PORT", self.grpc_port.to_string())
            .env("PHOENIX_ALLOW_EXTERNAL_RESOURCES", "false")
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .env_remove("PHOENIX_SQL_DATABASE_URL")
            .env_remove("PHOENIX_COLLECTOR_ENDPOINT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the Phoenix guardian");
        let stdin = child.stdin.take().unwrap();
        let mut pid = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut pid)
            .unwrap();
        *self.pid.lock().unwrap() = pid.trim().parse().ok();
        *self.guardian.lock().unwrap() = Some((child, stdin));
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "Phoenix did not start within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            assert!(self.running(), "Phoenix exited:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "Phoenix up on {} (gRPC {}) after {:.1} s",
            self.http_port,
            self.grpc_port,
            started.elapsed().as_secs_f64()
        );
    }

    fn running(&self) -> bool {
        match self.pid.lock().unwrap().as_ref() {
            Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
            None => false,
        }
    }

    fn healthy(&self) -> bool {
        use std::io::Read as _;
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if write!(
            s,
            "GET /healthz HTTP/1.1\r\nhost: phoenix\r\nconnection: close\r\n\r\n"
        )
        .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    }

    /// Stops the server (SIGTERM) and waits until its ports are closed.
    pub fn stop(&self) {
        if let Some((mut child, stdin)) = self.guardian.lock().unwrap().take() {
            drop(stdin);
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_ok()
            || std::net::TcpStream::connect(("127.0.0.1", self.grpc_port)).is_ok()
        {
            assert!(Instant::now() < deadline, "Phoenix did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its web (and OTLP/HTTP) base URL.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Its OTLP/gRPC URL.
    pub fn grpc(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Every span of `project`, as Phoenix's REST API gives them (none while the project does
    /// not exist yet).
    pub async fn spans(&self, project: &str) -> Vec<Value> {
        let client = reqwest::Client::new();
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/projects/{project}/spans?limit=1000", self.base());
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let resp = client.get(&url).send().await.unwrap();
            if resp.status() == 404 {
                return out;
            }
            assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
            let page: Value = resp.json().await.unwrap();
            out.extend(page["data"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }

    /// Waits until `project` holds at least `n` spans (Phoenix inserts a few tens of
    /// milliseconds after it answers), then a little longer for any that should not be there;
    /// returns them.
    pub async fn wait_spans(&self, project: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans(project).await;
            if spans.len() >= n {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return self.spans(project).await;
            }
            if Instant::now() >= deadline {
                let log = self.log();
                let tail = &log[log.len().saturating_sub(4000)..];
                panic!(
                    "Phoenix holds {} of {n} spans in {project} after {timeout:?}; its log ends:\n{tail}",
                    spans.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.guardian.lock().unwrap().take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// A span's attribute.
pub fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// The span whose `truthtable.capture.id` is `id`.
pub fn span_of<'a>(spans: &'a [Value], id: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| attr(s, "truthtable.capture.id") == id)
        .unwrap_or_else(|| panic!("no span for capture {id} among {} spans", spans.len()))
}
