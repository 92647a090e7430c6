//! The evaluation harness (DESIGN §5 "Benchmarks"): iperf3 TCP runs between lab containers in
//! interleaved rounds, statistics with Student-t confidence intervals, and reports (raw iperf3
//! JSON, `results.json`, CSV, Markdown, PNG/SVG plots).
//!
//! Two campaigns: [`paper`] (the paper's Fig. 14: native, ILA, ILA + policy, swarm, swarm +
//! iptables) and [`rules`] (throughput against the number of filter rules, iptables and eBPF).
//! Besides them, [`converge`] (how fast a new mapping reaches every other host, and a cold
//! resync), [`micro`] (ns per packet of the eBPF programs through `BPF_PROG_TEST_RUN`, against
//! an empty program) and [`latency`] (request/response round trips between containers).

pub mod bgp;
pub mod chaos;
pub mod cni;
pub mod converge;
pub mod cpu;
pub mod ebpf;
pub mod fuzz_api;
pub mod fuzz_bgp;
pub mod fuzz_cni;
pub mod fuzz_datapath;
pub mod fuzz_harness;
pub mod fuzz_policy;
pub mod fuzz_store;
pub mod iperf;
pub mod latency;
pub mod machine;
pub mod micro;
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
    /// A data path operation failed.
    #[error(transparent)]
    Dataplane(#[from] dataplane::DataplaneError),
    /// An identifier could not be allocated.
    #[error(transparent)]
    Ila(#[from] ila::IlaError),
    /// Serializing results failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// What a measurement found is not what it must be (a mapping that does not arrive, an
    /// entry that is not in the map, a counter that proves the wrong path was measured).
    #[error("{0}")]
    Measurement(String),
    /// A step of a benchmark failed: what was being done, and the error (its chain is kept).
    #[error("{what}")]
    Step {
        /// What was being done.
        what: String,
        /// The error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
