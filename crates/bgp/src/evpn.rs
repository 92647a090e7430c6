//! BGP MPLS-based Ethernet VPN (RFC 7432) over VXLAN (RFC 8365): the route types ilanet uses.
//!
//! Pure data: the wire format lives in [`crate::codec`], the RIBs in [`crate::rib`]. ilanet
//! originates only single-homed routes (ESI 0), VLAN-based service (Ethernet tag 0), one route
//! distinguisher per host and VNI, and carries the VNI in the MPLS label fields (RFC 8365 §5.1.3).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// A MAC address.
pub type Mac = [u8; 6];

/// Largest VNI: the label fields are 24 bits wide (RFC 8365 §5.1.3).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// RFC 4364 route distinguisher, the 8 bytes as on the wire (type, then value). ilanet
/// originates type 1 (router-id:local-number), local number = VNI & 0xffff, i.e. one RD per
/// host and VNI. Serde uses the text form of `Display` / `FromStr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteDistinguisher(pub [u8; 8]);

impl Serialize for RouteDistinguisher {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RouteDistinguisher {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl RouteDistinguisher {
    /// Type 1: IPv4 address administrator, 2-octet assigned number.
    pub fn type1(router_id: Ipv4Addr, number: u16) -> Self {
        let mut b = [0u8; 8];
        b[..2].copy_from_slice(&1u16.to_be_bytes());
        b[2..6].copy_from_slice(&router_id.octets());
        b[6..].copy_from_slice(&number.to_be_bytes());
        RouteDistinguisher(b)
    }

    /// Type 0: 2-octet AS administrator, 4-octet assigned number.
    pub fn type0(asn: u16, number: u32) -> Self {
        let mut b = [0u8; 8];
        b[2..4].copy_from_slice(&asn.to_be_bytes());
        b[4..].copy_from_slice(&number.to_be_bytes());
        RouteDistinguisher(b)
    }

