//! `#[repr(C)]` mirrors of `bpf/ila_abi.h`. Sizes are asserted at compile time so a drift between
//! the C contract and these structs fails the build instead of corrupting maps.

use std::mem::size_of;

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

/// `ILA_CFG_TRACE`: emit an `ila_event` per translated packet.
pub const ILA_CFG_TRACE: u32 = 0x1;

/// `ILA_EV_OUT`: SIR → ILA at the sender.
pub const ILA_EV_OUT: u8 = 1;
/// `ILA_EV_IN`: ILA → SIR at the receiver.
pub const ILA_EV_IN: u8 = 2;

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
    /// `ILA_STAT_MAX`: number of counters.
    pub const MAX: u32 = 10;
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
        let arr = |o: usize| -> [u8; 16] {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[o..o + 16]);
            a
        };
        Some(Self {
            kind: b[0],
            csum_mode: b[1],
            l4_proto: b[2],
            pad: b[3],
            // The kernel writes host byte order.
            ifindex: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            src: arr(8),
            dst_before: arr(24),
            dst_after: arr(40),
        })
    }
}

const _: () = assert!(size_of::<IlaOutKey>() == 16);
const _: () = assert!(size_of::<IlaOutVal>() == 20);
const _: () = assert!(size_of::<IlaInKey>() == 16);
const _: () = assert!(size_of::<IlaInVal>() == 36);
const _: () = assert!(size_of::<IlaConfig>() == 4);
const _: () = assert!(size_of::<IlaEvent>() == 56);
const _: () = assert!(std::mem::offset_of!(IlaInVal, ifindex) == 16);
const _: () = assert!(std::mem::offset_of!(IlaEvent, dst_after) == 40);

// SAFETY: plain-old-data: repr(C), only integer fields, no padding (sizes asserted above).
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
