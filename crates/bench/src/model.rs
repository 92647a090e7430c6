//! The results of a campaign as data: what `results.json` holds, and the summaries computed from
//! the raw runs.

use serde::{Deserialize, Serialize};

use crate::iperf::IperfReport;
use crate::machine::Machine;
use crate::stats::{drop_warmup, mean_after_warmup, summarize, Summary};

/// Confidence level of every interval in the reports.
pub const CONFIDENCE: f64 = 0.95;

/// How a campaign measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Runs per case (rounds).
    pub runs: usize,
    /// Seconds per iperf3 run.
    pub duration: u32,
    /// Leading 1-second intervals dropped from each run (warm-up).
    pub skip: usize,
    /// Parallel TCP streams.
    pub streams: u32,
    /// Underlay MTU.
    pub mtu: u32,
    /// iperf3 server port (Listing 9 lets 5201 through).
    pub port: u16,
    /// The sweep of a paper campaign (streams × container pairs × MTU); `streams` and `mtu`
    /// above are its first values. `None` in rule-count results and older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Sweep>,
}

impl Settings {
    /// Refuses settings that cannot produce a sample.
    pub fn validate(&self) -> Result<(), crate::BenchError> {
        let bad = |m: String| Err(crate::BenchError::Invalid(m));
        if self.runs == 0 {
            return bad("--runs must be at least 1".into());
        }
        if self.duration == 0 || self.duration > 3600 {
            return bad(format!(
                "--duration must be 1..=3600 seconds, got {}",
                self.duration
            ));
        }
        if self.skip >= self.duration as usize {
            return bad(format!(
                "--skip ({}) must be smaller than --duration ({}): nothing would be left",
                self.skip, self.duration
            ));
        }
        if !(1..=MAX_STREAMS).contains(&self.streams) {
            return bad(format!(
                "--streams must be 1..={MAX_STREAMS}, got {}",
                self.streams
            ));
        }
        if let Some(sweep) = &self.sweep {
            sweep.validate()?;
        }
        Ok(())
    }
}

/// Most parallel streams per iperf3 client.
pub const MAX_STREAMS: u32 = 128;
/// Most container pairs measured at once (each is an iperf3 client and server on two CPUs'
/// worth of lab: more only measures the scheduler).
pub const MAX_PAIRS: usize = 8;
/// Most values one sweep list may hold.
pub const MAX_LIST: usize = 8;
/// Most points (streams × pairs × MTU) one sweep may have, whatever the time per run: a typo
/// must not start a campaign of many hours.
pub const MAX_SWEEP_POINTS: usize = 24;
/// Default bound of a sweep's planned measuring time, hours (a single-point campaign is not
/// bounded: `--paper` alone is hours by design).
pub const MAX_SWEEP_HOURS: f64 = 8.0;
/// Seconds a run costs beyond its iperf3 duration (connect, JSON, CPU snapshots, MTU switch),
/// for the planned-time bound.
const RUN_OVERHEAD_S: f64 = 2.0;

/// Parses a comma-separated list of numbers (`4` is a one-value list). Refuses empty entries
/// (`1,,4`), unparsable ones, duplicates and more than [`MAX_LIST`] values, naming the entry.
pub fn parse_list<T>(text: &str) -> Result<Vec<T>, String>
where
    T: std::str::FromStr + PartialEq + std::fmt::Display,
{
    let mut out: Vec<T> = Vec::new();
    for (i, entry) in text.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(format!("entry {} of '{text}' is empty", i + 1));
        }
        let v: T = entry
            .parse()
            .map_err(|_| format!("'{entry}' (entry {} of '{text}') is not a number", i + 1))?;
        if out.contains(&v) {
            return Err(format!("'{v}' is listed twice in '{text}'"));
        }
        out.push(v);
    }
    if out.len() > MAX_LIST {
        return Err(format!(
            "'{text}' has {} values; a sweep list takes at most {MAX_LIST}",
            out.len()
        ));
    }
    Ok(out)
}

/// One point of a paper sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Container pairs measured at once (one iperf3 client/server per pair).
    pub pairs: usize,
    /// Parallel TCP streams per pair (iperf3 `-P`).
    pub streams: u32,
    /// Underlay MTU.
    pub mtu: u32,
}

