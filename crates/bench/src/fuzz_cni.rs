//! `ilanet bench fuzz cni`: the CNI plugin's whole decision (`cni::run`) over a fake host:
//! random and mutated `CNI_*` environments, network configurations on stdin (valid ones of
//! every version and command, mutated, huge, deep), and agent replies (valid, mutated, errors,
//! the agent down).
//!
//! Oracle beyond "no panic" (the CNI spec's contract): exit code 0 or 1; on 1 stdout is a JSON
//! error object with a numeric `code`, a string `msg` and a `cniVersion`; on 0 stdout is empty
//! or JSON.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::time::Duration;

use agent::api::{ClientError, Request};
use cni::{Host, Stdin};
use serde_json::{json, Value};

use crate::fuzz_harness::{drive, mutate_bytes, FuzzConfig, FuzzReport, Generated, Rng, Verdict};
use crate::BenchError;

/// One plugin invocation.
#[derive(Debug, Clone)]
pub struct CniInput {
    env: Vec<(String, Vec<u8>)>,
    stdin: Vec<u8>,
    reply: u8,
    reply_bytes: Vec<u8>,
    own_netns: bool,
}

struct Fake<'a> {
    input: &'a CniInput,
    env: HashMap<&'a str, &'a [u8]>,
}

impl Host for Fake<'_> {
    fn env(&self, name: &str) -> Option<OsString> {
        self.env.get(name).map(|v| OsString::from_vec(v.to_vec()))
    }
    fn read_stdin(&mut self) -> Stdin {
        if self.input.reply == 255 {
            return Stdin::Failed("Input/output error (os error 5)".into());
        }
        // The real reader stops one byte past the limit.
        let n = self.input.stdin.len().min(cni::config::MAX_STDIN + 1);
        Stdin::Data(self.input.stdin[..n].to_vec())
    }
    fn call(&mut self, socket: &Path, _: &Request, _: Duration) -> Result<Value, ClientError> {
        let unreachable = |reason: &str| ClientError::Unreachable {
            socket: socket.display().to_string(),
            reason: reason.into(),
        };
        match self.input.reply % 6 {
            0 => Err(unreachable("No such file or directory (os error 2)")),
            1 => Err(unreachable("no reply: Resource temporarily unavailable")),
            2 => Err(ClientError::Refused {
                kind: agent::ErrorKind::BadRequest,
                message: "refused".into(),
            }),
            3 => Ok(attachment()),
            _ => serde_json::from_slice(&self.input.reply_bytes)
                .map_err(|e| unreachable(&format!("unreadable reply: {e}"))),
        }
    }
    fn is_own_netns(&self, _: &str) -> Result<bool, String> {
        Ok(self.input.own_netns)
    }
}

fn attachment() -> Value {
    json!({
        "endpoint": "cni-9418753044cb", "ifname": "eth0", "mac": "02:00:00:00:00:02",
        "host_ifname": "lxc1a2b3c", "host_mac": "02:00:00:00:00:01", "netns": "/run/netns/blue",
        "address": "fd00:dead:beef::5", "gateway": "fe80::1", "tenant": "blue",
        "sir_prefix": "fd00:dead:beef::/64", "identity": 300
    })
}

const COMMANDS: [&str; 8] = ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "add", ""];
const VERSIONS: [&str; 6] = ["1.1.0", "1.0.0", "0.4.0", "0.3.1", "2.0.0", ""];
const PIECES: [&[u8]; 10] = [
    b"\"",
    b"{",
    b"[",
    b"\\u0000",
    b"=",
    b";",
    b"null",
    b"\"cni.dev/valid-attachments\":[",
    b"\"prevResult\":{",
    b"99999999999999",
];

