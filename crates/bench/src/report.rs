//! Files of a campaign: `<stem>.json` (the [`Results`]), `<stem>.csv` (one row per case),
//! `<stem>-samples.csv` (one row per 1-second interval), and `report.md` with the figures,
//! regenerated from whichever result files the directory holds.

use std::fmt::Write as _;
use std::path::Path;

use crate::model::{paired_ratio, CaseResult, Results, RunRecord, SweepPoint};
use crate::plots::{self, palette, Bar, Curve, Line, Panel, Point, XyPoint};
use crate::stats::Summary;
use crate::BenchError;

/// The paper's Fig. 14 numbers (Gbit/s), for the comparison in the report.
pub const PAPER_FIG14: [(&str, f64); 4] = [
    ("ipt_no_rules (Docker Swarm overlay)", 7.22),
    ("ipt_tcp5201 (Swarm + Listing 9)", 7.20),
    ("cilium_no_rules (Cilium overlay)", 8.22),
    ("cilium_tcp5201 (Cilium + Listing 10)", 8.24),
];

fn io(what: String) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Os { what, source }
}

fn write(path: &Path, content: &str) -> Result<(), BenchError> {
    // Write then rename: an interrupted write never leaves a truncated result file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_default()
}

/// Writes the JSON and CSV files of `results` into `dir`.
pub fn save_data(dir: &Path, results: &Results) -> Result<(), BenchError> {
    let stem = results.campaign.file_stem();
    let json = serde_json::to_string_pretty(results)
        .map_err(|e| BenchError::Invalid(format!("serialising results: {e}")))?;
    write(&dir.join(format!("{stem}.json")), &json)?;

    let mut csv = String::from(
        "case,series,extra_rules,total_rules,available,runs,samples,mean_gbps,median_gbps,std_gbps,\
         ci95_low_gbps,ci95_high_gbps,run_ci95_low_gbps,run_ci95_high_gbps,ratio,ratio_ci95_low,\
         ratio_ci95_high,retransmits_per_run,cpu_sender_pct,cpu_receiver_pct,cpu_pct_per_gbps,\
         scenario,pairs,streams,mtu,machine_cpu_pct_per_gbps,machine_cpu_ratio,\
         machine_cpu_ratio_ci95_low,machine_cpu_ratio_ci95_high\n",
    );
    for c in &results.cases {
        let _ = write!(
            csv,
            "{},{},{},{},{},",
            c.name,
            c.series.clone().unwrap_or_default(),
            c.extra_rules.map(|n| n.to_string()).unwrap_or_default(),
            c.total_rules.map(|n| n.to_string()).unwrap_or_default(),
            c.available
        );
        match &c.summary {
            Some(s) => {
                let r = s.ratio_to_baseline;
                let _ = write!(
                    csv,
                    "{},{},{:.4},{:.4},{},{},{},{},{},{},{},{},{:.1},{:.1},{:.1},{:.2}",
                    s.runs,
                    s.samples,
                    s.intervals.mean,
                    s.intervals.median,
                    opt(s.intervals.std_dev, 4),
                    opt(s.intervals.ci_low, 4),
                    opt(s.intervals.ci_high, 4),
                    opt(s.run_means.ci_low, 4),
                    opt(s.run_means.ci_high, 4),
                    opt(r.map(|r| r.mean), 4),
                    opt(r.and_then(|r| r.ci_low), 4),
                    opt(r.and_then(|r| r.ci_high), 4),
                    s.retransmits_per_run,
                    s.cpu_host,
                    s.cpu_remote,
                    s.cpu_per_gbps
                );
            }
            None => csv.push_str(&format!("0,0{}", ",".repeat(14))),
        }
        let cr = c
            .summary
            .as_ref()
            .and_then(|s| s.machine_cpu_ratio_to_baseline);
        let _ = writeln!(
            csv,
            ",{},{},{},{},{},{},{},{}",
            c.scenario.clone().unwrap_or_default(),
            c.point.map(|p| p.pairs.to_string()).unwrap_or_default(),
            c.point.map(|p| p.streams.to_string()).unwrap_or_default(),
            c.point.map(|p| p.mtu.to_string()).unwrap_or_default(),
            opt(c.summary.as_ref().and_then(|s| s.machine_cpu_per_gbps), 3),
            opt(cr.map(|r| r.mean), 4),
            opt(cr.and_then(|r| r.ci_low), 4),
            opt(cr.and_then(|r| r.ci_high), 4)
        );
    }
    write(&dir.join(format!("{stem}.csv")), &csv)?;

    let mut samples = String::from("case,round,interval,gbps,warmup\n");
    for c in &results.cases {
        for r in &c.runs {
            for (i, g) in r.interval_gbps.iter().enumerate() {
                let _ = writeln!(
                    samples,
                    "{},{},{},{g:.4},{}",
                    c.name,
                    r.round + 1,
                    i + 1,
                    i < results.settings.skip
                );
            }
        }
    }
    write(&dir.join(format!("{stem}-samples.csv")), &samples)
}

