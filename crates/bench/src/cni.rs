//! `ilanet bench cni`: how long a runtime waits for the CNI plugin, and how long after that the
//! container is reachable from every other host. On an etcd lab whose host agents run from
//! their configuration files, the real `ilanet-cni` binary is called as a runtime calls it (ADD
//! and DEL with the CNI environment and network configuration on stdin) for namespaces made
//! here, one at a time and several at once; reachability is the moment the container's mapping
//! is in every other host's pinned out-map.

use std::io::Write;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::HostMaps;
use lab::agents::{self, StoreKind};
use lab::{netns, state, LabSpec};
use serde::Serialize;

use crate::stats::Sorted;
use crate::BenchError;

/// What to measure.
#[derive(Debug, Clone)]
pub struct CniBenchConfig {
    /// Lab name (its hosts are the emulated machines).
    pub lab: String,
    /// Hosts (at least 2: reachability is measured from the others).
    pub hosts: usize,
    /// Containers attached per round.
    pub containers: usize,
    /// Rounds, by how many ADDs run at once.
    pub parallel: Vec<usize>,
    /// The `ilanet` binary the lab's agents run.
    pub agent_binary: PathBuf,
    /// The `ilanet-cni` plugin binary.
    pub plugin: PathBuf,
}

/// Percentiles of one kind of latency, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// The figures of some samples (`None` without samples).
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let s = Sorted::new(&ms)?;
        Some(Self {
            count: s.count(),
            p50_ms: s.median(),
            p99_ms: s.percentile(99.0),
            max_ms: s.max(),
        })
    }
}

/// One round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CniRound {
    /// ADDs in flight at once.
    pub parallel: usize,
    /// The ADD call, as the runtime waits for it.
    pub add: Latency,
    /// From ADD's return until every other host's out-map holds the mapping.
    pub reachable: Latency,
    /// The DEL call.
    pub del: Latency,
}

/// Targets of the issue that asked for this benchmark, judged per round.
#[derive(Debug, Clone, Serialize)]
pub struct CniVerdict {
    /// ADD p50 ≤ 25 ms.
    pub add_p50: bool,
    /// ADD p99 ≤ 60 ms.
    pub add_p99: bool,
    /// Reachable everywhere p99 ≤ 80 ms after ADD returns.
    pub reachable_p99: bool,
    /// DEL p99 ≤ 25 ms.
    pub del_p99: bool,
}

impl CniRound {
    /// The round against the targets.
    pub fn verdict(&self) -> CniVerdict {
        CniVerdict {
            add_p50: self.add.p50_ms <= 25.0,
            add_p99: self.add.p99_ms <= 60.0,
            reachable_p99: self.reachable.p99_ms <= 80.0,
            del_p99: self.del.p99_ms <= 25.0,
        }
    }
}

