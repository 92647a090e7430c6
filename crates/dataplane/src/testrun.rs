//! `BPF_PROG_TEST_RUN` harness: run a program on a handcrafted frame without any interface.
//! See [`crate::HostDataplane::test_run`].

use serde::Serialize;

/// `TC_ACT_OK`: pass the packet on.
pub const TC_ACT_OK: i32 = 0;
/// `TC_ACT_SHOT`: drop.
pub const TC_ACT_SHOT: i32 = 2;
/// `TC_ACT_REDIRECT`: what `bpf_redirect_peer` returns.
pub const TC_ACT_REDIRECT: i32 = 7;

/// Result of one `BPF_PROG_TEST_RUN` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The program's return value (`TC_ACT_*`).
    pub retval: i32,
    /// The frame after the (last) run.
    pub packet: Vec<u8>,
    /// Average time per run in nanoseconds, as measured by the kernel.
    pub duration_ns: u32,
}
