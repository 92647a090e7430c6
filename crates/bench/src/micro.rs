//! Micro-benchmark of both programs through `BPF_PROG_TEST_RUN` (`ilanet bench micro`): the per-packet cost of the
//! program alone (no driver, no stack), for every checksum mode, on a mapping hit and a miss.
//!
//! The machine is noisy, so the configurations are interleaved (A B C … A B C …) for
//! [`ROUNDS`] rounds and the median of each is reported.
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
//! shows. Both are measured again with 100,000 unrelated rules installed (`…/100k-rules`).

use std::net::Ipv6Addr;

use ila::{Identifier, IdentifierType, Locator, Mapping, SirPrefix, Vnid};
use serde::Serialize;

use policy::abi::{
    EndpointPolicy, PolicyKey, PolicyValue, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ENFORCED,
    VERDICT_ALLOW,
};

use dataplane::testrun::{TC_ACT_OK, TC_ACT_REDIRECT};
use dataplane::{
    ChecksumMode, Counters, HostDataplane, InEntry, IpcacheEntry, LocalEndpoint, OutEntry,
    ProgramKind, Redirect,
};

use crate::stats;
use crate::BenchError;

/// Repeats per measurement that `ilanet bench micro` should use.
pub const DEFAULT_REPEAT: u32 = 1_000_000;
/// Interleaved rounds; the median is reported.
pub const ROUNDS: usize = 7;

/// One benchmark figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MicroResult {
    /// Program measured.
    pub program: ProgramKind,
    /// Checksum mode of the mapping.
    pub csum_mode: ChecksumMode,
    /// `"hit"` or `"miss"` (translation), `"ct-hit"`, `"ct-hit-1run"`, `"ct-miss"` and the
    /// same with `"/100k-rules"` (enforcement).
    pub case: &'static str,
    /// Packet kind, e.g. `"tcp"`.
    pub packet: &'static str,
    /// Median over rounds of the kernel-measured average time per run.
    pub ns_per_packet: f64,
}

struct Config {
    program: ProgramKind,
    mode: ChecksumMode,
    hit: bool,
    frame: Vec<u8>,
    samples: Vec<f64>,
}

const SIR: u64 = 0x2001_0db8_00ff_0000;
const LOCATOR: u64 = 0x2001_0db8_0001_0002;
/// A miss is a destination outside every mapped prefix (host or Internet traffic), the common
/// case on an uplink.
const MISS_DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0, 0, 0, 0, 1);

/// Runs the translation benchmark ([`run_translation`]) and the enforcement benchmark
/// ([`run_enforce`]) with `repeat` runs per measurement (use [`DEFAULT_REPEAT`]).
pub fn run(repeat: u32) -> Result<Vec<MicroResult>, BenchError> {
    let mut v = run_translation(repeat)?;
    v.extend(run_enforce(repeat)?);
    Ok(v)
}

/// Filler rules of the `…/100k-rules` enforcement cases.
pub const FILLER_RULES: u32 = 100_000;
/// Single-run samples of the `ct-miss` and `ct-hit-1run` cases.
pub const SINGLE_RUN_SAMPLES: usize = 2001;

const EP_IDENTITY: u32 = 1000;
const PEER_IDENTITY: u32 = 1001;
const EP_IFINDEX: u32 = 9;

/// The enforcement cases (see the module documentation): `ct-hit`, `ct-hit-1run`, `ct-miss`,
/// each without and with [`FILLER_RULES`] extra rules.
pub fn run_enforce(repeat: u32) -> Result<Vec<MicroResult>, BenchError> {
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
        let name = |case: &str| -> &'static str {
            match (case, filler) {
                ("ct-hit", 0) => "ct-hit",
                ("ct-hit-1run", 0) => "ct-hit-1run",
                ("ct-miss", 0) => "ct-miss",
                ("ct-hit", _) => "ct-hit/100k-rules",
                ("ct-hit-1run", _) => "ct-hit-1run/100k-rules",
                _ => "ct-miss/100k-rules",
            }
        };

        // Established: the first two repeats create the flows of the cycle, the rest hit.
        let mut hit = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            dp.maps().flush_conntrack()?;
            let before = dp.maps().counters()?;
            let o = dp.test_run_on(ProgramKind::FromContainer, &frame, repeat, EP_IFINDEX)?;
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
            hit.push(f64::from(o.duration_ns));
        }
        out.push(enforce_result(name("ct-hit"), median(&hit)));

        // Single runs: new flow (flow deleted before each run) and established flow.
        let mut miss = Vec::with_capacity(SINGLE_RUN_SAMPLES);
        let mut hit1 = Vec::with_capacity(SINGLE_RUN_SAMPLES);
        for _ in 0..SINGLE_RUN_SAMPLES {
            dp.maps().flush_conntrack()?;
            let before = dp.maps().counters()?;
            let o = dp.test_run_on(ProgramKind::FromContainer, &frame, 1, EP_IFINDEX)?;
            let o2 = dp.test_run_on(ProgramKind::FromContainer, &frame, 1, EP_IFINDEX)?;
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
            miss.push(f64::from(o.duration_ns));
            hit1.push(f64::from(o2.duration_ns));
        }
        out.push(enforce_result(name("ct-hit-1run"), median(&hit1)));
        out.push(enforce_result(name("ct-miss"), median(&miss)));
    }
    Ok(out)
}

fn enforce_result(case: &'static str, ns: f64) -> MicroResult {
    MicroResult {
        program: ProgramKind::FromContainer,
        csum_mode: ChecksumMode::NeutralMap,
        case,
        packet: "tcp",
        ns_per_packet: ns,
    }
}

/// The translation benchmark (enforcement off): every checksum mode, hit and miss, both
/// programs.
pub fn run_translation(repeat: u32) -> Result<Vec<MicroResult>, BenchError> {
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
                    samples: Vec::with_capacity(ROUNDS),
                });
            }
        }
    }

    for _ in 0..ROUNDS {
        for c in configs.iter_mut() {
            let before = dp.maps().counters()?;
            let o = dp.test_run(c.program, &c.frame, repeat)?;
            let after = dp.maps().counters()?;
            check(c, o.retval, &before, &after, repeat)?;
            c.samples.push(f64::from(o.duration_ns));
        }
    }

    Ok(configs
        .into_iter()
        .map(|c| MicroResult {
            program: c.program,
            csum_mode: c.mode,
            case: if c.hit { "hit" } else { "miss" },
            packet: "tcp",
            ns_per_packet: median(&c.samples),
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

/// Median of the rounds (NaN for none).
fn median(v: &[f64]) -> f64 {
    stats::median(v).unwrap_or(f64::NAN)
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
