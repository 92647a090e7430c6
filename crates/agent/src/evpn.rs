//! EVPN mode, the pure part (no I/O): what a host announces for its endpoints and tenant
//! segments, and which FDB, flood-list and neighbour entries it wants from the best EVPN routes
//! it learned, as a diff against what is installed. The shell ([`crate::evpn_host`]) executes it.
//!
//! * Per local endpoint one RFC 7432 Type-2 MAC/IP route: RD = router-id:VNI (type 1, local
//!   number VNI & 0xffff), RT = ASN:VNI, VNI in the label (RFC 8365), VXLAN encapsulation, and a
//!   MAC mobility sequence number when the MAC was last seen elsewhere (RFC 7432 §15).
//! * Per local tenant segment one Type-3 inclusive multicast route with a PMSI tunnel attribute
//!   (ingress replication, label = VNI): it puts this VTEP on the others' flood lists.
//! * Remote routes count only if their route target names a tenant of this host and they carry
//!   the VXLAN encapsulation. Per (VNI, MAC) the route with the highest sequence wins
//!   ([`bgp::evpn::mac_preference`]); a MAC of a local endpoint is never pointed elsewhere, and
//!   a local endpoint beaten by a higher sequence elsewhere has its route withdrawn (it moved).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use bgp::evpn::{
    mac_preference, BestEvpnRoute, EvpnNlri, EvpnRoute, Mac, RouteDistinguisher, RouteTarget,
};
use serde::{Deserialize, Serialize};

/// Largest VNI (24 bits in the label field).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The host as EVPN sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvpnSite {
    /// BGP identifier (first half of every RD this host originates).
    pub router_id: Ipv4Addr,
    /// AS number (route targets are ASN:VNI).
    pub asn: u32,
    /// This host's VTEP (its underlay address; the next hop of its routes).
    pub vtep: IpAddr,
    /// VNIs of the tenants this host serves.
    pub vnis: BTreeSet<u32>,
    /// Whether Type-3 routes are exchanged. FRR 8.4 cannot parse a Type-3 NLRI with an IPv6
    /// originator ("unsupported IP address length 128") and resets the session, so behind it
    /// hosts announce none and build each flood list from the VTEPs of the segment's Type-2
    /// routes instead (every VTEP with an endpoint in the segment).
    pub type3: bool,
}

/// A local endpoint as EVPN announces it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LocalMac {
    /// Tenant segment.
    pub vni: u32,
    /// The endpoint's MAC.
    pub mac: Mac,
    /// The endpoint's address.
    pub ip: IpAddr,
    /// MAC mobility sequence number (0: never seen elsewhere).
    pub seq: u32,
}

/// Forwarding state of a host's segments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelState {
    /// Remote MACs: (VNI, MAC) → VTEP.
    pub fdb: BTreeMap<(u32, Mac), IpAddr>,
    /// Flood list: (VNI, remote VTEP).
    pub flood: BTreeSet<(u32, IpAddr)>,
    /// Neighbour entries for suppression: (VNI, address) → MAC.
    pub neigh: BTreeMap<(u32, IpAddr), Mac>,
}

/// One change of the kernel state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum KernelOp {
    /// Point a remote MAC at a VTEP (install or move).
    FdbReplace {
        /// Segment.
        vni: u32,
        /// MAC.
        mac: Mac,
        /// Remote VTEP.
        vtep: IpAddr,
    },
    /// Forget a remote MAC.
    FdbDelete {
        /// Segment.
        vni: u32,
        /// MAC.
        mac: Mac,
    },
    /// Add a VTEP to a flood list.
    FloodAdd {
        /// Segment.
        vni: u32,
        /// Remote VTEP.
        vtep: IpAddr,
    },
    /// Remove a VTEP from a flood list.
    FloodDelete {
        /// Segment.
        vni: u32,
        /// Remote VTEP.
        vtep: IpAddr,
    },
    /// Install or change a neighbour entry.
    NeighReplace {
        /// Segment.
        vni: u32,
        /// Address.
        ip: IpAddr,
        /// MAC.
        mac: Mac,
    },
    /// Remove a neighbour entry.
    NeighDelete {
        /// Segment.
        vni: u32,
        /// Address.
        ip: IpAddr,
    },
}

