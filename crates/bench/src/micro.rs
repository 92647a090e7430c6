//! Micro-benchmark of both programs through `BPF_PROG_TEST_RUN` (`ilanet bench micro`): the per-packet cost of the
//! program alone (no driver, no stack), for every checksum mode, on a mapping hit and a miss.
//!
//! **Against the floor.** `BPF_PROG_TEST_RUN` has a cost of its own (skb setup, the timer, the
//! indirect call). Every measurement is paired with one of the empty program
//! ([`dataplane::testrun::Baseline`], `bpf/baseline.c`) on the same frame, context and repeat
//! count, right before or after it (A B A B …, the order alternating), and each case is
//! reported raw and as the median of its paired differences: the nanoseconds the data path adds.
//!
//! The machine is noisy, so the configurations are interleaved (A B C … A B C …) for
//! [`ROUNDS`] rounds and medians are reported.
//!
//! `BPF_PROG_TEST_RUN` reuses one skb for all repeats, so a translated packet would miss from
//! the second repeat on. Each hit configuration therefore installs a two-entry cycle (A → B and
//! B → A, both real translations of the same mapping), so every repeat is a genuine hit; the
//! counters are checked after each measurement to prove it.
//!
//! The enforcement figures ([`run_enforce`]: `ILA_CFG_ENFORCE` on, a local source endpoint, the
//! destination in the ipcache, an allow rule, neutral-map translation) come in two cases:
//! `ct-hit` (an established flow: anti-spoofing + conntrack + translation; measured like the
//! others) and `ct-miss` (a new flow: also the egress policy lookups and the conntrack insert).
//! A new flow cannot be repeated on one skb, so `ct-miss` runs the program once per
//! `BPF_PROG_TEST_RUN` call and deletes the flow in between; that single-run timing includes
//! the kernel's timer overhead, which `ct-hit-1run` (the established flow timed the same way)
//! and the single-run baseline show. Both are measured again with 100,000 unrelated rules
//! installed (`…/100k-rules`).

use std::fmt::Write as _;
use std::net::Ipv6Addr;

use ila::{Identifier, IdentifierType, Locator, Mapping, SirPrefix, Vnid};
use serde::{Deserialize, Serialize};

use policy::abi::{
    EndpointPolicy, PolicyKey, PolicyValue, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ENFORCED,
    VERDICT_ALLOW,
};

use dataplane::testrun::{Baseline, TC_ACT_OK, TC_ACT_REDIRECT};
use dataplane::{
    ChecksumMode, Counters, HostDataplane, InEntry, IpcacheEntry, LocalEndpoint, OutEntry,
    ProgramKind, Redirect,
};

use crate::machine::Machine;
use crate::stats;
use crate::BenchError;

/// Repeats per measurement that `ilanet bench micro` should use.
pub const DEFAULT_REPEAT: u32 = 1_000_000;
/// Interleaved rounds; the median is reported.
pub const ROUNDS: usize = 7;

/// How a case is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// Nanoseconds above the baseline (median of the paired differences).
    AboveBaseline,
    /// Nanoseconds per packet as measured (the harness included).
    Absolute,
}

/// A case's target (issue 14) and whether this run met it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// What is compared.
    pub kind: TargetKind,
    /// The bound, ns.
    pub max_ns: f64,
    /// Whether the figure is within it.
    pub met: bool,
}

/// One benchmark figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MicroResult {
    /// Program measured.
    pub program: ProgramKind,
    /// Checksum mode of the mapping.
    pub csum_mode: ChecksumMode,
    /// `"hit"` or `"miss"` (translation), `"ct-hit"`, `"ct-hit-1run"`, `"ct-miss"` and the
    /// same with `"/100k-rules"` (enforcement).
    pub case: String,
    /// Packet kind, e.g. `"tcp"`.
    pub packet: String,
    /// Median over samples of the kernel-measured average time per run.
    pub ns_per_packet: f64,
    /// Median of the paired baseline measurements (same frame, context and repeat count).
    pub baseline_ns: f64,
    /// Median of the paired differences (case − baseline): what the data path adds.
    pub above_baseline_ns: f64,
    /// 95 % t-interval of the mean paired difference (`None` for fewer than two samples).
    pub above_ci95: Option<[f64; 2]>,
    /// Paired samples (rounds, or single runs).
    pub samples: usize,
    /// Program runs per sample (`BPF_PROG_TEST_RUN` repeat).
    pub repeat: u32,
    /// The issue-14 target of this case, if it has one.
    pub target: Option<Target>,
}

