//! Adj-RIB-In (per peer, with graceful-restart stale flags) and the Loc-RIB best path over
//! peers, with change notifications.

use crate::evpn::{BestEvpnRoute, EvpnChange, EvpnNlri, EvpnRoute};
use crate::message::{Family, PathAttributes};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A route as learned from one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The prefix.
    pub prefix: Ipv6Net,
    /// The next hop (global).
    pub next_hop: Ipv6Addr,
    /// Attributes as received.
    pub attrs: PathAttributes,
}

/// One entry of an Adj-RIB-In.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    route: Route,
    /// Kept across the peer's restart (RFC 4724 §4.2) until refreshed, End-of-RIB or timeout.
    stale: bool,
}

/// One EVPN entry of an Adj-RIB-In.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EvpnEntry {
    route: EvpnRoute,
    attrs: PathAttributes,
    stale: bool,
}

/// What a removal took out of a RIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RibKey {
    /// An IPv6 prefix.
    Ipv6(Ipv6Net),
    /// An EVPN route (the NLRI as it was announced, VNI included).
    Evpn(EvpnNlri),
}

/// Routes received from one peer, IPv6 and EVPN, bounded together by `max_prefixes`.
#[derive(Debug, Clone, Default)]
pub struct AdjRibIn {
    routes: BTreeMap<Ipv6Net, Entry>,
    /// Keyed by [`EvpnNlri::route_key`].
    evpn: BTreeMap<EvpnNlri, EvpnEntry>,
}

/// Result of inserting into an [`AdjRibIn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// New or changed route.
    Changed,
    /// Same route as before (only a stale flag may have been cleared).
    Unchanged,
    /// Would exceed the limit; nothing was inserted.
    LimitExceeded,
}