impl SweepPoint {
    /// Short tag for case names (`p4-s8-m9000`).
    pub fn tag(&self) -> String {
        format!("p{}-s{}-m{}", self.pairs, self.streams, self.mtu)
    }

    /// Name of scenario `scenario`'s case at this point: the bare scenario name in a
    /// single-point campaign (what reports and scripts always called it), else tagged.
    pub fn case_name(&self, scenario: &str, single: bool) -> String {
        if single {
            scenario.to_string()
        } else {
            format!("{scenario}/{}", self.tag())
        }
    }
}

/// What a paper campaign sweeps over: every combination of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// Parallel TCP streams per pair.
    pub streams: Vec<u32>,
    /// Container pairs measured at once.
    pub pairs: Vec<usize>,
    /// Underlay MTUs.
    pub mtu: Vec<u32>,
}

impl Sweep {
    /// Refuses empty or duplicate lists, values out of range and sweeps of more than
    /// [`MAX_SWEEP_POINTS`] points.
    pub fn validate(&self) -> Result<(), crate::BenchError> {
        let bad = |m: String| Err(crate::BenchError::Invalid(m));
        for (flag, n) in [
            ("--streams", self.streams.len()),
            ("--pairs", self.pairs.len()),
            ("--mtu", self.mtu.len()),
        ] {
            if n == 0 {
                return bad(format!("{flag}: no value given"));
            }
            if n > MAX_LIST {
                return bad(format!("{flag}: {n} values; at most {MAX_LIST}"));
            }
        }
        if let Some(s) = self
            .streams
            .iter()
            .find(|s| !(1..=MAX_STREAMS).contains(*s))
        {
            return bad(format!("--streams must be 1..={MAX_STREAMS}, got {s}"));
        }
        if let Some(p) = self.pairs.iter().find(|p| !(1..=MAX_PAIRS).contains(*p)) {
            return bad(format!("--pairs must be 1..={MAX_PAIRS}, got {p}"));
        }
        if let Some(m) = self.mtu.iter().find(|m| !matches!(m, 1500 | 9000)) {
            return bad(format!("--mtu must be 1500 or 9000, got {m}"));
        }
        let dup = |v: &mut Vec<u64>| {
            v.sort_unstable();
            v.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
        };
        for (flag, mut v) in [
            (
                "--streams",
                self.streams.iter().map(|&x| x.into()).collect(),
            ),
            ("--pairs", self.pairs.iter().map(|&x| x as u64).collect()),
            (
                "--mtu",
                self.mtu.iter().map(|&x| x.into()).collect::<Vec<u64>>(),
            ),
        ] {
            if let Some(d) = dup(&mut v) {
                return bad(format!("{flag}: {d} is listed twice"));
            }
        }
        let n = self.len();
        if n > MAX_SWEEP_POINTS {
            return bad(format!(
                "the sweep has {} streams × {} pairs × {} MTUs = {n} points; at most \
                 {MAX_SWEEP_POINTS} points per campaign",
                self.streams.len(),
                self.pairs.len(),
                self.mtu.len()
            ));
        }
        Ok(())
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.streams.len() * self.pairs.len() * self.mtu.len()
    }

    /// Whether the sweep has no point (an empty list).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The points in measuring order: by MTU, then pairs, then streams, each ascending (the
    /// MTU outermost: switching it reconfigures every lab device, so it changes least often).
    pub fn points(&self) -> Vec<SweepPoint> {
        let sorted = |v: &[u32]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v
        };
        let mut pairs = self.pairs.clone();
        pairs.sort_unstable();
        let streams = sorted(&self.streams);
        let mut out = Vec::with_capacity(self.len());
        for mtu in sorted(&self.mtu) {
            for &p in &pairs {
                for &s in &streams {
                    out.push(SweepPoint {
                        pairs: p,
                        streams: s,
                        mtu,
                    });
                }
            }
        }
        out
    }

    /// Largest pair count (how many container pairs every lab needs).
    pub fn max_pairs(&self) -> usize {
        self.pairs.iter().copied().max().unwrap_or(1)
    }

    /// Refuses a multi-point sweep whose planned measuring time (`runs` rounds of `cases`
    /// cases per point, each `duration` s plus overhead) exceeds `max_hours`.
    pub fn check_time(
        &self,
        cases_per_point: usize,
        runs: usize,
        duration: u32,
        max_hours: f64,
    ) -> Result<(), crate::BenchError> {
        if self.len() <= 1 {
            return Ok(());
        }
        let runs_total = self.len() * cases_per_point * runs;
        let hours = runs_total as f64 * (f64::from(duration) + RUN_OVERHEAD_S) / 3600.0;
        if hours > max_hours {
            return Err(crate::BenchError::Invalid(format!(
                "the sweep plans {} points × {cases_per_point} scenarios × {runs} runs × \
                 {duration} s ≈ {hours:.1} h of measuring; the bound is {max_hours} h \
                 (--max-hours): fewer points, scenarios, --runs or a shorter --duration",
                self.len()
            )));
        }
        Ok(())
    }
}