/// A whole `bench micro` run: settings, machine, load, figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MicroReport {
    /// When the run started (UTC).
    pub started: String,
    /// What it ran on.
    pub machine: Machine,
    /// `/proc/loadavg` (1, 5, 15 min) at the start and at the end.
    pub load_before: Option<[f64; 3]>,
    /// See `load_before`.
    pub load_after: Option<[f64; 3]>,
    /// Repeats per measurement of the repeated cases.
    pub repeat: u32,
    /// Interleaved rounds of the repeated cases.
    pub rounds: usize,
    /// Samples of the single-run cases.
    pub single_run_samples: usize,
    /// The figures.
    pub results: Vec<MicroResult>,
}

impl MicroReport {
    /// Cases with a target that missed it.
    pub fn missed(&self) -> Vec<&MicroResult> {
        self.results
            .iter()
            .filter(|r| r.target.is_some_and(|t| !t.met))
            .collect()
    }
}

/// `/proc/loadavg`'s three averages.
pub fn load_average() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The target issue 14 sets for a case: a translation hit (neutral-map, the default) at most
/// 12 ns above the baseline, a miss at most 5 ns above it, an established flow at most 35 ns
/// above it, a new flow at most 400 ns as measured.
pub fn target_for(mode: ChecksumMode, case: &str) -> Option<(TargetKind, f64)> {
    match case.split('/').next().unwrap_or(case) {
        "hit" if mode == ChecksumMode::NeutralMap => Some((TargetKind::AboveBaseline, 12.0)),
        "miss" => Some((TargetKind::AboveBaseline, 5.0)),
        "ct-hit" => Some((TargetKind::AboveBaseline, 35.0)),
        "ct-miss" => Some((TargetKind::Absolute, 400.0)),
        _ => None,
    }
}

/// Paired samples of one case: `(case ns, baseline ns)`.
#[derive(Debug, Default)]
struct Pairs {
    case: Vec<f64>,
    base: Vec<f64>,
}

impl Pairs {
    fn push(&mut self, case: u32, base: u32) {
        self.case.push(f64::from(case));
        self.base.push(f64::from(base));
    }

    fn result(
        &self,
        program: ProgramKind,
        csum_mode: ChecksumMode,
        case: &str,
        repeat: u32,
    ) -> MicroResult {
        let diff: Vec<f64> = self
            .case
            .iter()
            .zip(&self.base)
            .map(|(c, b)| c - b)
            .collect();
        let raw = median(&self.case);
        let above = median(&diff);
        let target = target_for(csum_mode, case).map(|(kind, max_ns)| Target {
            kind,
            max_ns,
            met: match kind {
                TargetKind::AboveBaseline => above <= max_ns,
                TargetKind::Absolute => raw <= max_ns,
            },
        });
        MicroResult {
            program,
            csum_mode,
            case: case.to_string(),
            packet: "tcp".into(),
            ns_per_packet: raw,
            baseline_ns: median(&self.base),
            above_baseline_ns: above,
            above_ci95: stats::summarize(&diff, 0.95).and_then(|s| Some([s.ci_low?, s.ci_high?])),
            samples: diff.len(),
            repeat,
            target,
        }
    }
}

