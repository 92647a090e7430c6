//! Campaigns: build the labs, start the iperf3 servers, measure every case in interleaved rounds,
//! write results after every run, tear everything down (also on error or Ctrl-C).
//!
//! Labs are built once per campaign and kept up: rebuilding per round costs seconds per round
//! and adds nothing the interleaving does not already give (every case sees the same drift of
//! the machine), while a lab kept up holds its conditions (routes, FDB, conntrack) constant.

use std::cell::Cell;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lab::plan::{Mode, Plan};
use lab::{LabSpec, SwarmRules};

use crate::ebpf::{Endpoints, PolicyChange, PolicyCheck, RuleSwitcher, LISTING10_PORT};
use crate::iperf::{self, ClientSpec, IperfServer};
use crate::machine::{self, Machine};
use crate::model::{
    Campaign, CaseResult, PolicyStats, Results, RunRecord, Settings, Sweep, SweepPoint,
};
use crate::scenario::{paper_scenarios, RuleSeries, Scenario, Setup};
use crate::stats::interleaved;
use crate::{report, BenchError};

/// Where a campaign is, for a progress line.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Runs finished.
    pub done: usize,
    /// Runs planned.
    pub total: usize,
    /// What is happening now.
    pub doing: String,
    /// Last finished run: case and Gbit/s.
    pub last: Option<(String, f64)>,
    /// Estimated time left.
    pub eta: Duration,
}

/// Options of the paper campaign.
#[derive(Debug, Clone)]
pub struct PaperConfig {
    /// How to measure.
    pub settings: Settings,
    /// Scenario names to run (empty: all).
    pub scenarios: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    /// Prefix of the lab names (unique per process, so a stale lab never collides).
    pub lab_prefix: String,
    /// Bound of a multi-point sweep's planned measuring time, hours.
    pub max_hours: f64,
}

/// Options of the rule-count campaign.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    /// How to measure.
    pub settings: Settings,
    /// Non-matching rule counts.
    pub counts: Vec<usize>,
    /// Output directory.
    pub out: PathBuf,
    /// Prefix of the lab names.
    pub lab_prefix: String,
}

/// Labs of a campaign; removed when dropped (also on error and interruption).
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

/// One container pair of a lab: the client's namespace, the server's and the address the
/// client sends to.
#[derive(Debug, Clone)]
struct Pair {
    client_netns: String,
    server_netns: String,
    server_addr: Ipv6Addr,
}

/// A lab up and ready: its plan, its container pairs (the first one is what a single-pair
/// campaign measures), the benchmark endpoints (ILA mode) and, once started, one iperf3 server
/// per pair in the receiving container.
struct Testbed {
    name: String,
    /// ILA labs get their containers from the agents with `app=service1` (what Listing 10
    /// selects), so `ila` and `ila+policy` run on identical endpoints; one [`Endpoints`] per
    /// pair, the first being the one the policy is checked on.
    endpoints: Vec<Endpoints>,
    pairs: Vec<Pair>,
    servers: Vec<IperfServer>,
    /// MTU the lab is set to now (switched between sweep points).
    mtu: Cell<u32>,
}

impl Testbed {
    /// Builds the lab with `pairs` container pairs (one container of each pair on each of the
    /// two hosts) and sets the MTU; the iperf3 servers are started later
    /// ([`Testbed::start_servers`]) so a policy check can use the server port first.
    fn build(
        labs: &mut Labs,
        name: &str,
        mode: Mode,
        mtu: u32,
        pairs: usize,
    ) -> Result<Self, BenchError> {
        let planned = if mode == Mode::Ila { 0 } else { pairs };
        let mut spec = LabSpec::generic(name, 2, planned);
        spec.mode = mode;
        if mode == Mode::Evpn {
            // The paper's EVPN: gobgpd as route server.
            spec.routing = lab::plan::RoutingMode::Gobgp;
        }
        let plan = lab::up(&spec)?;
        labs.0.push(name.to_string());
        let endpoints = match mode {
            Mode::Ila => (0..pairs)
                .map(|i| Endpoints::create_pair(&plan, i))
                .collect::<Result<Vec<_>, _>>()?,
            Mode::Native | Mode::Swarm | Mode::Evpn => Vec::new(),
        };
        let pairs: Vec<Pair> = if endpoints.is_empty() {
            plan_pairs(&plan, pairs)?
        } else {
            endpoints
                .iter()
                .map(|ep| Pair {
                    client_netns: ep.client.netns.clone(),
                    server_netns: ep.server.netns.clone(),
                    server_addr: ep.server.sir_addr,
                })
                .collect()
        };
        let bed = Self {
            name: name.to_string(),
            endpoints,
            pairs,
            servers: Vec::new(),
            mtu: Cell::new(0),
        };
        bed.set_mtu(mtu)?;
        Ok(bed)
    }