impl AdjRibIn {
    /// Number of routes of every family (stale included): what `max_prefixes` bounds.
    pub fn len(&self) -> usize {
        self.routes.len() + self.evpn.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of routes of one family (stale included).
    pub fn len_of(&self, f: Family) -> usize {
        match f {
            Family::Ipv6Unicast => self.routes.len(),
            Family::L2vpnEvpn => self.evpn.len(),
        }
    }

    /// Number of stale routes of every family.
    pub fn stale_count(&self) -> usize {
        self.stale_of(Family::Ipv6Unicast) + self.stale_of(Family::L2vpnEvpn)
    }

    /// Number of stale routes of one family.
    pub fn stale_of(&self, f: Family) -> usize {
        match f {
            Family::Ipv6Unicast => self.routes.values().filter(|e| e.stale).count(),
            Family::L2vpnEvpn => self.evpn.values().filter(|e| e.stale).count(),
        }
    }

    /// Inserts or replaces a route (clearing its stale flag); refuses to grow past `max`.
    pub fn insert(&mut self, route: Route, max: usize) -> Insert {
        if let Some(e) = self.routes.get_mut(&route.prefix) {
            e.stale = false;
            if e.route == route {
                return Insert::Unchanged;
            }
            e.route = route;
            return Insert::Changed;
        }
        if self.len() >= max {
            return Insert::LimitExceeded;
        }
        self.routes.insert(
            route.prefix,
            Entry {
                route,
                stale: false,
            },
        );
        Insert::Changed
    }

    /// Inserts or replaces an EVPN route (same route key: RD, tag, MAC, IP / originator),
    /// clearing its stale flag; refuses to grow past `max` routes of all families.
    pub fn insert_evpn(&mut self, route: EvpnRoute, attrs: PathAttributes, max: usize) -> Insert {
        let key = route.key();
        if let Some(e) = self.evpn.get_mut(&key) {
            e.stale = false;
            if e.route == route && e.attrs == attrs {
                return Insert::Unchanged;
            }
            e.route = route;
            e.attrs = attrs;
            return Insert::Changed;
        }
        if self.len() >= max {
            return Insert::LimitExceeded;
        }
        self.evpn.insert(
            key,
            EvpnEntry {
                route,
                attrs,
                stale: false,
            },
        );
        Insert::Changed
    }

    /// Removes a route; true if it was present.
    pub fn remove(&mut self, prefix: &Ipv6Net) -> bool {
        self.routes.remove(prefix).is_some()
    }

    /// Removes the EVPN route with `nlri`'s route key; returns its NLRI as stored.
    pub fn remove_evpn(&mut self, nlri: &EvpnNlri) -> Option<EvpnNlri> {
        self.evpn.remove(&nlri.route_key()).map(|e| e.route.nlri)
    }

    /// Marks every route stale (session lost with graceful restart negotiated).
    pub fn mark_all_stale(&mut self) {
        self.mark_stale(Family::Ipv6Unicast);
        self.mark_stale(Family::L2vpnEvpn);
    }

    /// Marks the routes of one family stale.
    pub fn mark_stale(&mut self, f: Family) {
        match f {
            Family::Ipv6Unicast => self.routes.values_mut().for_each(|e| e.stale = true),
            Family::L2vpnEvpn => self.evpn.values_mut().for_each(|e| e.stale = true),
        }
    }

    /// Removes the stale routes of every family.
    pub fn sweep_stale(&mut self) -> Vec<RibKey> {
        let mut gone = self.sweep_stale_of(Family::Ipv6Unicast);
        gone.extend(self.sweep_stale_of(Family::L2vpnEvpn));
        gone
    }

    /// Removes the stale routes of one family (its End-of-RIB arrived).
    pub fn sweep_stale_of(&mut self, f: Family) -> Vec<RibKey> {
        match f {
            Family::Ipv6Unicast => {
                let gone: Vec<Ipv6Net> = self
                    .routes
                    .iter()
                    .filter(|(_, e)| e.stale)
                    .map(|(p, _)| *p)
                    .collect();
                for p in &gone {
                    self.routes.remove(p);
                }
                gone.into_iter().map(RibKey::Ipv6).collect()
            }
            Family::L2vpnEvpn => {
                let mut gone = Vec::new();
                self.evpn.retain(|_, e| {
                    if e.stale {
                        gone.push(RibKey::Evpn(e.route.nlri));
                    }
                    !e.stale
                });
                gone
            }
        }
    }

    /// Removes everything.
    pub fn clear(&mut self) -> Vec<RibKey> {
        let mut gone: Vec<RibKey> = std::mem::take(&mut self.routes)
            .into_keys()
            .map(RibKey::Ipv6)
            .collect();
        gone.extend(
            std::mem::take(&mut self.evpn)
                .into_values()
                .map(|e| RibKey::Evpn(e.route.nlri)),
        );
        gone
    }

    /// Removes every route of one family.
    pub fn clear_of(&mut self, f: Family) -> Vec<RibKey> {
        self.mark_stale(f);
        self.sweep_stale_of(f)
    }

    /// Iterates over the IPv6 routes as (route, stale).
    pub fn iter(&self) -> impl Iterator<Item = (&Route, bool)> {
        self.routes.values().map(|e| (&e.route, e.stale))
    }

    /// Looks a prefix up.
    pub fn get(&self, prefix: &Ipv6Net) -> Option<(&Route, bool)> {
        self.routes.get(prefix).map(|e| (&e.route, e.stale))
    }

    /// Iterates over the EVPN routes as (route, attributes, stale).
    pub fn iter_evpn(&self) -> impl Iterator<Item = (&EvpnRoute, &PathAttributes, bool)> {
        self.evpn.values().map(|e| (&e.route, &e.attrs, e.stale))
    }

    /// Looks an EVPN route up by its route key.
    pub fn get_evpn(&self, nlri: &EvpnNlri) -> Option<(&EvpnRoute, bool)> {
        self.evpn
            .get(&nlri.route_key())
            .map(|e| (&e.route, e.stale))
    }
}

/// Who a candidate route came from, for the final tie-breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerKey {
    /// The peer's BGP identifier.
    pub router_id: Ipv4Addr,
    /// The peer's address.
    pub address: IpAddr,
}

