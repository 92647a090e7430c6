//! `#[repr(C)]` mirrors of `bpf/ila_abi.h`, the source of truth. `tests/abi.rs` checks every
//! struct (size, and offset and size of every field, none of them padding), every `enum ila_stat`
//! and `enum ila_reason` value and every map's key, value and `max_entries` against the BTF of
//! the compiled objects, so a drift fails the tests instead of corrupting maps.

use std::mem::{offset_of, size_of};

/// `ILA_CSUM_NEUTRAL_MAP`: checksum-neutral mapping, L4 checksum untouched.
pub const ILA_CSUM_NEUTRAL_MAP: u8 = 0;
/// `ILA_CSUM_ADJ_TRANSPORT`: incremental fix of the TCP/UDP/ICMPv6 checksum.
pub const ILA_CSUM_ADJ_TRANSPORT: u8 = 1;
/// `ILA_CSUM_NO_ACTION`: rewrite only.
pub const ILA_CSUM_NO_ACTION: u8 = 2;

/// `ILA_OUT_F_LOCAL`: destination is on this host, pass untranslated.
pub const ILA_OUT_F_LOCAL: u8 = 0x1;
/// `ILA_IN_F_REDIRECT`: MACs are valid, rewrite L2 and `bpf_redirect_peer`.
pub const ILA_IN_F_REDIRECT: u8 = 0x1;

/// `ILA_FILTER_SLOTS`: entries of each prefix filter map.
pub const ILA_FILTER_SLOTS: u32 = 4096;

/// `ila_filter_slot()`: the prefix-filter slot of an address's /64 (same arithmetic as the C
/// header: the first 8 bytes as a native-endian u64, folded, Fibonacci-hashed to 12 bits).
pub fn filter_slot(addr: &[u8; 16]) -> u32 {
    let mut upper = [0u8; 8];
    upper.copy_from_slice(&addr[..8]);
    let upper = u64::from_ne_bytes(upper);
    let x = (upper as u32) ^ ((upper >> 32) as u32);
    x.wrapping_mul(0x9e37_79b1) >> 20
}

/// `ILA_CFG_TRACE`: emit an `ila_event` per translated packet (and verdict events).
pub const ILA_CFG_TRACE: u32 = 0x1;
/// `ILA_CFG_ENFORCE`: anti-spoofing, conntrack and policy.
pub const ILA_CFG_ENFORCE: u32 = 0x2;

/// `ILA_EV_OUT`: SIR → ILA at the sender.
pub const ILA_EV_OUT: u8 = 1;
/// `ILA_EV_IN`: ILA → SIR at the receiver.
pub const ILA_EV_IN: u8 = 2;
/// `ILA_EV_VERDICT`: a policy verdict on a new flow, or a drop ([`IlaVerdictEvent`]).
pub const ILA_EV_VERDICT: u8 = 3;

/// `ILA_VERDICT_ALLOW`.
pub const ILA_VERDICT_ALLOW: u8 = 1;
/// `ILA_VERDICT_DROP`.
pub const ILA_VERDICT_DROP: u8 = 2;
/// `ILA_DIR_NONE`: no policy was evaluated.
pub const ILA_DIR_NONE: u8 = 0xff;

/// `enum ila_reason`.
pub mod reason {
    /// A rule decided.
    pub const RULE: u8 = 1;
    /// No rule, not enforced.
    pub const DEFAULT_ALLOW: u8 = 2;
    /// No rule, enforced.
    pub const DEFAULT_DENY: u8 = 3;
    /// No rule, peer in another tenant.
    pub const TENANT: u8 = 4;
    /// No `POLICY_EP` entry.
    pub const NO_POLICY: u8 = 5;
    /// Anti-spoofing.
    pub const SPOOFED: u8 = 6;
    /// Local destination without `ILA_ENDPOINTS` entry.
    pub const NO_ENDPOINT: u8 = 7;
    /// L4 unreadable while enforcing (programs since `UNCLASSIFIED` no longer emit it).
    pub const MALFORMED: u8 = 8;
    /// Checksum fix failed.
    pub const CSUM: u8 = 9;
    /// Rewrite failed.
    pub const REWRITE: u8 = 10;
    /// Enforcement could not classify the packet completely (extension-header chain longer
    /// than walked, header running past the payload, L4 header missing or truncated).
    pub const UNCLASSIFIED: u8 = 11;
    /// Enforcement: a non-first fragment (no L4 header, no fragment tracking).
    pub const FRAGMENT: u8 = 12;
}

/// `ILA_CT_F_ORIG_B`: the flow was opened by `b`.
pub const ILA_CT_F_ORIG_B: u32 = 0x1;
/// `ILA_CT_F_FROM_WIRE`: created by from-wire.
pub const ILA_CT_F_FROM_WIRE: u32 = 0x2;
/// `ILA_CT_F_LOCAL_B`: the local endpoint is side `b`.
pub const ILA_CT_F_LOCAL_B: u32 = 0x4;
/// `ILA_CT_F_BOTH_LOCAL`: both ends are endpoints of this host.
pub const ILA_CT_F_BOTH_LOCAL: u32 = 0x8;