    /// Sets the lab's underlay MTU (and the endpoints' in ILA mode) unless it is set already.
    fn set_mtu(&self, mtu: u32) -> Result<(), BenchError> {
        if self.mtu.get() == mtu {
            return Ok(());
        }
        lab::set_mtu(&self.name, mtu)?;
        for ep in &self.endpoints {
            ep.set_mtu(mtu)?;
        }
        self.mtu.set(mtu);
        Ok(())
    }

    /// The benchmark endpoints the policy is applied and checked on (ILA labs).
    fn policy_endpoints(&self) -> Option<&Endpoints> {
        self.endpoints.first()
    }

    fn start_servers(&mut self, s: &Settings) -> Result<(), BenchError> {
        for p in &self.pairs {
            self.servers
                .push(IperfServer::start(&p.server_netns, s.port)?);
        }
        Ok(())
    }

    /// Client runs of the first `pairs` pairs, `streams` streams each, from the first host's
    /// containers to the second host's.
    fn clients(&self, s: &Settings, pairs: usize, streams: u32) -> Vec<ClientSpec> {
        self.pairs
            .iter()
            .take(pairs)
            .map(|p| ClientSpec {
                netns: p.client_netns.clone(),
                addr: p.server_addr,
                port: s.port,
                duration: s.duration,
                streams,
            })
            .collect()
    }
}

/// The first `n` container pairs of a lab with planned containers: container `i` of the
/// first host sends to container `i` of the second.
fn plan_pairs(plan: &Plan, n: usize) -> Result<Vec<Pair>, BenchError> {
    let short = || {
        BenchError::Invalid(format!(
            "lab '{}' has fewer than {n} containers on each of two hosts",
            plan.name
        ))
    };
    let (a, b) = match plan.hosts.as_slice() {
        [a, b, ..] => (a, b),
        _ => return Err(short()),
    };
    (0..n)
        .map(|i| {
            let (c, d) = (a.containers.get(i), b.containers.get(i));
            let (c, d) = c.zip(d).ok_or_else(short)?;
            Ok(Pair {
                client_netns: c.netns.clone(),
                server_netns: d.netns.clone(),
                server_addr: d.sir_addr,
            })
        })
        .collect()
}

/// One case to measure: which result it fills, the client runs (several pairs run at once)
/// and what to set before each run (which may report an eBPF policy change to record).
struct Job<'a> {
    case: usize,
    clients: Vec<ClientSpec>,
    before: Box<dyn Fn() -> Result<Option<PolicyChange>, BenchError> + 'a>,
}

/// Refuses a policy case when iperf3 would not use the port Listing 10 opens.
fn check_policy_port(s: &Settings) -> Result<(), BenchError> {
    if s.port != LISTING10_PORT {
        return Err(BenchError::Invalid(format!(
            "the eBPF policy cases need the iperf3 server on tcp/{LISTING10_PORT} (the only \
             port Listing 10 opens); the runner uses {}",
            s.port
        )));
    }
    Ok(())
}