/// File stem of `bench micro`'s results (`micro.json`).
pub const MICRO_STEM: &str = "micro";

/// Writes `bench micro`'s results as `micro.json` into `dir` and regenerates `report.md`.
pub fn save_micro(dir: &Path, r: &crate::micro::MicroReport) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let json = serde_json::to_string_pretty(r)?;
    write(&dir.join(format!("{MICRO_STEM}.json")), &json)?;
    write_report(dir)
}

/// File stem of `bench latency`'s results (`latency.json`).
pub const LATENCY_STEM: &str = "latency";

/// Writes `bench latency`'s results as `latency.json` into `dir` and regenerates `report.md`.
pub fn save_latency(dir: &Path, r: &crate::latency::LatencyReport) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let json = serde_json::to_string_pretty(r)?;
    write(&dir.join(format!("{LATENCY_STEM}.json")), &json)?;
    write_report(dir)
}

fn load(dir: &Path, stem: &str) -> Result<Option<Results>, BenchError> {
    load_json(dir, stem)
}

/// `dir/<stem>.json`, if there is one.
fn load_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    stem: &str,
) -> Result<Option<T>, BenchError> {
    let path = dir.join(format!("{stem}.json"));
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            BenchError::Invalid(format!("{} is not a results file: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

fn ci(s: &Summary, digits: usize) -> String {
    match (s.ci_low, s.ci_high) {
        (Some(lo), Some(hi)) => format!("{lo:.digits$} – {hi:.digits$}"),
        _ => "–".into(),
    }
}

fn color_of(case: &CaseResult) -> plotters::style::RGBColor {
    if case.policy.is_some() {
        // Policy bars in the eBPF colour, beside their mode's plain bar.
        return palette::EBPF;
    }
    match case.mode.as_str() {
        "native" => palette::NATIVE,
        "ila" => palette::ILA,
        "evpn" => palette::EVPN,
        _ => palette::SWARM,
    }
}

fn header(md: &mut String, r: &Results) {
    let s = &r.settings;
    let m = &r.machine;
    let list = |v: Vec<String>| v.join(", ");
    let what = match &s.sweep {
        Some(w) if w.len() > 1 => format!(
            "sweep of {} points: {{{}}} TCP stream(s) per pair × {{{}}} container pair(s) at once × \
             underlay MTU {{{}}}",
            w.len(),
            list(w.streams.iter().map(u32::to_string).collect()),
            list(w.pairs.iter().map(usize::to_string).collect()),
            list(w.mtu.iter().map(u32::to_string).collect())
        ),
        Some(w) => format!(
            "{} TCP stream(s), {} container pair(s), underlay MTU {}",
            s.streams,
            w.pairs.first().copied().unwrap_or(1),
            s.mtu
        ),
        None => format!("{} TCP stream(s), underlay MTU {}", s.streams, s.mtu),
    };
    let order = match &s.sweep {
        Some(w) if w.len() > 1 => {
            "interleaved rounds: every case once per round, point by point, the scenarios \
             alternating within each point (A B A B)"
        }
        _ => "interleaved rounds (every case once per round)",
    };
    let _ = writeln!(
        md,
        "- Machine: {} ({} CPUs), {}, kernel {}\n- Tool: {}\n- Settings: {} runs × {} s, first {} \
         interval(s) of each run dropped as warm-up, {what}, server port {}\n\
         - Order: {order}\n- Started {}, last update {}{}\n",
        m.cpu,
        m.cpus,
        m.os,
        m.kernel,
        m.iperf3,
        s.runs,
        s.duration,
        s.skip,
        s.port,
        r.started,
        r.updated,
        if r.interrupted {
            " — **interrupted: partial results**"
        } else if !r.complete {
            " — **incomplete**"
        } else {
            ""
        }
    );
}

/// Colour of a scenario's line in the sweep figures.
fn scenario_color(scenario: &str) -> plotters::style::RGBColor {
    match scenario {
        "native" => palette::NATIVE,
        "ila" => palette::ILA,
        "ila+policy" => palette::EBPF,
        "swarm+iptables" => palette::IPTABLES,
        "evpn" => palette::EVPN,
        s if s.starts_with("swarm") => palette::SWARM,
        _ => plotters::style::RGBColor(0x33, 0x33, 0x33),
    }
}

fn ratio_cell(x: Option<Summary>) -> String {
    x.map(|x| format!("{:.3} [{}]", x.mean, ci(&x, 3)))
        .unwrap_or_else(|| "–".into())
}

/// The paper campaign over a sweep: per (pairs, MTU) a table and a figure of throughput and
/// whole-machine CPU per Gbit/s against streams for every scenario, then the targets.
fn sweep_section(md: &mut String, dir: &Path, r: &Results) -> Result<(), BenchError> {
    md.push_str("## Throughput and CPU at scale: streams × container pairs × MTU\n\n");
    header(md, r);
    md.push_str(
        "Each case is one scenario at one point; a run of *pairs* > 1 runs that many iperf3 \
         client/server pairs at once, each between its own containers (one per pair on each of \
         the two hosts), and its throughput is the sum over the pairs (1-s intervals summed \
         pair by pair). Ratios are per round against `native` at the same point (same round, \
         so the machine's drift cancels), with their 95 % t-interval over rounds. *Machine CPU \
         per Gbit/s* is the whole machine's busy time from `/proc/stat` over each run (every \
         CPU, softirq included, % of one core) over that run's received throughput; both hosts \
         of a lab share this machine, so it covers sender and receiver — and anything else \
         running on it.\n\n",
    );
    let scenarios: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for c in &r.cases {
            let s = c.scenario.clone().unwrap_or_else(|| c.name.clone());
            if !v.contains(&s) {
                v.push(s);
            }
        }
        v
    };
    let mut groups: Vec<(usize, u32)> = Vec::new();
    for p in points_of(r).into_iter().flatten() {
        if !groups.contains(&(p.pairs, p.mtu)) {
            groups.push((p.pairs, p.mtu));
        }
    }
    for (pairs, mtu) in groups {
        let _ = writeln!(md, "### {pairs} container pair(s), MTU {mtu}\n");
        md.push_str(
            "| streams/pair | scenario | Gbit/s (mean of runs) | 95 % CI (n) | ratio to native [95 % CI] | retransmits/run | machine CPU % (softirq) | machine CPU % per Gbit/s [95 % CI] | CPU ratio to native [95 % CI] |\n\
             |---:|---|---:|---|---|---:|---:|---|---|\n",
        );
        let mut thr_lines: Vec<Line> = Vec::new();
        let mut cpu_lines: Vec<Line> = Vec::new();
        let in_group = |c: &&CaseResult| c.point.is_some_and(|p| p.pairs == pairs && p.mtu == mtu);
        let mut rows: Vec<&CaseResult> = r.cases.iter().filter(in_group).collect();
        rows.sort_by_key(|c| c.point.map(|p| p.streams).unwrap_or(0));
        for c in rows {
            let (Some(p), Some(sc)) = (c.point, c.scenario.as_deref()) else {
                continue;
            };
            let Some(s) = &c.summary else {
                let _ = writeln!(md, "| {} | {sc} | (no runs yet) | | | | | | |", p.streams);
                continue;
            };
            let cpu = s.machine_cpu_per_gbps_runs;
            let _ = writeln!(
                md,
                "| {} | {sc} | {:.3} | {} ({}) | {} | {:.1} | {} | {} | {} |",
                p.streams,
                s.run_means.mean,
                ci(&s.run_means, 3),
                s.runs,
                ratio_cell(s.ratio_to_baseline),
                s.retransmits_per_run,
                match (s.machine_cpu_pct, s.machine_softirq_pct) {
                    (Some(b), Some(si)) => format!("{b:.0} ({si:.0})"),
                    _ => "–".into(),
                },
                cpu.map(|x| format!("{:.2} [{}]", x.mean, ci(&x, 2)))
                    .unwrap_or_else(|| "–".into()),
                ratio_cell(s.machine_cpu_ratio_to_baseline)
            );
            let add = |lines: &mut Vec<Line>, pt: XyPoint| match lines
                .iter_mut()
                .find(|l| l.name == sc)
            {
                Some(l) => l.points.push(pt),
                None => lines.push(Line {
                    name: sc.to_string(),
                    points: vec![pt],
                    color: scenario_color(sc),
                }),
            };
            add(
                &mut thr_lines,
                XyPoint {
                    x: f64::from(p.streams),
                    mean: s.run_means.mean,
                    ci: s.run_means.ci_low.zip(s.run_means.ci_high),
                },
            );
            if let Some(x) = cpu {
                add(
                    &mut cpu_lines,
                    XyPoint {
                        x: f64::from(p.streams),
                        mean: x.mean,
                        ci: x.ci_low.zip(x.ci_high),
                    },
                );
            }
        }
        // Lines in scenario order, whatever order their first point came in.
        let order = |l: &Line| {
            scenarios
                .iter()
                .position(|s| *s == l.name)
                .unwrap_or(usize::MAX)
        };
        thr_lines.sort_by_key(order);
        cpu_lines.sort_by_key(order);
        let stem = format!("sweep-p{pairs}-m{mtu}");
        plots::panels(
            dir,
            &stem,
            &format!("{pairs} container pair(s) at once, underlay MTU {mtu} (95 % CI over runs)"),
            "parallel TCP streams per pair (iperf3 -P)",
            &[
                Panel {
                    title: "aggregate TCP throughput".into(),
                    y_desc: "Gbit/s (sum over pairs)".into(),
                    lines: thr_lines,
                },
                Panel {
                    title: "whole-machine CPU per Gbit/s".into(),
                    y_desc: "busy CPU % of one core per Gbit/s".into(),
                    lines: cpu_lines,
                },
            ],
        )?;
        let _ = writeln!(
            md,
            "\n![{stem}]({stem}.png) ([SVG]({stem}.svg)) — left: aggregate throughput; right: \
             whole-machine CPU per Gbit/s; error bars: 95 % t-interval over the runs.\n"
        );
    }
    md.push_str("### Targets at every point\n\n");
    checks_table(md, r);
    for c in r.cases.iter().filter(|c| c.policy.is_some()) {
        if let Some(p) = &c.policy {
            let _ = writeln!(
                md,
                "- `{}`: policy {} checked in force on the first pair before measuring ({}); {} \
                 `POLICY` map entries per host (every pair's endpoints carry the same labels)",
                c.scenario.as_deref().unwrap_or(&c.name),
                p.names.join(", "),
                p.verified.join(", "),
                entries_text(&p.entries)
            );
            break;
        }
    }
    for n in &r.notes {
        let _ = writeln!(md, "- {n}");
    }
    md.push('\n');
    Ok(())
}

fn paper_section(md: &mut String, dir: &Path, r: &Results) -> Result<(), BenchError> {
    if r.settings.sweep.as_ref().is_some_and(|w| w.len() > 1) {
        return sweep_section(md, dir, r);
    }
    md.push_str("## Fig. 14: TCP throughput between containers on two hosts\n\n");
    header(md, r);
    md.push_str(
        "| scenario | mean Gbit/s | median | 95 % CI, 1-s samples (N) | 95 % CI, run means (n) | ratio to native [95 % CI] | retransmits/run | CPU % snd / rcv | CPU % per Gbit/s | machine CPU % (softirq) | machine CPU % per Gbit/s |\n\
         |---|---:|---:|---|---|---|---:|---|---:|---:|---:|\n",
    );
    let mut bars = Vec::new();
    for c in &r.cases {
        match (&c.summary, c.available) {
            (Some(s), _) => {
                let ratio = s
                    .ratio_to_baseline
                    .map(|x| format!("{:.3} [{}]", x.mean, ci(&x, 3)))
                    .unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    md,
                    "| {} | {:.3} | {:.3} | {} ({}) | {} ({}) | {} | {:.1} | {:.0} / {:.0} | {:.1} | {} | {} |",
                    c.name,
                    s.intervals.mean,
                    s.intervals.median,
                    ci(&s.intervals, 3),
                    s.samples,
                    ci(&s.run_means, 3),
                    s.runs,
                    ratio,
                    s.retransmits_per_run,
                    s.cpu_host,
                    s.cpu_remote,
                    s.cpu_per_gbps,
                    match (s.machine_cpu_pct, s.machine_softirq_pct) {
                        (Some(b), Some(si)) => format!("{b:.0} ({si:.0})"),
                        _ => "–".into(),
                    },
                    opt(s.machine_cpu_per_gbps, 1)
                );
                bars.push(Bar {
                    label: c.name.clone(),
                    value: Some(s.run_means.mean),
                    ci: s.run_means.ci_low.zip(s.run_means.ci_high),
                    color: color_of(c),
                });
            }
            (None, false) => {
                let _ = writeln!(
                    md,
                    "| {} | n/a (not yet) | – | – | – | – | – | – | – | – | – |",
                    c.name
                );
                bars.push(Bar {
                    label: c.name.clone(),
                    value: None,
                    ci: None,
                    color: color_of(c),
                });
            }
            (None, true) => {
                let _ = writeln!(md, "| {} | (no runs yet) | | | | | | | | | |", c.name);
            }
        }
    }
    md.push('\n');
    for c in r.cases.iter().filter(|c| !c.available) {
        let _ = writeln!(
            md,
            "- `{}` ({}): {}",
            c.name,
            c.description,
            c.note.clone().unwrap_or_default()
        );
    }
    for c in r.cases.iter().filter(|c| c.available) {
        let _ = writeln!(md, "- `{}`: {}", c.name, c.description);
        if let Some(p) = &c.policy {
            let _ = writeln!(
                md,
                "  - policy {}: checked in force before measuring ({}); {} `POLICY` map \
                 entries per host; in force on every host {} after the apply request",
                p.names.join(", "),
                p.verified.join(", "),
                entries_text(&p.entries),
                p.mean_apply_secs()
                    .map(|x| format!("{x:.3} s"))
                    .unwrap_or_else(|| "–".into())
            );
        }
    }
    plots::fig14(
        dir,
        "fig14",
        "TCP throughput, container to container across hosts (95 % CI over runs)",
        &bars,
    )?;
    md.push_str(
        "\n![Fig. 14](fig14.png) ([SVG](fig14.svg)) — bars: mean of the run means; error bars: \
         95 % t-interval over the runs.\n\n",
    );
    md.push_str(
        "The paper pooled 1-s samples (N = runs × kept intervals) for its interval; successive \
         intervals of one run are correlated, so that interval is optimistic. Both are given; the \
         figure uses the run-based one. CPU is iperf3's own figure (user + system time of the \
         sending and receiving iperf3 processes, % of one core), so per-packet work done in \
         softirq context on other CPUs is not in it; *machine CPU* is the whole machine's busy \
         time from `/proc/stat` over each client run (every CPU, softirq included, % of one \
         core), per Gbit/s of that run's whole-run throughput. Both hosts of a lab share this \
         machine, so it covers sender and receiver — and anything else running on it.\n\n",
    );
    checks_table(md, r);
    md.push_str("### The paper's numbers (two Xeon E5620 servers, 10 GbE, MTU 9000)\n\n| paper case | Gbit/s |\n|---|---:|\n");
    for (name, v) in PAPER_FIG14 {
        let _ = writeln!(md, "| {name} | {v:.2} |");
    }
    let _ = writeln!(
        md,
        "\nPaper ratios: Cilium / Swarm = {:.3} without rules, {:.3} with rules; filter cost: \
         Swarm {:+.1} %, Cilium {:+.1} %.",
        8.22 / 7.22,
        8.24 / 7.20,
        (7.20 / 7.22 - 1.0) * 100.0,
        (8.24 / 8.22 - 1.0) * 100.0
    );
    let mean_of = |n: &str| {
        r.case(n)
            .and_then(|c| c.summary.as_ref())
            .map(|s| s.run_means.mean)
    };
    if let (Some(ila), Some(sw)) = (mean_of("ila"), mean_of("swarm")) {
        let _ = writeln!(md, "Here: ILA / swarm = {:.3}.", ila / sw);
    }
    if let (Some(ila), Some(ilp)) = (mean_of("ila"), mean_of("ila+policy")) {
        let _ = writeln!(
            md,
            "Here: Listing 10 in eBPF changes ILA by {:+.1} %.",
            (ilp / ila - 1.0) * 100.0
        );
    }
    if let (Some(ila), Some(ev)) = (mean_of("ila"), mean_of("evpn")) {
        // The number the paper did not measure.
        let _ = writeln!(
            md,
            "Here: ILA / EVPN = {:.3} (ILA {:+.1} % over EVPN).",
            ila / ev,
            (ila / ev - 1.0) * 100.0
        );
    }
    if let (Some(sw), Some(swi)) = (mean_of("swarm"), mean_of("swarm+iptables")) {
        let _ = writeln!(
            md,
            "Here: Listing 9 changes swarm by {:+.1} %.",
            (swi / sw - 1.0) * 100.0
        );
    }
    md.push('\n');
    for n in &r.notes {
        let _ = writeln!(md, "- {n}");
    }
    md.push('\n');
    Ok(())
}

fn entries_text(entries: &[usize]) -> String {
    match entries {
        [] => "–".into(),
        [first, rest @ ..] if rest.iter().all(|e| e == first) => first.to_string(),
        _ => entries
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" / "),
    }
}

