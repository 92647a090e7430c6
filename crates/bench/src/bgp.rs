//! `ilanet bench bgp`: locator convergence over BGP on a lab with BIRD 2 as route reflector and
//! one agent process per host (etcd store), read from the kernel tables themselves.
//!
//! Each round takes one host: its agent is killed (SIGKILL) — how long until its locator is
//! gone from every other host's table and the router's — then started again — how long until
//! the locator is back in each other host's table. Last, an agent is restarted under graceful
//! restart while a UDP stream and a TCP echo stream run from another host's container to one
//! of its containers: datagrams lost, and whether the TCP connection survived.

use std::collections::BTreeSet;
use std::net::{SocketAddrV6, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lab::agents::{respawn_agent, signal_host_agent, AgentSignal, StoreKind};
use lab::plan::{BgpTimers, Plan, RoutingMode};
use lab::routing::{Tables, PROTO_BIRD, PROTO_ILANET};
use lab::LabSpec;
use serde::Serialize;

use crate::BenchError;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct BgpBenchConfig {
    /// Lab name (must not be up).
    pub lab: String,
    /// Hosts.
    pub hosts: usize,
    /// Kill/start rounds (each on the next host).
    pub rounds: usize,
    /// BGP hold time (s); also the graceful-restart time the agents advertise.
    pub hold_time: u16,
    /// Seconds the stream runs after the restarted agent is back.
    pub stream_after: u64,
    /// The ilanet binary that runs the agents.
    pub agent_binary: PathBuf,
}

/// Percentiles in milliseconds (the same figures as `bench cni` reports).
pub use crate::cni::Latency as Millis;

/// The graceful-restart round.
#[derive(Debug, Clone, Serialize)]
pub struct RestartRound {
    /// Host whose agent was restarted.
    pub host: String,
    /// Datagrams sent across the restart (one every 2 ms).
    pub udp_sent: u64,
    /// Of those, not echoed back.
    pub udp_lost: u64,
    /// Bytes the TCP echo stream verified.
    pub tcp_bytes: usize,
    /// Where the TCP stream broke, if it did.
    pub tcp_error: Option<String>,
    /// From the restart until the restarted host had every other locator again (ms).
    pub reconverged_ms: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BgpBenchReport {
    /// Hosts.
    pub hosts: usize,
    /// Hold time and graceful-restart time (s).
    pub hold_time: u16,
    /// Rounds.
    pub rounds: usize,
    /// `lab up` until every locator was routed everywhere (s).
    pub lab_up_secs: f64,
    /// The host's session with the reflector up → its locator in each other host's table.
    pub up: Option<Millis>,
    /// Agent process started → its locator in each other host's table (includes the agent's
    /// own start: store, maps, programs).
    pub up_from_start: Option<Millis>,
    /// Agent killed → its locator gone from every other host's table and the router's (one
    /// sample per round: the last table).
    pub withdraw: Option<Millis>,
    /// The graceful-restart round.
    pub restart: RestartRound,
    /// Target: p99 of `up` (ms).
    pub up_target_p99_ms: f64,
    /// Target: largest `withdraw` (ms): hold time + 0.5 s.
    pub withdraw_target_ms: f64,
}

impl BgpBenchReport {
    /// Whether each target was met: (up p99, withdraw max, no datagram lost and the TCP
    /// stream survived).
    pub fn verdict(&self) -> (bool, bool, bool) {
        (
            self.up
                .as_ref()
                .is_some_and(|m| m.p99_ms <= self.up_target_p99_ms),
            self.withdraw
                .as_ref()
                .is_some_and(|m| m.max_ms <= self.withdraw_target_ms),
            self.restart.udp_lost == 0 && self.restart.tcp_error.is_none(),
        )
    }
}

/// Removes the lab when dropped (also on error or panic).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.0) {
            log::error!("removing lab '{}': {e}", self.0);
        }
    }
}

fn locator(plan: &Plan, host: &str) -> String {
    plan.hosts
        .iter()
        .find(|h| h.name == host)
        .map(|h| format!("{}/64", h.locator.to_addr()))
        .unwrap_or_default()
}