fn stats_of_check(c: &PolicyCheck) -> PolicyStats {
    PolicyStats {
        names: c.names.clone(),
        entries: c.entries.clone(),
        file_bytes: c.file_bytes,
        parse_secs: Some(c.parse_secs),
        apply_secs: vec![c.apply_secs],
        verified: c.verified.clone(),
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Os { what, source }
}

fn new_results(campaign: Campaign, settings: &Settings, baseline: Option<&str>) -> Results {
    let now = machine::now_rfc3339();
    Results {
        campaign,
        started: now.clone(),
        updated: now,
        complete: false,
        interrupted: false,
        machine: Machine::detect(),
        settings: settings.clone(),
        baseline: baseline.map(str::to_string),
        cases: Vec::new(),
        notes: Vec::new(),
    }
}

fn prepare_out(out: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(out.join("raw"))
        .map_err(io(format!("creating {}", out.join("raw").display())))
}

/// Measures `jobs` in interleaved rounds, saving after every run.
fn measure(
    results: &mut Results,
    jobs: &[Job],
    out: &Path,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(), BenchError> {
    let s = results.settings.clone();
    let order = interleaved(jobs.len(), s.runs);
    let total = order.len();
    let started = Instant::now();
    let mut last = None;
    for (done, (round, j)) in order.into_iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            results.interrupted = true;
            break;
        }
        let job = &jobs[j];
        let name = results.cases[job.case].name.clone();
        let per_run = if done == 0 {
            Duration::from_secs(u64::from(s.duration) + 1)
        } else {
            started.elapsed() / done as u32
        };
        progress(&Progress {
            done,
            total,
            doing: format!("round {}/{} {name}", round + 1, s.runs),
            last: last.clone(),
            eta: per_run * (total - done) as u32,
        });
        if let Some(change) = (job.before)()? {
            let stats = results.cases[job.case]
                .policy
                .get_or_insert_with(PolicyStats::default);
            stats.entries = change.entries;
            stats.names = change.names;
            if change.file_bytes > 0 {
                stats.file_bytes = change.file_bytes;
            }
            if change.parse_secs.is_some() {
                stats.parse_secs = change.parse_secs;
            }
            stats.apply_secs.extend(change.apply_secs);
        }
        // The whole machine's CPU over exactly the client runs (a retry gets its own window).
        let mut cpu_before = crate::cpu::snapshot();
        let texts = match run_clients(&job.clients, stop) {
            Ok(t) => t,
            Err(BenchError::Interrupted) => {
                results.interrupted = true;
                break;
            }
            Err(e) => {
                // One retry: a noisy machine can make a single run fail (e.g. connect timeout).
                log::warn!("{name} round {round}: {e}; retrying once");
                cpu_before = crate::cpu::snapshot();
                match run_clients(&job.clients, stop) {
                    Ok(t) => t,
                    Err(BenchError::Interrupted) => {
                        results.interrupted = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let cpu_after = crate::cpu::snapshot();
        let multi = texts.len() > 1;
        let mut parsed = Vec::with_capacity(texts.len());
        for (k, text) in texts.iter().enumerate() {
            let file = raw_file(&name, round, multi.then_some(k));
            std::fs::write(out.join(&file), text).map_err(io(format!("writing {file}")))?;
            let report = iperf::parse(text).map_err(|e| {
                BenchError::Iperf(format!("{name} round {} pair {}: {e}", round + 1, k + 1))
            })?;
            parsed.push((file, report));
        }
        let mut record = RunRecord::aggregate(round, &parsed, s.skip)
            .ok_or_else(|| BenchError::Invalid(format!("{name}: a job without clients")))?;
        record.machine_cpu = cpu_before
            .zip(cpu_after)
            .and_then(|(a, b)| crate::cpu::window(&a, &b));
        last = Some((name, record.mean_gbps));
        results.cases[job.case].runs.push(record);
        results.resummarize(s.skip);
        results.updated = machine::now_rfc3339();
        report::save_data(out, results)?;
    }
    results.complete = !results.interrupted;
    results.updated = machine::now_rfc3339();
    report::save_data(out, results)?;
    Ok(())
}

/// Raw iperf3 file of a run, relative to the output directory: `raw/<case>-r001.json`, with
/// `-p<k>` for pair k of a run of several pairs.
fn raw_file(case: &str, round: usize, pair: Option<usize>) -> String {
    let stem = case.replace(['/', '+'], "_");
    match pair {
        None => format!("raw/{stem}-r{:03}.json", round + 1),
        Some(k) => format!("raw/{stem}-r{:03}-p{}.json", round + 1, k + 1),
    }
}

/// Runs every client at once (one thread each, so the pairs overlap for the whole run) and
/// returns their JSON in order. The first error wins, an interruption over any other.
fn run_clients(clients: &[ClientSpec], stop: &AtomicBool) -> Result<Vec<String>, BenchError> {
    if let [only] = clients {
        return iperf::run_client(only, stop).map(|t| vec![t]);
    }
    let outcomes: Vec<Result<String, BenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| scope.spawn(move || iperf::run_client(c, stop)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::Iperf("iperf3 client thread panicked".into()))
                })
            })
            .collect()
    });
    if outcomes
        .iter()
        .any(|o| matches!(o, Err(BenchError::Interrupted)))
    {
        return Err(BenchError::Interrupted);
    }
    outcomes.into_iter().collect()
}

