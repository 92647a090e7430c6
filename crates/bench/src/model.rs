//! The results of a campaign as data: what `results.json` holds, and the summaries computed from
//! the raw runs.

use serde::{Deserialize, Serialize};

use crate::iperf::IperfReport;
use crate::machine::Machine;
use crate::stats::{drop_warmup, summarize, Summary};

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
        if self.streams == 0 || self.streams > 128 {
            return bad(format!("--parallel must be 1..=128, got {}", self.streams));
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
}

impl RunRecord {
    /// Builds the record of one run from its iperf3 report.
    pub fn new(round: usize, raw: String, report: &IperfReport, skip: usize) -> Self {
        let interval_gbps: Vec<f64> = report
            .intervals
            .iter()
            .map(|i| i.bits_per_second / 1e9)
            .collect();
        let kept = drop_warmup(&interval_gbps, skip);
        let mean_gbps = if kept.is_empty() {
            0.0
        } else {
            kept.iter().sum::<f64>() / kept.len() as f64
        };
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
        }
    }
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
}

impl Results {
    /// Recomputes every case's summary (after each run).
    pub fn resummarize(&mut self, skip: usize) {
        let runs_of = |name: &str| -> Option<Vec<(usize, f64)>> {
            self.cases
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.runs.iter().map(|r| (r.round, r.mean_gbps)).collect())
        };
        let baselines: Vec<Option<Vec<(usize, f64)>>> = self
            .cases
            .iter()
            .map(|c| c.baseline.as_ref().or(self.baseline.as_ref()))
            .map(|b| b.and_then(|b| runs_of(b)))
            .collect();
        for (case, baseline) in self.cases.iter_mut().zip(baselines) {
            case.summary = summarize_case(case, skip, baseline.as_deref());
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
    baseline: Option<&[(usize, f64)]>,
) -> Option<CaseSummary> {
    let pooled: Vec<f64> = case
        .runs
        .iter()
        .flat_map(|r| drop_warmup(&r.interval_gbps, skip).iter().copied())
        .collect();
    let run_means: Vec<f64> = case.runs.iter().map(|r| r.mean_gbps).collect();
    let intervals = summarize(&pooled, CONFIDENCE)?;
    let run_summary = summarize(&run_means, CONFIDENCE)?;
    let ratio_to_baseline = baseline.and_then(|b| {
        let ratios: Vec<f64> = case
            .runs
            .iter()
            .filter_map(|r| {
                b.iter()
                    .find(|(round, _)| *round == r.round)
                    .filter(|(_, base)| *base > 0.0)
                    .map(|(_, base)| r.mean_gbps / base)
            })
            .collect();
        summarize(&ratios, CONFIDENCE)
    });
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
}