/// Which side of a target a ratio must be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// ratio ≥ target (throughput).
    AtLeast,
    /// ratio ≤ target (CPU).
    AtMost,
}

/// A ratio judged against a target on its 95 % CI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// The whole interval is on the right side.
    Met,
    /// The whole interval is on the wrong side.
    Missed,
    /// The mean is on the right side, the interval reaches across.
    MetOnMean,
    /// The mean is on the wrong side, the interval reaches across.
    NotShown,
    /// One run: no interval.
    NotJudged,
}

impl Judged {
    /// Short word for a table cell.
    pub fn word(self) -> &'static str {
        match self {
            Judged::Met => "met",
            Judged::Missed => "**missed**",
            Judged::MetOnMean => "met (mean)",
            Judged::NotShown => "not shown",
            Judged::NotJudged => "no CI",
        }
    }

    /// What it means, as a clause.
    pub fn sentence(self) -> &'static str {
        match self {
            Judged::Met => "met (the whole interval is on the target's side)",
            Judged::Missed => "missed (the whole interval is on the wrong side)",
            Judged::MetOnMean => {
                "met on the mean, but the interval reaches across it (more runs would settle it)"
            }
            Judged::NotShown => {
                "not shown: the mean is on the wrong side, the interval reaches across it (more runs would settle it)"
            }
            Judged::NotJudged => "not judged: one run gives no interval",
        }
    }
}

