//! Whole-machine CPU time from `/proc/stat` over a measuring window: every CPU, softirq
//! included. iperf3's own CPU figure is the user + system time of its two processes, so the
//! per-packet work of the data path, which runs in softirq context (often on another CPU),
//! is not in it; this is.

use serde::{Deserialize, Serialize};

/// The aggregate `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// softirq alone.
    pub softirq: u64,
    /// Everything, idle and iowait included.
    pub total: u64,
    /// CPUs (`cpuN` lines).
    pub cpus: usize,
}

/// CPU use of the whole machine over a window, in % of one core (all CPUs: up to 100 × CPUs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MachineCpu {
    /// Busy time (user, nice, system, irq, softirq, steal).
    pub busy_pct: f64,
    /// Of which softirq.
    pub softirq_pct: f64,
}

/// Parses `/proc/stat` text. `None` if the `cpu` line is missing or short.
pub fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    if f.len() < 8 {
        return None;
    }
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some(CpuTimes {
        busy: f[0] + f[1] + f[2] + f[5] + f[6] + f[7],
        softirq: f[6],
        total: f[..8].iter().sum(),
        cpus: cpus.max(1),
    })
}

/// Reads `/proc/stat` now.
pub fn snapshot() -> Option<CpuTimes> {
    parse(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The use between two snapshots; `None` if no time passed or the counters went backwards.
pub fn window(before: &CpuTimes, after: &CpuTimes) -> Option<MachineCpu> {
    let total = after.total.checked_sub(before.total)?;
    if total == 0 {
        return None;
    }
    let scale = 100.0 * after.cpus as f64 / total as f64;
    Some(MachineCpu {
        busy_pct: after.busy.checked_sub(before.busy)? as f64 * scale,
        softirq_pct: after.softirq.checked_sub(before.softirq)? as f64 * scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "cpu  100 0 50 800 10 5 20 0 0 0\ncpu0 50 0 25 400 5 2 10 0 0 0\ncpu1 50 0 25 400 5 3 10 0 0 0\nintr 1\n";
    const B: &str = "cpu  200 0 100 900 10 5 70 0 0 0\ncpu0 100 0 50 450 5 2 35 0 0 0\ncpu1 100 0 50 450 5 3 35 0 0 0\nintr 2\n";

    #[test]
    fn busy_and_softirq_over_a_window() {
        let (a, b) = (parse(A).expect("a"), parse(B).expect("b"));
        assert_eq!((a.cpus, a.busy, a.softirq, a.total), (2, 175, 20, 985));
        // 300 ticks passed on 2 CPUs; 200 busy (50 of them softirq): 2/3 of both CPUs.
        let w = window(&a, &b).expect("window");
        assert!((w.busy_pct - 200.0 * 200.0 / 300.0).abs() < 1e-9, "{w:?}");
        assert!((w.softirq_pct - 50.0 * 200.0 / 300.0).abs() < 1e-9, "{w:?}");
        assert!(window(&b, &a).is_none(), "counters going backwards");
        assert!(window(&a, &a).is_none(), "empty window");
        assert!(parse("cpu  1 2 3\n").is_none());
        assert!(parse("intr 1\n").is_none());
    }

    #[test]
    fn this_machine_is_readable() {
        let s = snapshot().expect("/proc/stat");
        assert!(s.total >= s.busy && s.busy >= s.softirq && s.cpus >= 1);
    }
}