/// The best route for a prefix, as the agent installs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BestRoute {
    /// The prefix.
    pub prefix: Ipv6Net,
    /// Next hop to install.
    pub next_hop: Ipv6Addr,
    /// The peer it was learned from.
    pub peer: IpAddr,
    /// The peer's BGP identifier.
    pub peer_router_id: Ipv4Addr,
    /// Attributes.
    pub attrs: PathAttributes,
}

/// A change of best route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BestChange {
    /// New or changed best route for its prefix.
    Changed(BestRoute),
    /// No route for this prefix any more.
    Removed {
        /// The prefix.
        prefix: Ipv6Net,
    },
}

/// LOCAL_PREF assumed when absent (RFC 4271 §5.1.5 leaves it to configuration; 100 is usual).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// Best-path order (RFC 4271 §9.1.2.2, simplified): higher LOCAL_PREF, shorter AS_PATH, lower
/// ORIGIN, lower MED (compared across all peers: we never see competing neighbour ASes often
/// enough to need "same neighbour AS only"), lower router id, lower peer address.
/// `Ordering::Less` means `a` is better.
pub fn compare(a: (&PeerKey, &Route), b: (&PeerKey, &Route)) -> Ordering {
    compare_attrs((a.0, &a.1.attrs), (b.0, &b.1.attrs))
}

/// [`compare`] on the attributes alone.
pub fn compare_attrs(a: (&PeerKey, &PathAttributes), b: (&PeerKey, &PathAttributes)) -> Ordering {
    let lp = |r: &PathAttributes| r.local_pref.unwrap_or(DEFAULT_LOCAL_PREF);
    lp(b.1)
        .cmp(&lp(a.1))
        .then(a.1.as_path_len().cmp(&b.1.as_path_len()))
        .then(a.1.origin.cmp(&b.1.origin))
        .then(a.1.med.unwrap_or(0).cmp(&b.1.med.unwrap_or(0)))
        .then(a.0.router_id.cmp(&b.0.router_id))
        .then(a.0.address.cmp(&b.0.address))
}

/// EVPN best path for one NLRI: the higher MAC mobility sequence first (RFC 7432 §15.2 —
/// absent counts as 0), then [`compare_attrs`].
pub fn compare_evpn(
    a: (&PeerKey, &EvpnRoute, &PathAttributes),
    b: (&PeerKey, &EvpnRoute, &PathAttributes),
) -> Ordering {
    let seq = |r: &EvpnRoute| r.mac_mobility.unwrap_or(0);
    seq(b.1)
        .cmp(&seq(a.1))
        .then_with(|| compare_attrs((a.0, a.2), (b.0, b.2)))
}

/// The Loc-RIB: candidates per prefix from every peer, and the best of them.
#[derive(Debug, Clone, Default)]
pub struct LocRib {
    /// Keyed by peer address, so a peer that comes back with another router id replaces its
    /// own candidates instead of adding a second set.
    candidates: BTreeMap<Ipv6Net, BTreeMap<IpAddr, (PeerKey, Route)>>,
    best: BTreeMap<Ipv6Net, BestRoute>,
    /// EVPN candidates per route key ([`EvpnNlri::route_key`]), by peer address.
    evpn_candidates: BTreeMap<EvpnNlri, BTreeMap<IpAddr, EvpnCandidate>>,
    evpn_best: BTreeMap<EvpnNlri, BestEvpnRoute>,
}

type EvpnCandidate = (PeerKey, EvpnRoute, PathAttributes);

impl LocRib {
    /// Adds or replaces `peer`'s route; returns the best-route change, if any.
    pub fn update(&mut self, peer: PeerKey, route: Route) -> Option<BestChange> {
        let prefix = route.prefix;
        self.candidates
            .entry(prefix)
            .or_default()
            .insert(peer.address, (peer, route));
        self.reselect(prefix)
    }

    /// Removes `peer`'s route for `prefix`; returns the best-route change, if any.
    pub fn withdraw(&mut self, peer: &PeerKey, prefix: &Ipv6Net) -> Option<BestChange> {
        let c = self.candidates.get_mut(prefix)?;
        c.remove(&peer.address)?;
        if c.is_empty() {
            self.candidates.remove(prefix);
        }
        self.reselect(*prefix)
    }