/// The RD this host originates for segment `vni`.
pub fn route_distinguisher(site: &EvpnSite, vni: u32) -> RouteDistinguisher {
    RouteDistinguisher::type1(site.router_id, (vni & 0xffff) as u16)
}

/// The segment a remote route belongs to here, if any: its VNI must be one of ours and it must
/// carry our route target for that VNI and the VXLAN encapsulation.
pub fn segment_of(site: &EvpnSite, route: &EvpnRoute) -> Option<u32> {
    if route.next_hop == site.vtep || !route.encapsulation_vxlan {
        return None;
    }
    let vni = match route.nlri {
        EvpnNlri::MacIp { vni, .. } => vni,
        EvpnNlri::Inclusive { .. } => match route.pmsi_vni {
            Some(vni) => vni,
            // Without PMSI: the VNI its route target names.
            None => {
                route
                    .route_targets
                    .iter()
                    .find(|rt| rt.asn == site.asn && site.vnis.contains(&rt.value))?
                    .value
            }
        },
    };
    (site.vnis.contains(&vni)
        && route
            .route_targets
            .contains(&RouteTarget::for_vni(site.asn, vni)))
    .then_some(vni)
}

/// The Type-2 and Type-3 routes this host announces, keyed by route key.
pub fn local_routes<'a>(
    site: &EvpnSite,
    local: impl IntoIterator<Item = &'a LocalMac>,
    remote: &[BestEvpnRoute],
) -> BTreeMap<EvpnNlri, EvpnRoute> {
    let mut out = BTreeMap::new();
    for &vni in site.vnis.iter().filter(|_| site.type3) {
        let route = EvpnRoute {
            nlri: EvpnNlri::Inclusive {
                rd: route_distinguisher(site, vni),
                ethernet_tag: 0,
                originator: site.vtep,
            },
            next_hop: site.vtep,
            route_targets: vec![RouteTarget::for_vni(site.asn, vni)],
            encapsulation_vxlan: true,
            mac_mobility: None,
            pmsi_vni: Some(vni),
        };
        out.insert(route.key(), route);
    }
    for l in local {
        if !site.vnis.contains(&l.vni) || beaten(site, l, remote) {
            continue;
        }
        let route = EvpnRoute {
            nlri: EvpnNlri::MacIp {
                rd: route_distinguisher(site, l.vni),
                ethernet_tag: 0,
                mac: l.mac,
                ip: Some(l.ip),
                vni: l.vni,
            },
            next_hop: site.vtep,
            route_targets: vec![RouteTarget::for_vni(site.asn, l.vni)],
            encapsulation_vxlan: true,
            mac_mobility: (l.seq > 0).then_some(l.seq),
            pmsi_vni: None,
        };
        out.insert(route.key(), route);
    }
    out
}

fn remote_macs<'a>(
    site: &'a EvpnSite,
    remote: &'a [BestEvpnRoute],
    vni: u32,
    mac: Mac,
) -> impl Iterator<Item = &'a EvpnRoute> + 'a {
    remote.iter().map(|b| &b.route).filter(move |r| {
        matches!(r.nlri, EvpnNlri::MacIp { mac: m, .. } if m == mac)
            && segment_of(site, r) == Some(vni)
    })
}

/// Whether a local endpoint's MAC is advertised elsewhere with a higher sequence number (it
/// has moved away; RFC 7432 §15.1: the loser withdraws).
fn beaten(site: &EvpnSite, l: &LocalMac, remote: &[BestEvpnRoute]) -> bool {
    remote_macs(site, remote, l.vni, l.mac).any(|r| r.mac_mobility.unwrap_or(0) > l.seq)
}

