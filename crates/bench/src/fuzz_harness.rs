//! What every `ilanet bench fuzz <surface>` shares: a seedable PRNG, byte mutations, the loop
//! that feeds each input under `catch_unwind`, saves panicking (and very slow) inputs to files,
//! counts outcomes, and reports wall time and peak memory (VmHWM of /proc/self/status).
//!
//! Generation is structure-aware per surface (valid seeds, then mutations that target the
//! limits: depth, size, counts, aliases); the PRNG is SplitMix64 so a run is reproducible from
//! its seed on stable Rust, with no fuzzing engine.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::BenchError;

/// An input taking longer than this is saved as "slow" (a bound on CPU per input).
pub const SLOW_INPUT: Duration = Duration::from_secs(1);

/// Most panicking or slow inputs saved to files per run.
const MAX_SAVED: usize = 20;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct FuzzConfig {
    /// Inputs to feed.
    pub count: u64,
    /// PRNG seed (runs with the same seed feed the same inputs).
    pub seed: u64,
    /// Where panicking and slow inputs are written (created on the first one); `None`: not saved.
    pub save_dir: Option<PathBuf>,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct FuzzReport {
    /// The surface (`policy`, `api`, `store`, `cni`, `datapath`).
    pub surface: String,
    /// Inputs fed.
    pub inputs: u64,
    /// PRNG seed.
    pub seed: u64,
    /// Panics caught (the target is 0).
    pub panics: u64,
    /// Inputs whose outcome contradicts the surface's oracle (e.g. a hostile file refused
    /// without naming its limit, a data-path verdict unlike the reference's); the target is 0.
    pub violations: u64,
    /// The first few panic messages and violations, with the file holding the input if saved.
    pub findings: Vec<String>,
    /// Files written (panicking, violating or slow inputs).
    pub saved: Vec<String>,
    /// How the inputs were made, by generator.
    pub generators: BTreeMap<String, u64>,
    /// What the surface did with them (accepted, refused by which check, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// Largest input, bytes.
    pub max_input_bytes: usize,
    /// Slowest input, milliseconds.
    pub slowest_input_ms: f64,
    /// Inputs slower than [`SLOW_INPUT`].
    pub slow_inputs: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Inputs per second.
    pub inputs_per_sec: f64,
    /// Peak resident memory of the process (VmHWM), KiB; `None` where /proc is missing.
    pub peak_rss_kib: Option<u64>,
}

/// SplitMix64: small, seedable, good enough to drive mutations.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Byte-level mutations of `seed`: bit flips, interesting bytes, truncation, insertion,
/// deletion, duplication of a range (what grows nesting and lists in text formats).
pub fn mutate_bytes(rng: &mut Rng, seed: &[u8], interesting: &[&[u8]]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(9) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = *rng.pick(&[0u8, 0x7f, 0x80, 0xff, b'"', b'\\', b'\n', b'{', b'[', b':']);
            }
            2 if !m.is_empty() => {
                let n = rng.below(m.len());
                m.truncate(n);
            }
            3 => {
                let i = rng.below(m.len() + 1);
                let n = 1 + rng.below(8);
                let extra = rng.bytes(n);
                m.splice(i..i, extra);
            }
            4 if m.len() > 1 => {
                let i = rng.below(m.len());
                let j = (i + 1 + rng.below(16)).min(m.len());
                m.drain(i..j);
            }
            5 if !m.is_empty() => {
                // Duplicate a range a few times.
                let i = rng.below(m.len());
                let j = (i + 1 + rng.below(32)).min(m.len());
                let piece = m[i..j].to_vec();
                for _ in 0..1 + rng.below(4) {
                    m.splice(j..j, piece.iter().copied());
                }
            }
            6 | 7 if !interesting.is_empty() => {
                let i = rng.below(m.len() + 1);
                let piece = rng.pick(interesting).to_vec();
                m.splice(i..i, piece);
            }
            _ => {}
        }
    }
    m
}

/// Peak resident set size of this process (VmHWM), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

thread_local! {
    /// Set while this thread feeds a fuzz input: its panics are recorded, not printed.
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs (once) a panic hook that records the message of panics in fuzzing threads and
/// leaves every other panic to the previous hook (tests running beside a fuzzer still print).
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZING.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
            } else {
                previous(info);
            }
        }));
    });
}

/// What the target said about one input.
pub enum Verdict {
    /// Fine; the outcome is counted under this name.
    Ok(String),
    /// The oracle is contradicted: outcome name and why.
    Violation(String, String),
}

impl Verdict {
    /// A fine outcome.
    pub fn ok(s: impl Into<String>) -> Verdict {
        Verdict::Ok(s.into())
    }
}

/// One generated input: the generator's name, the value, and its bytes for a saved file.
pub struct Generated<T> {
    /// Generator name (counted in the report).
    pub kind: &'static str,
    /// The input.
    pub input: T,
    /// Its size in bytes (for the report's largest input).
    pub size: usize,
}