/// Runs `case` and the baseline on the same input, in the order given by `case_first`
/// (alternated by the callers, so neither side always runs on a cold cache). Returns the case's
/// outcome and the baseline's ns.
fn paired<T>(
    base: &Baseline,
    frame: &[u8],
    repeat: u32,
    ifindex: u32,
    case_first: bool,
    mut case: impl FnMut() -> Result<T, BenchError>,
) -> Result<(T, u32), BenchError> {
    let run_base = || -> Result<u32, BenchError> {
        let o = base.test_run_on(frame, repeat, ifindex)?;
        if o.retval != TC_ACT_OK {
            return Err(BenchError::Measurement(format!(
                "the baseline program returned {} instead of TC_ACT_OK",
                o.retval
            )));
        }
        Ok(o.duration_ns)
    };
    if case_first {
        let t = case()?;
        Ok((t, run_base()?))
    } else {
        let b = run_base()?;
        Ok((case()?, b))
    }
}

struct Config {
    program: ProgramKind,
    mode: ChecksumMode,
    hit: bool,
    frame: Vec<u8>,
    pairs: Pairs,
}

const SIR: u64 = 0x2001_0db8_00ff_0000;
const LOCATOR: u64 = 0x2001_0db8_0001_0002;
/// A miss is a destination outside every mapped prefix (host or Internet traffic), the common
/// case on an uplink.
const MISS_DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0, 0, 0, 0, 1);

/// Runs the translation benchmark ([`run_translation`]) and the enforcement benchmark
/// ([`run_enforce`]) with `repeat` runs per measurement (use [`DEFAULT_REPEAT`]) and
/// `single_run_samples` samples of the single-run cases (use [`SINGLE_RUN_SAMPLES`]).
pub fn run(repeat: u32, single_run_samples: usize) -> Result<MicroReport, BenchError> {
    let started = crate::machine::now_rfc3339();
    let load_before = load_average();
    let base = Baseline::load()?;
    let mut results = run_translation(&base, repeat)?;
    results.extend(run_enforce(&base, repeat, single_run_samples)?);
    Ok(MicroReport {
        started,
        machine: Machine::detect(),
        load_before,
        load_after: load_average(),
        repeat: repeat.max(1),
        rounds: ROUNDS,
        single_run_samples: single_run_samples.max(1),
        results,
    })
}

/// Filler rules of the `…/100k-rules` enforcement cases.
pub const FILLER_RULES: u32 = 100_000;
/// Single-run samples of the `ct-miss` and `ct-hit-1run` cases.
pub const SINGLE_RUN_SAMPLES: usize = 2001;

const EP_IDENTITY: u32 = 1000;
const PEER_IDENTITY: u32 = 1001;
const EP_IFINDEX: u32 = 9;