/// The sequence number a MAC appearing here takes: one above the highest it is advertised with
/// elsewhere, 0 if it is advertised nowhere else.
pub fn mobility_seq(site: &EvpnSite, remote: &[BestEvpnRoute], vni: u32, mac: Mac) -> u32 {
    remote_macs(site, remote, vni, mac)
        .map(|r| r.mac_mobility.unwrap_or(0).saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// The forwarding state wanted from the best remote routes and the local endpoints.
pub fn desired<'a>(
    site: &EvpnSite,
    remote: &[BestEvpnRoute],
    local: impl IntoIterator<Item = &'a LocalMac>,
) -> KernelState {
    let local: Vec<&LocalMac> = local.into_iter().collect();
    let local_macs: BTreeSet<(u32, Mac)> = local.iter().map(|l| (l.vni, l.mac)).collect();
    let local_ips: BTreeSet<(u32, IpAddr)> = local.iter().map(|l| (l.vni, l.ip)).collect();
    let mut winners: BTreeMap<(u32, Mac), &EvpnRoute> = BTreeMap::new();
    let mut flood = BTreeSet::new();
    for b in remote {
        let r = &b.route;
        let Some(vni) = segment_of(site, r) else {
            continue;
        };
        match r.nlri {
            EvpnNlri::Inclusive { .. } => {
                flood.insert((vni, r.next_hop));
            }
            EvpnNlri::MacIp { mac, .. } => {
                if !site.type3 {
                    flood.insert((vni, r.next_hop));
                }
                if local_macs.contains(&(vni, mac)) {
                    continue;
                }
                winners
                    .entry((vni, mac))
                    .and_modify(|cur| {
                        if mac_preference(r, cur).is_lt() {
                            *cur = r;
                        }
                    })
                    .or_insert(r);
            }
        }
    }
    let mut neigh: BTreeMap<(u32, IpAddr), (Mac, &EvpnRoute)> = BTreeMap::new();
    for (&(vni, mac), r) in &winners {
        // The same MAC may be announced with and without an address (and with several): every
        // route of the winning VTEP for this MAC contributes its address.
        for other in remote_macs(site, remote, vni, mac).filter(|o| o.next_hop == r.next_hop) {
            let EvpnNlri::MacIp { ip: Some(ip), .. } = other.nlri else {
                continue;
            };
            if local_ips.contains(&(vni, ip)) {
                continue;
            }
            neigh
                .entry((vni, ip))
                .and_modify(|cur| {
                    if mac_preference(other, cur.1).is_lt() {
                        *cur = (mac, other);
                    }
                })
                .or_insert((mac, other));
        }
    }
    KernelState {
        fdb: winners.into_iter().map(|(k, r)| (k, r.next_hop)).collect(),
        flood,
        neigh: neigh.into_iter().map(|(k, (m, _))| (k, m)).collect(),
    }
}

/// The operations that turn `installed` into `want`: removals first (a moved MAC's neighbour
/// entry never points at a MAC whose FDB entry is gone), then installs.
pub fn diff(installed: &KernelState, want: &KernelState) -> Vec<KernelOp> {
    let mut ops = Vec::new();
    for (&(vni, ip), _) in installed
        .neigh
        .iter()
        .filter(|(k, _)| !want.neigh.contains_key(k))
    {
        ops.push(KernelOp::NeighDelete { vni, ip });
    }
    for (&(vni, mac), _) in installed
        .fdb
        .iter()
        .filter(|(k, _)| !want.fdb.contains_key(k))
    {
        ops.push(KernelOp::FdbDelete { vni, mac });
    }
    for &(vni, vtep) in installed.flood.difference(&want.flood) {
        ops.push(KernelOp::FloodDelete { vni, vtep });
    }
    for &(vni, vtep) in want.flood.difference(&installed.flood) {
        ops.push(KernelOp::FloodAdd { vni, vtep });
    }
    for (&(vni, mac), &vtep) in &want.fdb {
        if installed.fdb.get(&(vni, mac)) != Some(&vtep) {
            ops.push(KernelOp::FdbReplace { vni, mac, vtep });
        }
    }
    for (&(vni, ip), &mac) in &want.neigh {
        if installed.neigh.get(&(vni, ip)) != Some(&mac) {
            ops.push(KernelOp::NeighReplace { vni, ip, mac });
        }
    }
    ops
}

/// Applies one operation to a model of the kernel state (what the shell records after the
/// kernel accepted it).
pub fn apply(state: &mut KernelState, op: &KernelOp) {
    match *op {
        KernelOp::FdbReplace { vni, mac, vtep } => {
            state.fdb.insert((vni, mac), vtep);
        }
        KernelOp::FdbDelete { vni, mac } => {
            state.fdb.remove(&(vni, mac));
        }
        KernelOp::FloodAdd { vni, vtep } => {
            state.flood.insert((vni, vtep));
        }
        KernelOp::FloodDelete { vni, vtep } => {
            state.flood.remove(&(vni, vtep));
        }
        KernelOp::NeighReplace { vni, ip, mac } => {
            state.neigh.insert((vni, ip), mac);
        }
        KernelOp::NeighDelete { vni, ip } => {
            state.neigh.remove(&(vni, ip));
        }
    }
}

/// What to send so that the announced routes become `want`: routes to (re-)announce (new or
/// changed) and route keys to withdraw.
pub fn announcements(
    announced: &BTreeMap<EvpnNlri, EvpnRoute>,
    want: &BTreeMap<EvpnNlri, EvpnRoute>,
) -> (Vec<EvpnRoute>, Vec<EvpnNlri>) {
    let announce = want
        .iter()
        .filter(|(k, r)| announced.get(*k) != Some(*r))
        .map(|(_, r)| r.clone())
        .collect();
    let withdraw = announced
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .map(|(_, r)| r.nlri)
        .collect();
    (announce, withdraw)
}

/// A locally administered unicast MAC for an endpoint that was given none: derived from the
/// host, segment and address (FNV-1a), so it is stable across restarts.
pub fn derived_mac(host: &str, vni: u32, ip: IpAddr) -> Mac {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(host.as_bytes());
    feed(&vni.to_be_bytes());
    match ip {
        IpAddr::V4(a) => feed(&a.octets()),
        IpAddr::V6(a) => feed(&a.octets()),
    }
    let b = h.to_be_bytes();
    // 0x02: locally administered, unicast.
    [0x02, b[1], b[2], b[3], b[4], b[5]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const ASN: u32 = 65000;

    fn site(n: u8) -> EvpnSite {
        EvpnSite {
            router_id: Ipv4Addr::new(10, 255, 0, n),
            asn: ASN,
            vtep: vtep(n),
            vnis: BTreeSet::from([1, 2]),
            type3: true,
        }
    }

    fn vtep(n: u8) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xffff,
            u16::from(n),
            0,
            0,
            0,
            2,
        ))
    }

    fn ip(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xdead, 0xbeef, 0, 0, 0, 0, last))
    }

    fn mac(n: u8) -> Mac {
        [2, 0x1a, 0, 0, 0, n]
    }

    /// The routes host `from` announces, as another host receives them.
    fn received(from: &EvpnSite, local: &[LocalMac]) -> Vec<BestEvpnRoute> {
        local_routes(from, local, &[])
            .into_values()
            .map(|route| BestEvpnRoute {
                route,
                peer: IpAddr::V6(Ipv6Addr::LOCALHOST),
                peer_router_id: from.router_id,
            })
            .collect()
    }

    fn lm(vni: u32, m: u8, last: u16, seq: u32) -> LocalMac {
        LocalMac {
            vni,
            mac: mac(m),
            ip: ip(last),
            seq,
        }
    }

    #[test]
    fn announcements_carry_rd_rt_label_encapsulation_and_pmsi() {
        let s = site(1);
        let routes = local_routes(&s, &[lm(1, 7, 0x10, 0)], &[]);
        // Two Type-3 (one per VNI) and one Type-2.
        assert_eq!(routes.len(), 3);
        let t2: Vec<_> = routes
            .values()
            .filter(|r| r.nlri.route_type() == 2)
            .collect();
        assert_eq!(t2.len(), 1);
        let r = t2[0];
        assert_eq!(r.nlri.rd().to_string(), "10.255.0.1:1");
        assert_eq!(r.route_targets, vec![RouteTarget::for_vni(ASN, 1)]);
        assert!(r.encapsulation_vxlan);
        assert_eq!(r.mac_mobility, None);
        assert_eq!(r.next_hop, s.vtep);
        assert!(matches!(
            r.nlri,
            EvpnNlri::MacIp {
                vni: 1,
                ip: Some(_),
                ..
            }
        ));
        let t3: Vec<_> = routes
            .values()
            .filter(|r| r.nlri.route_type() == 3)
            .collect();
        assert_eq!(
            t3.iter().map(|r| r.pmsi_vni).collect::<Vec<_>>(),
            vec![Some(1), Some(2)]
        );
        assert!(t3.iter().all(
            |r| matches!(r.nlri, EvpnNlri::Inclusive { originator, .. } if originator == s.vtep)
        ));
    }

    #[test]
    fn remote_routes_become_fdb_flood_and_neighbours_per_vni() {
        let (a, b) = (site(1), site(2));
        // Same address in both tenants: different VNIs keep them apart.
        let remote = received(&b, &[lm(1, 1, 0x10, 0), lm(2, 2, 0x10, 0)]);
        let want = desired(&a, &remote, &[]);
        assert_eq!(want.fdb.get(&(1, mac(1))), Some(&b.vtep));
        assert_eq!(want.fdb.get(&(2, mac(2))), Some(&b.vtep));
        assert_eq!(want.neigh.get(&(1, ip(0x10))), Some(&mac(1)));
        assert_eq!(want.neigh.get(&(2, ip(0x10))), Some(&mac(2)));
        assert_eq!(want.flood, BTreeSet::from([(1, b.vtep), (2, b.vtep)]));
        let ops = diff(&KernelState::default(), &want);
        assert_eq!(ops.len(), 6);
        let mut model = KernelState::default();
        for op in &ops {
            apply(&mut model, op);
        }
        assert_eq!(model, want);
        assert!(diff(&model, &want).is_empty(), "idempotent");
        // Everything withdrawn: everything removed, neighbours before FDB entries.
        let ops = diff(&model, &KernelState::default());
        assert_eq!(ops.len(), 6);
        let first_fdb = ops
            .iter()
            .position(|o| matches!(o, KernelOp::FdbDelete { .. }));
        let last_neigh = ops
            .iter()
            .rposition(|o| matches!(o, KernelOp::NeighDelete { .. }));
        assert!(last_neigh < first_fdb, "{ops:?}");
    }

    #[test]
    fn routes_of_other_tenants_or_without_vxlan_or_our_own_are_ignored() {
        let (a, b) = (site(1), site(2));
        let mut foreign = site(2);
        foreign.vnis = BTreeSet::from([9]);
        let mut remote = received(&foreign, &[lm(9, 1, 0x10, 0)]);
        // A VNI of ours but the route target of another AS.
        let mut wrong_rt = received(&b, &[lm(1, 2, 0x11, 0)]);
        for r in &mut wrong_rt {
            r.route.route_targets = vec![RouteTarget::for_vni(ASN + 1, 1)];
        }
        remote.extend(wrong_rt);
        let mut mpls = received(&b, &[lm(1, 3, 0x12, 0)]);
        for r in &mut mpls {
            r.route.encapsulation_vxlan = false;
        }
        remote.extend(mpls);
        remote.extend(received(&a, &[lm(1, 4, 0x13, 0)]));
        let want = desired(&a, &remote, &[]);
        assert_eq!(want, KernelState::default(), "{want:?}");
    }

    #[test]
    fn a_move_takes_sequence_one_and_replaces_the_old_location() {
        let (a, b, c) = (site(1), site(2), site(3));
        let on_b = received(&b, &[lm(1, 5, 0x20, 0)]);
        // The endpoint appears on c: its MAC was at b with sequence 0.
        let seq = mobility_seq(&c, &on_b, 1, mac(5));
        assert_eq!(seq, 1);
        let moved = lm(1, 5, 0x20, seq);
        let on_c = received(&c, std::slice::from_ref(&moved));
        let t2 = on_c
            .iter()
            .find(|r| r.route.nlri.route_type() == 2)
            .unwrap();
        assert_eq!(t2.route.mac_mobility, Some(1));
        // A third host sees both until b withdraws: c wins.
        let both: Vec<_> = on_b.iter().chain(&on_c).cloned().collect();
        let want = desired(&a, &both, &[]);
        assert_eq!(want.fdb.get(&(1, mac(5))), Some(&c.vtep));
        assert_eq!(want.neigh.get(&(1, ip(0x20))), Some(&mac(5)));
        // b, still holding the endpoint, is beaten and withdraws its Type-2 route.
        let b_local = [lm(1, 5, 0x20, 0)];
        let b_routes = local_routes(&b, &b_local, &on_c);
        assert!(b_routes.values().all(|r| r.nlri.route_type() == 3));
        // ... while its own FDB never points its local MAC away.
        assert!(desired(&b, &on_c, &b_local).fdb.is_empty());
        // A second move goes to 2.
        assert_eq!(mobility_seq(&b, &on_c, 1, mac(5)), 2);
    }

    #[test]
    fn without_type3_flood_lists_come_from_type2_vteps() {
        let (mut a, mut b) = (site(1), site(2));
        a.type3 = false;
        b.type3 = false;
        let remote = received(&b, &[lm(1, 1, 0x10, 0)]);
        assert!(remote.iter().all(|r| r.route.nlri.route_type() == 2));
        let want = desired(&a, &remote, &[]);
        assert_eq!(want.flood, BTreeSet::from([(1, b.vtep)]));
        // With Type-3 expected, a Type-2 alone floods nowhere.
        assert!(desired(&site(1), &remote, &[]).flood.is_empty());
    }

    #[test]
    fn type3_without_pmsi_takes_the_vni_from_its_route_target() {
        let a = site(1);
        let mut remote = received(&site(2), &[]);
        for r in &mut remote {
            r.route.pmsi_vni = None;
        }
        let want = desired(&a, &remote, &[]);
        assert_eq!(want.flood, BTreeSet::from([(1, vtep(2)), (2, vtep(2))]));
    }

    #[test]
    fn a_local_mac_beats_a_stale_remote_one() {
        let (a, b) = (site(1), site(2));
        let remote = received(&b, &[lm(1, 6, 0x30, 0)]);
        let local = [lm(1, 6, 0x30, 1)];
        let want = desired(&a, &remote, &local);
        assert!(want.fdb.is_empty());
        assert!(want.neigh.is_empty());
        assert_eq!(
            local_routes(&a, &local, &remote).len(),
            3,
            "still announced"
        );
    }

    #[test]
    fn announcement_diff_sends_only_changes() {
        let s = site(1);
        let before = local_routes(&s, &[lm(1, 1, 1, 0), lm(1, 2, 2, 0)], &[]);
        let after = local_routes(&s, &[lm(1, 2, 2, 1), lm(2, 3, 3, 0)], &[]);
        let (announce, withdraw) = announcements(&before, &after);
        assert_eq!(announce.len(), 2, "{announce:?}");
        assert!(announce.iter().any(|r| r.mac_mobility == Some(1)));
        assert_eq!(withdraw.len(), 1);
        assert!(matches!(withdraw[0], EvpnNlri::MacIp { mac: m, .. } if m == mac(1)));
        let (a2, w2) = announcements(&after, &after);
        assert!(a2.is_empty() && w2.is_empty());
    }

    #[test]
    fn derived_macs_are_unicast_local_and_distinct() {
        let m1 = derived_mac("h1", 1, ip(1));
        let m2 = derived_mac("h1", 2, ip(1));
        assert_ne!(m1, m2);
        assert_eq!(m1[0] & 0x03, 0x02);
        assert_eq!(m1, derived_mac("h1", 1, ip(1)));
    }
}