/// Polls the kernel tables of every host but `host` (and the router) until `prefix` is present
/// (or absent) everywhere; returns, per namespace, when it was first seen so.
fn watch(
    tables: &Tables,
    plan: &Plan,
    host: &str,
    prefix: &str,
    present: bool,
    start: Instant,
    timeout: Duration,
) -> Result<Vec<Duration>, BenchError> {
    let mut targets: Vec<(String, u8)> = plan
        .hosts
        .iter()
        .filter(|h| h.name != host)
        .map(|h| (h.netns.clone(), PROTO_ILANET))
        .collect();
    targets.push((plan.router_netns.clone(), PROTO_BIRD));
    let mut seen: Vec<Option<Duration>> = vec![None; targets.len()];
    loop {
        for (i, (ns, proto)) in targets.iter().enumerate() {
            if seen[i].is_some() {
                continue;
            }
            let has = tables
                .locators(ns, *proto)?
                .iter()
                .any(|r| r.prefix == prefix);
            if has == present {
                seen[i] = Some(start.elapsed());
            }
        }
        if seen.iter().all(Option::is_some) {
            return Ok(seen.into_iter().flatten().collect());
        }
        if start.elapsed() > timeout {
            let left: Vec<&str> = targets
                .iter()
                .zip(&seen)
                .filter(|(_, s)| s.is_none())
                .map(|((ns, _), _)| ns.as_str())
                .collect();
            return Err(BenchError::Invalid(format!(
                "{prefix} still {} in {} after {timeout:?}",
                if present { "missing" } else { "present" },
                left.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls a host's agent until its first BGP session is Established; returns when, from `start`.
fn wait_established(
    lab: &str,
    host: &str,
    start: Instant,
    timeout: Duration,
) -> Result<Duration, BenchError> {
    while start.elapsed() < timeout {
        if let Ok(v) = lab::agents::call(lab, host, &agent::api::Request::BgpStatus) {
            if let Ok(st) = serde_json::from_value::<agent::routing::BgpStatus>(v) {
                if st
                    .speaker
                    .peers
                    .iter()
                    .any(|p| p.state == bgp::State::Established)
                {
                    return Ok(start.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(BenchError::Invalid(format!(
        "host '{host}': no BGP session up {timeout:?} after its agent started"
    )))
}

/// A UDP stream from one container to another's echo server: every datagram carries a
/// sequence number; the echoes are collected.
struct UdpStream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    got: Arc<Mutex<BTreeSet<u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpStream {
    fn start(ns: &str, to: std::net::Ipv6Addr, port: u16) -> Result<Self, BenchError> {
        let sock = {
            let _g = lab::netns::NetnsGuard::enter(ns).map_err(lab::LabError::from)?;
            UdpSocket::bind(SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, 0, 0, 0))
                .map_err(|e| BenchError::Invalid(format!("udp socket in {ns}: {e}")))?
        };
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| BenchError::Invalid(format!("udp socket: {e}")))?;
        let rx = sock
            .try_clone()
            .map_err(|e| BenchError::Invalid(format!("udp socket: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let got = Arc::new(Mutex::new(BTreeSet::new()));
        let (s1, n1) = (Arc::clone(&stop), Arc::clone(&sent));
        let tx = std::thread::spawn(move || {
            let dst = SocketAddrV6::new(to, port, 0, 0);
            let mut seq = 0u64;
            while !s1.load(Ordering::Relaxed) {
                if sock.send_to(&seq.to_be_bytes(), dst).is_ok() {
                    seq += 1;
                    n1.store(seq, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let (s2, g2) = (Arc::clone(&stop), Arc::clone(&got));
        let rxt = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            // Keep reading a little after the stop so echoes in flight are counted.
            let mut quiet_since: Option<Instant> = None;
            loop {
                if s2.load(Ordering::Relaxed) {
                    let q = *quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_millis(300) {
                        return;
                    }
                }
                if let Ok((8, _)) = rx.recv_from(&mut buf) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[..8]);
                    if let Ok(mut g) = g2.lock() {
                        g.insert(u64::from_be_bytes(b));
                    }
                }
            }
        });
        Ok(Self {
            stop,
            sent,
            got,
            threads: vec![tx, rxt],
        })
    }

    /// Stops; returns (sent, lost).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let sent = self.sent.load(Ordering::Relaxed);
        let got = self.got.lock().map(|g| g.len() as u64).unwrap_or(0);
        (sent, sent.saturating_sub(got))
    }
}

/// Runs the benchmark; `note` gets progress lines.
pub fn run(cfg: &BgpBenchConfig, mut note: impl FnMut(&str)) -> Result<BgpBenchReport, BenchError> {
    if cfg.hosts < 3 {
        return Err(BenchError::Invalid("--hosts must be at least 3".into()));
    }
    if cfg.hold_time < 3 {
        return Err(BenchError::Invalid(
            "--hold-time must be at least 3 s".into(),
        ));
    }
    let mut spec = LabSpec::generic(&cfg.lab, cfg.hosts, 1);
    spec.store = StoreKind::Etcd;
    spec.routing = RoutingMode::Bird;
    spec.bgp = BgpTimers {
        hold_time: cfg.hold_time,
        graceful_restart: cfg.hold_time,
    };
    spec.agent_binary = Some(cfg.agent_binary.clone());
    note(&format!(
        "building a {}-host lab (etcd, BIRD route reflector, hold time {} s)",
        cfg.hosts, cfg.hold_time
    ));
    let t = Instant::now();
    let plan = lab::up(&spec)?;
    let _cleanup = Cleanup(cfg.lab.clone());
    let lab_up_secs = t.elapsed().as_secs_f64();
    let tables = Tables::open(&plan)?;
    let hold = Duration::from_secs(u64::from(cfg.hold_time));
    let timeout = hold * 3 + Duration::from_secs(10);

    let mut up = Vec::new();
    let mut up_from_start = Vec::new();
    let mut withdraw = Vec::new();
    for r in 0..cfg.rounds {
        let host = plan.hosts[1 + r % (plan.hosts.len() - 1)].name.clone();
        let prefix = locator(&plan, &host);
        let args = signal_host_agent(&cfg.lab, &host, AgentSignal::Kill)?;
        let t0 = Instant::now();
        let gone = watch(&tables, &plan, &host, &prefix, false, t0, timeout)?;
        let last = gone.iter().max().copied().unwrap_or_default();
        withdraw.push(last);
        respawn_agent(&cfg.lab, &host, &args)?;
        let t1 = Instant::now();
        // The agent's own start (maps, store, programs) comes first; BGP's part starts when
        // its session with the reflector is up.
        let established = wait_established(&cfg.lab, &host, t1, timeout)?;
        let back = watch(&tables, &plan, &host, &prefix, true, t1, timeout)?;
        // The router's entry is not a host's table.
        up_from_start.extend(&back[..back.len() - 1]);
        up.extend(
            back[..back.len() - 1]
                .iter()
                .map(|d| d.saturating_sub(established)),
        );
        note(&format!(
            "round {}/{}: {host} killed → withdrawn everywhere in {:.0} ms; started → session up in {:.0} ms → routed everywhere {:.0} ms later",
            r + 1,
            cfg.rounds,
            last.as_secs_f64() * 1e3,
            established.as_secs_f64() * 1e3,
            back.iter()
                .max()
                .copied()
                .unwrap_or_default()
                .saturating_sub(established)
                .as_secs_f64()
                * 1e3
        ));
        // Let its sessions settle (End-of-RIB both ways) before the next round.
        lab::routing::wait_converged(&plan, timeout)?;
    }

    // Graceful restart under a running stream: host 0's container → host 1's container.
    let (src, dst) = (&plan.hosts[0], &plan.hosts[1]);
    let (sc, dc) = match (src.containers.first(), dst.containers.first()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(BenchError::Invalid("the lab has no containers".into())),
    };
    let _echo = lab::probe::EchoServers::start(&dc.netns, dc.sir_addr, 7001, 7002)?;
    let stop = Arc::new(AtomicBool::new(false));
    let tcp = lab::probe::echo_stream(&sc.netns, &dc.netns, dc.sir_addr, 7003, Arc::clone(&stop))?;
    let udp = UdpStream::start(&sc.netns, dc.sir_addr, 7002)?;
    std::thread::sleep(Duration::from_secs(1));
    note(&format!(
        "restarting {}'s agent under a UDP and a TCP stream from {}",
        dst.name, sc.name
    ));
    let args = signal_host_agent(&cfg.lab, &dst.name, AgentSignal::Kill)?;
    let t2 = Instant::now();
    respawn_agent(&cfg.lab, &dst.name, &args)?;
    // Back when it has every other host's locator again from its new session.
    let mut reconverged = None;
    while t2.elapsed() < timeout {
        let v: serde_json::Value =
            lab::agents::call(&cfg.lab, &dst.name, &agent::api::Request::BgpRoutes)
                .unwrap_or(serde_json::Value::Null);
        let n = v.as_array().map_or(0, |a| a.len());
        if n + 1 >= plan.hosts.len() {
            reconverged = Some(t2.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_secs(cfg.stream_after));
    stop.store(true, Ordering::Relaxed);
    let (udp_sent, udp_lost) = udp.finish();
    let tcp_result = tcp
        .join()
        .unwrap_or_else(|_| Err("the TCP stream thread panicked".into()));
    let restart = RestartRound {
        host: dst.name.clone(),
        udp_sent,
        udp_lost,
        tcp_bytes: *tcp_result.as_ref().unwrap_or(&0),
        tcp_error: tcp_result.err(),
        reconverged_ms: reconverged.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
    };
    Ok(BgpBenchReport {
        hosts: cfg.hosts,
        hold_time: cfg.hold_time,
        rounds: cfg.rounds,
        lab_up_secs,
        up: Millis::of(&up),
        up_from_start: Millis::of(&up_from_start),
        withdraw: Millis::of(&withdraw),
        restart,
        up_target_p99_ms: 1000.0,
        withdraw_target_ms: f64::from(cfg.hold_time) * 1000.0 + 500.0,
    })
}