    /// The type field.
    pub fn rd_type(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }
}

impl fmt::Display for RouteDistinguisher {
    /// `asn:n` (type 0), `a.b.c.d:n` (type 1), `asn4:n` (type 2 with a 4-octet ASN), else
    /// the 16 hex digits; `FromStr` reads every form back to the same bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        let u16at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        match self.rd_type() {
            0 => write!(f, "{}:{}", u16at(2), u32at(4)),
            1 => write!(f, "{}:{}", Ipv4Addr::new(b[2], b[3], b[4], b[5]), u16at(6)),
            // A type-2 ASN below 65536 would read back as type 0: those use the hex form.
            2 if u32at(2) > u32::from(u16::MAX) => write!(f, "{}:{}", u32at(2), u16at(6)),
            _ => {
                for x in b {
                    write!(f, "{x:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::str::FromStr for RouteDistinguisher {
    type Err = String;
    /// `a.b.c.d:n` (type 1), `asn:n` (type 0 when asn < 65536, else type 2), or 16 hex
    /// digits (any type, as `Display` writes the others).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("route distinguisher {s:?}: expected a.b.c.d:n or asn:n");
        if s.len() == 16 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
            let mut b = [0u8; 8];
            for (i, x) in b.iter_mut().enumerate() {
                *x = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
            }
            return Ok(RouteDistinguisher(b));
        }
        let (admin, num) = s.rsplit_once(':').ok_or_else(bad)?;
        if let Ok(ip) = admin.parse::<Ipv4Addr>() {
            return Ok(Self::type1(ip, num.parse().map_err(|_| bad())?));
        }
        let asn: u32 = admin.parse().map_err(|_| bad())?;
        match u16::try_from(asn) {
            Ok(a) => Ok(Self::type0(a, num.parse().map_err(|_| bad())?)),
            Err(_) => {
                let n: u16 = num.parse().map_err(|_| bad())?;
                let mut b = [0u8; 8];
                b[..2].copy_from_slice(&2u16.to_be_bytes());
                b[2..6].copy_from_slice(&asn.to_be_bytes());
                b[6..].copy_from_slice(&n.to_be_bytes());
                Ok(RouteDistinguisher(b))
            }
        }
    }
}

/// Route target extended community (RFC 4360 / RFC 5668), as ASN:value.
///
/// On the wire an ASN below 65536 uses the 2-octet-AS form (value: 32 bits), a larger one the
/// 4-octet-AS form (value: 16 bits). A received 4-octet-AS target whose ASN fits 16 bits
/// decodes to the same `RouteTarget` as the 2-octet form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteTarget {
    /// Global administrator (AS number).
    pub asn: u32,
    /// Local administrator.
    pub value: u32,
}

impl RouteTarget {
    /// The target ilanet derives for a VNI: `asn:vni` when `asn` < 65536; otherwise the
    /// 4-octet-AS form has only 16 bits of local administrator, so the VNI is truncated to its
    /// low 16 bits (VNIs equal modulo 65536 then share a target: use 2-octet ASNs for more).
    pub fn for_vni(asn: u32, vni: u32) -> Self {
        let value = if asn <= u32::from(u16::MAX) {
            vni
        } else {
            vni & 0xffff
        };
        RouteTarget { asn, value }
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.asn, self.value)
    }
}

/// Key of an EVPN route (the NLRI). Ord/Hash so it can be a map key.
///
/// RFC 7432 §7.2: the label (here `vni`) is not part of the BGP route key; the RIBs compare
/// [`EvpnNlri::route_key`], so a withdrawal or replacement matches whatever label it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EvpnNlri {
    /// RFC 7432 type 2. ESI is always 0 here (single-homed); label1 carries the VNI (RFC 8365).
    MacIp {
        /// Route distinguisher.
        rd: RouteDistinguisher,
        /// Ethernet tag (0: VLAN-based service).
        ethernet_tag: u32,
        /// The MAC.
        mac: Mac,
        /// The IP bound to the MAC, if advertised.
        ip: Option<IpAddr>,
        /// VNI (MPLS label1, 24 bits).
        vni: u32,
    },
    /// RFC 7432 type 3, originator = VTEP address.
    Inclusive {
        /// Route distinguisher.
        rd: RouteDistinguisher,
        /// Ethernet tag (0: VLAN-based service).
        ethernet_tag: u32,
        /// Originating router's IP (the VTEP).
        originator: IpAddr,
    },
}

impl EvpnNlri {
    /// The route distinguisher.
    pub fn rd(&self) -> RouteDistinguisher {
        match self {
            EvpnNlri::MacIp { rd, .. } | EvpnNlri::Inclusive { rd, .. } => *rd,
        }
    }

    /// The NLRI as the RIBs key it: the label (VNI) zeroed (RFC 7432 §7.2).
    pub fn route_key(&self) -> EvpnNlri {
        match *self {
            EvpnNlri::MacIp {
                rd,
                ethernet_tag,
                mac,
                ip,
                ..
            } => EvpnNlri::MacIp {
                rd,
                ethernet_tag,
                mac,
                ip,
                vni: 0,
            },
            inclusive => inclusive,
        }
    }

    /// The RFC 7432 route type (2 or 3).
    pub fn route_type(&self) -> u8 {
        match self {
            EvpnNlri::MacIp { .. } => 2,
            EvpnNlri::Inclusive { .. } => 3,
        }
    }
}

impl fmt::Display for EvpnNlri {
    /// gobgp's notation: `[type:macadv][rd:…][etag:…][mac:…][ip:…]` / `[type:multicast]…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvpnNlri::MacIp {
                rd,
                ethernet_tag,
                mac,
                ip,
                vni,
            } => {
                write!(
                    f,
                    "[type:macadv][rd:{rd}][etag:{ethernet_tag}][mac:{}]",
                    fmt_mac(mac)
                )?;
                if let Some(ip) = ip {
                    write!(f, "[ip:{ip}]")?;
                }
                write!(f, "[vni:{vni}]")
            }
            EvpnNlri::Inclusive {
                rd,
                ethernet_tag,
                originator,
            } => write!(
                f,
                "[type:multicast][rd:{rd}][etag:{ethernet_tag}][ip:{originator}]"
            ),
        }
    }
}

