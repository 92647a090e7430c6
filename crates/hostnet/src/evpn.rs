//! The kernel side of EVPN/VXLAN (RFC 7432, RFC 8365) on a host, over rtnetlink: per tenant a
//! VXLAN device (`vx<vni>`, learning off, UDP 4789, local VTEP = the host's underlay address)
//! enslaved to a bridge (`evbr<vni>`) whose port for it has learning off and neighbour
//! suppression on; the forwarding state the control plane computes:
//!
//! * a remote MAC is two FDB entries: on the bridge (`master`, MAC → the VXLAN port, static; the
//!   bridge needs it to find the MAC, and suppression needs it to answer for the MAC's address)
//!   and on the VXLAN device (`self`, MAC → `dst` VTEP);
//! * the flood list is one all-zero `self` entry per remote VTEP (ingress replication);
//! * a remote address is a permanent neighbour entry (ip → MAC) on the bridge, from which
//!   suppression answers neighbour solicitations locally instead of flooding them.
//!
//! Every write is idempotent: a replace of what is there changes nothing, a delete of what is
//! gone is not an error.

use std::net::{IpAddr, Ipv6Addr};

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVxlan};

use crate::link::Netlink;
use crate::NetError;

/// IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds over an IPv6 underlay: outer Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8.
pub const VXLAN6_OVERHEAD: u32 = 70;
/// Largest VNI (24 bits on the wire).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The all-zero MAC of flood-list entries.
pub const FLOOD_MAC: [u8; 6] = [0; 6];

/// Name of the VXLAN device of VNI `vni`.
pub fn vxlan_ifname(vni: u32) -> String {
    format!("vx{vni}")
}

/// Name of the bridge of VNI `vni`.
pub fn bridge_ifname(vni: u32) -> String {
    format!("evbr{vni}")
}

/// One tenant segment of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Local VTEP (the host's underlay address).
    pub local: Ipv6Addr,
    /// MTU of the overlay devices (the underlay's minus [`VXLAN6_OVERHEAD`]).
    pub mtu: u32,
    /// MAC of the bridge.
    pub bridge_mac: [u8; 6],
}

/// An FDB entry read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    /// MAC (all zero: a flood-list entry).
    pub mac: [u8; 6],
    /// Remote VTEP (`self` entries of a VXLAN device).
    pub dst: Option<IpAddr>,
    /// Whether it is the device's own (`self`) entry rather than the bridge's (`master`).
    pub is_self: bool,
}

fn nl_err(what: String) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        what,
        source: Box::new(source),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| c.get()) == Some(-errno))
}

fn check_vni(vni: u32) -> Result<(), NetError> {
    if vni == 0 || vni > MAX_VNI {
        return Err(NetError::Invalid(format!(
            "VNI {vni} is out of range: 1..={MAX_VNI}"
        )));
    }
    Ok(())
}

/// Sends a neighbour message with explicit flags and waits for the acknowledgement.
async fn neigh_request(
    h: &Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut h = h.clone();
    let mut response = h.request(req)?;
    while let Some(m) = response.next().await {
        if let NetlinkPayload::Error(err) = m.payload {
            return Err(rtnetlink::Error::NetlinkError(err));
        }
    }
    Ok(())
}