/// Judges `ratio` against `target` on its confidence interval.
pub fn judge(ratio: &Summary, target: f64, bound: Bound) -> Judged {
    // Flip CPU-type bounds so that "larger is better" holds for the comparisons below.
    let (lo, hi, mean, t) = match bound {
        Bound::AtLeast => (ratio.ci_low, ratio.ci_high, ratio.mean, target),
        Bound::AtMost => (
            ratio.ci_high.map(|x| -x),
            ratio.ci_low.map(|x| -x),
            -ratio.mean,
            -target,
        ),
    };
    match (lo, hi) {
        (Some(lo), _) if lo >= t => Judged::Met,
        (_, Some(hi)) if hi < t => Judged::Missed,
        (Some(_), Some(_)) if mean >= t => Judged::MetOnMean,
        (Some(_), Some(_)) => Judged::NotShown,
        _ => Judged::NotJudged,
    }
}

/// Issue 14: ILA throughput at least this share of native at every sweep point.
pub const ILA_THROUGHPUT_TARGET: f64 = 0.98;
/// Issue 14: ILA whole-machine CPU per Gbit/s at most this multiple of native's.
pub const ILA_CPU_TARGET: f64 = 1.03;
/// Issue 14: ILA + policy within this share of ILA (throughput no lower, CPU per Gbit/s no
/// higher).
pub const POLICY_TOLERANCE: f64 = 0.01;