/// Which campaign produced a result file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Campaign {
    /// The paper's Fig. 14 comparison.
    Paper,
    /// Throughput against rule count.
    Rules,
}

impl Campaign {
    /// Base name of the campaign's files (`results.json`, `rules.json`, …).
    pub fn file_stem(self) -> &'static str {
        match self {
            Campaign::Paper => "results",
            Campaign::Rules => "rules",
        }
    }
}

/// Everything a campaign measured (written after every run, so an interrupted campaign keeps
/// what it gathered).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// Which campaign.
    pub campaign: Campaign,
    /// Start time (UTC).
    pub started: String,
    /// Time of the last update (UTC).
    pub updated: String,
    /// Every planned run was done.
    pub complete: bool,
    /// The user stopped the campaign.
    pub interrupted: bool,
    /// Where it ran.
    pub machine: Machine,
    /// How it measured.
    pub settings: Settings,
    /// Case that ratios are taken against (`native`; the unfiltered overlay for rules).
    pub baseline: Option<String>,
    /// One entry per case, in measurement order.
    pub cases: Vec<CaseResult>,
    /// Remarks for the report.
    pub notes: Vec<String>,
}

/// One measured (or skipped) case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    /// Short name (`native`, `swarm+iptables`, `iptables/1000`).
    pub name: String,
    /// What it is.
    pub description: String,
    /// Lab mode.
    pub mode: String,
    /// Series of the rule-count curve (`iptables`, `ebpf`, `reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    /// Non-matching rules before the accepts (rule-count curve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_rules: Option<usize>,
    /// Total rules in the filter (rule-count curve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_rules: Option<usize>,
    /// Scenario of a paper case (its name without the sweep point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// Sweep point of a paper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<SweepPoint>,
    /// Whether this case can be measured yet.
    pub available: bool,
    /// Why not, or other remarks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Case this one's ratios are taken against, instead of the campaign's baseline (the eBPF
    /// series is compared with its own 0-rule case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// The eBPF policy behind this case, as the agents compiled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyStats>,
    /// Runs so far.
    pub runs: Vec<RunRecord>,
    /// Statistics over the runs so far.
    pub summary: Option<CaseSummary>,
}

impl CaseResult {
    /// A case with no runs yet.
    pub fn new(name: String, description: String, mode: String) -> Self {
        Self {
            name,
            description,
            mode,
            series: None,
            extra_rules: None,
            total_rules: None,
            scenario: None,
            point: None,
            available: true,
            note: None,
            baseline: None,
            policy: None,
            runs: Vec::new(),
            summary: None,
        }
    }
}

/// What the agents made of a case's eBPF policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyStats {
    /// Policies in force (Listing 10 and the extra rules).
    pub names: Vec<String>,
    /// Entries of the `POLICY` map per host (site order), read from the pinned maps.
    pub entries: Vec<usize>,
    /// Size of the extra-rule (or Listing 10) policy file, bytes.
    pub file_bytes: usize,
    /// Seconds the bench took to build and parse that file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_secs: Option<f64>,
    /// Seconds from each apply request until every host's agent had compiled it into its maps
    /// (one per switch to this case).
    pub apply_secs: Vec<f64>,
    /// Enforcement probes run before measuring, and their outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<String>,
}

impl PolicyStats {
    /// Largest entry count over the hosts.
    pub fn max_entries(&self) -> usize {
        self.entries.iter().copied().max().unwrap_or(0)
    }