/// The enforcement cases (see the module documentation): `ct-hit`, `ct-hit-1run`, `ct-miss`,
/// each without and with [`FILLER_RULES`] extra rules, each paired with the baseline.
pub fn run_enforce(
    base: &Baseline,
    repeat: u32,
    single_run_samples: usize,
) -> Result<Vec<MicroResult>, BenchError> {
    let repeat = repeat.max(1);
    let mut out = Vec::new();
    for filler in [0, FILLER_RULES] {
        let mut dp = HostDataplane::load_unpinned()?;
        let vnid = Vnid::new(42)?;
        let src = SirPrefix(SIR).with_identifier(Identifier::new_vnid(
            IdentifierType::VnidIpv6,
            vnid,
            0x0a00_0001,
        ));
        let id = Identifier::new_vnid(IdentifierType::VnidIpv6, vnid, 0x0a00_0200);
        let m = Mapping::new(
            SirPrefix(SIR),
            id,
            Locator(LOCATOR),
            ChecksumMode::NeutralMap,
        );
        let sir = m.sir_address();
        let ila = m
            .ila_address()
            .map_err(|e| BenchError::Measurement(format!("benchmark mapping: {e}")))?;
        let maps = dp.maps();
        // The translation cycle of the translation benchmark: every repeat translates.
        for (k, v) in [(sir, ila), (ila, sir)] {
            maps.insert_out(
                k,
                &OutEntry {
                    ila: v,
                    csum_mode: ChecksumMode::NeutralMap,
                    local: false,
                },
            )?;
            maps.insert_ipcache(
                k,
                &IpcacheEntry {
                    identity: PEER_IDENTITY,
                    vnid: vnid.get(),
                },
            )?;
        }
        maps.insert_endpoint(
            src,
            &LocalEndpoint {
                identity: EP_IDENTITY,
                vnid: vnid.get(),
                ifindex: EP_IFINDEX,
                flags: 0,
            },
        )?;
        maps.insert_policy_ep(
            EP_IDENTITY,
            &EndpointPolicy {
                vnid: vnid.get(),
                flags: EP_F_EGRESS_ENFORCED,
            },
        )?;
        let allow = PolicyValue {
            verdict: VERDICT_ALLOW,
            pad: [0; 3],
            rule_id: 1,
        };
        maps.insert_policy(
            &PolicyKey::new(EP_IDENTITY, PEER_IDENTITY, DIR_EGRESS, 6, 443),
            &allow,
        )?;
        for i in 0..filler {
            // Half for this endpoint (other peers), half for other endpoints.
            let k = if i % 2 == 0 {
                PolicyKey::new(EP_IDENTITY, 10_000 + i, DIR_EGRESS, 6, 443)
            } else {
                PolicyKey::new(20_000 + i % 1000, 30_000 + i, DIR_INGRESS, 17, 53)
            };
            maps.insert_policy(&k, &allow)?;
        }
        maps.set_enforce(true)?;
        let frame = tcp_frame(src, sir, &[0x5a; 64]);
        let name = |case: &str| -> String {
            if filler == 0 {
                case.to_string()
            } else {
                format!("{case}/100k-rules")
            }
        };
        let result = |p: &Pairs, case: &str, repeat: u32| {
            p.result(
                ProgramKind::FromContainer,
                ChecksumMode::NeutralMap,
                &name(case),
                repeat,
            )
        };

        // Established: the first two repeats create the flows of the cycle, the rest hit.
        let mut hit = Pairs::default();
        for round in 0..ROUNDS {
            dp.maps().flush_conntrack()?;
            let before = dp.maps().counters()?;
            let (o, b) = paired(base, &frame, repeat, EP_IFINDEX, round % 2 == 1, || {
                Ok(dp.test_run_on(ProgramKind::FromContainer, &frame, repeat, EP_IFINDEX)?)
            })?;
            let after = dp.maps().counters()?;
            let n = u64::from(repeat);
            let ok = o.retval == TC_ACT_OK
                && after.out_translated - before.out_translated == n
                && after.ct_hit - before.ct_hit + after.ct_new - before.ct_new == n
                && after.ct_new - before.ct_new <= 2;
            if !ok {
                return Err(BenchError::Measurement(format!(
                    "enforce benchmark ct-hit: rc {}, counters {before:?} -> {after:?}",
                    o.retval
                )));
            }
            hit.push(o.duration_ns, b);
        }
        out.push(result(&hit, "ct-hit", repeat));

        // Single runs: new flow (flow deleted before each run) and established flow, each
        // paired with a single run of the baseline.
        let mut miss = Pairs::default();
        let mut hit1 = Pairs::default();
        for i in 0..single_run_samples.max(1) {
            dp.maps().flush_conntrack()?;
            let before = dp.maps().counters()?;
            let ((o, o2), b) = paired(base, &frame, 1, EP_IFINDEX, i % 2 == 1, || {
                let o = dp.test_run_on(ProgramKind::FromContainer, &frame, 1, EP_IFINDEX)?;
                let o2 = dp.test_run_on(ProgramKind::FromContainer, &frame, 1, EP_IFINDEX)?;
                Ok((o, o2))
            })?;
            let after = dp.maps().counters()?;
            if o.retval != TC_ACT_OK
                || o2.retval != TC_ACT_OK
                || after.ct_new - before.ct_new != 1
                || after.ct_hit - before.ct_hit != 1
            {
                return Err(BenchError::Measurement(format!(
                    "enforce benchmark ct-miss: rc {}/{}, counters {before:?} -> {after:?}",
                    o.retval, o2.retval
                )));
            }
            miss.push(o.duration_ns, b);
            hit1.push(o2.duration_ns, b);
        }
        out.push(result(&hit1, "ct-hit-1run", 1));
        out.push(result(&miss, "ct-miss", 1));
    }
    Ok(out)
}