/// One target at one sweep point.
#[derive(Debug, Clone)]
pub struct ScaleCheck {
    /// Sweep point.
    pub point: SweepPoint,
    /// What is compared (`ila / native throughput`).
    pub what: String,
    /// Target, as written (`≥ 0.98`).
    pub target: String,
    /// Paired per-round ratio, if both cases have runs.
    pub ratio: Option<Summary>,
    /// Verdict.
    pub judged: Option<Judged>,
}

/// The case of scenario `scenario` at `point` (a result without points: the bare name).
fn case_at<'a>(
    r: &'a Results,
    scenario: &str,
    point: Option<SweepPoint>,
) -> Option<&'a CaseResult> {
    r.cases.iter().find(|c| match (&c.scenario, c.point) {
        (Some(s), Some(p)) => s == scenario && Some(p) == point,
        _ => point.is_none() && c.name == scenario,
    })
}

/// The points of a paper campaign's cases, in case order (`[None]` for an older file without
/// points).
fn points_of(r: &Results) -> Vec<Option<SweepPoint>> {
    let mut out: Vec<Option<SweepPoint>> = Vec::new();
    for c in &r.cases {
        if !out.contains(&c.point) {
            out.push(c.point);
        }
    }
    out
}

/// Issue 14's targets at every point of a paper campaign: ILA against native (throughput,
/// whole-machine CPU per Gbit/s) and ILA + policy against ILA, each a per-round paired ratio
/// judged on its 95 % CI. Checks whose cases were not selected are left out.
pub fn scale_checks(r: &Results) -> Vec<ScaleCheck> {
    let mut out = Vec::new();
    let thr = |x: &RunRecord| Some(x.mean_gbps);
    let cpu = RunRecord::machine_cpu_per_gbps;
    for point in points_of(r) {
        let p = point.unwrap_or(SweepPoint {
            pairs: 1,
            streams: r.settings.streams,
            mtu: r.settings.mtu,
        });
        let at = |s: &str| case_at(r, s, point);
        let pairs = [
            ("ila", "native", ILA_THROUGHPUT_TARGET, ILA_CPU_TARGET),
            (
                "ila+policy",
                "ila",
                1.0 - POLICY_TOLERANCE,
                1.0 + POLICY_TOLERANCE,
            ),
        ];
        for (a, b, t_thr, t_cpu) in pairs {
            let (Some(ca), Some(cb)) = (at(a), at(b)) else {
                continue;
            };
            for (kind, target, bound, ratio) in [
                (
                    "throughput",
                    t_thr,
                    Bound::AtLeast,
                    paired_ratio(ca, cb, thr),
                ),
                (
                    "CPU per Gbit/s",
                    t_cpu,
                    Bound::AtMost,
                    paired_ratio(ca, cb, cpu),
                ),
            ] {
                out.push(ScaleCheck {
                    point: p,
                    what: format!("{a} / {b} {kind}"),
                    target: format!(
                        "{} {target:.2}",
                        if bound == Bound::AtLeast {
                            "≥"
                        } else {
                            "≤"
                        }
                    ),
                    judged: ratio.as_ref().map(|x| judge(x, target, bound)),
                    ratio,
                });
            }
        }
    }
    out
}

