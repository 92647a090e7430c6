//! `ilanet bench fuzz bgp`: random and mutated BGP messages through the speaker's decoder and
//! session state machine, each under `catch_unwind`; the target is zero panics.
//!
//! Seeds are the regression corpus of `crates/bgp/tests/corpus/` (captures of BIRD, FRR and
//! gobgpd, IPv6 unicast and L2VPN EVPN, and hand-made malformed messages), built in at compile
//! time; the sessions negotiate both families. Each message goes to
//! the decoder (`frame_len`, `decode`), to a fresh Established session and a fresh OpenSent
//! session (clones of templates), and to one long-lived session that accumulates state (routes,
//! stale flags) and is re-established whenever an input ends it.

use crate::fuzz_harness::Rng;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use bgp::codec;
use bgp::fsm::{Input, Output, Session, SessionConfig, State};
use serde::Serialize;

use crate::BenchError;

/// The corpus, as hex lines (`#` comments).
const CORPUS: [(&str, &str); 8] = [
    (
        "capture-bird-valid",
        include_str!("../../bgp/tests/corpus/capture-bird-valid.hex"),
    ),
    (
        "capture-frr-valid",
        include_str!("../../bgp/tests/corpus/capture-frr-valid.hex"),
    ),
    (
        "capture-frr-evpn-valid",
        include_str!("../../bgp/tests/corpus/capture-frr-evpn-valid.hex"),
    ),
    (
        "capture-gobgp-valid",
        include_str!("../../bgp/tests/corpus/capture-gobgp-valid.hex"),
    ),
    (
        "capture-gobgp-evpn-valid",
        include_str!("../../bgp/tests/corpus/capture-gobgp-evpn-valid.hex"),
    ),
    (
        "handmade-malformed-evpn",
        include_str!("../../bgp/tests/corpus/handmade-malformed-evpn.hex"),
    ),
    (
        "handmade-malformed",
        include_str!("../../bgp/tests/corpus/handmade-malformed.hex"),
    ),
    (
        "handmade-valid",
        include_str!("../../bgp/tests/corpus/handmade-valid.hex"),
    ),
];

/// Settings of a run.
#[derive(Debug, Clone, Copy)]
pub struct FuzzConfig {
    /// Messages to generate.
    pub messages: u64,
    /// PRNG seed (runs with the same seed feed the same messages).
    pub seed: u64,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct FuzzReport {
    /// Messages fed.
    pub messages: u64,
    /// PRNG seed.
    pub seed: u64,
    /// Seed messages taken from the corpus.
    pub corpus_messages: usize,
    /// Panics caught (the target is 0).
    pub panics: u64,
    /// The first few panicking inputs, hex.
    pub panic_samples: Vec<String>,
    /// Decoder outcomes: `message:<kind>`, `ignored`, `treat-as-withdraw`,
    /// `attribute-discarded`, `incomplete`, `notification:<code>/<subcode>`.
    pub decoder: BTreeMap<String, u64>,
    /// Outcomes on a fresh Established session: `kept` or `reset:<code>/<subcode>`.
    pub established: BTreeMap<String, u64>,
    /// Outcomes on a fresh OpenSent session: `established`/`open-confirm`, or `reset:…`.
    pub open_sent: BTreeMap<String, u64>,
    /// How often the long-lived session was re-established after an input ended it.
    pub stateful_resets: u64,
    /// How the messages were made: `random`, `mutated`, `spliced`, `corpus`.
    pub generators: BTreeMap<String, u64>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Messages per second (each through decoder and three sessions).
    pub messages_per_sec: f64,
}

fn parse_corpus() -> Result<Vec<Vec<u8>>, BenchError> {
    let mut out = Vec::new();
    for (name, text) in CORPUS {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes: Result<Vec<u8>, _> = (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(line.get(i..i + 2).unwrap_or("zz"), 16))
                .collect();
            out.push(bytes.map_err(|_| {
                BenchError::Invalid(format!("corpus {name}.hex line {}: not hex", n + 1))
            })?);
        }
    }
    if out.is_empty() {
        return Err(BenchError::Invalid("the BGP corpus is empty".into()));
    }
    Ok(out)
}

fn set_len(m: &mut [u8]) {
    if m.len() >= codec::HEADER_LEN {
        let len = (m.len().min(u16::MAX as usize)) as u16;
        m[16..18].copy_from_slice(&len.to_be_bytes());
    }
}

/// A message with a valid marker, a (mostly) right length and a random type and body.
fn random_message(rng: &mut Rng) -> Vec<u8> {
    let max = if rng.below(8) == 0 { 4200 } else { 80 };
    let body = rng.below(max);
    let mut m = vec![0xff; 16];
    m.extend([0, 0, [1u8, 2, 3, 4, 5][rng.below(5)]]);
    if rng.below(16) == 0 {
        m[18] = rng.byte();
    }
    m.extend((0..body).map(|_| rng.byte()));
    set_len(&mut m);
    m
}