fn conf(rng: &mut Rng) -> Value {
    let mut c = json!({
        "cniVersion": rng.pick(&VERSIONS),
        "name": "ilanet",
        "type": "ilanet-cni",
    });
    if rng.one_in(2) {
        c["tenant"] = json!(*rng.pick(&["blue", "", "t1"]));
    }
    if rng.one_in(2) {
        c["labels"] = json!({"site": "a", "app": *rng.pick(&["web", "", "é"])});
    }
    if rng.one_in(4) {
        c["timeoutMs"] = json!(*rng.pick(&[0u64, 1, 30_000, 600_001, u64::MAX]));
    }
    if rng.one_in(4) {
        c["socket"] = json!("/run/ilanet/agent.sock");
    }
    if rng.one_in(3) {
        let mut a = attachment();
        a["cniVersion"] = c["cniVersion"].clone();
        c["prevResult"] = json!({
            "cniVersion": c["cniVersion"],
            "interfaces": [{"name": "lxc1a2b3c", "mac": "02:00:00:00:00:01"},
                           {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/blue"}],
            "ips": [{"address": "fd00:dead:beef::5/128", "gateway": "fe80::1", "interface": 1}],
        });
    }
    if rng.one_in(4) {
        let n = rng.below(5);
        c["cni.dev/valid-attachments"] = Value::Array(
            (0..n)
                .map(|i| json!({"containerID": format!("c{i}"), "ifname": "eth0"}))
                .collect(),
        );
    }
    if rng.one_in(8) {
        c[*rng.pick(&["ipam", "dns", "lables", "runtimeConfig", "args"])] = json!({});
    }
    c
}

// The explicit derefs fix the arms' type to `&str` (without them inference picks `str`).
#[allow(clippy::explicit_auto_deref)]
fn env_value(rng: &mut Rng, name: &str) -> Vec<u8> {
    let base: &str = match name {
        "CNI_COMMAND" => *rng.pick(&COMMANDS),
        _ if !rng.one_in(5) => match name {
            "CNI_CONTAINERID" => "9418753044cb",
            "CNI_NETNS" => "/run/netns/blue",
            "CNI_IFNAME" => "eth0",
            "CNI_COMMAND" => *rng.pick(&COMMANDS[..6]),
            "CNI_PATH" => "/opt/cni/bin",
            _ => "IgnoreUnknown=1;K8S_POD_NAME=search-1",
        },
        "CNI_CONTAINERID" => *rng.pick(&["9418753044cb", "", "a/b", "x y", "-x"]),
        "CNI_NETNS" => *rng.pick(&["/run/netns/blue", "", "relative", "/proc/1/ns/net"]),
        "CNI_IFNAME" => *rng.pick(&["eth0", "", "0123456789abcdef", "a/b", ".."]),
        "CNI_PATH" => "/opt/cni/bin",
        _ => *rng.pick(&[
            "IgnoreUnknown=1;K8S_POD_NAME=search-1",
            "ILANET_LABELS=app=web,tier=db",
            "ILANET_LABELS=",
            "=;;=",
            "K8S_POD_NAME",
            "ILANET_LABELS=a=b=c,,x",
        ]),
    };
    let mut v = base.as_bytes().to_vec();
    if rng.one_in(16) {
        v = mutate_bytes(rng, &v, &PIECES);
    }
    if rng.one_in(200) {
        // Longer than any bound (the real environment allows it).
        let n = 1024 + rng.below(128 * 1024);
        v.extend(std::iter::repeat_n(b'x', n));
    }
    if rng.one_in(50) {
        v.push(0xff); // not UTF-8
    }
    v
}

fn generate(rng: &mut Rng) -> Generated<CniInput> {
    let mut env = Vec::new();
    for name in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
        "CNI_ARGS",
    ] {
        if !rng.one_in(40) {
            env.push((name.to_string(), env_value(rng, name)));
        }
    }
    let (kind, stdin) = match rng.below(100) {
        0..=29 => (
            "valid-conf",
            serde_json::to_vec(&conf(rng)).unwrap_or_default(),
        ),
        30..=84 => {
            let mut b = serde_json::to_vec(&conf(rng)).unwrap_or_default();
            for _ in 0..1 + rng.below(3) {
                b = mutate_bytes(rng, &b, &PIECES);
            }
            ("mutated-conf", b)
        }
        85..=89 => {
            let n = rng.below(300);
            ("random-stdin", rng.bytes(n))
        }
        90..=93 => {
            let depth = 100 + rng.below(50_000);
            let mut b = br#"{"cniVersion":"1.0.0","name":"n","type":"t","labels":"#.to_vec();
            b.extend(std::iter::repeat_n(b'[', depth));
            ("deep-stdin", b)
        }
        94 if rng.one_in(20) => {
            let mut b = serde_json::to_vec(&conf(rng)).unwrap_or_default();
            b.resize(cni::config::MAX_STDIN + 1 + rng.below(4096), b' ');
            ("huge-stdin", b)
        }
        95 => {
            // Many attachments (GC): up to the stdin limit's worth, rarely.
            let mut c = conf(rng);
            let n = if rng.one_in(100) {
                10_000 + rng.below(30_000)
            } else {
                100 + rng.below(400)
            };
            c["cni.dev/valid-attachments"] = Value::Array(
                (0..n)
                    .map(|i| json!({"containerID": format!("{i}"), "ifname": "eth0"}))
                    .collect(),
            );
            (
                "many-attachments",
                serde_json::to_vec(&c).unwrap_or_default(),
            )
        }
        _ => (
            "valid-conf",
            serde_json::to_vec(&conf(rng)).unwrap_or_default(),
        ),
    };
    let reply = if rng.one_in(100) { 255 } else { rng.byte() };
    let reply_bytes = mutate_bytes(
        rng,
        &serde_json::to_vec(&attachment()).unwrap_or_default(),
        &PIECES,
    );
    let size = stdin.len() + env.iter().map(|(_, v)| v.len()).sum::<usize>();
    Generated {
        kind,
        input: CniInput {
            env,
            stdin,
            reply,
            reply_bytes,
            own_netns: rng.one_in(20),
        },
        size,
    }
}

/// Runs the plugin once; outcomes: `ok`, or `error:<code>`.
pub fn feed(i: &CniInput) -> Verdict {
    let mut host = Fake {
        input: i,
        env: i
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect(),
    };
    let o = cni::run(&mut host);
    match o.exit_code {
        0 => {
            if !o.stdout.is_empty() && serde_json::from_str::<Value>(&o.stdout).is_err() {
                return Verdict::Violation(
                    "ok-not-json".into(),
                    format!("exit 0 with non-JSON stdout {:?}", o.stdout),
                );
            }
            Verdict::ok("ok")
        }
        1 => match serde_json::from_str::<Value>(&o.stdout) {
            Ok(v) if v["code"].is_u64() && v["msg"].is_string() && v["cniVersion"].is_string() => {
                Verdict::ok(format!("error:{}", v["code"]))
            }
            _ => Verdict::Violation(
                "error-not-cni".into(),
                format!("exit 1 without a CNI error object: {:?}", o.stdout),
            ),
        },
        c => Verdict::Violation("exit-code".into(), format!("exit code {c}")),
    }
}

/// Runs the CNI fuzzer.
pub fn run(cfg: &FuzzConfig, progress: &mut dyn FnMut(u64)) -> Result<FuzzReport, BenchError> {
    drive("cni", cfg, progress, generate, feed, |i| {
        // Environment as NAME=hex lines, then the agent reply selector, then stdin.
        let mut b = Vec::new();
        for (k, v) in &i.env {
            b.extend_from_slice(k.as_bytes());
            b.push(b'=');
            b.extend(v.iter().flat_map(|x| format!("{x:02x}").into_bytes()));
            b.push(b'\n');
        }
        b.extend_from_slice(format!("reply={} own_netns={}\n", i.reply, i.own_netns).as_bytes());
        b.extend_from_slice(&i.reply_bytes);
        b.push(b'\n');
        b.extend_from_slice(&i.stdin);
        b
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_run_has_no_panics_or_violations() {
        let r = run(
            &FuzzConfig {
                count: 3000,
                seed: 4,
                save_dir: None,
            },
            &mut |_| {},
        )
        .expect("run");
        assert_eq!((r.panics, r.violations), (0, 0), "{:#?}", r.findings);
        assert!(r.outcomes.contains_key("ok"), "{:?}", r.outcomes);
        assert!(r.outcomes.len() > 4, "{:?}", r.outcomes);
    }
}
