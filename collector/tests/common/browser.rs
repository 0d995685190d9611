//! A real browser for tests: Debian's headless Chromium, driven over WebDriver through Debian's
//! `chromedriver` (packages `chromium` and `chromium-driver`, which `scripts/setup` installs).
//!
//! Each [`Browser`] has its own chromedriver on a free loopback port, its own empty profile and
//! the flags this machine needs (no sandbox as root, no background networking: the network is
//! closed). Dropping it ends the chromedriver's process group, Chromium included.

use super::{free_port, is_root};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn bin(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: apt-get install -y chromium chromium-driver (scripts/setup does), or set {env}",
        path.display()
    );
    path
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a 1440×1000 window.
    pub async fn start() -> Browser {
        let chromium = bin("CHROMIUM", "/usr/bin/chromium");
        let chromedriver = bin("CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        break;
                    }
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-extensions".to_owned(),
            "--window-size=1440,1000".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if is_root() {
            args.push("--no-sandbox".to_owned());
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}
        }}});
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let created = browser.call("POST", "/session", caps).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        if std::env::var_os("WEBDRIVER_TRACE").is_some() {
            eprintln!("webdriver: {method} {path}");
        }
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let value: Value = resp.json().await.unwrap();
        if std::env::var_os("WEBDRIVER_TRACE").is_some() {
            eprintln!(
                "webdriver: -> {status} {}",
                value.to_string().chars().take(200).collect::<String>()
            );
        }
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {value}"
        );
        value["value"].clone()
    }

    async fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url }))
            .await;
    }

    pub async fn url(&self) -> String {
        self.session_call("GET", "/url", json!({}))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn title(&self) -> String {
        self.session_call("GET", "/title", json!({}))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The text of the element `css` selects (see [`Browser::find`]).
    pub async fn text_of(&self, css: &str) -> String {
        self.find(css).await.text().await
    }

    /// The element `css` selects, waiting up to 5 s for it.
    pub async fn find(&self, css: &str) -> Element<'_> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = self.try_find(css).await {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The element `css` selects, if there is one now.
    pub async fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let path = format!("/session/{}/element", self.session);
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&json!({"using": "css selector", "value": css}))
            .send()
            .await
            .unwrap();
        if !resp.status().is_success() {
            return None;
        }
        let v: Value = resp.json().await.unwrap();
        Some(Element {
            browser: self,
            id: v["value"][ELEMENT].as_str()?.to_owned(),
        })
    }

    /// Every element `css` selects.
    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let v = self
            .session_call(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str())
            .map(|id| Element {
                browser: self,
                id: id.to_owned(),
            })
            .collect()
    }

    /// Runs `script` in the page (WebDriver's own evaluation, which the page's CSP does not
    /// govern) and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// The browser's cookies for the current page, as WebDriver reports them.
    pub async fn cookies(&self) -> Vec<Value> {
        self.session_call("GET", "/cookie", json!({}))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every URL the browser has requested since the page's navigation started (the
    /// Resource Timing entries and the navigation itself).
    pub async fn requested_urls(&self) -> Vec<String> {
        let v = self
            .eval("return performance.getEntries().map(e => e.name)")
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect()
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.session_call("GET", "/screenshot", json!({})).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// Sets the window's size (the screenshot's).
    pub async fn resize(&self, width: u32, height: u32) {
        self.session_call(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group — chromedriver and the Chromium it started — by its id.
        if let Ok(pgid) = libc::pid_t::try_from(self.driver.id()) {
            if pgid > 1 {
                // SAFETY: kill(2) with a negative id signals only that process group, which
                // this Browser created (process_group(0) made chromedriver its leader).
                unsafe {
                    libc::kill(-pgid, libc::SIGTERM);
                }
            }
        }
        let _ = self.driver.wait();
    }
}

pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Element<'_> {
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.browser
            .session_call(method, &format!("/element/{}{path}", self.id), body)
            .await
    }

    /// The element's rendered text.
    pub async fn text(&self) -> String {
        self.call("GET", "/text", json!({}))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn attr(&self, name: &str) -> Option<String> {
        self.call("GET", &format!("/attribute/{name}"), json!({}))
            .await
            .as_str()
            .map(str::to_owned)
    }

    pub async fn click(&self) {
        self.call("POST", "/click", json!({})).await;
    }

    /// Clears the field and types `text` into it.
    pub async fn type_text(&self, text: &str) {
        self.call("POST", "/clear", json!({})).await;
        self.call("POST", "/value", json!({ "text": text })).await;
    }

    /// Chooses an option of a `<select>` as a person does with the keyboard: focus it and
    /// type the option's text.
    pub async fn choose(&self, text: &str) {
        self.call("POST", "/value", json!({ "text": text })).await;
    }
}