/// Resolves scenario names (empty: all) against the registry.
pub fn select_scenarios(names: &[String]) -> Result<Vec<Scenario>, BenchError> {
    let all = paper_scenarios();
    if names.is_empty() {
        return Ok(all);
    }
    names
        .iter()
        .map(|n| {
            all.iter().find(|s| s.name == n).cloned().ok_or_else(|| {
                BenchError::Invalid(format!(
                    "unknown scenario '{n}': expected one of {}",
                    all.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                ))
            })
        })
        .collect()
}

/// The sweep a paper campaign runs: its settings' sweep, or the single point of `streams`
/// and `mtu` with one pair.
pub fn paper_sweep(s: &Settings) -> Sweep {
    s.sweep.clone().unwrap_or_else(|| Sweep {
        streams: vec![s.streams],
        pairs: vec![1],
        mtu: vec![s.mtu],
    })
}

/// One case of a paper campaign: a scenario at a sweep point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedCase {
    /// Case name (the scenario's alone in a single-point campaign).
    pub name: String,
    /// Index into the selected scenarios.
    pub scenario: usize,
    /// Sweep point.
    pub point: SweepPoint,
    /// Case its ratios are taken against (`native` at the same point), if selected.
    pub baseline: Option<String>,
}

/// The cases of a paper campaign, point by point ([`Sweep::points`] order) and within a point
/// in scenario order. Measured in rounds of every case ([`interleaved`]), the scenarios
/// alternate A B A B within each point, every point once per round.
pub fn paper_plan(scenarios: &[Scenario], sweep: &Sweep) -> Vec<PlannedCase> {
    let points = sweep.points();
    let single = points.len() == 1;
    let has_native = scenarios.iter().any(|s| s.name == "native");
    points
        .iter()
        .flat_map(|p| {
            scenarios
                .iter()
                .enumerate()
                .map(move |(i, sc)| PlannedCase {
                    name: p.case_name(sc.name, single),
                    scenario: i,
                    point: *p,
                    baseline: has_native.then(|| p.case_name("native", single)),
                })
        })
        .collect()
}