/// One line on how many of the [`scale_checks`] are met, `None` without checks.
pub fn scale_summary(r: &Results) -> Option<String> {
    let checks = scale_checks(r);
    if checks.is_empty() {
        return None;
    }
    let count = |j: Judged| checks.iter().filter(|c| c.judged == Some(j)).count();
    let missed: Vec<String> = checks
        .iter()
        .filter(|c| matches!(c.judged, Some(Judged::Missed | Judged::NotShown)))
        .map(|c| {
            format!(
                "{} at {} ({:.3})",
                c.what,
                c.point.tag(),
                c.ratio.map(|x| x.mean).unwrap_or(f64::NAN)
            )
        })
        .collect();
    Some(format!(
        "Issue 14 targets (ILA ≥ {ILA_THROUGHPUT_TARGET} × native throughput, ≤ {ILA_CPU_TARGET} × \
         native CPU per Gbit/s; ILA + policy within {:.0} % of ILA), {} checks at {} point(s): {} \
         met, {} met on the mean only, {} not shown, {} missed, {} without an interval{}",
        POLICY_TOLERANCE * 100.0,
        checks.len(),
        points_of(r).len(),
        count(Judged::Met),
        count(Judged::MetOnMean),
        count(Judged::NotShown),
        count(Judged::Missed),
        count(Judged::NotJudged),
        if missed.is_empty() {
            ".".to_string()
        } else {
            format!("; below target on the mean: {}.", missed.join(", "))
        }
    ))
}

