//! The dashboard and the report in a real browser: Debian's `chromium`, headless, driven
//! over the DevTools protocol. The dashboard, served by a running demo, lists the
//! stores, redraws itself from the live events as rounds complete (no reload) and draws
//! its charts; the report opens from disk with its charts. Screenshots are kept in
//! `target/tmp/browser/` as artefacts.
//!
//! Without a browser the test says so and passes, unless `FEDRETAIL_REQUIRE_BROWSER`
//! is set (CI sets it, after installing chromium).

use crate::common::{generate, BIN};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

fn browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let on_path = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)));
    let named = std::env::var_os("FEDRETAIL_CHROMIUM").map(PathBuf::from);
    let found = named.into_iter().chain(on_path).find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("FEDRETAIL_REQUIRE_BROWSER").is_none(),
            "FEDRETAIL_REQUIRE_BROWSER is set but no chromium is on the PATH"
        );
        eprintln!("no chromium on the PATH: browser test not run");
    }
    found
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program`, and returns it with the first stderr line that starts with
/// `prefix` (rest of the line).
fn spawn_announcing(mut command: Command, prefix: &'static str) -> (Killed, String) {
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let child = Killed(child);
    let said = rx
        .recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| panic!("no '{prefix}' line within 90 s"));
    (child, said)
}

/// One page of a headless Chromium, over the DevTools protocol.
struct Page {
    _browser: Killed,
    _profile: tempfile::TempDir,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
}

impl Page {
    fn open(exe: &Path) -> Page {
        let profile = tempfile::tempdir().unwrap();
        let mut c = Command::new(exe);
        // The flags that keep a headless Chromium off the (closed) network.
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        let (browser, ws_url) = spawn_announcing(c, "DevTools listening on ");
        let (ws, _) = tungstenite::connect(ws_url.as_str()).unwrap();
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        }
        let mut page = Page {
            _browser: browser,
            _profile: profile,
            ws,
            session: String::new(),
            next_id: 0,
        };
        let target = page.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = page.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        page.session = attached["sessionId"].as_str().unwrap().to_string();
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        );
        page
    }

    /// Sends one command and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let reply = self.ws.read().unwrap();
            let Ok(text) = reply.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        wait_for(Duration::from_secs(30), || {
            (self.eval("document.readyState") == "complete").then_some(())
        });
    }

    /// The number on a fact card of the dashboard, by its name.
    fn fact(&mut self, name: &str) -> Option<u64> {
        let js = format!(
            "[...document.querySelectorAll('.fact')].filter(f => f.querySelector('span').textContent === '{name}').map(f => f.querySelector('b').textContent)[0] || null"
        );
        self.eval(&js).as_str()?.trim().parse().ok()
    }

    fn screenshot(&mut self, png: &Path) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let bytes = data_encoding::BASE64
            .decode(shot["data"].as_str().unwrap().as_bytes())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(png, bytes).unwrap();
    }
}

fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = probe() {
            return t;
        }
        assert!(start.elapsed() < limit, "gave up after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a demo that keeps its dashboard up; the dashboard's address.
fn start_demo(net: &Path, html: &Path) -> (Killed, String) {
    let mut c = Command::new(BIN);
    c.args(["demo", "--strategy", "fedavg", "--rounds", "150", "--hold"])
        .arg("--data")
        .arg(net)
        .arg("--html")
        .arg(html)
        .stdout(Stdio::null());
    spawn_announcing(c, "dashboard at ")
}

#[test]
fn the_dashboard_and_the_report_render_in_a_real_browser() {
    let Some(exe) = browser() else { return };
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&shots).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    generate(&net, &["--stores", "6", "--days", "200", "--seed", "11"]);
    let html = dir.path().join("report.html");
    let (_demo, url) = start_demo(&net, &html);
    let mut page = Page::open(&exe);
    page.goto(&url);

    // Live: the page holds its event stream, and training has begun.
    let limit = Duration::from_secs(120);
    wait_for(limit, || {
        (page.eval("document.body.dataset.connection") == "live").then_some(())
    });
    let rounds = wait_for(limit, || page.fact("rounds done").filter(|&n| n >= 1));
    assert_eq!(page.fact("stores connected"), Some(6), "every store listed");
    let table = page.eval("document.querySelector('table').textContent");
    assert!(table.as_str().unwrap().contains("store-001"), "{table}");
    let charts = page.eval("document.querySelectorAll('figure svg').length");
    assert!(charts.as_u64().unwrap() >= 3, "charts drawn: {charts}");
    page.screenshot(&shots.join("dashboard.png"));

    // It moves on by itself: more rounds done later, redrawn from the event stream
    // without a reload (each redraw stamps the page with the event's version).
    let stamp = |page: &mut Page| {
        page.eval("Number(document.body.dataset.version || 0)")
            .as_f64()
    };
    let before = stamp(&mut page);
    wait_for(limit, || {
        let (v, n) = (stamp(&mut page), page.fact("rounds done")?);
        (v > before && n > rounds).then_some(())
    });

    // The report, once written, opens from disk with its charts.
    wait_for(Duration::from_secs(180), || html.is_file().then_some(()));
    page.goto(&format!("file://{}", html.display()));
    let text = page.eval("document.body.textContent");
    let text = text.as_str().unwrap();
    assert!(text.contains("What joining gives each store"));
    assert!(
        text.contains("Forecast against what sold"),
        "backtests read from the stores' results"
    );
    let charts = page.eval("document.querySelectorAll('figure svg').length");
    assert!(
        charts.as_u64().unwrap() >= 6,
        "report charts drawn: {charts}"
    );
    page.screenshot(&shots.join("report.png"));
}