/// The translation benchmark (enforcement off): every checksum mode, hit and miss, both
/// programs, each paired with the baseline.
pub fn run_translation(base: &Baseline, repeat: u32) -> Result<Vec<MicroResult>, BenchError> {
    let repeat = repeat.max(1);
    let mut dp = HostDataplane::load_unpinned()?;
    let vnid = Vnid::new(42)?;
    let src = SirPrefix(SIR).with_identifier(Identifier::new_vnid(
        IdentifierType::VnidIpv6,
        vnid,
        0x0a00_0001,
    ));

    let mut configs = Vec::new();
    for (i, mode) in (0u32..).zip(ChecksumMode::ALL) {
        // One mapping per mode: destinations differ, so all entries coexist in the maps.
        let id = Identifier::new_vnid(IdentifierType::VnidIpv6, vnid, 0x0a00_0100 + i);
        let m = Mapping::new(SirPrefix(SIR), id, Locator(LOCATOR), mode);
        let sir = m.sir_address();
        let ila = m
            .ila_address()
            .map_err(|e| BenchError::Measurement(format!("benchmark mapping: {e}")))?;
        let maps = dp.maps();
        // The cycle: both directions are translations of the same mapping.
        maps.insert_out(
            sir,
            &OutEntry {
                ila,
                csum_mode: mode,
                local: false,
            },
        )?;
        maps.insert_out(
            ila,
            &OutEntry {
                ila: sir,
                csum_mode: mode,
                local: false,
            },
        )?;
        let redirect = Some(Redirect {
            endpoint_mac: [0x02, 0, 0, 0, 0, 0x01],
            host_mac: [0x02, 0, 0, 0, 0, 0x02],
        });
        maps.insert_in(
            ila,
            &InEntry {
                sir,
                ifindex: 1,
                csum_mode: mode,
                redirect,
            },
        )?;
        maps.insert_in(
            sir,
            &InEntry {
                sir: ila,
                ifindex: 1,
                csum_mode: mode,
                redirect,
            },
        )?;
        for program in ProgramKind::ALL {
            let hit_dst = match program {
                ProgramKind::FromContainer => sir,
                ProgramKind::FromWire => ila,
            };
            for hit in [true, false] {
                let dst = if hit { hit_dst } else { MISS_DST };
                configs.push(Config {
                    program,
                    mode,
                    hit,
                    frame: tcp_frame(src, dst, &[0x5a; 64]),
                    pairs: Pairs::default(),
                });
            }
        }
    }

    for round in 0..ROUNDS {
        for c in configs.iter_mut() {
            let before = dp.maps().counters()?;
            let (o, b) = paired(base, &c.frame, repeat, 0, round % 2 == 1, || {
                Ok(dp.test_run(c.program, &c.frame, repeat)?)
            })?;
            let after = dp.maps().counters()?;
            check(c, o.retval, &before, &after, repeat)?;
            c.pairs.push(o.duration_ns, b);
        }
    }

    Ok(configs
        .into_iter()
        .map(|c| {
            c.pairs.result(
                c.program,
                c.mode,
                if c.hit { "hit" } else { "miss" },
                repeat,
            )
        })
        .collect())
}

/// Proves that the measured path is the one named: every repeat translated (hit) or missed.
fn check(
    c: &Config,
    retval: i32,
    before: &Counters,
    after: &Counters,
    repeat: u32,
) -> Result<(), BenchError> {
    let n = u64::from(repeat);
    let (translated, missed, want_rc) = match c.program {
        ProgramKind::FromContainer => (
            after.out_translated - before.out_translated,
            after.out_miss - before.out_miss,
            TC_ACT_OK,
        ),
        ProgramKind::FromWire => (
            after.in_translated - before.in_translated,
            after.in_miss - before.in_miss,
            if c.hit { TC_ACT_REDIRECT } else { TC_ACT_OK },
        ),
    };
    let ok = retval == want_rc && if c.hit { translated == n } else { missed == n };
    if ok {
        Ok(())
    } else {
        Err(BenchError::Measurement(format!(
            "benchmark {} {} {}: expected every run to {} (rc {want_rc}), got rc {retval}, \
             {translated} translated, {missed} missed of {n}",
            c.program,
            c.mode.as_str(),
            if c.hit { "hit" } else { "miss" },
            if c.hit { "translate" } else { "miss" },
        )))
    }
}