    fn reselect(&mut self, prefix: Ipv6Net) -> Option<BestChange> {
        let best = self.candidates.get(&prefix).and_then(|c| {
            c.values()
                .min_by(|a, b| compare((&a.0, &a.1), (&b.0, &b.1)))
                .map(|(k, r)| BestRoute {
                    prefix,
                    next_hop: r.next_hop,
                    peer: k.address,
                    peer_router_id: k.router_id,
                    attrs: r.attrs.clone(),
                })
        });
        match best {
            Some(b) => {
                if self.best.get(&prefix) == Some(&b) {
                    return None;
                }
                self.best.insert(prefix, b.clone());
                Some(BestChange::Changed(b))
            }
            None => self
                .best
                .remove(&prefix)
                .map(|_| BestChange::Removed { prefix }),
        }
    }

    /// The current best routes.
    pub fn best(&self) -> impl Iterator<Item = &BestRoute> {
        self.best.values()
    }

    /// The best route for one prefix.
    pub fn best_for(&self, prefix: &Ipv6Net) -> Option<&BestRoute> {
        self.best.get(prefix)
    }

    /// Adds or replaces `peer`'s EVPN route; returns the best-route change, if any.
    pub fn update_evpn(
        &mut self,
        peer: PeerKey,
        route: EvpnRoute,
        attrs: PathAttributes,
    ) -> Option<EvpnChange> {
        let key = route.key();
        self.evpn_candidates
            .entry(key)
            .or_default()
            .insert(peer.address, (peer, route, attrs));
        self.reselect_evpn(key)
    }

    /// Removes `peer`'s EVPN route with `nlri`'s route key; returns the change, if any.
    pub fn withdraw_evpn(&mut self, peer: &PeerKey, nlri: &EvpnNlri) -> Option<EvpnChange> {
        let key = nlri.route_key();
        let c = self.evpn_candidates.get_mut(&key)?;
        c.remove(&peer.address)?;
        if c.is_empty() {
            self.evpn_candidates.remove(&key);
        }
        self.reselect_evpn(key)
    }

    fn reselect_evpn(&mut self, key: EvpnNlri) -> Option<EvpnChange> {
        let best = self.evpn_candidates.get(&key).and_then(|c| {
            c.values()
                .min_by(|a, b| compare_evpn((&a.0, &a.1, &a.2), (&b.0, &b.1, &b.2)))
                .map(|(k, r, _)| BestEvpnRoute {
                    route: r.clone(),
                    peer: k.address,
                    peer_router_id: k.router_id,
                })
        });
        match best {
            Some(b) => {
                if self.evpn_best.get(&key) == Some(&b) {
                    return None;
                }
                self.evpn_best.insert(key, b.clone());
                Some(EvpnChange::Changed(b))
            }
            None => self.evpn_best.remove(&key).map(|old| EvpnChange::Removed {
                nlri: old.route.nlri,
            }),
        }
    }

    /// The current best EVPN routes.
    pub fn best_evpn(&self) -> impl Iterator<Item = &BestEvpnRoute> {
        self.evpn_best.values()
    }