/// An EVPN route with the attributes ilanet uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EvpnRoute {
    /// The NLRI.
    pub nlri: EvpnNlri,
    /// The VTEP (MP_REACH next hop).
    pub next_hop: IpAddr,
    /// Route target extended communities.
    pub route_targets: Vec<RouteTarget>,
    /// BGP encapsulation extended community with tunnel type 8 (VXLAN; RFC 9012, RFC 8365).
    pub encapsulation_vxlan: bool,
    /// MAC mobility extended community sequence number (type 2 routes; RFC 7432 §7.7).
    pub mac_mobility: Option<u32>,
    /// PMSI tunnel attribute, ingress replication, label = VNI (type 3 routes; RFC 6514 §5,
    /// RFC 8365 §5.1.3).
    pub pmsi_vni: Option<u32>,
}

impl EvpnRoute {
    /// The route-key of its NLRI (see [`EvpnNlri::route_key`]).
    pub fn key(&self) -> EvpnNlri {
        self.nlri.route_key()
    }
}

/// Best EVPN route change, the EVPN counterpart of [`crate::BestChange`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EvpnChange {
    /// New or changed best route for its NLRI.
    Changed(BestEvpnRoute),
    /// No route for this NLRI any more (`nlri` as it was announced, VNI included).
    Removed {
        /// The NLRI.
        nlri: EvpnNlri,
    },
}

/// The best route for one EVPN NLRI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BestEvpnRoute {
    /// The route.
    pub route: EvpnRoute,
    /// The peer it was learned from.
    pub peer: IpAddr,
    /// The peer's BGP identifier.
    pub peer_router_id: Ipv4Addr,
}

/// RFC 7432 §15.1 for MAC/IP routes of the same MAC: the higher MAC mobility sequence number
/// wins (absent counts as 0); on equal numbers the lower next hop (VTEP) wins.
/// `Ordering::Less` means `a` is preferred.
pub fn mac_preference(a: &EvpnRoute, b: &EvpnRoute) -> std::cmp::Ordering {
    let seq = |r: &EvpnRoute| r.mac_mobility.unwrap_or(0);
    seq(b).cmp(&seq(a)).then(a.next_hop.cmp(&b.next_hop))
}

