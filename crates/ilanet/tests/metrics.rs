//! The agent's Prometheus endpoint: a host agent (`ilanet agent --config` with `metrics:`) in an
//! emulated machine, read directly and through Debian's real Prometheus server, which scrapes
//! it and answers a query with what the agent itself reports. Needs root and
//! `/usr/bin/prometheus` (Debian package `prometheus`).
//!
//! The agent, Prometheus and the test's HTTP client all work inside the machine's own network
//! namespace, so their loopback ports are private to this test: no port of the host can clash.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::api::{AgentStatus, Request};

mod common;
use common::text;

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// The agent's metrics address, inside the machine's namespace.
const METRICS: &str = "127.0.0.1:9477";
/// Prometheus's web address, inside the machine's namespace.
const PROM_WEB: &str = "127.0.0.1:9090";
const CALL: Duration = Duration::from_secs(30);

/// An HTTP reply: status, headers (lower-case names), body.
type Reply = (u16, Vec<(String, String)>, String);
/// One series of a Prometheus query result: labels, value.
type Sample = (BTreeMap<String, String>, f64);

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(o.status.success(), "ip {args:?}: {}", text(&o));
}

/// SIGTERM, a few seconds' grace, then SIGKILL; always reaped.
fn stop_child(c: &mut Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// One emulated machine with a host agent serving metrics.
struct Machine {
    ns: String,
    prefix: String,
    dir: PathBuf,
    pins: PathBuf,
    agent: Option<Child>,
}

impl Machine {
    fn new() -> Self {
        let pid = std::process::id();
        let m = Machine {
            ns: format!("mt{pid}"),
            prefix: format!("mt{pid}e"),
            dir: std::env::temp_dir().join(format!("ilanet-metrics-{pid}")),
            pins: PathBuf::from(format!("/sys/fs/bpf/ilanet-test-metrics-{pid}")),
            agent: None,
        };
        std::fs::create_dir_all(&m.dir).expect("dir");
        ip(&["netns", "add", &m.ns]);
        ip(&["-n", &m.ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &m.ns, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ]);
        ip(&["-n", &m.ns, "link", "set", "up0", "up"]);
        ip(&["-n", &m.ns, "link", "set", "up1", "up"]);
        m
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn start(&mut self) {
        let config = self.dir.join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "host: box1\nuplink: up0\nlocator: 2001:db8:78::/64\nunderlay: 2001:db8:ffff:78::2\n\
                 tenants:\n  - name: research\n    vnid: 1\n    sir_prefix: fd00:dead:beef::/64\n\
                 store:\n  kind: embedded\nsocket: {}\nstate_dir: {}\npin_dir: {}\n\
                 endpoint_netns_prefix: {}\nmetrics: \"{METRICS}\"\nlog_level: info\n",
                self.socket().display(),
                self.dir.join("state").display(),
                self.pins.display(),
                self.prefix,
            ),
        )
        .expect("config");
        let log = std::fs::File::create(self.dir.join("agent.log")).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(BIN)
            .args(["agent", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        self.agent = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(s) = self.status() {
                if s.store_connected {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agent not ready; log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn call(&self, req: &Request) -> Result<serde_json::Value, agent::api::ClientError> {
        agent::api::call(&self.socket(), req, CALL)
    }

    fn status(&self) -> Result<AgentStatus, String> {
        let v = self.call(&Request::Status).map_err(|e| e.to_string())?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.agent.is_some() {
            let _ = self.call(&Request::EndpointDel {
                name: "web".into(),
                keep_mapping: false,
            });
        }
        if let Some(mut c) = self.agent.take() {
            stop_child(&mut c);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{}-web", self.prefix)])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Prometheus server scraping the agent every second, with its data in a directory of its
/// own; stopped and removed on drop, also when the test fails.
struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
}

impl Prometheus {
    fn start(ns: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ilanet-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ilanet\n    static_configs:\n      - targets: ['{METRICS}']\n"
            ),
        )
        .expect("prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={PROM_WEB}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child: Some(child),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query` for an instant vector: each series' labels and value.
    fn query(&self, ns: &str, q: &str) -> Result<Vec<Sample>, String> {
        let (status, _, body) =
            http_get(ns, PROM_WEB, &format!("/api/v1/query?query={}", encode(q)))?;
        if status != 200 {
            return Err(format!("status {status}: {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let result = v["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("no result in {body}"))?;
        result
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| format!("no value in {r}"))?;
                Ok((labels, value))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A GET over HTTP/1.0 from inside namespace `ns` (a thread of our own enters it): status,
/// headers (lower-case names), body.
fn http_get(ns: &str, addr: &str, path: &str) -> Result<Reply, String> {
    request(ns, addr, "GET", path)
}

fn request(ns: &str, addr: &str, method: &str, path: &str) -> Result<Reply, String> {
    let ns_path = format!("/run/netns/{ns}");
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/openmetrics-text; version=1.0.0, */*\r\n\r\n");
    std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let f = std::fs::File::open(&ns_path).map_err(|e| format!("{ns_path}: {e}"))?;
        // SAFETY: setns(2) on this thread only, with a namespace file we hold open.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns {ns_path}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .join()
    .map_err(|_| "client thread panicked".to_string())?
    .and_then(|raw| {
        let raw = String::from_utf8(raw).map_err(|e| e.to_string())?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no header end in {raw:?}"))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line in {head:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok((status, headers, body.to_string()))
    })
}

/// The value of one series line `name{labels} value` in an exposition, labels given exactly.
fn series(exposition: &str, name_and_labels: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, prometheus"]
fn the_agent_serves_metrics_that_prometheus_scrapes() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: install Debian's package prometheus"
    );
    let mut m = Machine::new();
    m.start();
    let ns = m.ns.clone();

    // Some state to see: an endpoint made through the API, a CNI DEL of nothing (ok: DEL is
    // idempotent) and a CNI CHECK of nothing (an error).
    let mut labels = BTreeMap::new();
    labels.insert("app".to_string(), "web".to_string());
    m.call(&Request::EndpointAdd {
        name: "web".into(),
        tenant: None,
        identifier: None,
        replace: false,
        labels,
    })
    .unwrap_or_else(|e| panic!("endpoint add: {e}\nlog: {}", m.log()));
    m.call(&Request::CniDel {
        container_id: "c0ffee".into(),
        ifname: "eth0".into(),
    })
    .expect("cni del of nothing is ok");
    assert!(m
        .call(&Request::CniCheck {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
            netns: "/proc/self/ns/net".into(),
        })
        .is_err());

    // (1) Directly.
    let before = m.status().expect("status");
    let (code, headers, body) =
        http_get(&ns, METRICS, "/metrics").unwrap_or_else(|e| panic!("{e}\nlog: {}", m.log()));
    let after = m.status().expect("status");
    assert_eq!(code, 200, "{body}");
    let ctype = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    assert_eq!(ctype, Some(agent::metrics::CONTENT_TYPE));
    assert!(body.ends_with("# EOF\n"), "{body}");
    let h = "host=\"box1\"";
    let get = |s: &str| series(&body, s).unwrap_or_else(|| panic!("no series {s} in\n{body}"));
    assert_eq!(get(&format!("ilanet_store_connected{{{h}}}")), 1.0);
    assert_eq!(
        get(&format!("ilanet_endpoints{{{h}}}")),
        after.endpoints as f64
    );
    assert_eq!(after.endpoints, 1);
    assert_eq!(
        get(&format!("ilanet_mappings{{{h}}}")),
        after.mappings as f64
    );
    assert_eq!(
        get(&format!("ilanet_map_entries{{{h},map=\"ILA_OUT\"}}")),
        after.out_entries as f64
    );
    assert_eq!(
        get(&format!("ilanet_map_entries{{{h},map=\"ILA_ENDPOINTS\"}}")),
        1.0
    );
    assert_eq!(
        get(&format!(
            "ilanet_map_capacity_entries{{{h},map=\"POLICY\"}}"
        )),
        dataplane::POLICY_MAX_ENTRIES as f64
    );
    assert_eq!(
        get(&format!("ilanet_store_revision{{{h}}}")),
        after.revision as f64
    );
    assert_eq!(
        get(&format!("ilanet_store_resyncs_total{{{h}}}")),
        after.resyncs as f64
    );
    let lease = after.lease.expect("a lease");
    assert_eq!(
        get(&format!("ilanet_store_lease_info{{{h},lease=\"{lease}\"}}")),
        1.0
    );
    assert_eq!(
        get(&format!(
            "ilanet_endpoint_create_duration_seconds_count{{{h},via=\"api\"}}"
        )),
        1.0
    );
    assert!(get(&format!("ilanet_resync_duration_seconds_count{{{h}}}")) >= 1.0);
    assert_eq!(
        get(&format!(
            "ilanet_cni_requests_total{{{h},verb=\"del\",result=\"ok\"}}"
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            "ilanet_cni_requests_total{{{h},verb=\"check\",result=\"error\"}}"
        )),
        1.0
    );
    // Data-path counters: what `agent status` reports, read just before and just after (the
    // uplink may see neighbour discovery meanwhile).
    let (c0, c1) = (
        before.counters.expect("counters"),
        after.counters.expect("counters"),
    );
    for ((name, lo), (_, hi)) in c0.pairs().into_iter().zip(c1.pairs()) {
        let s = match name.strip_prefix("drop_") {
            Some(reason) => format!("ilanet_datapath_drops_total{{{h},reason=\"{reason}\"}}"),
            None => format!("ilanet_datapath_packets_total{{{h},event=\"{name}\"}}"),
        };
        let v = get(&s);
        assert!(
            lo as f64 <= v && v <= hi as f64,
            "{s} = {v}, status said {lo}..{hi}"
        );
    }
    let (code, _, _) = http_get(&ns, METRICS, "/nope").expect("404");
    assert_eq!(code, 404);
    let (code, headers, _) = request(&ns, METRICS, "POST", "/metrics").expect("405");
    assert_eq!(code, 405);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "allow" && v.contains("GET")));

    // (2) Through Prometheus.
    let prom = Prometheus::start(&ns);
    let start = Instant::now();
    let wanted = |q: &str| -> Option<f64> {
        match prom.query(&ns, q) {
            Ok(v) if v.len() == 1 => Some(v[0].1),
            _ => None,
        }
    };
    // `up` is 1 once a scrape parsed the whole exposition.
    loop {
        if wanted("up{job=\"ilanet\"}") == Some(1.0)
            && wanted("ilanet_endpoints{host=\"box1\"}").is_some()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "prometheus did not scrape the agent in 30 s: up = {:?}\nprometheus log:\n{}\nagent log:\n{}",
            prom.query(&ns, "up"),
            prom.log(),
            m.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let now = m.status().expect("status");
    assert_eq!(
        wanted("ilanet_endpoints{host=\"box1\"}"),
        Some(now.endpoints as f64)
    );
    assert_eq!(wanted("ilanet_store_connected{host=\"box1\"}"), Some(1.0));
    assert_eq!(
        wanted("ilanet_map_entries{host=\"box1\",map=\"ILA_OUT\"}"),
        Some(now.out_entries as f64)
    );
    assert_eq!(
        wanted("ilanet_cni_requests_total{host=\"box1\",verb=\"check\",result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(
        wanted("ilanet_store_lease_info{host=\"box1\"}"),
        Some(1.0),
        "lease info"
    );
    let series = prom
        .query(&ns, "ilanet_store_lease_info{host=\"box1\"}")
        .expect("lease");
    assert_eq!(
        series[0].0.get("lease").map(String::as_str),
        Some(lease.to_string().as_str())
    );
    // Counters the data path keeps, through Prometheus, equal what the agent reports.
    let drops = prom
        .query(&ns, "sum(ilanet_datapath_drops_total{host=\"box1\"})")
        .expect("drops");
    let total: u64 = now
        .counters
        .expect("counters")
        .pairs()
        .into_iter()
        .filter(|(n, _)| n.starts_with("drop_"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(drops.len(), 1);
    assert!(
        drops[0].1 <= total as f64,
        "{} drops in prometheus, {total} in agent status",
        drops[0].1
    );
}