/// Index of each per-CPU counter in `ILA_STATS` (`enum ila_stat`).
pub mod stat {
    /// `ILA_STAT_OUT_TRANSLATED`.
    pub const OUT_TRANSLATED: u32 = 0;
    /// `ILA_STAT_OUT_LOCAL`.
    pub const OUT_LOCAL: u32 = 1;
    /// `ILA_STAT_OUT_MISS`.
    pub const OUT_MISS: u32 = 2;
    /// `ILA_STAT_IN_TRANSLATED`.
    pub const IN_TRANSLATED: u32 = 3;
    /// `ILA_STAT_IN_REDIRECTED`.
    pub const IN_REDIRECTED: u32 = 4;
    /// `ILA_STAT_IN_MISS`.
    pub const IN_MISS: u32 = 5;
    /// `ILA_STAT_NOT_IPV6`.
    pub const NOT_IPV6: u32 = 6;
    /// `ILA_STAT_DROP_MALFORMED`.
    pub const DROP_MALFORMED: u32 = 7;
    /// `ILA_STAT_DROP_CSUM`.
    pub const DROP_CSUM: u32 = 8;
    /// `ILA_STAT_DROP_REWRITE`.
    pub const DROP_REWRITE: u32 = 9;
    /// `ILA_STAT_DROP_POLICY`.
    pub const DROP_POLICY: u32 = 10;
    /// `ILA_STAT_DROP_TENANT`.
    pub const DROP_TENANT: u32 = 11;
    /// `ILA_STAT_DROP_SPOOFED`.
    pub const DROP_SPOOFED: u32 = 12;
    /// `ILA_STAT_DROP_NO_ENDPOINT`.
    pub const DROP_NO_ENDPOINT: u32 = 13;
    /// `ILA_STAT_CT_NEW`.
    pub const CT_NEW: u32 = 14;
    /// `ILA_STAT_CT_HIT`.
    pub const CT_HIT: u32 = 15;
    /// `ILA_STAT_DROP_UNCLASSIFIED`.
    pub const DROP_UNCLASSIFIED: u32 = 16;
    /// `ILA_STAT_DROP_FRAGMENT`.
    pub const DROP_FRAGMENT: u32 = 17;
    /// `ILA_STAT_MAX`: number of counters.
    pub const MAX: u32 = 18;
}

/// `struct ila_out_key`: SIR destination address.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaOutKey {
    /// SIR address, network byte order.
    pub sir: [u8; 16],
}

/// `struct ila_out_val`: what to write as destination at the sender.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaOutVal {
    /// Full ILA address (identifier already adjusted).
    pub ila: [u8; 16],
    /// `ILA_CSUM_*`.
    pub csum_mode: u8,
    /// `ILA_OUT_F_*`.
    pub flags: u8,
    /// Zero.
    pub pad: [u8; 2],
}

/// `struct ila_in_key`: ILA destination address as seen on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaInKey {
    /// ILA address, network byte order.
    pub ila: [u8; 16],
}

/// `struct ila_in_val`: the local endpoint behind an ILA address.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaInVal {
    /// Full SIR address to write back.
    pub sir: [u8; 16],
    /// Host-side veth of the endpoint.
    pub ifindex: u32,
    /// `ILA_CSUM_*`.
    pub csum_mode: u8,
    /// `ILA_IN_F_*`.
    pub flags: u8,
    /// MAC of the endpoint's interface inside the container.
    pub ep_mac: [u8; 6],
    /// MAC of the host-side veth.
    pub host_mac: [u8; 6],
    /// Zero.
    pub pad: [u8; 2],
}

/// `struct ila_config`: the one entry of `ILA_CONFIG`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaConfig {
    /// `ILA_CFG_*`.
    pub flags: u32,
}

/// `struct ila_event`: one ring-buffer record per translated packet while tracing.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaEvent {
    /// `ILA_EV_*`.
    pub kind: u8,
    /// `ILA_CSUM_*`.
    pub csum_mode: u8,
    /// Final next header, 0 if unknown.
    pub l4_proto: u8,
    /// Zero.
    pub pad: u8,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Source address.
    pub src: [u8; 16],
    /// Destination before translation.
    pub dst_before: [u8; 16],
    /// Destination after translation.
    pub dst_after: [u8; 16],
}

impl IlaEvent {
    /// Decodes a ring-buffer record; `None` if it is too short.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < size_of::<Self>() {
            return None;
        }
        Some(Self {
            kind: b[offset_of!(Self, kind)],
            csum_mode: b[offset_of!(Self, csum_mode)],
            l4_proto: b[offset_of!(Self, l4_proto)],
            pad: b[offset_of!(Self, pad)],
            // The kernel writes host byte order.
            ifindex: u32_at(b, offset_of!(Self, ifindex)),
            src: addr_at(b, offset_of!(Self, src)),
            dst_before: addr_at(b, offset_of!(Self, dst_before)),
            dst_after: addr_at(b, offset_of!(Self, dst_after)),
        })
    }
}