/// An index into a message of `len` bytes, past the marker 15 times in 16 (a broken marker
/// only ever tests one check).
fn pick(rng: &mut Rng, len: usize) -> usize {
    if len > 16 && rng.below(16) != 0 {
        16 + rng.below(len - 16)
    } else {
        rng.below(len)
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(8) {
            // Flip a bit.
            0 | 1 if !m.is_empty() => {
                let i = pick(rng, m.len());
                m[i] ^= 1 << rng.below(8);
            }
            // Set a byte to an interesting value.
            2 if !m.is_empty() => {
                let i = pick(rng, m.len());
                m[i] = [0, 1, 0x7f, 0x80, 0xff, rng.byte()][rng.below(6)];
            }
            // Truncate.
            3 if !m.is_empty() => {
                let n = pick(rng, m.len());
                m.truncate(n);
            }
            // Insert random bytes.
            4 => {
                let i = pick(rng, m.len() + 1);
                let extra: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.byte()).collect();
                m.splice(i..i, extra);
            }
            // Delete a range.
            5 if m.len() > 1 => {
                let i = pick(rng, m.len());
                let j = (i + 1 + rng.below(8)).min(m.len());
                m.drain(i..j);
            }
            // Lie about a length: the header's, or a byte that may be an attribute's.
            6 if m.len() > codec::HEADER_LEN => {
                let i = codec::HEADER_LEN + rng.below(m.len() - codec::HEADER_LEN);
                m[i] = m[i].wrapping_add([1u8, 0xff, 2, 0xfe][rng.below(4)]);
            }
            _ => {}
        }
    }
    // Most of the time the header length stays consistent so the body is what gets tested.
    if rng.below(4) != 0 {
        set_len(&mut m);
    }
    m
}

fn splice(rng: &mut Rng, a: &[u8], b: &[u8]) -> Vec<u8> {
    let i = pick(rng, a.len() + 1);
    let j = pick(rng, b.len() + 1);
    let mut m = a[..i].to_vec();
    m.extend_from_slice(&b[j..]);
    set_len(&mut m);
    m
}

fn bump(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_insert(0) += 1;
}

fn config(local_as: u32, id: u8, remote_as: u32, remote: &str) -> SessionConfig {
    let addr: IpAddr = remote.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut c = SessionConfig::new(local_as, Ipv4Addr::new(10, 0, 0, id), remote_as, addr);
    c.graceful_restart_time = Some(120);
    // Both families, so EVPN UPDATEs reach the Adj-RIB-In too.
    c.families = vec![bgp::Family::Ipv6Unicast, bgp::Family::L2vpnEvpn];
    c
}

/// Two sessions talking to each other until the exchange settles; returns B.
fn establish(now: Instant) -> Result<Session, BenchError> {
    let mut a = Session::new(config(65001, 1, 65002, "fd00::2"));
    let mut pass = config(65002, 2, 65001, "fd00::1");
    pass.passive = true;
    let mut b = Session::new(pass);
    let mut oa = a.handle(Input::Start, now);
    let mut ob = b.handle(Input::Start, now);
    oa.extend(a.handle(Input::TcpConnected, now));
    ob.extend(b.handle(Input::TcpConnected, now));
    for _ in 0..50 {
        let to_b: Vec<Vec<u8>> = oa
            .drain(..)
            .filter_map(|o| match o {
                Output::Send(x) => Some(x),
                _ => None,
            })
            .collect();
        let to_a: Vec<Vec<u8>> = ob
            .drain(..)
            .filter_map(|o| match o {
                Output::Send(x) => Some(x),
                _ => None,
            })
            .collect();
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        for x in to_b {
            ob.extend(b.handle(Input::Bytes(&x), now));
        }
        for x in to_a {
            oa.extend(a.handle(Input::Bytes(&x), now));
        }
    }
    if b.state() != State::Established {
        return Err(BenchError::Invalid(format!(
            "the fuzz template session did not establish (state {:?})",
            b.state()
        )));
    }
    Ok(b)
}

fn open_sent(now: Instant) -> Session {
    let mut c = config(65002, 2, 65001, "fd00::1");
    c.passive = true;
    let mut s = Session::new(c);
    s.handle(Input::Start, now);
    s.handle(Input::TcpConnected, now);
    s
}

/// The outcome of feeding bytes to a session: kept, or the NOTIFICATION it sent.
fn session_outcome(before: State, s: &Session, out: &[Output]) -> String {
    let sent = out.iter().find_map(|o| match o {
        Output::Send(b) if b.len() >= 21 && b.get(18) == Some(&3) => Some((b[19], b[20])),
        _ => None,
    });
    match (sent, s.state()) {
        (Some((c, sc)), _) => format!("reset:{c}/{sc}"),
        (None, st) if st == before => "kept".to_string(),
        (None, st) => format!("{st:?}").to_lowercase(),
    }
}