fn fdb_message(
    index: u32,
    mac: [u8; 6],
    dst: Option<IpAddr>,
    flags: NeighbourFlags,
    state: NeighbourState,
) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = state;
    m.header.flags = flags;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    if let Some(dst) = dst {
        m.attributes
            .push(NeighbourAttribute::Destination(match dst {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
    }
    m
}

fn neigh_message(index: u32, ip: IpAddr, mac: Option<[u8; 6]>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m.attributes.push(NeighbourAttribute::Destination(match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    if let Some(mac) = mac {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    m
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Netlink {
    fn evpn_index(&self, ns: &str, name: &str) -> Result<u32, NetError> {
        self.link_index(ns, name)?
            .ok_or_else(|| NetError::NoSuchLink {
                link: name.to_string(),
                netns: ns.to_string(),
            })
    }

    /// Creates (if missing) the bridge and VXLAN device of a tenant segment, the VXLAN device a
    /// port of the bridge with learning off and neighbour suppression on, both up. `uplink` is
    /// the underlay device the VXLAN device sends through.
    pub fn ensure_segment(&self, ns: &str, seg: &Segment, uplink: &str) -> Result<(), NetError> {
        check_vni(seg.vni)?;
        let (br, vx) = (bridge_ifname(seg.vni), vxlan_ifname(seg.vni));
        let uplink_index = self.evpn_index(ns, uplink)?;
        if self.link_index(ns, &br)?.is_none() {
            let msg = LinkBridge::new(&br)
                .mtu(seg.mtu)
                .address(seg.bridge_mac.to_vec())
                .mcast_snooping(false)
                .build();
            self.within(ns, |h| async move {
                h.link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(nl_err(format!("creating bridge {br} in '{ns}'")))
            })?;
        }
        let br_index = self.evpn_index(ns, &bridge_ifname(seg.vni))?;
        if self.link_index(ns, &vx)?.is_none() {
            let msg = LinkVxlan::new(&vx, seg.vni)
                .dev(uplink_index)
                .port(VXLAN_PORT)
                .local6(seg.local)
                .learning(false)
                .mtu(seg.mtu)
                .build();
            let vx2 = vx.clone();
            self.within(ns, |h| async move {
                h.link().add(msg).execute().await.map_err(nl_err(format!(
                    "creating VXLAN device {vx2} (VNI {}) in '{ns}'",
                    seg.vni
                )))
            })?;
        }
        let vx_index = self.evpn_index(ns, &vx)?;
        self.within(ns, |h| async move {
            h.link()
                .set(
                    LinkUnspec::new_with_index(vx_index)
                        .controller(br_index)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!("enslaving {vx} in '{ns}'")))?;
            h.link()
                .set_port(
                    LinkBridgePort::new(vx_index)
                        .learning(false)
                        .neigh_suppress(true)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!(
                    "setting learning off, neigh_suppress on for {vx} in '{ns}'"
                )))?;
            for i in [vx_index, br_index] {
                h.link()
                    .set(LinkUnspec::new_with_index(i).up().build())
                    .execute()
                    .await
                    .map_err(nl_err(format!("bringing segment links up in '{ns}'")))?;
            }
            Ok(())
        })
    }

    /// Removes a tenant segment's devices (gone already is fine).
    pub fn remove_segment(&self, ns: &str, vni: u32) -> Result<(), NetError> {
        self.del_link(ns, &vxlan_ifname(vni))?;
        self.del_link(ns, &bridge_ifname(vni))
    }

    /// Makes link `port` (a container's host-side veth) a port of the segment's bridge, up.
    pub fn attach_port(&self, ns: &str, port: &str, vni: u32, mtu: u32) -> Result<(), NetError> {
        let br_index = self.evpn_index(ns, &bridge_ifname(vni))?;
        let index = self.evpn_index(ns, port)?;
        self.within(ns, |h| async move {
            h.link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .controller(br_index)
                        .mtu(mtu)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!(
                    "attaching {port} to {} in '{ns}'",
                    bridge_ifname(vni)
                )))
        })
    }

    /// Installs (or moves) remote MAC `mac` of segment `vni` behind VTEP `vtep`: the bridge's
    /// entry towards the VXLAN port and the VXLAN device's towards the VTEP.
    pub fn fdb_replace(
        &self,
        ns: &str,
        vni: u32,
        mac: [u8; 6],
        vtep: IpAddr,
    ) -> Result<(), NetError> {
        let vx = self.evpn_index(ns, &vxlan_ifname(vni))?;
        self.within(ns, |h| async move {
            let master = fdb_message(
                vx,
                mac,
                None,
                NeighbourFlags::Controller,
                NeighbourState::Noarp,
            );
            neigh_request(
                &h,
                RouteNetlinkMessage::NewNeighbour(master),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
            .map_err(nl_err(format!(
                "bridge fdb replace {} dev vx{vni} master in '{ns}'",
                mac_text(mac)
            )))?;
            let own = fdb_message(
                vx,
                mac,
                Some(vtep),
                NeighbourFlags::Own,
                NeighbourState::Permanent,
            );
            neigh_request(
                &h,
                RouteNetlinkMessage::NewNeighbour(own),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
            .map_err(nl_err(format!(
                "bridge fdb replace {} dev vx{vni} dst {vtep} self in '{ns}'",
                mac_text(mac)
            )))
        })
    }

    /// Removes remote MAC `mac` of segment `vni` (both entries; missing ones are fine).
    pub fn fdb_delete(&self, ns: &str, vni: u32, mac: [u8; 6]) -> Result<(), NetError> {
        let Some(vx) = self.link_index(ns, &vxlan_ifname(vni))? else {
            return Ok(());
        };
        self.within(ns, |h| async move {
            for flags in [NeighbourFlags::Controller, NeighbourFlags::Own] {
                let m = fdb_message(vx, mac, None, flags, NeighbourState::Noarp);
                match neigh_request(&h, RouteNetlinkMessage::DelNeighbour(m), 0).await {
                    Err(e) if is_errno(&e, libc::ENOENT) => {}
                    other => other.map_err(nl_err(format!(
                        "bridge fdb del {} dev vx{vni} in '{ns}'",
                        mac_text(mac)
                    )))?,
                }
            }
            Ok(())
        })
    }

    /// Adds VTEP `vtep` to the flood list of segment `vni` (ingress replication).
    pub fn flood_add(&self, ns: &str, vni: u32, vtep: IpAddr) -> Result<(), NetError> {
        let vx = self.evpn_index(ns, &vxlan_ifname(vni))?;
        self.within(ns, |h| async move {
            let m = fdb_message(
                vx,
                FLOOD_MAC,
                Some(vtep),
                NeighbourFlags::Own,
                NeighbourState::Permanent,
            );
            match neigh_request(
                &h,
                RouteNetlinkMessage::NewNeighbour(m),
                NLM_F_CREATE | NLM_F_APPEND,
            )
            .await
            {
                Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
                other => other.map_err(nl_err(format!(
                    "bridge fdb append 00:00:00:00:00:00 dev vx{vni} dst {vtep} in '{ns}'"
                ))),
            }
        })
    }

    /// Removes VTEP `vtep` from the flood list of segment `vni`.
    pub fn flood_delete(&self, ns: &str, vni: u32, vtep: IpAddr) -> Result<(), NetError> {
        let Some(vx) = self.link_index(ns, &vxlan_ifname(vni))? else {
            return Ok(());
        };
        self.within(ns, |h| async move {
            let m = fdb_message(
                vx,
                FLOOD_MAC,
                Some(vtep),
                NeighbourFlags::Own,
                NeighbourState::Permanent,
            );
            match neigh_request(&h, RouteNetlinkMessage::DelNeighbour(m), 0).await {
                Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
                other => other.map_err(nl_err(format!(
                    "bridge fdb del 00:00:00:00:00:00 dev vx{vni} dst {vtep} in '{ns}'"
                ))),
            }
        })
    }

    /// Installs (or replaces) neighbour entry `ip` → `mac` on the bridge of segment `vni`, from
    /// which neighbour suppression answers.
    pub fn neigh_replace(
        &self,
        ns: &str,
        vni: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetError> {
        let br = self.evpn_index(ns, &bridge_ifname(vni))?;
        self.within(ns, |h| async move {
            let m = neigh_message(br, ip, Some(mac));
            neigh_request(
                &h,
                RouteNetlinkMessage::NewNeighbour(m),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
            .map_err(nl_err(format!(
                "ip neigh replace {ip} lladdr {} dev evbr{vni} in '{ns}'",
                mac_text(mac)
            )))
        })
    }

    /// Removes neighbour entry `ip` of segment `vni`.
    pub fn neigh_delete(&self, ns: &str, vni: u32, ip: IpAddr) -> Result<(), NetError> {
        let Some(br) = self.link_index(ns, &bridge_ifname(vni))? else {
            return Ok(());
        };
        self.within(ns, |h| async move {
            let m = neigh_message(br, ip, None);
            match neigh_request(&h, RouteNetlinkMessage::DelNeighbour(m), 0).await {
                Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
                other => {
                    other.map_err(nl_err(format!("ip neigh del {ip} dev evbr{vni} in '{ns}'")))
                }
            }
        })
    }

    /// The FDB entries of segment `vni`'s VXLAN device (both `self` and `master` ones), read
    /// back from the kernel; empty if the segment does not exist.
    pub fn fdb_entries(&self, ns: &str, vni: u32) -> Result<Vec<FdbEntry>, NetError> {
        let Some(vx) = self.link_index(ns, &vxlan_ifname(vni))? else {
            return Ok(Vec::new());
        };
        let msgs: Vec<NeighbourMessage> = self.within(ns, |h| async move {
            h.neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute()
                .try_collect()
                .await
                .map_err(nl_err(format!("listing the FDB in '{ns}'")))
        })?;
        let mut out: Vec<FdbEntry> = msgs
            .into_iter()
            .filter(|m| m.header.ifindex == vx)
            .filter_map(|m| {
                let (mac, dst) = mac_and_destination(&m.attributes);
                Some(FdbEntry {
                    mac: mac?,
                    dst,
                    is_self: m.header.flags.contains(NeighbourFlags::Own),
                })
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The permanent neighbour entries (ip → MAC) on segment `vni`'s bridge.
    pub fn neigh_entries(&self, ns: &str, vni: u32) -> Result<Vec<(IpAddr, [u8; 6])>, NetError> {
        let Some(br) = self.link_index(ns, &bridge_ifname(vni))? else {
            return Ok(Vec::new());
        };
        let msgs: Vec<NeighbourMessage> = self.within(ns, |h| async move {
            h.neighbours()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(nl_err(format!("listing neighbours in '{ns}'")))
        })?;
        let mut out: Vec<(IpAddr, [u8; 6])> = msgs
            .into_iter()
            .filter(|m| m.header.ifindex == br && m.header.state == NeighbourState::Permanent)
            .filter_map(|m| {
                let (mac, ip) = mac_and_destination(&m.attributes);
                Some((ip?, mac?))
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

impl Netlink {
    /// Sets the MTU of link `name`.
    pub fn set_mtu(&self, ns: &str, name: &str, mtu: u32) -> Result<(), NetError> {
        let index = self.evpn_index(ns, name)?;
        self.within(ns, |h| async move {
            h.link()
                .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
                .execute()
                .await
                .map_err(nl_err(format!(
                    "setting the MTU of {name} in '{ns}' to {mtu}"
                )))
        })
    }
}

/// The MAC and the destination address of a neighbour or FDB message (bridge-family messages
/// carry the VTEP unparsed, as `Other`).
fn mac_and_destination(attrs: &[NeighbourAttribute]) -> (Option<[u8; 6]>, Option<IpAddr>) {
    let mut mac = None;
    let mut dst = None;
    for a in attrs {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                dst = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                dst = Some(IpAddr::V4(*a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = match b.len() {
                    16 => <[u8; 16]>::try_from(b.as_slice())
                        .ok()
                        .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
                    4 => <[u8; 4]>::try_from(b.as_slice())
                        .ok()
                        .map(|a| IpAddr::V4(a.into())),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    (mac, dst)
}