    /// Mean apply time, seconds.
    pub fn mean_apply_secs(&self) -> Option<f64> {
        (!self.apply_secs.is_empty())
            .then(|| self.apply_secs.iter().sum::<f64>() / self.apply_secs.len() as f64)
    }
}

/// One iperf3 run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Round (0-based).
    pub round: usize,
    /// Raw iperf3 JSON, relative to the output directory.
    pub raw: String,
    /// Every 1-second interval's throughput, Gbit/s (warm-up included).
    pub interval_gbps: Vec<f64>,
    /// Mean of the intervals after the warm-up, Gbit/s.
    pub mean_gbps: f64,
    /// Whole-run receiver throughput, Gbit/s.
    pub received_gbps: f64,
    /// TCP retransmits of the run.
    pub retransmits: u64,
    /// Sender iperf3 CPU, % of one core.
    pub cpu_host: f64,
    /// Receiver iperf3 CPU, % of one core.
    pub cpu_remote: f64,
    /// The whole machine's CPU over the run (`/proc/stat`, every CPU, softirq included).
    #[serde(default)]
    pub machine_cpu: Option<crate::cpu::MachineCpu>,
    /// Each pair's share when several container pairs ran at once (the figures above are
    /// their sum); empty for a single pair.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairRun>,
}

/// One container pair's part of a run with several pairs at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRun {
    /// Raw iperf3 JSON of this pair's client, relative to the output directory.
    pub raw: String,
    /// Mean of its intervals after the warm-up, Gbit/s.
    pub mean_gbps: f64,
    /// Its TCP retransmits.
    pub retransmits: u64,
}

impl RunRecord {
    /// Builds the record of one run from its iperf3 report.
    pub fn new(round: usize, raw: String, report: &IperfReport, skip: usize) -> Self {
        let interval_gbps: Vec<f64> = report
            .intervals
            .iter()
            .map(|i| i.bits_per_second / 1e9)
            .collect();
        let mean_gbps = mean_after_warmup(&interval_gbps, skip);
        Self {
            round,
            raw,
            interval_gbps,
            mean_gbps,
            received_gbps: report.received_bps / 1e9,
            retransmits: report.retransmits,
            cpu_host: report.cpu_host,
            cpu_remote: report.cpu_remote,
            machine_cpu: None,
            pairs: Vec::new(),
        }
    }

    /// Builds the record of one run of several container pairs at once from each pair's
    /// (raw file, iperf3 report): interval `i` is the sum of every pair's interval `i` (up to
    /// the shortest pair's count: the clients start together, so their intervals line up),
    /// totals and iperf3 CPU are sums. `None` for no pairs.
    pub fn aggregate(round: usize, pairs: &[(String, IperfReport)], skip: usize) -> Option<Self> {
        let ((first_raw, first), rest) = pairs.split_first()?;
        if rest.is_empty() {
            return Some(Self::new(round, first_raw.clone(), first, skip));
        }
        let len = pairs
            .iter()
            .map(|(_, r)| r.intervals.len())
            .min()
            .unwrap_or(0);
        let interval_gbps: Vec<f64> = (0..len)
            .map(|i| {
                pairs
                    .iter()
                    .map(|(_, r)| r.intervals[i].bits_per_second / 1e9)
                    .sum()
            })
            .collect();
        let mean_gbps = mean_after_warmup(&interval_gbps, skip);
        let sum = |f: &dyn Fn(&IperfReport) -> f64| pairs.iter().map(|(_, r)| f(r)).sum::<f64>();
        Some(Self {
            round,
            raw: first_raw.clone(),
            interval_gbps,
            mean_gbps,
            received_gbps: sum(&|r| r.received_bps) / 1e9,
            retransmits: pairs.iter().map(|(_, r)| r.retransmits).sum(),
            cpu_host: sum(&|r| r.cpu_host),
            cpu_remote: sum(&|r| r.cpu_remote),
            machine_cpu: None,
            pairs: pairs
                .iter()
                .map(|(raw, r)| PairRun {
                    raw: raw.clone(),
                    mean_gbps: Self::new(round, String::new(), r, skip).mean_gbps,
                    retransmits: r.retransmits,
                })
                .collect(),
        })
    }

