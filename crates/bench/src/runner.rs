//! Campaigns: build the labs, start the iperf3 servers, measure every case in interleaved rounds,
//! write results after every run, tear everything down (also on error or Ctrl-C).
//!
//! Labs are built once per campaign and kept up: rebuilding per round costs seconds per round
//! and adds nothing the interleaving does not already give (every case sees the same drift of
//! the machine), while a lab kept up holds its conditions (routes, FDB, conntrack) constant.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lab::plan::{Mode, Plan};
use lab::{LabSpec, SwarmRules};

use crate::ebpf::{Endpoints, PolicyChange, PolicyCheck, RuleSwitcher, LISTING10_PORT};
use crate::iperf::{self, ClientSpec, IperfServer};
use crate::machine::{self, Machine};
use crate::model::{Campaign, CaseResult, PolicyStats, Results, RunRecord, Settings};
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

/// A lab up and ready: its plan, the benchmark endpoints (ILA mode) and, once started, the
/// iperf3 server in the receiving container.
struct Testbed {
    plan: Plan,
    /// ILA labs get their two containers from the agents with `app=service1` (what Listing 10
    /// selects), so `ila` and `ila+policy` run on identical endpoints.
    endpoints: Option<Endpoints>,
    server: Option<IperfServer>,
}

impl Testbed {
    /// Builds the lab and its endpoints and sets the MTU; the iperf3 server is started later
    /// ([`Testbed::start_server`]) so a policy check can use the server port first.
    fn build(
        labs: &mut Labs,
        name: &str,
        mode: Mode,
        hook: dataplane::UplinkHook,
        s: &Settings,
    ) -> Result<Self, BenchError> {
        let planned = if mode == Mode::Ila { 0 } else { 1 };
        let mut spec = LabSpec::generic(name, 2, planned);
        spec.mode = mode;
        spec.uplink_hook = hook;
        if mode == Mode::Evpn {
            // The paper's EVPN: gobgpd as route server.
            spec.routing = lab::plan::RoutingMode::Gobgp;
        }
        let plan = lab::up(&spec)?;
        labs.0.push(name.to_string());
        let endpoints = match mode {
            Mode::Ila => Some(Endpoints::create(&plan)?),
            Mode::Native | Mode::Swarm | Mode::Evpn => None,
        };
        lab::set_mtu(name, s.mtu)?;
        if let Some(ep) = &endpoints {
            ep.set_mtu(s.mtu)?;
        }
        Ok(Self {
            plan,
            endpoints,
            server: None,
        })
    }

    /// Namespace of the receiving container and the address the client sends to.
    fn server_side(&self) -> (String, Ipv6Addr) {
        match &self.endpoints {
            Some(ep) => (ep.server.netns.clone(), ep.server.sir_addr),
            None => {
                let c = &self.plan.hosts[1].containers[0];
                (c.netns.clone(), c.sir_addr)
            }
        }
    }

    fn start_server(&mut self, s: &Settings) -> Result<(), BenchError> {
        let (ns, _) = self.server_side();
        self.server = Some(IperfServer::start(&ns, s.port)?);
        Ok(())
    }

    /// Client run from the first host's container to the second host's.
    fn client(&self, s: &Settings) -> ClientSpec {
        let netns = match &self.endpoints {
            Some(ep) => ep.client.netns.clone(),
            None => self.plan.hosts[0].containers[0].netns.clone(),
        };
        ClientSpec {
            netns,
            addr: self.server_side().1,
            port: s.port,
            duration: s.duration,
            streams: s.streams,
        }
    }
}

