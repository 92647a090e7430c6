//! `ilanet bench latency`: request/response latency between containers on two lab hosts, for
//! native, ila, ila+policy and swarm, in interleaved rounds (the mode order rotated every round).
//!
//! Debian's `sockperf` (3.7) takes no IPv6 address, and every lab address is IPv6, so the
//! ping-pong is written here: a client in the first host's container sends a `size`-byte request
//! and waits for its echo from [`lab::probe::EchoServers`] in the second host's container (TCP
//! with `TCP_NODELAY` on one connection; UDP on one socket). The time of each round trip is one
//! sample; p50/p99/p99.9 are over all samples of a case, with ratios to native. Within a round
//! the modes take turns every 50 requests (the order rotated every round), so a burst of other
//! load on the machine hits them alike.
//!
//! **First packet of a new flow** (conntrack miss: policy lookups and a conntrack insert on
//! both hosts), reported separately: the `connect()` time of fresh TCP connections (SYN and
//! SYN-ACK each open the flow on their host), and the first request/response on a fresh UDP
//! socket (a new source port: a new 5-tuple).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use lab::plan::{Mode, Plan};
use lab::probe::EchoServers;
use lab::LabSpec;
use serde::{Deserialize, Serialize};

use crate::ebpf::Endpoints;
use crate::machine::Machine;
use crate::micro::load_average;
use crate::stats::Sorted;
use crate::BenchError;

/// The port the echo servers listen on (TCP and UDP); the ila+policy case opens exactly it.
pub const PORT: u16 = 5201;
/// The CPU the echo servers run on; the client runs on [`CLIENT_CPU`] (machines with one CPU
/// run both on it).
const SERVER_CPU: usize = 1;
/// See [`SERVER_CPU`].
const CLIENT_CPU: usize = 0;
/// How long one request may take before it counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Most samples a case may collect (bounds memory: 8 bytes each).
pub const MAX_SAMPLES: usize = 10_000_000;

/// A mode of the latency campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyMode {
    /// Name on the command line and in the report.
    pub name: &'static str,
    /// Short tag for lab names.
    pub tag: &'static str,
    /// Lab mode.
    pub mode: Mode,
    /// Whether the eBPF policy is in force.
    pub policy: bool,
}

/// Every mode, in report order.
pub const MODES: [LatencyMode; 5] = [
    LatencyMode {
        name: "native",
        tag: "nat",
        mode: Mode::Native,
        policy: false,
    },
    LatencyMode {
        name: "ila",
        tag: "ila",
        mode: Mode::Ila,
        policy: false,
    },
    LatencyMode {
        name: "ila+policy",
        tag: "ilp",
        mode: Mode::Ila,
        policy: true,
    },
    LatencyMode {
        name: "swarm",
        tag: "swm",
        mode: Mode::Swarm,
        policy: false,
    },
    LatencyMode {
        name: "evpn",
        tag: "evp",
        mode: Mode::Evpn,
        policy: false,
    },
];

/// Options of the campaign.
#[derive(Debug, Clone)]
pub struct LatencyConfig {
    /// Mode names (empty: all).
    pub modes: Vec<String>,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Requests per protocol per mode per round.
    pub requests: usize,
    /// Fresh flows (TCP connects, new UDP sockets) per protocol per mode per round.
    pub new_flows: usize,
    /// Request size in bytes.
    pub size: usize,
    /// Prefix of the lab names (unique per process).
    pub lab_prefix: String,
}

impl LatencyConfig {
    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Invalid(m));
        if self.rounds == 0 || self.requests == 0 || self.new_flows == 0 {
            return bad(format!(
                "rounds ({}), requests ({}) and new flows ({}) must each be at least 1",
                self.rounds, self.requests, self.new_flows
            ));
        }
        if !(1..=1400).contains(&self.size) {
            return bad(format!(
                "request size {} bytes: expected 1 to 1400 (one packet)",
                self.size
            ));
        }
        if self.rounds.saturating_mul(self.requests) > MAX_SAMPLES
            || self.rounds.saturating_mul(self.new_flows) > MAX_SAMPLES
        {
            return bad(format!(
                "{} rounds × {} requests / {} new flows exceeds {MAX_SAMPLES} samples per case",
                self.rounds, self.requests, self.new_flows
            ));
        }
        Ok(())
    }
}

