//! The byte layout of the compiled policy maps, shared with the eBPF programs
//! (`bpf/policy_abi.h` is the C side and the source of truth; change both together: the
//! dataplane crate's `tests/abi.rs` checks these mirrors against the BTF of the compiled
//! objects).
//!
//! Maps (names proposed for the dataplane):
//!
//! | map | type | key | value |
//! |---|---|---|---|
//! | `POLICY_EP` | HASH | `u32` endpoint identity | [`EndpointPolicy`] |
//! | `POLICY` | HASH | [`PolicyKey`] | [`PolicyValue`] |
//! | `POLICY_CIDR` | LPM_TRIE (`BPF_F_NO_PREALLOC`) | [`CidrKey`] | [`PolicyValue`] |
//!
//! Integers are in host byte order except `dport`, which is in network byte order exactly as in
//! the TCP/UDP/SCTP header (so the program copies it without swapping), and `addr`, which is
//! the IPv6 address as on the wire.
//!
//! # Lookup order (per packet and direction; at most 6 hash or 3 LPM lookups)
//!
//! 1. `ep = POLICY_EP[local identity]`; missing → deny (fail closed: not compiled yet).
//! 2. Peer is an identity (an endpoint or the host, from the ipcache): look up
//!    `POLICY[{ep, peer, dir, proto, dport}]`, then `{ep, peer, dir, proto, 0}`,
//!    `{ep, peer, dir, 0, 0}`, then the same three with `peer = 0` (any identity).
//!    Peer is an external address (ipcache miss): look up `POLICY_CIDR` with
//!    `{ep, dir, proto, dport, addr}`, then `{.., proto, 0, ..}`, then `{.., 0, 0, ..}`, each
//!    with `prefixlen = 64 + 128`.
//! 3. The first hit decides: [`VERDICT_ALLOW`] or [`VERDICT_DENY`] (with its rule id);
//!    [`VERDICT_NONE`] (only in `POLICY_CIDR`, a carve-out) means "no rule".
//! 4. No rule: if `ep.flags` has the direction's `EP_F_*_ENFORCED` bit → deny (default deny);
//!    else if the peer is an endpoint of another tenant (`ipcache.vnid != ep.vnid`) → deny
//!    (tenant isolation); else allow.
//!
//! Compilation makes "first hit" equal to "deny if any matching rule denies, else allow if any
//! allows": every entry already merges the rules of all less specific keys that cover it, and
//! the intersections of specific and wildcard keys are materialised.

use std::net::Ipv6Addr;

/// `direction` value for ingress (packets arriving at the endpoint).
pub const DIR_INGRESS: u8 = 0;
/// `direction` value for egress (packets leaving the endpoint).
pub const DIR_EGRESS: u8 = 1;

/// [`PolicyValue::verdict`]: no rule applies (a CIDR carve-out); use the default.
pub const VERDICT_NONE: u8 = 0;
/// [`PolicyValue::verdict`]: allow.
pub const VERDICT_ALLOW: u8 = 1;
/// [`PolicyValue::verdict`]: deny.
pub const VERDICT_DENY: u8 = 2;

/// [`EndpointPolicy::flags`]: ingress is default deny.
pub const EP_F_INGRESS_ENFORCED: u32 = 0x1;
/// [`EndpointPolicy::flags`]: egress is default deny.
pub const EP_F_EGRESS_ENFORCED: u32 = 0x2;

/// `ILANET_POLICY_EP_MAX_ENTRIES`: `max_entries` of `POLICY_EP` (endpoint identities).
pub const POLICY_EP_MAX_ENTRIES: usize = 65536;
/// `ILANET_POLICY_MAX_ENTRIES`: `max_entries` of `POLICY` (the default
/// [`crate::CompileLimits::max_entries`]).
pub const POLICY_MAX_ENTRIES: usize = 1 << 20;
/// `ILANET_POLICY_CIDR_MAX_ENTRIES`: `max_entries` of `POLICY_CIDR` (the default
/// [`crate::CompileLimits::max_cidr_entries`]).
pub const POLICY_CIDR_MAX_ENTRIES: usize = 1 << 18;

/// Bits of [`CidrKey`] before the address that are always fully matched
/// (`ep_identity`, `direction`, `proto`, `dport`): `prefixlen = 64 + CIDR length`.
pub const CIDR_KEY_FIXED_BITS: u32 = 64;

/// Value of `POLICY_EP`, keyed by the endpoint identity (`u32`). 8 bytes.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `vnid` |
/// | 4 | 4 | `flags` |
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPolicy {
    /// Tenant (28-bit VNID) of the endpoint identity.
    pub vnid: u32,
    /// `EP_F_*` bits.
    pub flags: u32,
}

/// Key of `POLICY` (HASH). 12 bytes, no padding.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `ep_identity` |
/// | 4 | 4 | `peer_identity` (0 = any) |
/// | 8 | 1 | `direction` |
/// | 9 | 1 | `proto` (0 = any) |
/// | 10 | 2 | `dport` (network order, 0 = any) |
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Identity of the local endpoint the policy is enforced at.
    pub ep_identity: u32,
    /// Identity of the peer (source on ingress, destination on egress); 0 = any identity.
    pub peer_identity: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// IP protocol number; 0 = any protocol (then `dport` is 0 too).
    pub proto: u8,
    /// Destination port in network byte order; 0 = any port.
    pub dport: [u8; 2],
}

/// Value of `POLICY` and `POLICY_CIDR`. 8 bytes.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | `verdict` |
/// | 1 | 3 | `pad` (zero) |
/// | 4 | 4 | `rule_id` |
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyValue {
    /// `VERDICT_*`.
    pub verdict: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// The deciding rule (1-based [`crate::RuleId`]), 0 for [`VERDICT_NONE`].
    pub rule_id: u32,
}