/// Share of a campaign's runs in which the whole machine was busy (≥ 95 % of every CPU):
/// there, CPU per Gbit/s is the machine's capacity over the throughput, not what the data
/// path costs.
pub fn saturated_share(r: &Results) -> Option<f64> {
    let cpus = r.machine.cpus.max(1) as f64;
    let (mut n, mut busy) = (0usize, 0usize);
    for run in r.cases.iter().flat_map(|c| c.runs.iter()) {
        if let Some(m) = run.machine_cpu {
            n += 1;
            if m.busy_pct >= 95.0 * cpus {
                busy += 1;
            }
        }
    }
    (n > 0).then(|| busy as f64 / n as f64)
}

fn checks_table(md: &mut String, r: &Results) {
    let checks = scale_checks(r);
    if checks.is_empty() {
        return;
    }
    if let Some(share) = saturated_share(r).filter(|s| *s > 0.0) {
        let _ = writeln!(
            md,
            "In {:.0} % of the runs the whole machine was busy (≥ 95 % of every CPU): in those, \
             CPU per Gbit/s is the machine's capacity over the throughput, so its ratio repeats \
             the inverse throughput ratio rather than measuring the data path's cost.\n",
            share * 100.0
        );
    }
    md.push_str(
        "| pairs | streams | MTU | comparison | target | ratio [95 % CI] (rounds) | verdict |\n\
         |---:|---:|---:|---|---|---|---|\n",
    );
    for c in &checks {
        let ratio = c
            .ratio
            .map(|x| format!("{:.3} [{}] ({})", x.mean, ci(&x, 3), x.n))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {ratio} | {} |",
            c.point.pairs,
            c.point.streams,
            c.point.mtu,
            c.what,
            c.target,
            c.judged.map(Judged::word).unwrap_or("–")
        );
    }
    md.push('\n');
    if let Some(line) = scale_summary(r) {
        let _ = writeln!(md, "**{line}**\n");
    }
}

/// The eBPF target of issue 4: at the largest count, at least this share of the 0-rule
/// throughput.
pub const EBPF_TARGET: f64 = 0.97;

/// One sentence on the eBPF target, judged on the ratio's 95 % CI.
pub fn ebpf_verdict(r: &Results) -> Option<String> {
    let c = r
        .cases
        .iter()
        .filter(|c| c.series.as_deref() == Some("ebpf"))
        .max_by_key(|c| c.extra_rules.unwrap_or(0))?;
    let ratio = c.summary.as_ref()?.ratio_to_baseline?;
    let base = r.baseline_of(c).unwrap_or("?");
    let verdict = judge(&ratio, EBPF_TARGET, Bound::AtLeast).sentence();
    Some(format!(
        "eBPF target (≥ {:.0} % of `{base}` at {} rules): ratio {:.3} [{}] — {verdict}.",
        EBPF_TARGET * 100.0,
        c.extra_rules.unwrap_or(0),
        ratio.mean,
        ci(&ratio, 3)
    ))
}