/// One line of the report: a mode, a protocol, what was timed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyCase {
    /// Mode name.
    pub mode: String,
    /// `"tcp"` or `"udp"`.
    pub proto: String,
    /// `"request"` (established flow) or `"new-flow"` (TCP connect / first UDP request).
    pub kind: String,
    /// Samples measured.
    pub count: usize,
    /// Requests without an answer within the timeout (UDP), or failed connects.
    pub lost: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile (nearest rank), µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Smallest, µs.
    pub min_us: f64,
    /// Largest, µs.
    pub max_us: f64,
    /// p50 ÷ native's p50 of the same protocol and kind.
    pub p50_ratio: Option<f64>,
    /// p99 ÷ native's p99.
    pub p99_ratio: Option<f64>,
    /// p50 − native's p50, µs.
    pub p50_above_native_us: Option<f64>,
}

/// A whole `bench latency` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    /// When it started (UTC).
    pub started: String,
    /// What it ran on.
    pub machine: Machine,
    /// `/proc/loadavg` at the start of the measurement and at its end.
    pub load_before: Option<[f64; 3]>,
    /// See `load_before`.
    pub load_after: Option<[f64; 3]>,
    /// Rounds.
    pub rounds: usize,
    /// Requests per protocol, mode and round.
    pub requests: usize,
    /// Fresh flows per protocol, mode and round.
    pub new_flows: usize,
    /// Request size, bytes.
    pub size: usize,
    /// Mode order of every round.
    pub order: Vec<Vec<String>>,
    /// The figures, mode by mode.
    pub cases: Vec<LatencyCase>,
    /// The issue-14 verdicts (ILA p50 ≤ native + 2 µs, p99 ≤ 1.05 × native), one line each.
    pub verdicts: Vec<String>,
}

/// Resolves mode names (empty: all).
pub fn select_modes(names: &[String]) -> Result<Vec<LatencyMode>, BenchError> {
    if names.is_empty() {
        return Ok(MODES.to_vec());
    }
    let mut out = Vec::new();
    for n in names {
        let m = MODES.iter().find(|m| m.name == n).ok_or_else(|| {
            BenchError::Invalid(format!(
                "unknown latency mode '{n}': expected one of {}",
                MODES.map(|m| m.name).join(", ")
            ))
        })?;
        if !out.contains(m) {
            out.push(*m);
        }
    }
    Ok(out)
}

/// The mode order of round `round`: rotated by one every round, so no mode always runs first.
pub fn rotated(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round) % n.max(1)).collect()
}

/// Labs of the campaign; removed when dropped (also on error).
struct Labs(Vec<String>);

impl Drop for Labs {
    fn drop(&mut self) {
        for name in self.0.iter().rev() {
            if let Err(e) = lab::down(name) {
                log::error!("removing lab '{name}': {e}");
                eprintln!(
                    "warning: removing lab '{name}': {e} (run `ilanet lab down --name {name}`)"
                );
            }
        }
    }
}