/// Key of `POLICY_CIDR` (LPM_TRIE). 28 bytes, no padding.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `prefixlen` (bits after this field: 64 + CIDR length) |
/// | 4 | 4 | `ep_identity` |
/// | 8 | 1 | `direction` |
/// | 9 | 1 | `proto` (0 = any) |
/// | 10 | 2 | `dport` (network order, 0 = any) |
/// | 12 | 16 | `addr` (network order, host bits zero) |
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrKey {
    /// LPM prefix length in bits, counted from `ep_identity`.
    pub prefixlen: u32,
    /// Identity of the local endpoint.
    pub ep_identity: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// IP protocol number; 0 = any.
    pub proto: u8,
    /// Destination port in network byte order; 0 = any.
    pub dport: [u8; 2],
    /// Peer address (prefix).
    pub addr: [u8; 16],
}

// Sizes and field offsets of these structs (and `SIZE` against the maps' key and value sizes)
// are checked against the BTF of the built objects by `crates/dataplane/tests/abi.rs`.

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl EndpointPolicy {
    /// Size in bytes.
    pub const SIZE: usize = 8;

    /// The exact bytes the map holds.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.vnid.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }

    /// Reads the map bytes back.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            vnid: u32_at(b, 0),
            flags: u32_at(b, 4),
        }
    }
}

impl PolicyKey {
    /// Size in bytes.
    pub const SIZE: usize = 12;

    /// Builds a key; `dport` in host order.
    pub fn new(ep_identity: u32, peer_identity: u32, direction: u8, proto: u8, dport: u16) -> Self {
        Self {
            ep_identity,
            peer_identity,
            direction,
            proto,
            dport: dport.to_be_bytes(),
        }
    }

    /// The destination port in host order.
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }

    /// The exact bytes the map holds.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.ep_identity.to_ne_bytes());
        b[4..8].copy_from_slice(&self.peer_identity.to_ne_bytes());
        b[8] = self.direction;
        b[9] = self.proto;
        b[10..12].copy_from_slice(&self.dport);
        b
    }

    /// Reads the map bytes back.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            ep_identity: u32_at(b, 0),
            peer_identity: u32_at(b, 4),
            direction: b[8],
            proto: b[9],
            dport: [b[10], b[11]],
        }
    }
}

impl PolicyValue {
    /// Size in bytes.
    pub const SIZE: usize = 8;

    /// The exact bytes the map holds.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0] = self.verdict;
        b[1..4].copy_from_slice(&self.pad);
        b[4..8].copy_from_slice(&self.rule_id.to_ne_bytes());
        b
    }

    /// Reads the map bytes back.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            verdict: b[0],
            pad: [b[1], b[2], b[3]],
            rule_id: u32_at(b, 4),
        }
    }
}

impl CidrKey {
    /// Size in bytes.
    pub const SIZE: usize = 28;

    /// Builds a key for prefix `addr/len` (`addr` is masked to `len`); `dport` in host order.
    pub fn new(
        ep_identity: u32,
        direction: u8,
        proto: u8,
        dport: u16,
        addr: Ipv6Addr,
        len: u8,
    ) -> Self {
        let len = len.min(128);
        Self {
            prefixlen: CIDR_KEY_FIXED_BITS + u32::from(len),
            ep_identity,
            direction,
            proto,
            dport: dport.to_be_bytes(),
            addr: crate::model::mask(addr, len).octets(),
        }
    }

    /// Length of the address prefix (prefixlen minus the fixed fields).
    pub fn cidr_len(&self) -> u8 {
        u8::try_from(self.prefixlen.saturating_sub(CIDR_KEY_FIXED_BITS).min(128)).unwrap_or(128)
    }

    /// The destination port in host order.
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }

    /// The exact bytes the map holds.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.prefixlen.to_ne_bytes());
        b[4..8].copy_from_slice(&self.ep_identity.to_ne_bytes());
        b[8] = self.direction;
        b[9] = self.proto;
        b[10..12].copy_from_slice(&self.dport);
        b[12..28].copy_from_slice(&self.addr);
        b
    }

    /// Reads the map bytes back.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&b[12..28]);
        Self {
            prefixlen: u32_at(b, 0),
            ep_identity: u32_at(b, 4),
            direction: b[8],
            proto: b[9],
            dport: [b[10], b[11]],
            addr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_roundtrip_and_layout() {
        let k = PolicyKey::new(256, 300, DIR_EGRESS, 6, 5201);
        let b = k.to_bytes();
        assert_eq!(&b[10..12], &[0x14, 0x51]);
        assert_eq!(PolicyKey::from_bytes(&b), k);
        assert_eq!(k.dport(), 5201);
        let c = CidrKey::new(
            256,
            DIR_INGRESS,
            17,
            53,
            "2001:db8::ff".parse().unwrap(),
            32,
        );
        assert_eq!(c.prefixlen, 96);
        assert_eq!(c.cidr_len(), 32);
        assert_eq!(&c.addr[..4], &[0x20, 0x01, 0x0d, 0xb8]);
        assert!(c.addr[4..].iter().all(|b| *b == 0));
        assert_eq!(CidrKey::from_bytes(&c.to_bytes()), c);
        let v = PolicyValue {
            verdict: VERDICT_DENY,
            pad: [0; 3],
            rule_id: 7,
        };
        assert_eq!(PolicyValue::from_bytes(&v.to_bytes()), v);
        let e = EndpointPolicy {
            vnid: 42,
            flags: EP_F_INGRESS_ENFORCED,
        };
        assert_eq!(EndpointPolicy::from_bytes(&e.to_bytes()), e);
    }
}
