//! Runs the built `ilanet-cni` with a fake CNI environment: against a socket nobody listens on,
//! and against a tiny in-test server that answers like the agent (a fake of the peer, for the
//! protocol only).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use serde_json::{json, Value};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ilanet-cni-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        // A file that stands for the container's namespace: it exists and is not ours.
        std::fs::write(p.join("netns"), b"").expect("netns file");
        Self(p)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("agent.sock")
    }
    fn netns(&self) -> String {
        self.0.join("netns").display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn conf(version: &str, sock: &Path, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"ilanet","type":"ilanet-cni","socket":"{}","timeoutMs":5000{extra}}}"#,
        sock.display()
    )
}

struct Run {
    code: i32,
    stdout: Value,
    raw: String,
    stderr: String,
}

fn run(cmd: &str, dir: &Dir, env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let netns = dir.netns();
    let mut c = Command::new(env!("CARGO_BIN_EXE_ilanet-cni"));
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "9418753044cbfacd")
        .env("CNI_NETNS", &netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=search-1");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ilanet-cni");
    {
        let mut i = child.stdin.take().expect("stdin");
        // The plugin stops reading past its limit; a broken pipe then is expected.
        let _ = i.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait");
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: if raw.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("stdout {raw:?}: {e}"))
        },
        raw,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Answers `n` requests with `reply(request)`, returning the requests it saw.
fn fake_agent(
    sock: &Path,
    n: usize,
    reply: impl Fn(&Value) -> Value + Send + 'static,
) -> thread::JoinHandle<Vec<Value>> {
    let l = UnixListener::bind(sock).expect("bind");
    thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..n {
            let (s, _) = l.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).expect("read");
            let req: Value = serde_json::from_str(&line).expect("request JSON");
            let mut w = &s;
            let mut out = reply(&req).to_string();
            out.push('\n');
            w.write_all(out.as_bytes()).expect("write");
            seen.push(req);
        }
        seen
    })
}

fn attachment(netns: &str) -> Value {
    json!({
        "endpoint": "cni-9418753044cb", "ifname": "eth0", "mac": "02:00:00:00:00:02",
        "host_ifname": "lxc1a2b3c", "host_mac": "02:00:00:00:00:01", "netns": netns,
        "address": "fd00:dead:beef::5", "gateway": "fe80::1", "tenant": "default",
        "sir_prefix": "fd00:dead:beef::/64", "identity": 300
    })
}

#[test]
fn version_lists_the_supported_versions() {
    let d = Dir::new("version");
    let r = run("VERSION", &d, &[], br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        json!({"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]})
    );
}

#[test]
fn agent_down_add_is_50_status_is_50_del_and_gc_are_11() {
    let d = Dir::new("down");
    let c = conf("1.1.0", &d.sock(), "");
    let r = run("ADD", &d, &[], c.as_bytes());
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout["code"], json!(50), "{}", r.raw);
    assert_eq!(r.stdout["cniVersion"], json!("1.1.0"));
    assert!(r.stdout["details"]
        .as_str()
        .unwrap_or_default()
        .contains("agent.sock"));
    assert!(r.stderr.contains("ilanet-cni: ADD:"), "{}", r.stderr);

    let r = run("STATUS", &d, &[], c.as_bytes());
    assert_eq!((r.code, r.stdout["code"].clone()), (1, json!(50)));

    let r = run("DEL", &d, &[], c.as_bytes());
    assert_eq!((r.code, r.stdout["code"].clone()), (1, json!(11)));

    let gc = conf(
        "1.1.0",
        &d.sock(),
        r#","cni.dev/valid-attachments":[{"containerID":"x","ifname":"eth0"}]"#,
    );
    let r = run("GC", &d, &[], gc.as_bytes());
    assert_eq!((r.code, r.stdout["code"].clone()), (1, json!(11)));
}

#[test]
fn malformed_input_names_the_problem() {
    let d = Dir::new("malformed");
    let r = run("ADD", &d, &[], b"{\"cniVersion\": \"1.0.0\",");
    assert_eq!((r.code, r.stdout["code"].clone()), (1, json!(6)));
    let c = conf("1.0.0", &d.sock(), r#","labels":{"app":["web"]}"#);
    let r = run("ADD", &d, &[], c.as_bytes());
    assert_eq!(r.stdout["code"], json!(7));
    assert!(r.stdout["msg"]
        .as_str()
        .unwrap_or_default()
        .contains("labels.app"));
    // The error speaks the configuration's version.
    assert_eq!(r.stdout["cniVersion"], json!("1.0.0"));
    let c = conf("1.0.0", &d.sock(), r#","lables":{}"#);
    let r = run("ADD", &d, &[], c.as_bytes());
    assert_eq!(r.stdout["code"], json!(2));
    assert!(r.stdout["msg"]
        .as_str()
        .unwrap_or_default()
        .contains("lables"));
    let c = conf("1.0.0", &d.sock(), "");
    let r = run("ADD", &d, &[("CNI_IFNAME", "")], c.as_bytes());
    assert_eq!(r.stdout["code"], json!(4));
    assert!(r.stdout["msg"]
        .as_str()
        .unwrap_or_default()
        .contains("CNI_IFNAME"));
    let big = vec![b' '; 1024 * 1024 + 10];
    let r = run("ADD", &d, &[], &big);
    assert_eq!(r.stdout["code"], json!(5));
    let c = conf("0.3.1", &d.sock(), "");
    let r = run("ADD", &d, &[], c.as_bytes());
    assert_eq!(r.stdout["code"], json!(1));
}

#[test]
fn add_prints_the_result_from_the_agents_attachment() {
    let d = Dir::new("add");
    let netns = d.netns();
    let ns = netns.clone();
    let server = fake_agent(&d.sock(), 1, move |_| json!({"ok": attachment(&ns)}));
    let c = conf(
        "1.0.0",
        &d.sock(),
        r#","labels":{"site":"a"},"tenant":"default""#,
    );
    let r = run(
        "ADD",
        &d,
        &[(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=search-1;ILANET_LABELS=app=web,tier=db",
        )],
        c.as_bytes(),
    );
    assert_eq!(r.code, 0, "{} {}", r.raw, r.stderr);
    assert_eq!(
        r.stdout,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "lxc1a2b3c", "mac": "02:00:00:00:00:01"},
                {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": netns}
            ],
            "ips": [{"address": "fd00:dead:beef::5/128", "gateway": "fe80::1", "interface": 1}],
            "routes": [{"dst": "::/0", "gw": "fe80::1"}],
            "dns": {}
        })
    );
    let seen = server.join().expect("server");
    assert_eq!(
        seen[0],
        json!({
            "op": "cni_add", "container_id": "9418753044cbfacd", "netns": netns,
            "ifname": "eth0", "tenant": "default",
            "labels": {"app": "web", "name": "search-1", "site": "a", "tier": "db"}
        })
    );
}

