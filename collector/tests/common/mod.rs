//! Helpers shared by the integration tests: sample records, an in-process server, the real binary.
#![allow(dead_code)]
// Test support: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/common/ports.rs"]
mod ports;
pub use ports::free_port;

pub mod browser;
pub mod captures;
pub mod envoy;
pub mod phoenix;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use truthtable_collector::{config::Cli, store::Store, Config};

/// A valid v1 record of a non-streamed OpenAI chat exchange, with an extra unknown field.
pub fn record(id: &str) -> Value {
    let request = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "Use the documents."},
        {"role": "user", "content": format!("question for {id}")}]});
    let response = json!({"object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer for {id}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4}});
    json!({
        "schema": "truthtable.capture.v1",
        "id": id,
        "started_at": "2026-11-25T16:10:40.186123Z",
        "duration_ms": 1804.25,
        "outcome": "complete",
        "detail": "via_upstream",
        "request": {
            "method": "POST", "scheme": "http", "authority": "api.example.com",
            "path": "/v1/chat/completions", "query": "",
            "headers": [["content-type", "application/json"], ["authorization", "[REDACTED]"]],
            "body": {"encoding": "utf8", "data": request.to_string(), "size": request.to_string().len(), "truncated": false}
        },
        "response": {
            "status": 200,
            "headers": [["content-type", "application/json"]],
            "body": {"encoding": "utf8", "data": response.to_string(), "size": response.to_string().len(), "truncated": false},
            "first_byte_ms": 212.5
        },
        "x_future_field": {"kept": true}
    })
}

/// NDJSON body of the records with these ids.
pub fn ndjson(ids: &[String]) -> String {
    ids.iter().map(|id| format!("{}\n", record(id))).collect()
}

/// A server running inside the test process on an ephemeral loopback port.
pub struct InProcess {
    pub base: String,
    pub db: PathBuf,
    state: Arc<truthtable_collector::http::AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    pub async fn start(
        ingest_token: Option<&str>,
        read_token: Option<&str>,
        max_body_bytes: Option<usize>,
    ) -> Self {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let mut args = vec![
            "truthtable-collector".to_owned(),
            "--db".to_owned(),
            db.display().to_string(),
        ];
        if let Some(n) = max_body_bytes {
            args.push("--max-body-bytes".to_owned());
            args.push(n.to_string());
        }
        let (it, rt) = (
            ingest_token.map(str::to_owned),
            read_token.map(str::to_owned),
        );
        let config = Config::new(Cli::parse_from(args), move |name| match name {
            "TRUTHTABLE_INGEST_TOKEN" => it.clone(),
            "TRUTHTABLE_READ_TOKEN" => rt.clone(),
            _ => None,
        });
        let store = Store::open(&config).await.unwrap();
        let state = truthtable_collector::state(&config, store).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(truthtable_collector::serve(
            listener,
            Arc::clone(&state),
            async {
                let _ = rx.await;
            },
        ));
        InProcess {
            base: format!("http://{addr}"),
            db,
            state,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's state (its store, its metrics).
    pub fn state(&self) -> &Arc<truthtable_collector::http::AppState> {
        &self.state
    }

    /// Waits until every stored record has its digest (the indexer runs behind ingest); panics
    /// after 20 s.
    pub async fn indexed(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.state.indexing() {
            assert!(
                std::time::Instant::now() < deadline,
                "still indexing after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server and waits until the store is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// How many records the SQLite file at `db` holds (read directly, without the collector).
/// A log key made by `truthtable-collector keygen --name <name>` in `dir`: the key file's path
/// and the verifier key the command printed.
pub fn keygen(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join("log.key");
    let out = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .args(["keygen", "--name", name, "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let vkey = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    (key.display().to_string(), vkey)
}

pub fn sqlite_count(db: &Path) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM captures", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64
}

/// Whether the SQLite file at `db` holds a record with this id.
pub fn sqlite_has(db: &Path, id: &str) -> bool {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM captures WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap()
        == 1
}

/// GETs `url` and parses the answer as JSON, whatever its status.
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// True when the tests run as root (servers that refuse root then run as another user).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The JSON list at `url` once the collector has given every stored record its digest
/// (`indexing` false); panics with the last page after `within`.
pub async fn when_indexed(client: &reqwest::Client, url: &str, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let page = get_json(client, url).await;
        if page["indexing"] == false {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still indexing after {within:?}: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the unlabelled sample `name` on `base`'s `/metrics`; panics when it is not there.
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

/// Posts an NDJSON body to the ingest endpoint.
pub async fn post(
    client: &reqwest::Client,
    base: &str,
    body: String,
    token: Option<&str>,
) -> reqwest::Response {
    let mut req = client
        .post(format!("{base}/v1/captures"))
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// The real binary, started on an ephemeral port; its log lines are kept.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    /// The collector over the SQLite file `db`.
    pub fn start(db: &Path) -> Self {
        Self::start_with(&["--db", &db.display().to_string()], &[])
    }

    /// The collector with these arguments (after `--listen 127.0.0.1:0`) and environment.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Self::command(args, env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "collector did not report its address; log:\n{}",
                    log.lock().unwrap().join("\n")
                )
            }
        };
        Process { child, addr, log }
    }

    /// The command line of the binary, environment cleared of the collector's and libpq's
    /// variables, then `env` set.
    pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"));
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        for var in [
            "TRUTHTABLE_INGEST_TOKEN",
            "TRUTHTABLE_READ_TOKEN",
            "TRUTHTABLE_ADMIN_TOKEN",
            "TRUTHTABLE_DB",
            "TRUTHTABLE_DB_PASSWORD_FILE",
            "PGPASSWORD",
            "PGPASSFILE",
            "TRUTHTABLE_LOG_KEY",
        ]
        .into_iter()
        .chain(truthtable_collector::otlp::config::VARIABLES)
        .chain([truthtable_collector::otlp::config::NON_LLM_ENV])
        {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Its log so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many log lines so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for exit, at most `secs` seconds.
    pub fn wait(&mut self, secs: u64) -> std::process::ExitStatus {
        for _ in 0..secs * 20 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("collector did not exit within {secs}s");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