/// The MAC table a VTEP programs from best routes: per (VNI, MAC) the route that wins by
/// [`mac_preference`] (a MAC that moved to another host, advertised there under that host's
/// RD with a higher sequence number, replaces the old location).
pub fn mac_table<'a>(
    routes: impl IntoIterator<Item = &'a BestEvpnRoute>,
) -> BTreeMap<(u32, Mac), &'a BestEvpnRoute> {
    let mut table: BTreeMap<(u32, Mac), &BestEvpnRoute> = BTreeMap::new();
    for r in routes {
        let EvpnNlri::MacIp { mac, vni, .. } = r.route.nlri else {
            continue;
        };
        table
            .entry((vni, mac))
            .and_modify(|cur| {
                if mac_preference(&r.route, &cur.route).is_lt() {
                    *cur = r;
                }
            })
            .or_insert(r);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rd_forms() {
        let rd = RouteDistinguisher::type1(Ipv4Addr::new(10, 0, 0, 1), 100);
        assert_eq!(rd.0, [0, 1, 10, 0, 0, 1, 0, 100]);
        assert_eq!(rd.to_string(), "10.0.0.1:100");
        assert_eq!("10.0.0.1:100".parse::<RouteDistinguisher>(), Ok(rd));
        let rd0: RouteDistinguisher = "65000:7".parse().unwrap();
        assert_eq!(rd0.0, [0, 0, 0xfd, 0xe8, 0, 0, 0, 7]);
        assert_eq!(rd0.to_string(), "65000:7");
        let rd2: RouteDistinguisher = "4200000000:7".parse().unwrap();
        assert_eq!(rd2.rd_type(), 2);
        assert_eq!(rd2.to_string(), "4200000000:7");
        assert!("x:1".parse::<RouteDistinguisher>().is_err());
        let odd = RouteDistinguisher([0, 9, 1, 2, 3, 4, 5, 6]);
        assert_eq!(odd.to_string(), "0009010203040506");
        assert_eq!(odd.to_string().parse::<RouteDistinguisher>(), Ok(odd));
        let small2 = RouteDistinguisher([0, 2, 0, 0, 0, 100, 0, 5]);
        assert_eq!(small2.to_string().parse::<RouteDistinguisher>(), Ok(small2));
        let json = serde_json::to_string(&rd).unwrap();
        assert_eq!(json, "\"10.0.0.1:100\"");
        assert_eq!(
            serde_json::from_str::<RouteDistinguisher>(&json).unwrap(),
            rd
        );
        assert!("65000:70000000000".parse::<RouteDistinguisher>().is_err());
    }

    #[test]
    fn rt_for_vni() {
        assert_eq!(
            RouteTarget::for_vni(65000, 100_000),
            RouteTarget {
                asn: 65000,
                value: 100_000
            }
        );
        assert_eq!(RouteTarget::for_vni(4_200_000_000, 0x12345).value, 0x2345);
    }

    #[test]
    fn mac_parse_format() {
        let m = parse_mac("02:aB:00:00:00:01").unwrap();
        assert_eq!(fmt_mac(&m), "02:ab:00:00:00:01");
        assert!(parse_mac("02:ab:00:00:00").is_none());
        assert!(parse_mac("02:ab:00:00:00:01:02").is_none());
        assert!(parse_mac("2:ab:00:00:00:01").is_none());
    }

    fn mac_route(rd: u16, seq: Option<u32>, nh: [u8; 4]) -> BestEvpnRoute {
        BestEvpnRoute {
            route: EvpnRoute {
                nlri: EvpnNlri::MacIp {
                    rd: RouteDistinguisher::type1(Ipv4Addr::new(10, 0, 0, rd as u8), rd),
                    ethernet_tag: 0,
                    mac: [2, 0, 0, 0, 0, 1],
                    ip: None,
                    vni: 100,
                },
                next_hop: IpAddr::from(nh),
                route_targets: vec![],
                encapsulation_vxlan: true,
                mac_mobility: seq,
                pmsi_vni: None,
            },
            peer: IpAddr::from([192, 0, 2, 1]),
            peer_router_id: Ipv4Addr::new(192, 0, 2, 1),
        }
    }

    #[test]
    fn moved_mac_wins_by_sequence() {
        let old = mac_route(1, None, [10, 0, 0, 1]);
        let moved = mac_route(2, Some(1), [10, 0, 0, 9]);
        let routes = [old.clone(), moved.clone()];
        let t = mac_table(&routes);
        assert_eq!(t.len(), 1);
        assert_eq!(t[&(100, [2, 0, 0, 0, 0, 1])], &moved);
        // Same sequence: the lower VTEP address wins, whatever the order.
        let tie = mac_route(3, None, [10, 0, 0, 0]);
        let routes = [old.clone(), tie.clone()];
        assert_eq!(mac_table(&routes)[&(100, [2, 0, 0, 0, 0, 1])], &tie);
        let routes = [tie.clone(), old];
        assert_eq!(mac_table(&routes)[&(100, [2, 0, 0, 0, 0, 1])], &tie);
    }

    #[test]
    fn route_key_ignores_label() {
        let a = mac_route(1, None, [10, 0, 0, 1]).route.nlri;
        let EvpnNlri::MacIp {
            rd,
            ethernet_tag,
            mac,
            ip,
            ..
        } = a
        else {
            unreachable!()
        };
        let b = EvpnNlri::MacIp {
            rd,
            ethernet_tag,
            mac,
            ip,
            vni: 0,
        };
        assert_ne!(a, b);
        assert_eq!(a.route_key(), b.route_key());
    }
}