/// `struct ila_endpoint_val`: a local endpoint (`ILA_ENDPOINTS`, keyed by its SIR address).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaEndpointVal {
    /// Numeric identity.
    pub identity: u32,
    /// Tenant.
    pub vnid: u32,
    /// Host-side veth.
    pub ifindex: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// `struct ila_ipcache_val` (`ILA_IPCACHE`, keyed by address).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaIpcacheVal {
    /// Identity.
    pub identity: u32,
    /// Tenant (ignored for reserved identities).
    pub vnid: u32,
}

/// `struct ila_ct_key`: normalised flow key (`a` is the smaller address).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaCtKey {
    /// Smaller address.
    pub a: [u8; 16],
    /// Larger address.
    pub b: [u8; 16],
    /// `a`'s port, network order.
    pub port_a: [u8; 2],
    /// `b`'s port, network order.
    pub port_b: [u8; 2],
    /// L4 protocol.
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// `struct ila_ct_val`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaCtVal {
    /// `CLOCK_MONOTONIC_COARSE` ns of the last packet (refreshed at most once a second).
    pub last_seen: u64,
    /// `CLOCK_MONOTONIC_COARSE` ns of creation.
    pub created: u64,
    /// `ILA_CT_F_*`.
    pub flags: u32,
    /// Host-side veth of the local endpoint of the flow.
    pub local_ifindex: u32,
}

/// `struct ila_verdict_event`: a policy verdict on a new flow, or a drop.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IlaVerdictEvent {
    /// `ILA_EV_VERDICT`.
    pub kind: u8,
    /// `ILA_EV_OUT` / `ILA_EV_IN`.
    pub program: u8,
    /// `ILA_VERDICT_*`.
    pub verdict: u8,
    /// [`reason`].
    pub reason: u8,
    /// `DIR_*` of `policy::abi`, or [`ILA_DIR_NONE`].
    pub direction: u8,
    /// Final next header.
    pub proto: u8,
    /// Source port, network order.
    pub sport: [u8; 2],
    /// Destination port, network order.
    pub dport: [u8; 2],
    /// Zero.
    pub pad: u16,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Source identity (0 unknown).
    pub src_identity: u32,
    /// Destination identity (0 unknown).
    pub dst_identity: u32,
    /// Source tenant (0 unknown).
    pub src_vnid: u32,
    /// Destination tenant (0 unknown).
    pub dst_vnid: u32,
    /// Deciding rule (0 none).
    pub rule_id: u32,
    /// Zero.
    pub pad2: u32,
    /// Source address.
    pub src: [u8; 16],
    /// Destination (SIR) address.
    pub dst: [u8; 16],
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn addr_at(b: &[u8], o: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[o..o + 16]);
    a
}

impl IlaVerdictEvent {
    /// Decodes a ring-buffer record; `None` if it is too short or not a verdict event.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < size_of::<Self>() || b[0] != ILA_EV_VERDICT {
            return None;
        }
        let u16_at = |o: usize| [b[o], b[o + 1]];
        Some(Self {
            kind: b[offset_of!(Self, kind)],
            program: b[offset_of!(Self, program)],
            verdict: b[offset_of!(Self, verdict)],
            reason: b[offset_of!(Self, reason)],
            direction: b[offset_of!(Self, direction)],
            proto: b[offset_of!(Self, proto)],
            sport: u16_at(offset_of!(Self, sport)),
            dport: u16_at(offset_of!(Self, dport)),
            pad: u16::from_ne_bytes(u16_at(offset_of!(Self, pad))),
            ifindex: u32_at(b, offset_of!(Self, ifindex)),
            src_identity: u32_at(b, offset_of!(Self, src_identity)),
            dst_identity: u32_at(b, offset_of!(Self, dst_identity)),
            src_vnid: u32_at(b, offset_of!(Self, src_vnid)),
            dst_vnid: u32_at(b, offset_of!(Self, dst_vnid)),
            rule_id: u32_at(b, offset_of!(Self, rule_id)),
            pad2: u32_at(b, offset_of!(Self, pad2)),
            src: addr_at(b, offset_of!(Self, src)),
            dst: addr_at(b, offset_of!(Self, dst)),
        })
    }
}

// SAFETY: plain-old-data: repr(C), only integer fields, no padding (tests/abi.rs checks that the
// fields cover the size checked against BTF).
unsafe impl aya::Pod for IlaEndpointVal {}
// SAFETY: as above.
unsafe impl aya::Pod for IlaIpcacheVal {}
// SAFETY: as above.
unsafe impl aya::Pod for IlaCtKey {}
// SAFETY: as above.
unsafe impl aya::Pod for IlaCtVal {}
// SAFETY: as above.
unsafe impl aya::Pod for IlaOutKey {}
// SAFETY: as above.
unsafe impl aya::Pod for IlaOutVal {}
// SAFETY: as above.
unsafe impl aya::Pod for IlaInKey {}
// SAFETY: as above.
unsafe impl aya::Pod for IlaInVal {}
// SAFETY: as above.
unsafe impl aya::Pod for IlaConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for IlaEvent {}