fn decoder_outcome(m: &[u8]) -> String {
    match codec::frame_len(m) {
        Err(e) => {
            return format!(
                "notification:{}/{}",
                e.notification.code, e.notification.subcode
            )
        }
        Ok(None) => return "incomplete".into(),
        Ok(Some(_)) => {}
    }
    match codec::decode(m) {
        Err(e) => format!(
            "notification:{}/{}",
            e.notification.code, e.notification.subcode
        ),
        Ok(d) if d.report.treat_as_withdraw.is_some() => "treat-as-withdraw".into(),
        Ok(d) if !d.report.discarded.is_empty() => "attribute-discarded".into(),
        Ok(d) => match d.message {
            None => "ignored".into(),
            Some(bgp::Message::Open(_)) => "message:open".into(),
            Some(bgp::Message::Update(_)) => "message:update".into(),
            Some(bgp::Message::Notification(_)) => "message:notification".into(),
            Some(bgp::Message::Keepalive) => "message:keepalive".into(),
            Some(bgp::Message::RouteRefresh(_)) => "message:route-refresh".into(),
        },
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the fuzzer. `progress` is called now and then with the messages done so far.
pub fn run(cfg: FuzzConfig, mut progress: impl FnMut(u64)) -> Result<FuzzReport, BenchError> {
    let seeds = parse_corpus()?;
    let now = Instant::now();
    let est = establish(now)?;
    let osent = open_sent(now);
    let mut stateful = est.clone();
    let mut rng = Rng(cfg.seed);
    let mut r = FuzzReport {
        messages: cfg.messages,
        seed: cfg.seed,
        corpus_messages: seeds.len(),
        panics: 0,
        panic_samples: Vec::new(),
        decoder: BTreeMap::new(),
        established: BTreeMap::new(),
        open_sent: BTreeMap::new(),
        stateful_resets: 0,
        generators: BTreeMap::new(),
        seconds: 0.0,
        messages_per_sec: 0.0,
    };
    // The default hook would print every caught panic; count them quietly instead.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    for i in 0..cfg.messages {
        let (kind, m) = match rng.below(10) {
            0 => ("corpus", seeds[rng.below(seeds.len())].clone()),
            1..=2 => ("random", random_message(&mut rng)),
            3 => {
                let a = &seeds[rng.below(seeds.len())];
                let b = &seeds[rng.below(seeds.len())];
                ("spliced", splice(&mut rng, a, b))
            }
            _ => {
                let s = &seeds[rng.below(seeds.len())];
                ("mutated", mutate(&mut rng, s))
            }
        };
        bump(&mut r.generators, kind.into());
        // A later clock now and then so hold and restart timers fire mid-stream.
        let t = now + Duration::from_millis(i % 1000);
        let result = catch_unwind(AssertUnwindSafe(|| {
            let dec = decoder_outcome(&m);
            let mut e = est.clone();
            let out = e.handle(Input::Bytes(&m), t);
            let eo = session_outcome(State::Established, &e, &out);
            let mut o = osent.clone();
            let out = o.handle(Input::Bytes(&m), t);
            let oo = session_outcome(State::OpenSent, &o, &out);
            let _ = stateful.handle(Input::Bytes(&m), t);
            if i % 64 == 0 {
                let _ = stateful.handle_timeout(t + Duration::from_secs(200));
            }
            let _ = stateful.status(t);
            let reset = stateful.state() != State::Established;
            (dec, eo, oo, reset)
        }));
        match result {
            Ok((dec, eo, oo, reset)) => {
                bump(&mut r.decoder, dec);
                bump(&mut r.established, eo);
                bump(&mut r.open_sent, oo);
                if reset {
                    r.stateful_resets += 1;
                    stateful = est.clone();
                }
            }
            Err(_) => {
                r.panics += 1;
                if r.panic_samples.len() < 10 {
                    r.panic_samples.push(hex(&m));
                }
                stateful = est.clone();
            }
        }
        if i % 100_000 == 0 {
            progress(i);
        }
    }
    std::panic::set_hook(hook);
    r.seconds = started.elapsed().as_secs_f64();
    r.messages_per_sec = cfg.messages as f64 / r.seconds.max(1e-9);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_parses_and_a_short_run_has_no_panics() {
        let r = run(
            FuzzConfig {
                messages: 5_000,
                seed: 7,
            },
            |_| {},
        )
        .expect("run");
        assert!(r.corpus_messages > 5);
        assert_eq!(r.panics, 0, "{:?}", r.panic_samples);
        assert_eq!(r.decoder.values().sum::<u64>(), 5_000);
        // The mutations reach past the header into the session's error handling.
        assert!(r.established.keys().any(|k| k.starts_with("reset:3/")));
        assert!(r.decoder.contains_key("message:update"));
    }

    #[test]
    fn same_seed_same_outcomes() {
        let a = run(
            FuzzConfig {
                messages: 500,
                seed: 3,
            },
            |_| {},
        )
        .expect("a");
        let b = run(
            FuzzConfig {
                messages: 500,
                seed: 3,
            },
            |_| {},
        )
        .expect("b");
        assert_eq!(a.decoder, b.decoder);
        assert_eq!(a.established, b.established);
    }
}