/// Runs `count` inputs: `generate` makes one, `target` feeds it (under `catch_unwind`),
/// `encode` gives the bytes to save when it panics, violates the oracle or is slow.
pub fn drive<T>(
    surface: &str,
    cfg: &FuzzConfig,
    mut progress: impl FnMut(u64),
    mut generate: impl FnMut(&mut Rng) -> Generated<T>,
    mut target: impl FnMut(&T) -> Verdict,
    encode: impl Fn(&T) -> Vec<u8>,
) -> Result<FuzzReport, BenchError> {
    install_hook();
    let mut rng = Rng(cfg.seed ^ 0x5eed_f022_0000_0000);
    let mut r = FuzzReport {
        surface: surface.to_string(),
        inputs: cfg.count,
        seed: cfg.seed,
        panics: 0,
        violations: 0,
        findings: Vec::new(),
        saved: Vec::new(),
        generators: BTreeMap::new(),
        outcomes: BTreeMap::new(),
        max_input_bytes: 0,
        slowest_input_ms: 0.0,
        slow_inputs: 0,
        seconds: 0.0,
        inputs_per_sec: 0.0,
        peak_rss_kib: None,
    };
    let started = Instant::now();
    for i in 0..cfg.count {
        let g = generate(&mut rng);
        *r.generators.entry(g.kind.to_string()).or_insert(0) += 1;
        let t0 = Instant::now();
        FUZZING.with(|f| f.set(true));
        let result = catch_unwind(AssertUnwindSafe(|| target(&g.input)));
        FUZZING.with(|f| f.set(false));
        let took = t0.elapsed();
        r.max_input_bytes = r.max_input_bytes.max(g.size);
        r.slowest_input_ms = r.slowest_input_ms.max(took.as_secs_f64() * 1e3);
        let mut save_as: Option<(&str, String)> = None;
        match result {
            Ok(Verdict::Ok(outcome)) => {
                *r.outcomes.entry(outcome).or_insert(0) += 1;
            }
            Ok(Verdict::Violation(outcome, why)) => {
                r.violations += 1;
                *r.outcomes.entry(outcome).or_insert(0) += 1;
                save_as = Some(("violation", why));
            }
            Err(_) => {
                r.panics += 1;
                *r.outcomes.entry("PANIC".into()).or_insert(0) += 1;
                let msg = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| "panic".into());
                save_as = Some(("panic", msg));
            }
        }
        if save_as.is_none() && took > SLOW_INPUT {
            r.slow_inputs += 1;
            save_as = Some(("slow", format!("took {:.2} s", took.as_secs_f64())));
        }
        if let Some((what, why)) = save_as {
            let file = save(cfg, surface, what, i, &encode(&g.input), &mut r);
            if r.findings.len() < MAX_SAVED {
                let at = file.map(|f| format!(" (input in {f})")).unwrap_or_default();
                r.findings
                    .push(format!("{what} on input {i} ({}): {why}{at}", g.kind));
            }
        }
        if i % 10_000 == 0 {
            progress(i);
        }
    }
    r.seconds = started.elapsed().as_secs_f64();
    r.inputs_per_sec = cfg.count as f64 / r.seconds.max(1e-9);
    r.peak_rss_kib = peak_rss_kib();
    Ok(r)
}

fn save(
    cfg: &FuzzConfig,
    surface: &str,
    what: &str,
    i: u64,
    bytes: &[u8],
    r: &mut FuzzReport,
) -> Option<String> {
    let dir = cfg.save_dir.as_ref()?;
    if r.saved.len() >= MAX_SAVED {
        return None;
    }
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join(format!("{surface}-{what}-seed{}-input{i}.bin", cfg.seed));
    std::fs::write(&path, bytes).ok()?;
    let shown = path.display().to_string();
    r.saved.push(shown.clone());
    Some(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_are_caught_counted_and_saved() {
        let dir = std::env::temp_dir().join(format!("ilanet-fuzz-harness-{}", std::process::id()));
        let cfg = FuzzConfig {
            count: 100,
            seed: 1,
            save_dir: Some(dir.clone()),
        };
        let r = drive(
            "unit",
            &cfg,
            |_| {},
            |rng| Generated {
                kind: "n",
                input: rng.below(10),
                size: 1,
            },
            |n| {
                if *n == 3 {
                    panic!("three");
                }
                Verdict::ok("fine")
            },
            |n| n.to_string().into_bytes(),
        )
        .expect("run");
        assert!(r.panics > 0);
        assert_eq!(r.panics + r.outcomes["fine"], 100);
        assert!(r.findings[0].contains("three"), "{:?}", r.findings);
        assert_eq!(std::fs::read(&r.saved[0]).expect("saved"), b"3");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn peak_rss_is_read() {
        assert!(peak_rss_kib().expect("VmHWM") > 0);
    }
}