/// The paper's Fig. 14 campaign, over a sweep of parallel streams, container pairs and MTUs
/// when the settings hold one. Returns the results (also written to `cfg.out`); on Ctrl-C
/// (`stop` set) returns what was gathered, marked `interrupted`.
pub fn paper(
    cfg: &PaperConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Results, BenchError> {
    cfg.settings.validate()?;
    let sweep = paper_sweep(&cfg.settings);
    sweep.validate()?;
    for program in ["iperf3", "ip", "iptables"] {
        lab::require(program)?;
    }
    let scenarios = select_scenarios(&cfg.scenarios)?;
    sweep.check_time(
        scenarios.len(),
        cfg.settings.runs,
        cfg.settings.duration,
        cfg.max_hours,
    )?;
    if scenarios.iter().any(|s| s.setup == Setup::EbpfPolicy) {
        check_policy_port(&cfg.settings)?;
    }
    prepare_out(&cfg.out)?;
    let plan = paper_plan(&scenarios, &sweep);
    let single = sweep.len() == 1;
    let baseline = scenarios
        .iter()
        .any(|s| s.name == "native")
        .then_some("native");
    let mut settings = cfg.settings.clone();
    settings.sweep = Some(sweep.clone());
    // One point: the campaign's baseline is `native` as it always was; a sweep compares every
    // case with `native` at its own point.
    let mut results = new_results(Campaign::Paper, &settings, baseline.filter(|_| single));
    for pc in &plan {
        let sc = &scenarios[pc.scenario];
        let available = sc.setup.availability();
        results.cases.push(CaseResult {
            available: available.is_ok(),
            note: available.err(),
            scenario: Some(sc.name.to_string()),
            point: Some(pc.point),
            baseline: pc.baseline.clone().filter(|_| !single),
            ..CaseResult::new(
                pc.name.clone(),
                sc.description.to_string(),
                sc.mode.to_string(),
            )
        });
    }
    if baseline.is_none() {
        results
            .notes
            .push("`native` was not selected: no ratios to the physical limit.".into());
    }
    results
        .notes
        .push(format!("Load average at the start: {}.", load_average()));
    report::save_data(&cfg.out, &results)?;

    let mut labs = Labs(Vec::new());
    // One lab per scenario (with as many pairs as the largest point), kept for every point.
    let mut beds: Vec<(usize, Testbed)> = Vec::new();
    let first_mtu = sweep
        .points()
        .first()
        .map(|p| p.mtu)
        .unwrap_or(settings.mtu);
    for (i, sc) in scenarios.iter().enumerate() {
        if sc.setup.availability().is_err() {
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            results.interrupted = true;
            break;
        }
        progress(&Progress {
            done: 0,
            total: 0,
            doing: format!(
                "building the {} lab ({} container pair(s))",
                sc.name,
                sweep.max_pairs()
            ),
            last: None,
            eta: Duration::ZERO,
        });
        let name = format!("{}-{}", cfg.lab_prefix, sc.tag);
        let mut bed = Testbed::build(&mut labs, &name, sc.mode, first_mtu, sweep.max_pairs())?;
        if let Some(check) = sc.setup.apply(&name, bed.policy_endpoints())? {
            progress(&Progress {
                done: 0,
                total: 0,
                doing: format!(
                    "{}: Listing 10 in force ({}; {} POLICY entries per host, applied in {:.2} s)",
                    sc.name,
                    check.verified.join(", "),
                    check
                        .entries
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join("/"),
                    check.apply_secs
                ),
                last: None,
                eta: Duration::ZERO,
            });
            let stats = stats_of_check(&check);
            for (case, pc) in results.cases.iter_mut().zip(&plan) {
                if pc.scenario == i {
                    case.policy = Some(stats.clone());
                }
            }
        }
        bed.start_servers(&settings)?;
        beds.push((i, bed));
    }
    report::save_data(&cfg.out, &results)?;
    let jobs: Vec<Job> = plan
        .iter()
        .enumerate()
        .filter_map(|(case, pc)| {
            let (_, bed) = beds.iter().find(|(i, _)| *i == pc.scenario)?;
            let mtu = pc.point.mtu;
            Some(Job {
                case,
                clients: bed.clients(&settings, pc.point.pairs, pc.point.streams),
                before: Box::new(move || bed.set_mtu(mtu).map(|()| None)),
            })
        })
        .collect();
    if !results.interrupted {
        measure(&mut results, &jobs, &cfg.out, stop, progress)?;
    }
    results
        .notes
        .push(format!("Load average at the end: {}.", load_average()));
    report::save_data(&cfg.out, &results)?;
    drop(jobs);
    drop(beds);
    drop(labs);
    report::write_report(&cfg.out)?;
    Ok(results)
}

/// `/proc/loadavg`'s 1, 5 and 15 minute figures (the machine may be shared).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|| "unknown".into())
}

/// Name of the unfiltered reference case of the rule-count campaign.
pub const NO_FILTER: &str = "no-filter";

/// Name of a rule-count case.
pub fn rules_case_name(series: RuleSeries, extra: usize) -> String {
    format!("{}/{extra}", series.name())
}