/// Pins the calling thread to `cpu` (threads it starts inherit the mask). `false` if the
/// machine has no such CPU or the kernel refused.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it; pid 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The calling thread's CPU mask, to restore after pinning.
fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: as in `pin_to`; the kernel fills `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: as in `pin_to`.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
    }
}

/// A lab up with the echo servers in the second host's container.
struct Bed {
    client_ns: String,
    server: SocketAddrV6,
    _echo: EchoServers,
}

fn build(labs: &mut Labs, name: &str, m: &LatencyMode) -> Result<Bed, BenchError> {
    let planned = if m.mode == Mode::Ila { 0 } else { 1 };
    let mut spec = LabSpec::generic(name, 2, planned);
    spec.mode = m.mode;
    if m.mode == Mode::Evpn {
        // The paper's EVPN: gobgpd as route server (as `bench paper` builds it).
        spec.routing = lab::plan::RoutingMode::Gobgp;
    }
    let plan: Plan = lab::up(&spec)?;
    labs.0.push(name.to_string());
    let (client_ns, server_ns, addr) = if m.mode == Mode::Ila {
        let ep = Endpoints::create(&plan)?;
        if m.policy {
            ep.install_open_port(PORT)?;
        }
        (ep.client.netns, ep.server.netns, ep.server.sir_addr)
    } else {
        let c = &plan.hosts[0].containers[0];
        let s = &plan.hosts[1].containers[0];
        (c.netns.clone(), s.netns.clone(), s.sir_addr)
    };
    // Every mode's echo threads on the same CPU (they inherit the mask), apart from the
    // client (see `run`): otherwise where the scheduler happens to put each mode's server
    // thread, for the whole run, decides its latency more than the data path does.
    let saved = affinity();
    let pinned = pin_to(SERVER_CPU);
    let echo = EchoServers::start(&server_ns, addr, PORT, PORT);
    if let (true, Some(set)) = (pinned, saved) {
        restore_affinity(&set);
    }
    let echo = echo?;
    Ok(Bed {
        client_ns,
        server: SocketAddrV6::new(addr, PORT, 0, 0),
        _echo: echo,
    })
}

fn os(what: String) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Os { what, source }
}

/// Samples of one (mode, protocol, kind), µs.
#[derive(Debug, Default, Clone)]
struct Samples {
    us: Vec<f64>,
    lost: usize,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn tcp_connect(bed: &Bed) -> Result<(TcpStream, Duration), BenchError> {
    let _guard = lab::netns::NetnsGuard::enter(&bed.client_ns).map_err(lab::LabError::from)?;
    let start = Instant::now();
    let s =
        TcpStream::connect_timeout(&SocketAddr::V6(bed.server), REQUEST_TIMEOUT).map_err(os(
            format!("connecting to {} from '{}'", bed.server, bed.client_ns),
        ))?;
    Ok((s, start.elapsed()))
}

fn udp_socket(bed: &Bed) -> Result<UdpSocket, BenchError> {
    let s = {
        let _guard = lab::netns::NetnsGuard::enter(&bed.client_ns).map_err(lab::LabError::from)?;
        UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0))
            .map_err(os(format!("binding a UDP socket in '{}'", bed.client_ns)))?
    };
    s.connect(bed.server)
        .map_err(os(format!("connecting UDP to {}", bed.server)))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(os("setting a UDP timeout".into()))?;
    Ok(s)
}

/// One UDP request; `None` if no echo came back in time (lost). Stale echoes of earlier lost
/// requests carry another sequence number and are skipped.
fn udp_request(s: &UdpSocket, msg: &mut [u8], seq: u64) -> Result<Option<Duration>, BenchError> {
    msg[..8].copy_from_slice(&seq.to_be_bytes());
    let mut buf = vec![0u8; msg.len() + 16];
    let start = Instant::now();
    s.send(msg).map_err(os("sending a UDP request".into()))?;
    loop {
        match s.recv(&mut buf) {
            Ok(n) if n == msg.len() && buf[..n] == *msg => return Ok(Some(start.elapsed())),
            Ok(_) if start.elapsed() < REQUEST_TIMEOUT => continue,
            Ok(_) => return Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(os("receiving a UDP echo".into())(e)),
        }
    }
}

/// Every sample of one mode in one round.
#[derive(Default)]
struct ModeSamples {
    tcp: Samples,
    udp: Samples,
    tcp_new: Samples,
    udp_new: Samples,
}

/// Requests per mode before the next mode's turn: modes alternate in chunks this small, so a
/// burst of other load on the machine (tens of ms) hits every mode alike.
const CHUNK: usize = 50;
/// Unrecorded requests on a fresh connection or socket (caches, neighbour entries, the
/// echo server's accept).
const WARMUP: usize = 10;

/// A mode's established flows for one round: one TCP connection, one UDP socket.
struct Conns {
    tcp: TcpStream,
    udp: UdpSocket,
    seq: u64,
}

fn open(bed: &Bed, msg: &mut [u8]) -> Result<Conns, BenchError> {
    let (tcp, _) = tcp_connect(bed)?;
    tcp.set_nodelay(true)
        .map_err(os("setting TCP_NODELAY".into()))?;
    tcp.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(os("setting a TCP timeout".into()))?;
    let mut c = Conns {
        tcp,
        udp: udp_socket(bed)?,
        seq: 0,
    };
    let mut scratch = ModeSamples::default();
    requests(bed, &mut c, msg, WARMUP, &mut scratch)?;
    Ok(c)
}

/// `n` TCP requests, then `n` UDP requests, on `c`.
fn requests(
    bed: &Bed,
    c: &mut Conns,
    msg: &mut [u8],
    n: usize,
    acc: &mut ModeSamples,
) -> Result<(), BenchError> {
    let mut back = vec![0u8; msg.len()];
    for _ in 0..n {
        c.seq += 1;
        msg[..8].copy_from_slice(&c.seq.to_be_bytes());
        let start = Instant::now();
        c.tcp
            .write_all(msg)
            .map_err(os(format!("sending a TCP request to {}", bed.server)))?;
        c.tcp
            .read_exact(&mut back)
            .map_err(os(format!("reading a TCP echo from {}", bed.server)))?;
        let t = start.elapsed();
        if back != msg {
            return Err(BenchError::Measurement(format!(
                "TCP echo from {} differs from the request",
                bed.server
            )));
        }
        acc.tcp.us.push(us(t));
    }
    for _ in 0..n {
        c.seq += 1;
        match udp_request(&c.udp, msg, c.seq)? {
            Some(t) => acc.udp.us.push(us(t)),
            None => acc.udp.lost += 1,
        }
    }
    Ok(())
}

/// One fresh TCP connection (its `connect()` time) and one fresh UDP socket (its first
/// request).
fn new_flow(bed: &Bed, msg: &mut [u8], seq: u64, acc: &mut ModeSamples) -> Result<(), BenchError> {
    match tcp_connect(bed) {
        Ok((c, t)) => {
            acc.tcp_new.us.push(us(t));
            drop(c);
        }
        Err(e) => {
            log::warn!("new TCP flow to {}: {e}", bed.server);
            acc.tcp_new.lost += 1;
        }
    }
    let u = udp_socket(bed)?;
    match udp_request(&u, msg, seq)? {
        Some(t) => acc.udp_new.us.push(us(t)),
        None => acc.udp_new.lost += 1,
    }
    Ok(())
}

/// One round: every mode in `order` gets its connections, then the modes take turns in
/// chunks of [`CHUNK`] requests, then one new flow each in turn.
fn measure_round(
    beds: &[Bed],
    order: &[usize],
    cfg: &LatencyConfig,
    acc: &mut [ModeSamples],
) -> Result<(), BenchError> {
    let mut msg = vec![0x5au8; cfg.size.max(8)];
    let mut conns = Vec::with_capacity(beds.len());
    for b in beds {
        conns.push(open(b, &mut msg)?);
    }
    let mut left = cfg.requests;
    while left > 0 {
        let n = left.min(CHUNK);
        for &i in order {
            requests(&beds[i], &mut conns[i], &mut msg, n, &mut acc[i])?;
        }
        left -= n;
    }
    drop(conns);
    for j in 0..cfg.new_flows {
        for &i in order {
            new_flow(&beds[i], &mut msg, 1 << 40 | j as u64, &mut acc[i])?;
        }
    }
    Ok(())
}

fn summarize(mode: &str, proto: &str, kind: &str, s: &Samples) -> Result<LatencyCase, BenchError> {
    let sorted = Sorted::new(&s.us).ok_or_else(|| {
        BenchError::Measurement(format!(
            "{mode} {proto} {kind}: no sample at all ({} lost)",
            s.lost
        ))
    })?;
    Ok(LatencyCase {
        mode: mode.into(),
        proto: proto.into(),
        kind: kind.into(),
        count: sorted.count(),
        lost: s.lost,
        p50_us: sorted.percentile(50.0),
        p99_us: sorted.percentile(99.0),
        p999_us: sorted.percentile(99.9),
        mean_us: sorted.mean(),
        min_us: sorted.min(),
        max_us: sorted.max(),
        p50_ratio: None,
        p99_ratio: None,
        p50_above_native_us: None,
    })
}

/// Fills the ratios to native and returns the issue-14 verdict lines for the ILA modes.
fn compare(cases: &mut [LatencyCase]) -> Vec<String> {
    let native: Vec<LatencyCase> = cases
        .iter()
        .filter(|c| c.mode == "native")
        .cloned()
        .collect();
    let mut verdicts = Vec::new();
    for c in cases.iter_mut() {
        let Some(n) = native
            .iter()
            .find(|n| n.proto == c.proto && n.kind == c.kind)
        else {
            continue;
        };
        c.p50_ratio = Some(c.p50_us / n.p50_us);
        c.p99_ratio = Some(c.p99_us / n.p99_us);
        c.p50_above_native_us = Some(c.p50_us - n.p50_us);
        if c.mode.starts_with("ila") && c.kind == "request" {
            let p50_ok = c.p50_us <= n.p50_us + 2.0;
            let p99_ok = c.p99_us <= 1.05 * n.p99_us;
            verdicts.push(format!(
                "{} {}: p50 {:.1} µs vs native {:.1} ({:+.1}; target ≤ +2): {}; p99 {:.1} µs = {:.3} × native (target ≤ 1.05): {}",
                c.mode,
                c.proto,
                c.p50_us,
                n.p50_us,
                c.p50_us - n.p50_us,
                if p50_ok { "met" } else { "MISSED" },
                c.p99_us,
                c.p99_us / n.p99_us,
                if p99_ok { "met" } else { "MISSED" },
            ));
        }
    }
    verdicts
}

/// Runs the campaign: builds one lab per mode, measures them in rotated rounds, tears them
/// down. `progress` gets a line per step.
pub fn run(
    cfg: &LatencyConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<LatencyReport, BenchError> {
    cfg.validate()?;
    lab::require("ip")?;
    let modes = select_modes(&cfg.modes)?;
    let started = crate::machine::now_rfc3339();
    let mut labs = Labs(Vec::new());
    let mut beds = Vec::new();
    for m in &modes {
        progress(&format!("building the {} lab", m.name));
        let name = format!("{}-{}", cfg.lab_prefix, m.tag);
        beds.push(build(&mut labs, &name, m)?);
    }
    // The client on its own CPU for the measurement, restored afterwards (a library call must
    // not leave the caller's thread pinned).
    let saved = affinity();
    let pinned = pin_to(CLIENT_CPU);
    let result = measure_all(cfg, &modes, &beds, progress);
    if let (true, Some(set)) = (pinned, saved) {
        restore_affinity(&set);
    }
    let (acc, order, load_before, load_after) = result?;
    drop(beds);
    drop(labs);
    let mut cases = Vec::new();
    for (m, a) in modes.iter().zip(&acc) {
        for (proto, kind, s) in [
            ("tcp", "request", &a.tcp),
            ("udp", "request", &a.udp),
            ("tcp", "new-flow", &a.tcp_new),
            ("udp", "new-flow", &a.udp_new),
        ] {
            cases.push(summarize(m.name, proto, kind, s)?);
        }
    }
    let verdicts = compare(&mut cases);
    Ok(LatencyReport {
        started,
        machine: Machine::detect(),
        load_before,
        load_after,
        rounds: cfg.rounds,
        requests: cfg.requests,
        new_flows: cfg.new_flows,
        size: cfg.size.max(8),
        order,
        cases,
        verdicts,
    })
}

/// Samples per mode, the mode order of every round, the load before and after.
type Measured = (
    Vec<ModeSamples>,
    Vec<Vec<String>>,
    Option<[f64; 3]>,
    Option<[f64; 3]>,
);

fn measure_all(
    cfg: &LatencyConfig,
    modes: &[LatencyMode],
    beds: &[Bed],
    progress: &mut dyn FnMut(&str),
) -> Result<Measured, BenchError> {
    let load_before = load_average();
    let mut acc: Vec<ModeSamples> = modes.iter().map(|_| ModeSamples::default()).collect();
    let mut order = Vec::new();
    for round in 0..cfg.rounds {
        let idx = rotated(modes.len(), round);
        order.push(idx.iter().map(|&i| modes[i].name.to_string()).collect());
        progress(&format!(
            "round {}/{}: {}",
            round + 1,
            cfg.rounds,
            idx.iter()
                .map(|&i| modes[i].name)
                .collect::<Vec<_>>()
                .join(" ")
        ));
        measure_round(beds, &idx, cfg, &mut acc).map_err(|e| BenchError::Step {
            what: format!("round {}", round + 1),
            source: Box::new(e),
        })?;
    }
    Ok((acc, order, load_before, load_average()))
}

/// The Markdown section of a run.
pub fn markdown(r: &LatencyReport) -> String {
    let mut md = String::from("## Request/response latency (`bench latency`)\n\n");
    let load = |l: Option<[f64; 3]>| {
        l.map(|[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
            .unwrap_or_else(|| "?".into())
    };
    let _ = writeln!(
        md,
        "{}; {} CPUs, kernel {}. Started {}; load average {} before the measurement, {} after.\n",
        r.machine.cpu,
        r.machine.cpus,
        r.machine.kernel,
        r.started,
        load(r.load_before),
        load(r.load_after)
    );
    let _ = writeln!(
        md,
        "Container on host 1 → container on host 2, {}-byte requests echoed back (TCP_NODELAY on \
         one connection; UDP on one socket), {} rounds × {} requests per protocol, the modes \
         taking turns every {CHUNK} requests, their order rotated every round. *new-flow*: \
         `connect()` of a fresh TCP connection, or the first request of a fresh UDP socket ({} \
         per round, the modes in turn): conntrack miss, policy and \
         conntrack insert on both hosts. Round-trip times in µs; percentiles nearest-rank over \
         all samples; ratios to native of the same protocol and kind.\n",
        r.size, r.rounds, r.requests, r.new_flows
    );
    md.push_str(
        "| mode | proto | kind | count | lost | p50 µs | p99 µs | p99.9 µs | mean µs | p50 − native | p50 ÷ native | p99 ÷ native |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let o = |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "–".into());
    for c in &r.cases {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            c.mode,
            c.proto,
            c.kind,
            c.count,
            c.lost,
            c.p50_us,
            c.p99_us,
            c.p999_us,
            c.mean_us,
            o(c.p50_above_native_us, 1),
            o(c.p50_ratio, 3),
            o(c.p99_ratio, 3)
        );
    }
    md.push('\n');
    for v in &r.verdicts {
        let _ = writeln!(md, "- {v}");
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_puts_every_mode_first_once() {
        let firsts: Vec<usize> = (0..4).map(|r| rotated(4, r)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 3]);
        for r in 0..4 {
            let mut o = rotated(4, r);
            o.sort_unstable();
            assert_eq!(o, [0, 1, 2, 3]);
        }
    }

    #[test]
    fn modes_resolve_and_unknown_names_are_refused() {
        assert_eq!(select_modes(&[]).expect("all").len(), MODES.len());
        let two = select_modes(&["ila".into(), "native".into(), "ila".into()]).expect("two");
        assert_eq!(
            two.iter().map(|m| m.name).collect::<Vec<_>>(),
            ["ila", "native"]
        );
        let e = select_modes(&["vxlan".into()]).expect_err("unknown");
        assert!(e.to_string().contains("vxlan"), "{e}");
    }

    #[test]
    fn ratios_and_verdicts_against_native() {
        let s = |v: &[f64]| Samples {
            us: v.to_vec(),
            lost: 0,
        };
        let mut cases = vec![
            summarize("native", "tcp", "request", &s(&[10.0, 20.0, 30.0])).expect("n"),
            summarize("ila", "tcp", "request", &s(&[11.0, 21.0, 31.0])).expect("i"),
        ];
        let v = compare(&mut cases);
        assert_eq!(cases[1].p50_above_native_us, Some(1.0));
        assert_eq!(cases[1].p99_ratio, Some(31.0 / 30.0));
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("met") && !v[0].contains("MISSED"), "{}", v[0]);
        assert!(summarize("x", "udp", "request", &Samples::default()).is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        let ok = LatencyConfig {
            modes: vec![],
            rounds: 1,
            requests: 1,
            new_flows: 1,
            size: 64,
            lab_prefix: "x".into(),
        };
        assert!(ok.validate().is_ok());
        assert!(LatencyConfig {
            size: 0,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(LatencyConfig {
            size: 9000,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(LatencyConfig {
            rounds: 0,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(LatencyConfig {
            requests: MAX_SAMPLES,
            rounds: 2,
            ..ok
        }
        .validate()
        .is_err());
    }
}
