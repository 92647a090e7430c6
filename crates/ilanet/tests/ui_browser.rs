//! The dashboard in a real browser: Debian's Chromium, driven headless by playwright-core
//! (from ui/node_modules), against `ilanet ui` on a four-site SC17 lab.
//!
//! Checked: the token (401 without it, a cookie after it), WebSocket Origin (403 from another
//! origin), the map with every site and container, a terminal in a container, a ping6 to
//! another site answered in that terminal, the translation steps showing the SIR and ILA
//! addresses computed here from the lab's plan, `--read-only` without terminals, the session
//! log, and the keystroke-to-echo latency (printed).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lab::plan::{Plan, RoutingMode};
use lab::LabSpec;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

/// An `ilanet ui` process, stopped (SIGTERM, then killed) when dropped.
struct Ui {
    child: Child,
    url: String,
}

impl Ui {
    fn start(lab: &str, extra: &[&str], log: &Path) -> Ui {
        let mut child = Command::new(BIN)
            .args(["ui", "--lab", lab, "--session-log"])
            .arg(log)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting ilanet ui");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("ilanet ui exited before printing its URL")
                .expect("reading ilanet ui's output");
            if let Some(u) = line.strip_prefix("ilanet dashboard: ") {
                break u.trim().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ui { child, url }
    }

    fn host(&self) -> String {
        self.url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .expect("host")
            .to_string()
    }

    fn token(&self) -> String {
        self.url.split("token=").nth(1).expect("token").to_string()
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request; the status code and the whole response.
fn http(host: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // To the end when the request says `Connection: close`; else (WebSocket upgrades) the head
    // only, as the socket stays open.
    let to_eof = request.contains("Connection: close");
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if !to_eof && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn ws_upgrade(host: &str, path: &str, origin: &str, cookie: Option<&str>) -> u16 {
    let cookie = cookie
        .map(|c| format!("Cookie: ilanet_ui={c}\r\n"))
        .unwrap_or_default();
    http(
        host,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n{cookie}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    )
    .0
}

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ui")
}

fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-artefacts");
    std::fs::create_dir_all(&dir).expect("artefacts dir");
    dir
}

/// Runs the browser script; its findings by `check`.
fn browse(
    ui: &Ui,
    mode: &str,
    plan: &Plan,
    src: &str,
    dst: (&str, &str),
    drop_sir: &str,
) -> Vec<Value> {
    let (dst_sir, dst_ila) = dst;
    let profile =
        std::env::temp_dir().join(format!("ilanet-ui-chromium-{}-{mode}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let sites: Vec<Value> = plan
        .hosts
        .iter()
        .map(|h| {
            serde_json::json!({
                "name": h.name,
                "containers": h.containers.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/dashboard.mjs");
    let out = Command::new("node")
        .arg(&script)
        .env("UI_DIR", ui_dir())
        .env("URL", &ui.url)
        .env("MODE", mode)
        .env("SITES", Value::Array(sites).to_string())
        .env("SRC", src)
        .env("DST_SIR", dst_sir)
        .env("DST_ILA", dst_ila)
        .env("DROP_SIR", drop_sir)
        .env("ARTEFACTS", artefacts())
        .env("PROFILE", &profile)
        .stderr(Stdio::inherit())
        .output()
        .expect("running node (install nodejs; `make setup` installs the npm packages)");
    let _ = std::fs::remove_dir_all(&profile);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("browser ({mode}):\n{stdout}");
    assert!(
        out.status.success(),
        "the browser script failed ({mode}):\n{stdout}"
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn finding<'a>(all: &'a [Value], check: &str) -> &'a Value {
    all.iter()
        .find(|v| v["check"] == check)
        .unwrap_or_else(|| panic!("the browser script reported no '{check}'"))
}

#[test]
#[ignore = "needs root: a lab of network namespaces and eBPF programs, and Chromium"]
fn dashboard_in_a_real_browser() {
    let name = format!("ui{}", std::process::id());
    let _cleanup = Cleanup(name.clone());
    // Two containers a site: the second of each is in the other tenant ("market").
    let mut spec = LabSpec::sc17(&name, 2);
    spec.agent_binary = Some(BIN.into());
    spec.routing = RoutingMode::Bird;
    let plan = lab::up(&spec).expect("lab up");
    assert_eq!(plan.hosts.len(), 4);

    // A same-tenant pair on two sites: from the first site to the last one that shares its
    // tenant. The expected addresses come from the plan through the ila crate.
    let (src_host, src) = (&plan.hosts[0], &plan.hosts[0].containers[0]);
    let (dst_host, dst) = plan
        .hosts
        .iter()
        .rev()
        .filter(|h| h.name != src_host.name)
        .flat_map(|h| h.containers.iter().map(move |c| (h, c)))
        .find(|(_, c)| c.tenant == src.tenant)
        .expect("a same-tenant container on another site");
    let dst_ila = ila::Mapping::new(
        ila::SirPrefix::from_addr(dst.sir_addr),
        dst.identifier,
        dst_host.locator,
        plan.csum_mode,
    )
    .ila_address()
    .expect("ILA address");
    assert_ne!(dst_ila, dst.sir_addr);
    let other = plan
        .hosts
        .iter()
        .rev()
        .flat_map(|h| h.containers.iter())
        .find(|c| c.tenant != src.tenant)
        .expect("a container of another tenant");

    let log = artefacts().join("sessions.log");
    let _ = std::fs::remove_file(&log);
    let ui = Ui::start(&name, &[], &log);
    assert!(
        ui.url.starts_with("http://127.0.0.1:"),
        "bound to loopback: {}",
        ui.url
    );
    assert_eq!(ui.token().len(), 32, "a 128-bit token in hex");
    let host = ui.host();

    // Without the token: 401, for the page and for the API; with a wrong one too.
    let get = |path: &str, extra: &str| {
        http(
            &host,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
        )
    };
    assert_eq!(get("/", "").0, 401);
    assert_eq!(get("/api/state", "").0, 401);
    assert_eq!(get("/app.js", "").0, 401);
    assert_eq!(get("/?token=00000000000000000000000000000000", "").0, 401);
    assert_eq!(get("/api/state", "Cookie: ilanet_ui=wrong\r\n").0, 401);
    // With it: a redirect that sets an HttpOnly, SameSite=Strict cookie.
    let (code, head) = get(&format!("/?token={}", ui.token()), "");
    assert_eq!(code, 303, "{head}");
    assert!(
        head.contains("HttpOnly") && head.contains("SameSite=Strict"),
        "{head}"
    );
    let cookie = format!("Cookie: ilanet_ui={}\r\n", ui.token());
    assert_eq!(get("/api/state", &cookie).0, 200);
    // Another Host (DNS rebinding) is refused even with the cookie.
    let (code, _) = http(
        &host,
        &format!(
            "GET /api/state HTTP/1.1\r\nHost: evil.example\r\n{cookie}Connection: close\r\n\r\n"
        ),
    );
    assert_eq!(code, 403);
    // WebSockets: another Origin → 403; the served origin → 101; no cookie → 401.
    let origin = format!("http://{host}");
    let term = format!("/api/term/{}", src.name);
    assert_eq!(
        ws_upgrade(&host, "/api/live", "http://evil.example", Some(&ui.token())),
        403
    );
    assert_eq!(
        ws_upgrade(&host, &term, "http://evil.example", Some(&ui.token())),
        403
    );
    assert_eq!(ws_upgrade(&host, "/api/live", &origin, None), 401);
    assert_eq!(
        ws_upgrade(&host, "/api/live", &origin, Some(&ui.token())),
        101
    );

    let (dst_sir_s, dst_ila_s, other_s) = (
        dst.sir_addr.to_string(),
        dst_ila.to_string(),
        other.sir_addr.to_string(),
    );
    let found = browse(
        &ui,
        "full",
        &plan,
        &src.name,
        (&dst_sir_s, &dst_ila_s),
        &other_s,
    );
    let landing = finding(&found, "landing");
    assert_eq!(landing["status"], 200);
    assert!(
        !landing["url"].as_str().unwrap_or("").contains("token="),
        "the token leaves the address bar: {landing}"
    );
    let cookies = &finding(&found, "cookie")["cookies"];
    assert_eq!(cookies[0]["name"], "ilanet_ui");
    assert_eq!(cookies[0]["httpOnly"], true);
    assert_eq!(cookies[0]["sameSite"], "Strict");
    let map = finding(&found, "map");
    let mut want_sites: Vec<String> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    let mut got_sites: Vec<String> = serde_json::from_value(map["sites"].clone()).expect("sites");
    want_sites.sort();
    got_sites.sort();
    assert_eq!(got_sites, want_sites, "every site on the map");
    let mut want_c: Vec<String> = plan
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(|c| c.name.clone()))
        .collect();
    let mut got_c: Vec<String> =
        serde_json::from_value(map["containers"].clone()).expect("containers");
    want_c.sort();
    got_c.sort();
    assert_eq!(got_c, want_c, "every container listed");
    assert!(
        map["land_path_chars"].as_u64().unwrap_or(0) > 1000,
        "the outline map is drawn: {map}"
    );
    assert_eq!(finding(&found, "terminal-open")["prompt_seen"], true);
    let ping = finding(&found, "ping");
    assert_eq!(
        ping["reply_seen"], true,
        "ping6 answered in the terminal: {ping}"
    );
    let size = finding(&found, "size");
    assert_eq!(
        size["stty"], size["xterm"],
        "the shell knows the terminal's size: {size}"
    );
    assert_eq!(finding(&found, "utf8")["echoed"], true);
    let clip = finding(&found, "clipboard");
    assert_eq!(clip["copied_has_utf8_line"], true, "copy: {clip}");
    assert_eq!(clip["pasted"], true, "paste: {clip}");

    let steps = finding(&found, "steps")["steps"]
        .as_array()
        .expect("steps")
        .clone();
    let step = |kind: &str| {
        steps
            .iter()
            .find(|s| s["kind"] == kind)
            .unwrap_or_else(|| panic!("no '{kind}' step in {steps:?}"))
            .clone()
    };
    let kinds: Vec<&str> = steps.iter().filter_map(|s| s["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["sent", "from-container", "route", "from-wire", "delivered"],
        "{steps:?}"
    );
    let (src_sir, dst_sir, dst_ila) = (
        src.sir_addr.to_string(),
        dst.sir_addr.to_string(),
        dst_ila.to_string(),
    );
    let sent = step("sent");
    assert_eq!(
        (sent["src"].as_str(), sent["dst"].as_str()),
        (Some(&*src_sir), Some(&*dst_sir))
    );
    let out = step("from-container");
    assert_eq!(out["host"], src_host.name.as_str());
    assert_eq!(
        out["src"],
        src_sir.as_str(),
        "the source stays a SIR address"
    );
    assert_eq!(out["dst"], dst_sir.as_str());
    assert_eq!(out["dst_after"], dst_ila.as_str());
    assert_eq!(out["csum"], plan.csum_mode.to_string().as_str());
    let route = step("route");
    assert_eq!(route["dst"], dst_ila.as_str());
    let inb = step("from-wire");
    assert_eq!(inb["host"], dst_host.name.as_str());
    assert_eq!(inb["dst"], dst_ila.as_str());
    assert_eq!(inb["dst_after"], dst_sir.as_str());
    assert_eq!(step("delivered")["host"], dst_host.name.as_str());

    // The other tenant's container: no reply, and a drop with the tenant reason.
    let dropf = finding(&found, "drop");
    assert_eq!(dropf["no_reply"], true, "{dropf}");
    let dropped = dropf["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["kind"] == "dropped"))
        .unwrap_or_else(|| panic!("no dropped step: {dropf}"));
    assert_eq!(dropped["src"], src_sir.as_str());
    assert_eq!(dropped["dst"], other_s.as_str());
    assert!(
        dropped["note"]
            .as_str()
            .unwrap_or("")
            .contains("another tenant"),
        "{dropped}"
    );

    assert_eq!(finding(&found, "keyboard")["tab_after_arrow"], "policies");
    let phone = finding(&found, "phone");
    assert!(
        phone["horizontal_overflow_px"].as_i64().unwrap_or(99) <= 0,
        "phone width: {phone}"
    );
    let offline = finding(&found, "offline");
    assert_eq!(
        offline["foreign_requests"],
        serde_json::json!([]),
        "nothing fetched from elsewhere"
    );
    assert_eq!(offline["page_errors"], serde_json::json!([]));
    let lat = finding(&found, "latency");
    println!(
        "keystroke-to-echo latency over {} keystrokes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat["n"],
        lat["p50_ms"].as_f64().unwrap_or(f64::NAN),
        lat["p99_ms"].as_f64().unwrap_or(f64::NAN),
        lat["max_ms"].as_f64().unwrap_or(f64::NAN)
    );
    assert_eq!(lat["n"], 100);

    // The session was logged: peer, container, start and end.
    common::wait_for(
        "the session's end in the log",
        Duration::from_secs(5),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" end ")),
    );
    let text = std::fs::read_to_string(&log).expect("session log");
    assert!(
        text.contains("terminal 1 start peer=127.0.0.1:")
            && text.contains(&format!("container={}", src.name)),
        "{text}"
    );
    drop(ui);

    // --read-only: the page offers no terminal and the server refuses one.
    let ro = Ui::start(&name, &["--read-only"], &log);
    let host = ro.host();
    let origin = format!("http://{host}");
    assert_eq!(
        ws_upgrade(
            &host,
            &format!("/api/term/{}", src.name),
            &origin,
            Some(&ro.token())
        ),
        403
    );
    let found = browse(
        &ro,
        "read-only",
        &plan,
        &src.name,
        (&dst_sir, &dst_ila),
        &other_s,
    );
    let r = finding(&found, "read-only");
    assert_eq!(r["buttons_disabled"], true, "{r}");
    assert_eq!(r["terminal_visible"], false, "{r}");
    assert_eq!(r["notice_visible"], true, "{r}");
    drop(ro);

    // On one host agent's socket (a real host's view): that host and its containers only.
    let sock = lab::agents::socket_path(&name, &src_host.name);
    let mut child = Command::new(BIN)
        .args(["ui", "--socket"])
        .arg(&sock)
        .arg("--session-log")
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("ilanet ui --socket");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = lines
        .find_map(|l| {
            l.ok()?
                .strip_prefix("ilanet dashboard: ")
                .map(str::to_string)
        })
        .expect("URL");
    let single = Ui { child, url };
    let host = single.host();
    let (code, body) = http(
        &host,
        &format!(
            "GET /api/state HTTP/1.1\r\nHost: {host}\r\nCookie: ilanet_ui={}\r\nConnection: close\r\n\r\n",
            single.token()
        ),
    );
    assert_eq!(code, 200, "{body}");
    let json = body.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let sites = v["snapshot"]["sites"].as_array().expect("sites");
    assert_eq!(sites.len(), 1, "{v}");
    assert_eq!(sites[0]["name"], src_host.name.as_str());
    let names: Vec<&str> = sites[0]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let want: Vec<&str> = src_host
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, want);
    drop(single);

    // An idle terminal is closed by the server, and the closing is logged.
    let idle = Ui::start(&name, &["--idle-timeout", "2s"], &log);
    let found = browse(
        &idle,
        "idle",
        &plan,
        &src.name,
        (&dst_sir, &dst_ila),
        &other_s,
    );
    assert_eq!(finding(&found, "idle")["closed"], true);
    drop(idle);
    let text = std::fs::read_to_string(&log).expect("session log");
    assert!(text.contains("idle for 2s"), "{text}");
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, podman with runc, and Chromium"]
fn terminal_inside_a_podman_container() {
    let plugin = Path::new(BIN).with_file_name("ilanet-cni");
    assert!(
        plugin.exists(),
        "{} is missing: build it first (cargo build -p cni, or cargo test --workspace)",
        plugin.display()
    );
    let name = format!("uq{}", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let mut spec = LabSpec::generic(&name, 2, 1);
    spec.agent_binary = Some(BIN.into());
    spec.runtime = lab::plan::Runtime::Podman;
    lab::up(&spec).expect("lab up (podman)");
    // The agents allocate the podman containers' addresses; the record has them.
    let plan = lab::plan_of(&name).expect("plan");
    let src = &plan.hosts[0].containers[0];
    let dst = &plan.hosts[1].containers[0];
    let log = artefacts().join("sessions-podman.log");
    let ui = Ui::start(&name, &[], &log);
    let found = browse(
        &ui,
        "podman",
        &plan,
        &src.name,
        (&dst.sir_addr.to_string(), ""),
        "",
    );
    let p = finding(&found, "podman");
    assert_eq!(p["prompt"], true, "{p}");
    assert_eq!(
        p["pid1_is_the_container_init"], true,
        "the shell is in the container's pid and mount namespaces: {p}"
    );
    assert_eq!(p["ping_answered"], true, "{p}");
}
