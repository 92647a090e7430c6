//! Campaigns: build the labs, start the iperf3 servers, measure every case in interleaved rounds,
//! write results after every run, tear everything down (also on error or Ctrl-C).
//!
//! Labs are built once per campaign and kept up: rebuilding per round costs seconds per round
//! and adds nothing the interleaving does not already give (every case sees the same drift of
//! the machine), while a lab kept up holds its conditions (routes, FDB, conntrack) constant.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lab::plan::{Mode, Plan};
use lab::{LabSpec, SwarmRules};

use crate::iperf::{self, ClientSpec, IperfServer};
use crate::machine::{self, Machine};
use crate::model::{Campaign, CaseResult, Results, RunRecord, Settings};
use crate::scenario::{paper_scenarios, RuleSeries, Scenario};
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

/// A lab up and ready: its plan and the iperf3 server in the receiving container.
struct Testbed {
    plan: Plan,
    _server: IperfServer,
}

impl Testbed {
    fn build(labs: &mut Labs, name: &str, mode: Mode, s: &Settings) -> Result<Self, BenchError> {
        let mut spec = LabSpec::generic(name, 2, 1);
        spec.mode = mode;
        let plan = lab::up(&spec)?;
        labs.0.push(name.to_string());
        lab::set_mtu(name, s.mtu)?;
        let dst = &plan.hosts[1].containers[0];
        let server = IperfServer::start(&dst.netns, s.port)?;
        Ok(Self {
            plan,
            _server: server,
        })
    }

    /// Client run from the first host's container to the second host's.
    fn client(&self, s: &Settings) -> ClientSpec {
        ClientSpec {
            netns: self.plan.hosts[0].containers[0].netns.clone(),
            addr: self.plan.hosts[1].containers[0].sir_addr,
            port: s.port,
            duration: s.duration,
            streams: s.streams,
        }
    }
}

/// One case to measure: which result it fills, the client run, and what to set before each run.
struct Job<'a> {
    case: usize,
    client: ClientSpec,
    before: Box<dyn Fn() -> Result<(), BenchError> + 'a>,
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
        (job.before)()?;
        let text = match iperf::run_client(&job.client, stop) {
            Ok(t) => t,
            Err(BenchError::Interrupted) => {
                results.interrupted = true;
                break;
            }
            Err(e) => {
                // One retry: a noisy machine can make a single run fail (e.g. connect timeout).
                log::warn!("{name} round {round}: {e}; retrying once");
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
        let record = RunRecord::new(round, file, &parsed, s.skip);
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
    let scenarios = select_scenarios(&cfg.scenarios)?;
    prepare_out(&cfg.out)?;
    let baseline = scenarios
        .iter()
        .any(|s| s.name == "native")
        .then_some("native");
    let mut results = new_results(Campaign::Paper, &cfg.settings, baseline);
    for sc in &scenarios {
        let available = sc.setup.availability();
        results.cases.push(CaseResult {
            name: sc.name.to_string(),
            description: sc.description.to_string(),
            mode: sc.mode.to_string(),
            series: None,
            extra_rules: None,
            total_rules: None,
            available: available.is_ok(),
            note: available.err(),
            runs: Vec::new(),
            summary: None,
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
        let bed = Testbed::build(&mut labs, &name, sc.mode, &cfg.settings)?;
        sc.setup.apply(&name)?;
        beds.push((i, bed));
    }
    let jobs: Vec<Job> = beds
        .iter()
        .map(|(i, bed)| Job {
            case: *i,
            client: bed.client(&cfg.settings),
            before: Box::new(|| Ok(())),
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

/// The rule-count campaign: TCP throughput with Listing 9 plus N non-matching rules, per
/// available series, against the same overlay without any filter.
pub fn rules(
    cfg: &RulesConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Results, BenchError> {
    cfg.settings.validate()?;
    if cfg.counts.is_empty() {
        return Err(BenchError::Invalid("no rule counts given".into()));
    }
    prepare_out(&cfg.out)?;
    let mut results = new_results(Campaign::Rules, &cfg.settings, Some(NO_FILTER));
    results.cases.push(CaseResult {
        name: NO_FILTER.into(),
        description: "swarm overlay without any filter (reference)".into(),
        mode: Mode::Swarm.to_string(),
        series: Some("reference".into()),
        extra_rules: None,
        total_rules: Some(0),
        available: true,
        note: None,
        runs: Vec::new(),
        summary: None,
    });
    let mut plan: Vec<(usize, RuleSeries, Option<usize>)> = vec![(0, RuleSeries::Iptables, None)];
    for series in RuleSeries::ALL {
        if let Err(why) = series.availability() {
            results
                .notes
                .push(format!("Series `{}` skipped: {why}.", series.name()));
            continue;
        }
        for &n in &cfg.counts {
            plan.push((results.cases.len(), series, Some(n)));
            results.cases.push(CaseResult {
                name: format!("{}/{n}", series.name()),
                description: format!(
                    "{} with {n} non-matching rules before the accepts",
                    series.name()
                ),
                mode: series.mode().to_string(),
                series: Some(series.name().into()),
                extra_rules: Some(n),
                total_rules: Some(series.total_rules(n)),
                available: true,
                note: None,
                runs: Vec::new(),
                summary: None,
            });
        }
    }
    report::save_data(&cfg.out, &results)?;

    let mut labs = Labs(Vec::new());
    let mut beds: Vec<(Mode, String, Testbed)> = Vec::new();
    for (_, series, _) in &plan {
        let mode = series.mode();
        if beds.iter().any(|(m, ..)| *m == mode) {
            continue;
        }
        progress(&Progress {
            done: 0,
            total: 0,
            doing: format!("building the {mode} lab"),
            last: None,
            eta: Duration::ZERO,
        });
        let name = format!("{}-r{}", cfg.lab_prefix, &mode.to_string()[..1]);
        let bed = Testbed::build(&mut labs, &name, mode, &cfg.settings)?;
        beds.push((mode, name, bed));
    }
    let mut jobs = Vec::new();
    for (case, series, extra) in plan {
        let Some((_, lab_name, bed)) = beds.iter().find(|(m, ..)| *m == series.mode()) else {
            continue;
        };
        let lab_name = lab_name.clone();
        jobs.push(Job {
            case,
            client: bed.client(&cfg.settings),
            before: Box::new(move || match extra {
                None => Ok(lab::set_swarm_rules(&lab_name, SwarmRules::Off)?),
                Some(n) => series.apply(&lab_name, n),
            }),
        });
    }
    measure(&mut results, &jobs, &cfg.out, stop, progress)?;
    // Leave the lab as it was built before tearing it down.
    drop(jobs);
    drop(beds);
    drop(labs);
    report::write_report(&cfg.out)?;
    Ok(results)
}
