//! The evaluation harness (DESIGN §5 "Benchmarks"): iperf3 TCP runs between lab containers in
//! interleaved rounds, statistics with Student-t confidence intervals, and reports (raw iperf3
//! JSON, `results.json`, CSV, Markdown, PNG/SVG plots).
//!
//! Two campaigns: [`paper`] (the paper's Fig. 14: native, ILA, ILA + policy, swarm, swarm +
//! iptables) and [`rules`] (throughput against the number of filter rules, iptables and eBPF).

pub mod ebpf;
pub mod iperf;
pub mod machine;
pub mod model;
pub mod plots;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod stats;

pub use model::{Results, Settings};
pub use runner::{paper, rules, PaperConfig, Progress, RulesConfig};

/// What can go wrong running a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// Building or changing a lab failed.
    #[error(transparent)]
    Lab(#[from] lab::LabError),
    /// iperf3 failed or produced something unreadable.
    #[error("{0}")]
    Iperf(String),
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An eBPF policy could not be applied, or is not in force.
    #[error("eBPF policy: {0}")]
    Policy(String),
    /// Drawing a figure failed.
    #[error("plotting {file}: {reason}")]
    Plot {
        /// Output file.
        file: String,
        /// Why.
        reason: String,
    },
    /// The user interrupted the run (results so far are kept).
    #[error("interrupted")]
    Interrupted,
}