    /// The whole machine's busy CPU % per Gbit/s of this run's whole-run (receiver)
    /// throughput; `None` without `/proc/stat` figures or throughput.
    pub fn machine_cpu_per_gbps(&self) -> Option<f64> {
        let m = self.machine_cpu?;
        (self.received_gbps > 0.0).then(|| m.busy_pct / self.received_gbps)
    }
}

/// Ratio `f(a) / f(b)` of two cases' runs paired by round (both measured in the same round, so
/// the machine's drift cancels), summarised over the rounds with a 95 % t-interval.
pub fn paired_ratio(
    a: &CaseResult,
    b: &CaseResult,
    f: impl Fn(&RunRecord) -> Option<f64>,
) -> Option<Summary> {
    let ratios: Vec<f64> = a
        .runs
        .iter()
        .filter_map(|ra| {
            let rb = b.runs.iter().find(|rb| rb.round == ra.round)?;
            let (x, y) = (f(ra)?, f(rb)?);
            (y > 0.0).then_some(x / y)
        })
        .collect();
    summarize(&ratios, CONFIDENCE)
}

/// Statistics of one case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseSummary {
    /// Runs.
    pub runs: usize,
    /// Pooled 1-second samples after warm-up (the paper's N).
    pub samples: usize,
    /// Over all pooled 1-second samples, Gbit/s: the paper's method. Successive intervals of a
    /// run are correlated, so this interval is optimistic.
    pub intervals: Summary,
    /// Over the per-run means, Gbit/s: runs are independent, so this is the honest interval.
    pub run_means: Summary,
    /// Per-round ratio to the baseline measured in the same round, summarised over rounds.
    pub ratio_to_baseline: Option<Summary>,
    /// Mean retransmits per run.
    pub retransmits_per_run: f64,
    /// Mean sender iperf3 CPU, % of one core.
    pub cpu_host: f64,
    /// Mean receiver iperf3 CPU, % of one core.
    pub cpu_remote: f64,
    /// (sender + receiver iperf3 CPU %) per Gbit/s of throughput.
    pub cpu_per_gbps: f64,
    /// Mean whole-machine busy CPU over the runs, % of one core (every CPU, softirq
    /// included); `None` without `/proc/stat` figures.
    #[serde(default)]
    pub machine_cpu_pct: Option<f64>,
    /// Of which softirq.
    #[serde(default)]
    pub machine_softirq_pct: Option<f64>,
    /// Mean over runs of the whole machine's busy CPU % per Gbit/s of the run's whole-run
    /// (receiver) throughput: the same window on both sides.
    #[serde(default)]
    pub machine_cpu_per_gbps: Option<f64>,
    /// The same per-run figure summarised with its 95 % interval over runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_cpu_per_gbps_runs: Option<Summary>,
    /// Per-round ratio of whole-machine CPU per Gbit/s to the baseline's in the same round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_cpu_ratio_to_baseline: Option<Summary>,
}

impl Results {
    /// Recomputes every case's summary (after each run).
    pub fn resummarize(&mut self, skip: usize) {
        let baselines: Vec<Option<CaseResult>> = self
            .cases
            .iter()
            .map(|c| c.baseline.as_ref().or(self.baseline.as_ref()))
            .map(|b| b.and_then(|b| self.case(b).cloned()))
            .collect();
        for (case, baseline) in self.cases.iter_mut().zip(baselines) {
            case.summary = summarize_case(case, skip, baseline.as_ref());
        }
    }

    /// The case a case's ratios are taken against.
    pub fn baseline_of<'a>(&'a self, case: &'a CaseResult) -> Option<&'a str> {
        case.baseline.as_deref().or(self.baseline.as_deref())
    }

