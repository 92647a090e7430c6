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
