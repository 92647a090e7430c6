//! `BPF_PROG_TEST_RUN` harness: run a program on a handcrafted frame without any interface.
//! See [`crate::HostDataplane::test_run`], and [`Baseline`], the empty program whose time is
//! the floor of the harness itself.

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use serde::Serialize;

use crate::{prog_err, DataplaneError};

/// `bpf/baseline.c`: returns `TC_ACT_OK` at once.
static OBJ_BASELINE: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline.bpf.o"));
/// Its program name.
const BASELINE_NAME: &str = "baseline";

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

/// `sizeof(struct __sk_buff)`.
const SKB_CTX_LEN: usize = 192;
/// `offsetof(struct __sk_buff, ingress_ifindex)`.
const INGRESS_IFINDEX_OFF: usize = 36;

/// A `struct __sk_buff` for `ctx_in` with only `ingress_ifindex` set (the kernel accepts it as
/// `skb->skb_iif`; every other field it would refuse is zero).
pub(crate) fn skb_ctx(ingress_ifindex: u32) -> [u8; SKB_CTX_LEN] {
    let mut c = [0u8; SKB_CTX_LEN];
    c[INGRESS_IFINDEX_OFF..INGRESS_IFINDEX_OFF + 4].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    c
}

/// Runs `prog` (named `name` in errors) on `packet` `repeat` times, as if the frame had arrived
/// on `ingress_ifindex` (0: no context given).
pub(crate) fn run(
    prog: &SchedClassifier,
    name: &str,
    packet: &[u8],
    repeat: u32,
    ingress_ifindex: u32,
) -> Result<Outcome, DataplaneError> {
    // Room to spare: the kernel fails with ENOSPC rather than truncate.
    let mut out = vec![0u8; packet.len() + 256];
    let ctx = skb_ctx(ingress_ifindex);
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: (ingress_ifindex != 0).then_some(&ctx[..]),
            repeat: repeat.max(1),
            ..TestRunOptions::default()
        })
        .map_err(prog_err(format!("BPF_PROG_TEST_RUN of {name}")))?;
    out.truncate((res.data_size_out as usize).min(out.len()));
    Ok(Outcome {
        retval: res.return_value as i32,
        packet: out,
        duration_ns: u32::try_from(res.duration.as_nanos()).unwrap_or(u32::MAX),
    })
}

/// The empty classifier (`bpf/baseline.c`), loaded but never attached: run through the same
/// harness as the real programs, its time is what `BPF_PROG_TEST_RUN` costs by itself.
pub struct Baseline {
    ebpf: Ebpf,
}

impl std::fmt::Debug for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baseline").finish_non_exhaustive()
    }
}

impl Baseline {
    /// Loads the program (no maps, nothing pinned).
    pub fn load() -> Result<Self, DataplaneError> {
        let mut ebpf =
            EbpfLoader::new()
                .load(OBJ_BASELINE)
                .map_err(|error| DataplaneError::Load {
                    error: Box::new(error),
                    context: "loading baseline.bpf.o".into(),
                })?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(BASELINE_NAME)
            .ok_or_else(missing)?
            .try_into()
            .map_err(prog_err(format!("{BASELINE_NAME} is not a classifier")))?;
        prog.load()
            .map_err(prog_err(format!("loading program {BASELINE_NAME}")))?;
        Ok(Self { ebpf })
    }

    /// [`crate::HostDataplane::test_run_on`] for the empty program: same frame, same context.
    pub fn test_run_on(
        &self,
        packet: &[u8],
        repeat: u32,
        ingress_ifindex: u32,
    ) -> Result<Outcome, DataplaneError> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(BASELINE_NAME)
            .ok_or_else(missing)?
            .try_into()
            .map_err(prog_err(format!("{BASELINE_NAME} is not a classifier")))?;
        run(prog, BASELINE_NAME, packet, repeat, ingress_ifindex)
    }
}

fn missing() -> DataplaneError {
    DataplaneError::Invalid(format!(
        "program {BASELINE_NAME} missing from baseline.bpf.o"
    ))
}