    /// The case named `name`.
    pub fn case(&self, name: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.name == name)
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

fn summarize_case(
    case: &CaseResult,
    skip: usize,
    baseline: Option<&CaseResult>,
) -> Option<CaseSummary> {
    let pooled: Vec<f64> = case
        .runs
        .iter()
        .flat_map(|r| drop_warmup(&r.interval_gbps, skip).iter().copied())
        .collect();
    let run_means: Vec<f64> = case.runs.iter().map(|r| r.mean_gbps).collect();
    let intervals = summarize(&pooled, CONFIDENCE)?;
    let run_summary = summarize(&run_means, CONFIDENCE)?;
    let ratio_to_baseline = baseline.and_then(|b| paired_ratio(case, b, |r| Some(r.mean_gbps)));
    let machine_cpu_ratio_to_baseline =
        baseline.and_then(|b| paired_ratio(case, b, RunRecord::machine_cpu_per_gbps));
    let per_run_cpu: Vec<f64> = case
        .runs
        .iter()
        .filter_map(RunRecord::machine_cpu_per_gbps)
        .collect();
    let machine_cpu_per_gbps_runs = summarize(&per_run_cpu, CONFIDENCE);
    let cpu_host = mean(case.runs.iter().map(|r| r.cpu_host));
    let cpu_remote = mean(case.runs.iter().map(|r| r.cpu_remote));
    let machine: Vec<(crate::cpu::MachineCpu, f64)> = case
        .runs
        .iter()
        .filter_map(|r| r.machine_cpu.map(|m| (m, r.received_gbps)))
        .collect();
    let some_mean = |v: Vec<f64>| (!v.is_empty()).then(|| mean(v.into_iter()));
    let machine_cpu_pct = some_mean(machine.iter().map(|(m, _)| m.busy_pct).collect());
    let machine_softirq_pct = some_mean(machine.iter().map(|(m, _)| m.softirq_pct).collect());
    let machine_cpu_per_gbps = some_mean(
        machine
            .iter()
            .filter(|(_, g)| *g > 0.0)
            .map(|(m, g)| m.busy_pct / g)
            .collect(),
    );
    Some(CaseSummary {
        runs: case.runs.len(),
        samples: pooled.len(),
        intervals,
        run_means: run_summary,
        ratio_to_baseline,
        retransmits_per_run: mean(case.runs.iter().map(|r| r.retransmits as f64)),
        cpu_host,
        cpu_remote,
        cpu_per_gbps: if run_summary.mean > 0.0 {
            (cpu_host + cpu_remote) / run_summary.mean
        } else {
            0.0
        },
        machine_cpu_pct,
        machine_softirq_pct,
        machine_cpu_per_gbps,
        machine_cpu_per_gbps_runs,
        machine_cpu_ratio_to_baseline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(round: usize, gbps: &[f64]) -> RunRecord {
        RunRecord {
            round,
            raw: String::new(),
            interval_gbps: gbps.to_vec(),
            mean_gbps: gbps[1..].iter().sum::<f64>() / (gbps.len() - 1) as f64,
            received_gbps: 0.0,
            retransmits: 2,
            cpu_host: 50.0,
            cpu_remote: 30.0,
            machine_cpu: None,
            pairs: Vec::new(),
        }
    }

    fn case(name: &str, runs: Vec<RunRecord>) -> CaseResult {
        CaseResult {
            runs,
            ..CaseResult::new(name.into(), String::new(), "native".into())
        }
    }

    #[test]
    fn summaries_skip_warmup_and_pair_ratios_by_round() {
        let mut r = Results {
            campaign: Campaign::Paper,
            started: String::new(),
            updated: String::new(),
            complete: true,
            interrupted: false,
            machine: Machine {
                cpu: String::new(),
                cpus: 1,
                kernel: String::new(),
                os: String::new(),
                iperf3: String::new(),
            },
            settings: Settings {
                runs: 2,
                duration: 3,
                skip: 1,
                streams: 1,
                mtu: 1500,
                port: 5201,
                sweep: None,
            },
            baseline: Some("native".into()),
            cases: vec![
                case(
                    "native",
                    vec![run(0, &[1.0, 10.0, 10.0]), run(1, &[1.0, 8.0, 8.0])],
                ),
                case(
                    "ila",
                    vec![run(0, &[1.0, 5.0, 5.0]), run(1, &[1.0, 4.0, 4.0])],
                ),
            ],
            notes: vec![],
        };
        r.resummarize(1);
        let ila = r
            .case("ila")
            .and_then(|c| c.summary.clone())
            .expect("summary");
        assert_eq!(ila.samples, 4, "warm-up intervals dropped");
        assert!((ila.intervals.mean - 4.5).abs() < 1e-12);
        let ratio = ila.ratio_to_baseline.expect("ratio");
        assert!(
            (ratio.mean - 0.5).abs() < 1e-12,
            "paired by round: 5/10 and 4/8"
        );
        assert_eq!(ratio.ci_low, Some(0.5));
        assert!((ila.cpu_per_gbps - 80.0 / 4.5).abs() < 1e-9);

        // A case with its own baseline is compared with that case, not the campaign's.
        r.cases.push(CaseResult {
            baseline: Some("ila".into()),
            ..case(
                "ila+x",
                vec![run(0, &[1.0, 2.5, 2.5]), run(1, &[1.0, 2.0, 2.0])],
            )
        });
        r.resummarize(1);
        let x = r.case("ila+x").expect("case");
        assert_eq!(r.baseline_of(x), Some("ila"));
        let ratio = x
            .summary
            .as_ref()
            .and_then(|s| s.ratio_to_baseline)
            .expect("ratio");
        assert!((ratio.mean - 0.5).abs() < 1e-12, "2.5/5 and 2/4");
    }

    #[test]
    fn sweep_lists_parse_and_bad_ones_are_refused_with_the_reason() {
        assert_eq!(parse_list::<u32>("4"), Ok(vec![4]), "one value is a list");
        assert_eq!(parse_list::<u32>("1, 4,8"), Ok(vec![1, 4, 8]));
        let err = |t: &str| parse_list::<u32>(t).expect_err(t);
        assert!(err("1,,4").contains("entry 2 of '1,,4' is empty"));
        assert!(err("").contains("entry 1"));
        assert!(err("1,x").contains("'x' (entry 2"));
        assert!(err("-1").contains("not a number"));
        assert!(err("4,1,4").contains("'4' is listed twice"));
        assert!(err("1,2,3,4,5,6,7,8,9").contains(&format!("at most {MAX_LIST}")));

        let ok = Sweep {
            streams: vec![1, 4, 8],
            pairs: vec![1, 4],
            mtu: vec![1500, 9000],
        };
        assert!(ok.validate().is_ok());
        let bad = |w: Sweep| w.validate().expect_err("refused").to_string();
        assert!(bad(Sweep {
            pairs: vec![0],
            ..ok.clone()
        })
        .contains(&format!("--pairs must be 1..={MAX_PAIRS}, got 0")));
        assert!(bad(Sweep {
            streams: vec![],
            ..ok.clone()
        })
        .contains("--streams: no value"));
        assert!(bad(Sweep {
            mtu: vec![1400],
            ..ok.clone()
        })
        .contains("1500 or 9000"));
        assert!(bad(Sweep {
            streams: vec![2, 2],
            ..ok.clone()
        })
        .contains("listed twice"));
        let big = bad(Sweep {
            streams: (1..=8).collect(),
            pairs: (1..=2).collect(),
            mtu: vec![1500, 9000],
        });
        assert!(
            big.contains("= 32 points") && big.contains(&format!("at most {MAX_SWEEP_POINTS}")),
            "{big}"
        );
    }

    #[test]
    fn sweep_points_go_mtu_then_pairs_then_streams_and_time_is_bounded() {
        let w = Sweep {
            streams: vec![8, 1, 4],
            pairs: vec![4, 1],
            mtu: vec![9000, 1500],
        };
        let tags: Vec<String> = w.points().iter().map(SweepPoint::tag).collect();
        assert_eq!(
            tags,
            [
                "p1-s1-m1500",
                "p1-s4-m1500",
                "p1-s8-m1500",
                "p4-s1-m1500",
                "p4-s4-m1500",
                "p4-s8-m1500",
                "p1-s1-m9000",
                "p1-s4-m9000",
                "p1-s8-m9000",
                "p4-s1-m9000",
                "p4-s4-m9000",
                "p4-s8-m9000"
            ]
        );
        assert_eq!(w.max_pairs(), 4);
        let p = w.points()[4];
        assert_eq!(p.case_name("ila", false), "ila/p4-s4-m1500");
        assert_eq!(p.case_name("ila", true), "ila");
        // 12 points × 3 scenarios × 2 runs × (5 + 2) s ≈ 0.14 h: fine; the paper preset is not.
        assert!(w.check_time(3, 2, 5, MAX_SWEEP_HOURS).is_ok());
        let e = w
            .check_time(6, 100, 70, MAX_SWEEP_HOURS)
            .expect_err("hours")
            .to_string();
        assert!(e.contains("the bound is 8 h (--max-hours)"), "{e}");
        let one = Sweep {
            streams: vec![1],
            pairs: vec![1],
            mtu: vec![9000],
        };
        assert!(
            one.check_time(6, 100, 70, MAX_SWEEP_HOURS).is_ok(),
            "one point: --paper's hours are wanted"
        );
    }

    fn report(gbps: &[f64], received: f64, retransmits: u64, cpu: (f64, f64)) -> IperfReport {
        IperfReport {
            intervals: gbps
                .iter()
                .enumerate()
                .map(|(i, g)| crate::iperf::Interval {
                    start: i as f64,
                    seconds: 1.0,
                    bits_per_second: g * 1e9,
                    retransmits: 0,
                })
                .collect(),
            sent_bps: received * 1e9,
            received_bps: received * 1e9,
            retransmits,
            cpu_host: cpu.0,
            cpu_remote: cpu.1,
        }
    }

    #[test]
    fn pairs_are_summed_interval_by_interval() {
        let pairs = [
            (
                "raw/a-p1.json".to_string(),
                report(&[1.0, 3.0, 3.0], 2.5, 2, (10.0, 5.0)),
            ),
            // One interval fewer (an end sliver iperf3 dropped): the sum stops at the shorter.
            (
                "raw/a-p2.json".to_string(),
                report(&[0.5, 2.0], 1.5, 1, (20.0, 7.0)),
            ),
        ];
        let r = RunRecord::aggregate(3, &pairs, 1).expect("record");
        assert_eq!(r.round, 3);
        assert_eq!(r.raw, "raw/a-p1.json");
        assert_eq!(r.interval_gbps, vec![1.5, 5.0]);
        assert!((r.mean_gbps - 5.0).abs() < 1e-12, "warm-up dropped: {r:?}");
        assert!((r.received_gbps - 4.0).abs() < 1e-12);
        assert_eq!(r.retransmits, 3);
        assert_eq!((r.cpu_host, r.cpu_remote), (30.0, 12.0));
        assert_eq!(r.pairs.len(), 2);
        assert!((r.pairs[0].mean_gbps - 3.0).abs() < 1e-12);
        assert!((r.pairs[1].mean_gbps - 2.0).abs() < 1e-12);
        assert_eq!(r.pairs[1].raw, "raw/a-p2.json");

        // One pair: the plain record, no per-pair list.
        let one = RunRecord::aggregate(0, &pairs[..1], 1).expect("record");
        assert!(one.pairs.is_empty());
        assert!((one.mean_gbps - 3.0).abs() < 1e-12);
        assert!(RunRecord::aggregate(0, &[], 1).is_none());
    }

    #[test]
    fn machine_cpu_ratio_is_paired_by_round() {
        let with_cpu = |round: usize, gbps: f64, busy: f64| RunRecord {
            received_gbps: gbps,
            machine_cpu: Some(crate::cpu::MachineCpu {
                busy_pct: busy,
                softirq_pct: 0.0,
            }),
            ..run(round, &[gbps, gbps])
        };
        let native = case(
            "native/p1-s1-m1500",
            vec![with_cpu(0, 10.0, 100.0), with_cpu(1, 5.0, 100.0)],
        );
        let ila = CaseResult {
            baseline: Some(native.name.clone()),
            ..case(
                "ila/p1-s1-m1500",
                // Round 1 comes first in the list: pairing is by round, not position.
                vec![with_cpu(1, 5.0, 110.0), with_cpu(0, 10.0, 110.0)],
            )
        };
        let s = summarize_case(&ila, 1, Some(&native)).expect("summary");
        let cpu = s.machine_cpu_ratio_to_baseline.expect("cpu ratio");
        assert_eq!(cpu.n, 2);
        assert!((cpu.mean - 1.1).abs() < 1e-12, "{cpu:?}");
        let thr = s.ratio_to_baseline.expect("ratio");
        assert!((thr.mean - 1.0).abs() < 1e-12, "{thr:?}");
        let per_run = s.machine_cpu_per_gbps_runs.expect("per run");
        assert!((per_run.mean - (11.0 + 22.0) / 2.0).abs() < 1e-12);
    }
}