/// Removes what the benchmark made, also when it fails.
struct Cleanup {
    lab: String,
    namespaces: Vec<String>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = netns::delete(ns);
        }
        let _ = lab::down(&self.lab);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn call_plugin(
    plugin: &Path,
    command: &str,
    container_id: &str,
    ns: &str,
    conf: &str,
) -> Result<serde_json::Value, BenchError> {
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns::path(ns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .env("CNI_ARGS", "ILANET_LABELS=app=bench")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BenchError::Os {
            what: format!("starting {}", plugin.display()),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.as_bytes())
            .map_err(|source| BenchError::Os {
                what: "writing the network configuration to the plugin".into(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| BenchError::Os {
        what: format!("waiting for {}", plugin.display()),
        source,
    })?;
    if !out.status.success() {
        return Err(BenchError::Invalid(format!(
            "CNI {command} of {container_id} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    if out.stdout.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| BenchError::Invalid(format!("CNI {command} result unreadable: {e}")))
}

/// The container's address in an ADD result (`ips[0].address`, `addr/128`).
fn result_address(v: &serde_json::Value) -> Result<Ipv6Addr, BenchError> {
    v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| BenchError::Invalid(format!("no IPv6 address in the ADD result {v}")))
}

/// Runs the benchmark: one round per entry of `parallel`, each attaching and detaching
/// `containers` namespaces on the lab's first host.
pub fn run(cfg: &CniBenchConfig) -> Result<Vec<CniRound>, BenchError> {
    if cfg.hosts < 2 {
        return Err(BenchError::Invalid("--hosts must be at least 2".into()));
    }
    if cfg.containers == 0 || cfg.containers > 1000 {
        return Err(BenchError::Invalid("--containers must be 1 to 1000".into()));
    }
    if cfg.parallel.is_empty() || cfg.parallel.iter().any(|p| *p == 0 || *p > 64) {
        return Err(BenchError::Invalid(
            "--parallel takes 1 to 64 per round".into(),
        ));
    }
    if !cfg.plugin.exists() {
        return Err(BenchError::Invalid(format!(
            "the CNI plugin {} is missing: build it (cargo build --release -p cni)",
            cfg.plugin.display()
        )));
    }
    let dir = std::env::temp_dir().join(format!("ilanet-bench-cni-{}", std::process::id()));
    let mut cleanup = Cleanup {
        lab: cfg.lab.clone(),
        namespaces: Vec::new(),
        dir: dir.clone(),
    };
    let mut spec = LabSpec::generic(&cfg.lab, cfg.hosts, 0);
    spec.agent_binary = Some(cfg.agent_binary.clone());
    spec.store = StoreKind::Etcd;
    let plan = lab::up(&spec)?;
    let host = &plan.hosts[0];
    let conf = format!(
        "{{\"cniVersion\":\"1.0.0\",\"name\":\"ilanet\",\"type\":\"ilanet-cni\",\"socket\":\"{}\"}}",
        agents::socket_path(&plan.name, &host.name).display()
    );
    let others: Vec<PathBuf> = plan.hosts[1..]
        .iter()
        .map(|h| state::host_pin_dir(&plan.name, &h.name))
        .collect();
    let mut rounds = Vec::new();
    for (r, &parallel) in cfg.parallel.iter().enumerate() {
        let names: Vec<String> = (0..cfg.containers)
            .map(|i| format!("{}-cb{r}-{i}", plan.name))
            .collect();
        for ns in &names {
            netns::create(ns).map_err(lab::LabError::from)?;
            cleanup.namespaces.push(ns.clone());
        }
        let next = Arc::new(AtomicUsize::new(0));
        let names = Arc::new(names);
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                let (next, names) = (Arc::clone(&next), Arc::clone(&names));
                let (plugin, conf, others) = (cfg.plugin.clone(), conf.clone(), others.clone());
                std::thread::spawn(move || -> Result<Vec<(Duration, Duration)>, BenchError> {
                    let maps: Vec<HostMaps> = others
                        .iter()
                        .map(|p| HostMaps::open_pinned(p))
                        .collect::<Result<_, _>>()
                        .map_err(|e| BenchError::Invalid(format!("opening maps: {e}")))?;
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(ns) = names.get(i) else {
                            return Ok(out);
                        };
                        let id = format!("bench-{}", ns.replace('-', ""));
                        let t0 = Instant::now();
                        let result = call_plugin(&plugin, "ADD", &id, ns, &conf)?;
                        let add = t0.elapsed();
                        let addr = result_address(&result)?;
                        let t1 = Instant::now();
                        let deadline = t1 + Duration::from_secs(10);
                        for m in &maps {
                            while m.get_out(addr).ok().flatten().is_none() {
                                if Instant::now() > deadline {
                                    return Err(BenchError::Invalid(format!(
                                        "{addr} not in every host's map after 10 s"
                                    )));
                                }
                                std::thread::sleep(Duration::from_micros(200));
                            }
                        }
                        out.push((add, t1.elapsed()));
                    }
                })
            })
            .collect();
        let mut adds = Vec::new();
        let mut reach = Vec::new();
        for w in workers {
            let samples = w
                .join()
                .map_err(|_| BenchError::Invalid("a CNI worker panicked".into()))??;
            for (a, r) in samples {
                adds.push(a);
                reach.push(r);
            }
        }
        let mut dels = Vec::new();
        for ns in names.iter() {
            let id = format!("bench-{}", ns.replace('-', ""));
            let t0 = Instant::now();
            call_plugin(&cfg.plugin, "DEL", &id, ns, &conf)?;
            dels.push(t0.elapsed());
        }
        for ns in names.iter() {
            netns::delete(ns).map_err(lab::LabError::from)?;
        }
        cleanup.namespaces.clear();
        let none = || BenchError::Invalid("no samples".into());
        rounds.push(CniRound {
            parallel,
            add: Latency::of(&adds).ok_or_else(none)?,
            reachable: Latency::of(&reach).ok_or_else(none)?,
            del: Latency::of(&dels).ok_or_else(none)?,
        });
    }
    drop(cleanup);
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_a_cni_result() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","ips":[{"address":"fd00:dead:beef::1:2/128","gateway":"fe80::1"}]}"#,
        )
        .expect("json");
        assert_eq!(
            result_address(&v).expect("address"),
            "fd00:dead:beef::1:2".parse::<Ipv6Addr>().expect("addr")
        );
        assert!(result_address(&serde_json::json!({"ips": []})).is_err());
    }

    #[test]
    fn verdicts_follow_the_targets() {
        let l = |p50, p99| Latency {
            count: 100,
            p50_ms: p50,
            p99_ms: p99,
            max_ms: p99,
        };
        let r = CniRound {
            parallel: 1,
            add: l(20.0, 70.0),
            reachable: l(1.0, 5.0),
            del: l(5.0, 10.0),
        };
        let v = r.verdict();
        assert!(v.add_p50 && !v.add_p99 && v.reachable_p99 && v.del_p99);
    }
}