fn rules_section(md: &mut String, dir: &Path, r: &Results) -> Result<(), BenchError> {
    md.push_str(
        "## Throughput against the number of filter rules

",
    );
    header(md, r);
    md.push_str(
        "- **iptables**: Listing 9 with N rules that never match placed before its accepts, in \
         the FORWARD chain of both hosts of the swarm lab (x_tables back end), so every packet \
         walks past all N. Ratio to the same overlay without any filter (`no-filter`).\n\
         - **ebpf**: the ILA lab with the paper's Listing 10 plus a policy of N rules allowing \
         `app=service1` on ports the measured flow never uses (TCP outside the ephemeral range, \
         then UDP), each compiled by the agents into its own `POLICY` hash-map entry. Ratio to \
         the series' own smallest count in the same round.\n\
         - The two series alternate count by count within every round (A B A B).\n\n\
         | case | rules | POLICY entries / host | apply → in force, s (mean, n) | mean Gbit/s | 95 % CI, run means (n) | ratio [95 % CI] | to | retransmits/run | CPU % per Gbit/s |\n\
         |---|---:|---:|---|---:|---|---|---|---:|---:|\n",
    );
    // Keyed by series name: the legend entry differs from it.
    let mut curves: Vec<(String, Curve)> = Vec::new();
    let mut reference = None;
    for c in &r.cases {
        let (entries, apply) = match &c.policy {
            Some(p) => (
                entries_text(&p.entries),
                p.mean_apply_secs()
                    .map(|x| format!("{x:.3} ({})", p.apply_secs.len()))
                    .unwrap_or_else(|| "–".into()),
            ),
            None => ("–".into(), "–".into()),
        };
        let Some(s) = &c.summary else {
            let _ = writeln!(
                md,
                "| {} | {} | {entries} | {apply} | (no runs yet) | | | | | |",
                c.name,
                c.total_rules.unwrap_or(0)
            );
            continue;
        };
        let ratio = s
            .ratio_to_baseline
            .map(|x| format!("{:.3} [{}]", x.mean, ci(&x, 3)))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            md,
            "| {} | {} | {entries} | {apply} | {:.3} | {} ({}) | {} | {} | {:.1} | {:.1} |",
            c.name,
            c.total_rules.unwrap_or(0),
            s.run_means.mean,
            ci(&s.run_means, 3),
            s.runs,
            ratio,
            r.baseline_of(c).unwrap_or("–"),
            s.retransmits_per_run,
            s.cpu_per_gbps
        );
        let point = Point {
            rules: c.total_rules.unwrap_or(0).max(1) as f64,
            mean: s.run_means.mean,
            ci: s.run_means.ci_low.zip(s.run_means.ci_high),
        };
        match c.series.as_deref() {
            Some("reference") | None => reference = Some(point),
            Some(series) => match curves.iter_mut().find(|(k, _)| k == series) {
                Some((_, k)) => k.points.push(point),
                None => curves.push((
                    series.to_string(),
                    Curve {
                        name: match series {
                            "ebpf" => "eBPF policy (ILA lab)".to_string(),
                            "iptables" => "iptables (swarm lab)".to_string(),
                            other => other.to_string(),
                        },
                        points: vec![point],
                        color: if series == "ebpf" {
                            palette::EBPF
                        } else {
                            palette::IPTABLES
                        },
                    },
                )),
            },
        }
    }
    let curves: Vec<Curve> = curves
        .into_iter()
        .map(|(_, mut k)| {
            k.points.sort_by(|a, b| a.rules.total_cmp(&b.rules));
            k
        })
        .collect();
    plots::rules_curve(
        dir,
        "rules",
        "TCP throughput against filter rules (95 % CI over runs)",
        &curves,
        reference,
    )?;
    md.push('\n');
    if let Some(v) = ebpf_verdict(r) {
        let _ = writeln!(md, "**{v}**\n");
    }
    md.push_str("![rules](rules.png) ([SVG](rules.svg)) — x: rules in the filter (log scale; Listing 9 has 2, Listing 10 has 1); dashed: swarm without any filter.\n\n");
    for n in &r.notes {
        let _ = writeln!(md, "- {n}");
    }
    md.push('\n');
    Ok(())
}

/// Regenerates `report.md` and the figures from the result files in `dir`.
pub fn write_report(dir: &Path) -> Result<(), BenchError> {
    let paper = load(dir, "results")?;
    let rules = load(dir, "rules")?;
    let micro: Option<crate::micro::MicroReport> = load_json(dir, MICRO_STEM)?;
    let latency: Option<crate::latency::LatencyReport> = load_json(dir, LATENCY_STEM)?;
    let mut md = String::from("# ilanet benchmark report\n\n");
    if paper.is_none() && rules.is_none() && micro.is_none() && latency.is_none() {
        md.push_str("No results yet.\n");
    }
    if let Some(m) = &micro {
        md.push_str(&crate::micro::markdown(m));
    }
    if let Some(l) = &latency {
        md.push_str(&crate::latency::markdown(l));
    }
    if let Some(r) = &paper {
        paper_section(&mut md, dir, r)?;
    }
    if let Some(r) = &rules {
        rules_section(&mut md, dir, r)?;
    }
    md.push_str(
        "Files: `results.json` / `rules.json` / `micro.json` / `latency.json` (everything, incl. per-run data), `*.csv` (one row \
         per case), `*-samples.csv` (every 1-s interval), `raw/` (iperf3 JSON as written by \
         iperf3).\n",
    );
    write(&dir.join("report.md"), &md)
}