/// One case to measure: which result it fills, the client run, and what to set before each
/// run (which may report an eBPF policy change to record).
struct Job<'a> {
    case: usize,
    client: ClientSpec,
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
        // The whole machine's CPU over exactly the client run (a retry gets its own window).
        let mut cpu_before = crate::cpu::snapshot();
        let text = match iperf::run_client(&job.client, stop) {
            Ok(t) => t,
            Err(BenchError::Interrupted) => {
                results.interrupted = true;
                break;
            }
            Err(e) => {
                // One retry: a noisy machine can make a single run fail (e.g. connect timeout).
                log::warn!("{name} round {round}: {e}; retrying once");
                cpu_before = crate::cpu::snapshot();
                match iperf::run_client(&job.client, stop) {
                    Ok(t) => t,
                    Err(BenchError::Interrupted) => {
                        results.interrupted = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let file = format!(
            "raw/{}-r{:03}.json",
            name.replace(['/', '+'], "_"),
            round + 1
        );
        std::fs::write(out.join(&file), &text).map_err(io(format!("writing {file}")))?;
        let parsed = iperf::parse(&text)
            .map_err(|e| BenchError::Iperf(format!("{name} round {}: {e}", round + 1)))?;
        let mut record = RunRecord::new(round, file, &parsed, s.skip);
        record.machine_cpu = cpu_before
            .zip(crate::cpu::snapshot())
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

/// The paper's Fig. 14 campaign. Returns the results (also written to `cfg.out`); on Ctrl-C
/// (`stop` set) returns what was gathered, marked `interrupted`.
pub fn paper(
    cfg: &PaperConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Results, BenchError> {
    cfg.settings.validate()?;
    for program in ["iperf3", "ip", "iptables"] {
        lab::require(program)?;
    }
    let scenarios = select_scenarios(&cfg.scenarios)?;
    if scenarios.iter().any(|s| s.setup == Setup::EbpfPolicy) {
        check_policy_port(&cfg.settings)?;
    }
    prepare_out(&cfg.out)?;
    let baseline = scenarios
        .iter()
        .any(|s| s.name == "native")
        .then_some("native");
    let mut results = new_results(Campaign::Paper, &cfg.settings, baseline);
    for sc in &scenarios {
        let available = sc.setup.availability();
        results.cases.push(CaseResult {
            available: available.is_ok(),
            note: available.err(),
            ..CaseResult::new(
                sc.name.to_string(),
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
    report::save_data(&cfg.out, &results)?;

    let mut labs = Labs(Vec::new());
    let mut beds = Vec::new();
    for (i, sc) in scenarios.iter().enumerate() {
        if !results.cases[i].available {
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            results.interrupted = true;
            break;
        }
        progress(&Progress {
            done: 0,
            total: 0,
            doing: format!("building the {} lab", sc.name),
            last: None,
            eta: Duration::ZERO,
        });
        let name = format!("{}-{}", cfg.lab_prefix, sc.tag);
        let hook = sc.setup.uplink_hook();
        let mut bed = Testbed::build(&mut labs, &name, sc.mode, hook, &cfg.settings)?;
        if let Some(check) = sc.setup.apply(&name, bed.endpoints.as_ref())? {
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
            results.cases[i].policy = Some(stats_of_check(&check));
        }
        bed.start_server(&cfg.settings)?;
        beds.push((i, bed));
    }
    report::save_data(&cfg.out, &results)?;
    let jobs: Vec<Job> = beds
        .iter()
        .map(|(i, bed)| Job {
            case: *i,
            client: bed.client(&cfg.settings),
            before: Box::new(|| Ok(None)),
        })
        .collect();
    if !results.interrupted {
        measure(&mut results, &jobs, &cfg.out, stop, progress)?;
    }
    drop(jobs);
    drop(beds);
    drop(labs);
    report::write_report(&cfg.out)?;
    Ok(results)
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
        let tcx = dataplane::UplinkHook::Tcx;
        let mut bed = Testbed::build(&mut labs, &name, mode, tcx, &cfg.settings)?;
        if mode == RuleSeries::Ebpf.mode() {
            if let Some(ep) = &bed.endpoints {
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
        bed.start_server(&cfg.settings)?;
        beds.push((mode, name, bed));
    }
    report::save_data(&cfg.out, &results)?;
    let bed_of = |mode: Mode| beds.iter().find(|(m, ..)| *m == mode);
    let mut jobs = Vec::new();
    if let Some((_, lab_name, bed)) = bed_of(Mode::Swarm) {
        let lab_name = lab_name.clone();
        jobs.push(Job {
            case: 0,
            client: bed.client(&cfg.settings),
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
                client: bed.client(&cfg.settings),
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