#[test]
fn del_check_status_gc_against_an_answering_agent() {
    let d = Dir::new("others");
    let netns = d.netns();
    let ns = netns.clone();
    let server = fake_agent(&d.sock(), 4, move |req| match req["op"].as_str() {
        Some("cni_del") => json!({"ok": null}),
        Some("cni_check") => json!({"ok": attachment(&ns)}),
        Some("status") => json!({"ok": {"host": "site1", "store_connected": true}}),
        Some("cni_gc") => json!({"ok": {"removed": [{"containerID": "old", "ifname": "eth0"}]}}),
        _ => json!({"error": "unexpected"}),
    });
    let c = conf("1.1.0", &d.sock(), "");
    let r = run("DEL", &d, &[], c.as_bytes());
    assert_eq!((r.code, r.raw.as_str()), (0, ""), "{}", r.stderr);

    let mut chk: Value = serde_json::from_str(&c).expect("conf");
    chk["prevResult"] = json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "lxc1a2b3c", "mac": "02:00:00:00:00:01"},
            {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": netns}
        ],
        "ips": [{"address": "fd00:dead:beef::5/128", "gateway": "fe80::1", "interface": 1}],
        "routes": [{"dst": "::/0", "gw": "fe80::1"}],
        "dns": {}
    });
    let r = run("CHECK", &d, &[], chk.to_string().as_bytes());
    assert_eq!((r.code, r.raw.as_str()), (0, ""), "{}", r.stderr);

    let r = run("STATUS", &d, &[], c.as_bytes());
    assert_eq!((r.code, r.raw.as_str()), (0, ""), "{}", r.stderr);

    let gc = conf(
        "1.1.0",
        &d.sock(),
        r#","cni.dev/valid-attachments":[{"containerID":"9418753044cbfacd","ifname":"eth0"}]"#,
    );
    let r = run("GC", &d, &[], gc.as_bytes());
    assert_eq!((r.code, r.raw.as_str()), (0, ""), "{}", r.stderr);
    assert!(r.stderr.contains("old"), "{}", r.stderr);

    let seen = server.join().expect("server");
    assert_eq!(
        seen[0],
        json!({"op": "cni_del", "container_id": "9418753044cbfacd", "ifname": "eth0"})
    );
    assert_eq!(seen[2], json!({"op": "status"}));
    assert_eq!(
        seen[3],
        json!({"op": "cni_gc", "valid": [{"containerID": "9418753044cbfacd", "ifname": "eth0"}]})
    );
}
