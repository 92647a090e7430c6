//! ilanet's own small BGP message types: what the state machine needs, nothing more.
//!
//! The wire format is netgauze's (see [`crate::codec`]); these types exist so that the FSM and
//! RIB do not depend on netgauze's large enums, and so that more address families (L2VPN EVPN,
//! issue 12) can be added as new [`Family`] variants and [`Nlri`] kinds without touching the FSM.

use crate::evpn::{EvpnNlri, EvpnRoute};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

/// An address family (AFI/SAFI pair) this speaker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// AFI 2 / SAFI 1 (RFC 4760).
    Ipv6Unicast,
    /// AFI 25 / SAFI 70: L2VPN EVPN (RFC 7432).
    L2vpnEvpn,
}

impl Family {
    /// The (AFI, SAFI) numbers on the wire.
    pub const fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv6Unicast => (2, 1),
            Family::L2vpnEvpn => (25, 70),
        }
    }

    /// The family with these numbers, if known.
    pub const fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (2, 1) => Some(Family::Ipv6Unicast),
            (25, 70) => Some(Family::L2vpnEvpn),
            _ => None,
        }
    }
}

/// Capabilities carried in an OPEN that this speaker understands (others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// Multiprotocol families (RFC 4760).
    pub families: Vec<Family>,
    /// 4-octet AS number (RFC 6793), if the capability was present.
    pub four_octet_as: Option<u32>,
    /// Route refresh (RFC 2918).
    pub route_refresh: bool,
    /// Graceful restart (RFC 4724), if present.
    pub graceful_restart: Option<GracefulRestart>,
}

/// The graceful-restart capability (RFC 4724 §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GracefulRestart {
    /// Restart State (R) bit: the sender has just restarted.
    pub restarting: bool,
    /// Restart time in seconds (12 bits on the wire).
    pub restart_time: u16,
    /// Families whose forwarding state the sender preserves, with the F bit.
    pub families: Vec<(Family, bool)>,
}

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// The sender's AS: the 4-octet one when the capability is present, else the 2-octet field.
    pub asn: u32,
    /// Proposed hold time in seconds (0 or ≥ 3).
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Capabilities.
    pub capabilities: Capabilities,
}

/// ORIGIN attribute values (RFC 4271 §5.1.1); the order is the best-path preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Learned from an IGP (0).
    Igp,
    /// Learned from EGP (1).
    Egp,
    /// Incomplete (2).
    Incomplete,
}

/// One AS_PATH segment (4-octet ASNs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AsSegment {
    /// AS_SEQUENCE.
    Sequence(Vec<u32>),
    /// AS_SET (counts as one hop).
    Set(Vec<u32>),
}

/// The path attributes the speaker acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PathAttributes {
    /// ORIGIN.
    pub origin: Origin,
    /// AS_PATH.
    pub as_path: Vec<AsSegment>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF (iBGP only).
    pub local_pref: Option<u32>,
}

impl PathAttributes {
    /// AS_PATH length for best-path: each ASN of a sequence counts, a set counts as one.
    pub fn as_path_len(&self) -> usize {
        self.as_path
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                AsSegment::Set(_) => 1,
            })
            .sum()
    }

    /// The first ASN of the path (the neighbour AS for eBGP-learned routes).
    pub fn first_as(&self) -> Option<u32> {
        match self.as_path.first()? {
            AsSegment::Sequence(v) => v.first().copied(),
            AsSegment::Set(_) => None,
        }
    }

    /// Whether `asn` appears anywhere in the path (loop detection).
    pub fn contains_as(&self, asn: u32) -> bool {
        self.as_path.iter().any(|s| match s {
            AsSegment::Sequence(v) | AsSegment::Set(v) => v.contains(&asn),
        })
    }
}

/// Reachability for one family: the next hop, attributes and prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    /// Global next hop.
    pub next_hop: Ipv6Addr,
    /// Link-local next hop, if the sender gave one.
    pub next_hop_local: Option<Ipv6Addr>,
    /// Prefixes.
    pub prefixes: Vec<Ipv6Net>,
}

/// An UPDATE, reduced to what the FSM needs. IPv4 NLRI in the legacy fields are ignored (IPv4
/// unicast is never negotiated).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Update {
    /// Withdrawn IPv6 prefixes (MP_UNREACH_NLRI).
    pub withdrawn: Vec<Ipv6Net>,
    /// Announced IPv6 prefixes (MP_REACH_NLRI), with their attributes.
    pub reach: Option<(Reach, PathAttributes)>,
    /// This UPDATE is an End-of-RIB marker for the family (RFC 4724 §2).
    pub end_of_rib: Option<Family>,
    /// Withdrawn EVPN routes (MP_UNREACH_NLRI, AFI 25 / SAFI 70); route types other than 2
    /// and 3 are left out.
    pub evpn_withdrawn: Vec<EvpnNlri>,
    /// Announced EVPN routes (types 2 and 3) with the UPDATE's attributes.
    pub evpn_reach: Option<(Vec<EvpnRoute>, PathAttributes)>,
}

/// A NOTIFICATION (RFC 4271 §4.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data.
    pub data: Vec<u8>,
}

impl Notification {
    /// A notification without data.
    pub fn new(code: u8, subcode: u8) -> Self {
        Notification {
            code,
            subcode,
            data: Vec::new(),
        }
    }

    /// A notification with data.
    pub fn with_data(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Notification {
            code,
            subcode,
            data: data.into(),
        }
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match (self.code, self.subcode) {
            (1, 1) => "message header error: connection not synchronized",
            (1, 2) => "message header error: bad message length",
            (1, 3) => "message header error: bad message type",
            (1, _) => "message header error",
            (2, 1) => "OPEN error: unsupported version number",
            (2, 2) => "OPEN error: bad peer AS",
            (2, 3) => "OPEN error: bad BGP identifier",
            (2, 4) => "OPEN error: unsupported optional parameter",
            (2, 6) => "OPEN error: unacceptable hold time",
            (2, 7) => "OPEN error: unsupported capability",
            (2, _) => "OPEN error",
            (3, 1) => "UPDATE error: malformed attribute list",
            (3, 2) => "UPDATE error: unrecognized well-known attribute",
            (3, 9) => "UPDATE error: optional attribute error",
            (3, _) => "UPDATE error",
            (4, _) => "hold timer expired",
            (5, _) => "finite state machine error",
            (6, 1) => "cease: maximum number of prefixes reached",
            (6, 2) => "cease: administrative shutdown",
            (6, 3) => "cease: peer de-configured",
            (6, 4) => "cease: administrative reset",
            (6, 5) => "cease: connection rejected",
            (6, 7) => "cease: connection collision resolution",
            (6, 8) => "cease: out of resources",
            (6, _) => "cease",
            (7, _) => "route-refresh error",
            _ => "unknown error",
        };
        write!(f, "{name} ({}/{})", self.code, self.subcode)
    }
}

/// A decoded BGP message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// OPEN.
    Open(Open),
    /// UPDATE.
    Update(Update),
    /// NOTIFICATION.
    Notification(Notification),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH (RFC 2918) for a family.
    RouteRefresh(Family),
}