    /// The best EVPN route for `nlri`'s route key.
    pub fn best_evpn_for(&self, nlri: &EvpnNlri) -> Option<&BestEvpnRoute> {
        self.evpn_best.get(&nlri.route_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AsSegment, Origin};

    fn route(p: &str, nh: &str, lp: Option<u32>, path: &[u32], med: Option<u32>) -> Route {
        Route {
            prefix: p.parse().unwrap(),
            next_hop: nh.parse().unwrap(),
            attrs: PathAttributes {
                origin: Origin::Igp,
                as_path: vec![AsSegment::Sequence(path.to_vec())],
                med,
                local_pref: lp,
            },
        }
    }
    fn peer(id: u8) -> PeerKey {
        PeerKey {
            router_id: Ipv4Addr::new(10, 0, 0, id),
            address: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, id as u16)),
        }
    }

    #[test]
    fn adj_rib_in_bounds_and_stale() {
        let mut rib = AdjRibIn::default();
        assert_eq!(
            rib.insert(route("2001:db8:1::/64", "fd00::1", None, &[], None), 1),
            Insert::Changed
        );
        assert_eq!(
            rib.insert(route("2001:db8:2::/64", "fd00::1", None, &[], None), 1),
            Insert::LimitExceeded
        );
        assert_eq!(rib.len(), 1);
        // Replacing an existing prefix is allowed at the limit.
        assert_eq!(
            rib.insert(route("2001:db8:1::/64", "fd00::2", None, &[], None), 1),
            Insert::Changed
        );
        rib.mark_all_stale();
        assert_eq!(rib.stale_count(), 1);
        assert_eq!(
            rib.insert(route("2001:db8:1::/64", "fd00::2", None, &[], None), 1),
            Insert::Unchanged
        );
        assert_eq!(rib.stale_count(), 0);
        rib.mark_all_stale();
        assert_eq!(
            rib.sweep_stale(),
            vec![RibKey::Ipv6("2001:db8:1::/64".parse::<Ipv6Net>().unwrap())]
        );
        assert!(rib.is_empty());
    }

    #[test]
    fn best_path_order() {
        let mut loc = LocRib::default();
        let p: Ipv6Net = "2001:db8:1::/64".parse().unwrap();
        // First candidate becomes best.
        let c = loc.update(
            peer(2),
            route("2001:db8:1::/64", "fd00::2", None, &[65002], None),
        );
        assert!(
            matches!(c, Some(BestChange::Changed(ref b)) if b.peer_router_id == peer(2).router_id)
        );
        // Lower router id wins a full tie.
        let c = loc.update(
            peer(1),
            route("2001:db8:1::/64", "fd00::1", None, &[65001], None),
        );
        assert!(
            matches!(c, Some(BestChange::Changed(ref b)) if b.next_hop == "fd00::1".parse::<Ipv6Addr>().unwrap())
        );
        // Shorter AS path beats lower router id.
        let c = loc.update(
            peer(3),
            route("2001:db8:1::/64", "fd00::3", None, &[], None),
        );
        assert!(
            matches!(c, Some(BestChange::Changed(ref b)) if b.next_hop == "fd00::3".parse::<Ipv6Addr>().unwrap())
        );
        // Higher local pref beats shorter path.
        let c = loc.update(
            peer(4),
            route("2001:db8:1::/64", "fd00::4", Some(200), &[1, 2, 3], None),
        );
        assert!(
            matches!(c, Some(BestChange::Changed(ref b)) if b.next_hop == "fd00::4".parse::<Ipv6Addr>().unwrap())
        );
        // Lower MED among equals.
        let c = loc.update(
            peer(5),
            route("2001:db8:1::/64", "fd00::5", Some(200), &[1, 2, 4], Some(0)),
        );
        assert_eq!(
            c, None,
            "MED 0 vs absent (0) ties, router id 4 < 5 keeps peer 4"
        );
        let c = loc.update(
            peer(4),
            route(
                "2001:db8:1::/64",
                "fd00::4",
                Some(200),
                &[1, 2, 3],
                Some(10),
            ),
        );
        assert!(
            matches!(c, Some(BestChange::Changed(ref b)) if b.next_hop == "fd00::5".parse::<Ipv6Addr>().unwrap())
        );
        // Withdrawing the best falls back; the last withdrawal removes.
        for id in [5, 4, 3] {
            assert!(loc.withdraw(&peer(id), &p).is_some());
        }
        assert_eq!(loc.withdraw(&peer(2), &p), None, "not the best: no change");
        assert_eq!(loc.best_for(&p).map(|b| b.peer), Some(peer(1).address));
        assert_eq!(
            loc.withdraw(&peer(1), &p),
            Some(BestChange::Removed { prefix: p })
        );
        assert_eq!(loc.withdraw(&peer(1), &p), None);
    }
}