/// The rule-count campaign: TCP throughput with N non-matching rules per series — iptables
/// (Listing 9 in the swarm lab's FORWARD chains) and eBPF (Listing 10 plus N rules in the ILA
/// lab's policy maps) — against the swarm overlay without any filter. Cases are measured in
/// interleaved rounds, the two series alternating count by count (A B A B).
pub fn rules(
    cfg: &RulesConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Results, BenchError> {
    cfg.settings.validate()?;
    for program in ["iperf3", "ip", "iptables"] {
        lab::require(program)?;
    }
    if cfg.counts.is_empty() {
        return Err(BenchError::Invalid("no rule counts given".into()));
    }
    let mut counts = cfg.counts.clone();
    counts.sort_unstable();
    counts.dedup();
    let series: Vec<RuleSeries> = RuleSeries::ALL
        .into_iter()
        .filter(|s| s.availability().is_ok())
        .collect();
    if series.contains(&RuleSeries::Ebpf) {
        check_policy_port(&cfg.settings)?;
        let max = crate::ebpf::max_extra_rules();
        if let Some(n) = counts.iter().find(|n| **n > max) {
            return Err(BenchError::Invalid(format!(
                "{n} rules: the eBPF series can make at most {max} distinct non-matching rules"
            )));
        }
    }
    prepare_out(&cfg.out)?;
    let mut results = new_results(Campaign::Rules, &cfg.settings, Some(NO_FILTER));
    results.cases.push(CaseResult {
        series: Some("reference".into()),
        total_rules: Some(0),
        ..CaseResult::new(
            NO_FILTER.into(),
            "swarm overlay without any filter (reference)".into(),
            Mode::Swarm.to_string(),
        )
    });
    for s in RuleSeries::ALL {
        if let Err(why) = s.availability() {
            results
                .notes
                .push(format!("Series `{}` skipped: {why}.", s.name()));
        }
    }
    // The eBPF series is compared with its own smallest count (Listing 10 alone for 0): the
    // target is about what extra rules cost, not what ILA costs against swarm.
    let ebpf_base = rules_case_name(RuleSeries::Ebpf, counts[0]);
    let mut case_of: Vec<(RuleSeries, usize, usize)> = Vec::new();
    for &s in &series {
        for &n in &counts {
            case_of.push((s, n, results.cases.len()));
            results.cases.push(CaseResult {
                series: Some(s.name().into()),
                extra_rules: Some(n),
                total_rules: Some(s.total_rules(n)),
                baseline: (s == RuleSeries::Ebpf).then(|| ebpf_base.clone()),
                ..CaseResult::new(rules_case_name(s, n), s.describe(n), s.mode().to_string())
            });
        }
    }
    if series.contains(&RuleSeries::Ebpf) {
        results.notes.push(format!(
            "Ratios: iptables cases against `{NO_FILTER}` (swarm, no filter); eBPF cases against \
             `{ebpf_base}` (the same ILA lab with {} policy rule(s)).",
            RuleSeries::Ebpf.total_rules(counts[0])
        ));
    }
    report::save_data(&cfg.out, &results)?;

    let mut labs = Labs(Vec::new());
    let mut beds: Vec<(Mode, String, Testbed)> = Vec::new();
    let mut switcher = None;
    for mode in std::iter::once(Mode::Swarm).chain(series.iter().map(|s| s.mode())) {
        if beds.iter().any(|(m, ..)| *m == mode) {
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            results.interrupted = true;
            break;
        }
        progress(&Progress {
            done: 0,
            total: 0,
            doing: format!("building the {mode} lab"),
            last: None,
            eta: Duration::ZERO,
        });
        let name = format!("{}-r{}", cfg.lab_prefix, &mode.to_string()[..1]);
        let mut bed = Testbed::build(&mut labs, &name, mode, cfg.settings.mtu, 1)?;
        if mode == RuleSeries::Ebpf.mode() {
            if let Some(ep) = bed.policy_endpoints() {
                let check = ep.install_listing10()?;
                results.notes.push(format!(
                    "eBPF lab: Listing 10 checked in force before measuring ({}); {} POLICY \
                     entries per host with it alone.",
                    check.verified.join(", "),
                    check
                        .entries
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join("/")
                ));
                switcher = Some(RuleSwitcher::new(ep.clone(), check.names.clone()));
            }
        }
        bed.start_servers(&cfg.settings)?;
        beds.push((mode, name, bed));
    }
    report::save_data(&cfg.out, &results)?;
    let bed_of = |mode: Mode| beds.iter().find(|(m, ..)| *m == mode);
    let mut jobs = Vec::new();
    if let Some((_, lab_name, bed)) = bed_of(Mode::Swarm) {
        let lab_name = lab_name.clone();
        jobs.push(Job {
            case: 0,
            clients: bed.clients(&cfg.settings, 1, cfg.settings.streams),
            before: Box::new(move || {
                lab::set_swarm_rules(&lab_name, SwarmRules::Off)?;
                Ok(None)
            }),
        });
    }
    // Count by count, the series alternate (iptables/0, ebpf/0, iptables/1, …).
    for &n in &counts {
        for &(s, _, case) in case_of.iter().filter(|(_, m, _)| *m == n) {
            let Some((_, lab_name, bed)) = bed_of(s.mode()) else {
                continue;
            };
            let lab_name = lab_name.clone();
            let before: Box<dyn Fn() -> Result<Option<PolicyChange>, BenchError>> = match s {
                RuleSeries::Iptables => Box::new(move || {
                    lab::set_swarm_rules(&lab_name, SwarmRules::Listing9 { extra: n })?;
                    Ok(None)
                }),
                RuleSeries::Ebpf => {
                    let sw = switcher.as_ref().ok_or_else(|| {
                        BenchError::Invalid("the eBPF lab has no benchmark endpoints".into())
                    })?;
                    Box::new(move || sw.set(n).map(Some))
                }
            };
            jobs.push(Job {
                case,
                clients: bed.clients(&cfg.settings, 1, cfg.settings.streams),
                before,
            });
        }
    }
    if !results.interrupted {
        measure(&mut results, &jobs, &cfg.out, stop, progress)?;
    }
    drop(jobs);
    drop(switcher);
    drop(beds);
    drop(labs);
    report::write_report(&cfg.out)?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_plans_every_scenario_at_every_point_and_alternates_them_per_point() {
        let scenarios = select_scenarios(&["native".into(), "ila".into(), "ila+policy".into()])
            .expect("scenarios");
        let sweep = Sweep {
            streams: vec![4, 1],
            pairs: vec![1, 2],
            mtu: vec![1500],
        };
        let plan = paper_plan(&scenarios, &sweep);
        let names: Vec<&str> = plan.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "native/p1-s1-m1500",
                "ila/p1-s1-m1500",
                "ila+policy/p1-s1-m1500",
                "native/p1-s4-m1500",
                "ila/p1-s4-m1500",
                "ila+policy/p1-s4-m1500",
                "native/p2-s1-m1500",
                "ila/p2-s1-m1500",
                "ila+policy/p2-s1-m1500",
                "native/p2-s4-m1500",
                "ila/p2-s4-m1500",
                "ila+policy/p2-s4-m1500",
            ]
        );
        assert!(plan
            .iter()
            .all(|c| c.baseline.as_deref() == Some(&*c.point.case_name("native", false))));
        // Measuring order: round by round every case once, so within a point the scenarios
        // run back to back (A B C), and every point comes once per round.
        let order = interleaved(plan.len(), 2);
        assert_eq!(order.len(), 24);
        let first_round: Vec<&str> = order[..3].iter().map(|(_, j)| names[*j]).collect();
        assert_eq!(
            first_round,
            [
                "native/p1-s1-m1500",
                "ila/p1-s1-m1500",
                "ila+policy/p1-s1-m1500"
            ]
        );
        assert_eq!(order[12], (1, 0), "round 2 starts again at the first point");

        // One point: the cases keep their bare names (what reports and scripts know).
        let one = Sweep {
            streams: vec![1],
            pairs: vec![1],
            mtu: vec![9000],
        };
        let plan = paper_plan(&scenarios[..2], &one);
        let names: Vec<&str> = plan.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["native", "ila"]);
        // Without native there is nothing to take ratios against.
        let plan = paper_plan(&scenarios[1..], &sweep);
        assert!(plan.iter().all(|c| c.baseline.is_none()));
    }

    #[test]
    fn raw_files_name_the_round_and_the_pair() {
        assert_eq!(raw_file("ila+policy", 0, None), "raw/ila_policy-r001.json");
        assert_eq!(
            raw_file("ila/p4-s8-m9000", 9, Some(3)),
            "raw/ila_p4-s8-m9000-r010-p4.json"
        );
    }
}