/// Median (NaN for none).
fn median(v: &[f64]) -> f64 {
    stats::median(v).unwrap_or(f64::NAN)
}

/// The Markdown section of a run: one row per case, raw and above the baseline, with targets.
pub fn markdown(r: &MicroReport) -> String {
    let mut md = String::from("## eBPF per-packet cost (`bench micro`)\n\n");
    let load = |l: Option<[f64; 3]>| {
        l.map(|[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
            .unwrap_or_else(|| "?".into())
    };
    let _ = writeln!(
        md,
        "{}; {} CPUs, {}, kernel {}. Started {}; load average {} at the start, {} at the end.\n",
        r.machine.cpu,
        r.machine.cpus,
        r.machine.os,
        r.machine.kernel,
        r.started,
        load(r.load_before),
        load(r.load_after)
    );
    let _ = writeln!(
        md,
        "`BPF_PROG_TEST_RUN`, TCP frame of 138 bytes. Every sample is paired with one of the empty \
         program (`bpf/baseline.c`, same frame, context and repeat count, order alternating); \
         *above baseline* is the median of the paired differences, with the 95 % t-interval of \
         their mean. Repeated cases: {} runs per sample, {} interleaved rounds; single-run cases \
         (`1` in the repeat column): {} samples, the kernel's timer overhead included in the raw \
         figure.\n",
        r.repeat, r.rounds, r.single_run_samples
    );
    md.push_str(
        "| program | checksum mode | case | repeat | raw ns | baseline ns | above baseline ns | 95 % CI | target | met |\n\
         |---|---|---|---:|---:|---:|---:|---|---|---|\n",
    );
    for x in &r.results {
        let ci = x
            .above_ci95
            .map(|[l, h]| format!("{l:.1} – {h:.1}"))
            .unwrap_or_else(|| "–".into());
        let (target, met) = match x.target {
            Some(t) => (
                match t.kind {
                    TargetKind::AboveBaseline => format!("≤ baseline + {:.0}", t.max_ns),
                    TargetKind::Absolute => format!("≤ {:.0} raw", t.max_ns),
                },
                if t.met { "yes" } else { "**no**" },
            ),
            None => ("–".into(), ""),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {ci} | {target} | {met} |",
            x.program,
            x.csum_mode,
            x.case,
            x.repeat,
            x.ns_per_packet,
            x.baseline_ns,
            x.above_baseline_ns
        );
    }
    let missed = r.missed();
    md.push('\n');
    if missed.is_empty() {
        md.push_str("**Every target met.**\n\n");
    } else {
        let names: Vec<String> = missed
            .iter()
            .map(|x| format!("{} {} {}", x.program, x.csum_mode, x.case))
            .collect();
        let _ = writeln!(md, "**Targets missed: {}.**\n", names.join(", "));
    }
    md
}

/// Ethernet + IPv6 + TCP with a valid checksum (so adj-transport does real work).
fn tcp_frame(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(payload);
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let hi = u32::from(c[0]) << 8;
            sum += hi | c.get(1).map_or(0, |&lo| u32::from(lo));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(tcp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 6]);
    add(&tcp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());

    let mut f = Vec::with_capacity(54 + tcp.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[6, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&tcp);
    f
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn miss_destination_is_outside_the_filters() {
        // Otherwise "miss" would measure the filter-pass + hash-miss path instead.
        let slot = |a: std::net::Ipv6Addr| dataplane::abi::filter_slot(&a.octets());
        let sir = std::net::Ipv6Addr::from(u128::from(super::SIR) << 64);
        let loc = std::net::Ipv6Addr::from(u128::from(super::LOCATOR) << 64);
        assert_ne!(slot(super::MISS_DST), slot(sir));
        assert_ne!(slot(super::MISS_DST), slot(loc));
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
