//! Links, addresses and routes through rtnetlink, inside a chosen namespace.

use std::ffi::CString;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsRawFd;

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::{self, NetnsGuard};
use crate::NetError;

/// A netlink session bound to one namespace (the socket is opened inside it).
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
}

fn nl_err(what: String) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        what,
        source: Box::new(source),
    }
}

impl Netlink {
    /// A netlink driver (one small single-threaded runtime, reused for every request).
    pub fn new() -> Result<Self, NetError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| NetError::Os {
                what: "starting the netlink runtime".into(),
                source,
            })?;
        Ok(Self { runtime })
    }

    /// Runs netlink requests inside namespace `ns`.
    fn within<T, F, Fut>(&self, ns: &str, f: F) -> Result<T, NetError>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = Result<T, NetError>>,
    {
        let _guard = NetnsGuard::enter(ns)?;
        self.runtime.block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|source| NetError::Os {
                    what: format!("opening a netlink socket in '{ns}'"),
                    source,
                })?;
            let task = tokio::spawn(connection);
            let result = f(handle).await;
            task.abort();
            result
        })
    }

    /// Creates a veth pair: `name` in namespace `ns`, `peer` in namespace `peer_ns`, with the
    /// given MACs, both up.
    pub fn add_veth(
        &self,
        ns: &str,
        name: &str,
        mac: [u8; 6],
        peer_ns: &str,
        peer: &str,
        peer_mac: [u8; 6],
    ) -> Result<(), NetError> {
        let peer_file = netns::open(peer_ns)?;
        let fd = peer_file.as_raw_fd();
        self.within(ns, |h| async move {
            let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
                .name(peer.to_string())
                .address(peer_mac.to_vec())
                .setns_by_fd(fd)
                .build();
            let msg = LinkVeth::new(name, peer)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
                .address(mac.to_vec())
                .up()
                .build();
            h.link().add(msg).execute().await.map_err(nl_err(format!(
                "creating veth {name} in '{ns}' (peer {peer} in '{peer_ns}')"
            )))
        })?;
        drop(peer_file);
        self.set_up(peer_ns, peer)
    }

    /// Brings a link up.
    pub fn set_up(&self, ns: &str, name: &str) -> Result<(), NetError> {
        let index = ifindex_in(ns, name)?;
        self.within(ns, |h| async move {
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl_err(format!("bringing {name} up in '{ns}'")))
        })
    }

    /// Adds an IPv6 address to a link.
    pub fn add_addr(&self, ns: &str, name: &str, addr: Ipv6Addr, plen: u8) -> Result<(), NetError> {
        let index = ifindex_in(ns, name)?;
        self.within(ns, |h| async move {
            h.address()
                .add(index, IpAddr::V6(addr), plen)
                .execute()
                .await
                .map_err(nl_err(format!("adding {addr}/{plen} to {name} in '{ns}'")))
        })
    }

    /// Adds a route to `dst/plen`, through `via` if given, out of `dev`.
    pub fn add_route(
        &self,
        ns: &str,
        dst: Ipv6Addr,
        plen: u8,
        via: Option<Ipv6Addr>,
        dev: &str,
    ) -> Result<(), NetError> {
        let index = ifindex_in(ns, dev)?;
        self.within(ns, |h| async move {
            let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dst, plen)
                .output_interface(index);
            if let Some(gw) = via {
                builder = builder.gateway(gw);
            }
            h.route()
                .add(builder.build())
                .execute()
                .await
                .map_err(nl_err(format!(
                    "adding route {dst}/{plen} dev {dev} in '{ns}'"
                )))
        })
    }
}

impl Netlink {
    /// Deletes a link (a veth takes its peer with it). A link that is already gone is not an
    /// error.
    pub fn del_link(&self, ns: &str, name: &str) -> Result<(), NetError> {
        let Ok(index) = ifindex_in(ns, name) else {
            return Ok(());
        };
        self.within(ns, |h| async move {
            h.link()
                .del(index)
                .execute()
                .await
                .map_err(nl_err(format!("deleting {name} in '{ns}'")))
        })
    }

    /// The IPv6 addresses (with prefix length) of a link.
    pub fn ipv6_addrs(&self, ns: &str, name: &str) -> Result<Vec<(Ipv6Addr, u8)>, NetError> {
        use futures_util::TryStreamExt;
        use rtnetlink::packet_route::address::AddressAttribute;
        let index = ifindex_in(ns, name)?;
        self.within(ns, |h| async move {
            let msgs: Vec<_> = h
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await
                .map_err(nl_err(format!("listing addresses of {name} in '{ns}'")))?;
            Ok(msgs
                .into_iter()
                .flat_map(|m| {
                    let plen = m.header.prefix_len;
                    m.attributes.into_iter().filter_map(move |a| match a {
                        AddressAttribute::Address(IpAddr::V6(x)) => Some((x, plen)),
                        _ => None,
                    })
                })
                .collect())
        })
    }

    /// Gateways of the IPv6 default routes out of `dev`.
    pub fn default_gateways(&self, ns: &str, dev: &str) -> Result<Vec<Ipv6Addr>, NetError> {
        use futures_util::TryStreamExt;
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
        let index = ifindex_in(ns, dev)?;
        self.within(ns, |h| async move {
            let msgs: Vec<_> = h
                .route()
                .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
                .execute()
                .try_collect()
                .await
                .map_err(nl_err(format!("listing routes in '{ns}'")))?;
            Ok(msgs
                .into_iter()
                .filter(|m| m.header.destination_prefix_length == 0)
                .filter(|m| m.attributes.contains(&RouteAttribute::Oif(index)))
                .flat_map(|m| {
                    m.attributes.into_iter().filter_map(|a| match a {
                        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(g),
                        _ => None,
                    })
                })
                .collect())
        })
    }
}

/// The index of interface `name` inside namespace `ns`.
pub fn ifindex_in(ns: &str, name: &str) -> Result<u32, NetError> {
    netns::run_in(ns, || {
        ifindex(name).ok_or_else(|| NetError::NoSuchLink {
            link: name.to_string(),
            netns: ns.to_string(),
        })
    })
}

/// Names of every interface in a named namespace (`lo` included).
pub fn names_in(ns: &str) -> Result<Vec<String>, NetError> {
    netns::run_in(ns, || {
        // SAFETY: if_nameindex returns a list terminated by a zero entry, freed below.
        let list = unsafe { libc::if_nameindex() };
        if list.is_null() {
            return Err(NetError::Os {
                what: format!("listing interfaces of namespace '{ns}'"),
                source: std::io::Error::last_os_error(),
            });
        }
        let mut names = Vec::new();
        let mut i = 0;
        loop {
            // SAFETY: within the list, up to and including its terminating entry.
            let e = unsafe { &*list.add(i) };
            if e.if_index == 0 || e.if_name.is_null() {
                break;
            }
            // SAFETY: if_name is a NUL-terminated string owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(e.if_name) };
            names.push(name.to_string_lossy().into_owned());
            i += 1;
        }
        // SAFETY: the pointer came from if_nameindex.
        unsafe { libc::if_freenameindex(list) };
        Ok(names)
    })
}

/// The index of interface `name` in the calling thread's namespace, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Link-local gateway address every host-side veth carries; endpoints route via it.
pub const ENDPOINT_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Name of an endpoint's interface inside its namespace.
pub const ENDPOINT_IFNAME: &str = "eth0";

/// How one endpoint is wired to its host.
#[derive(Debug, Clone)]
pub struct EndpointLink<'a> {
    /// Host namespace.
    pub host_netns: &'a str,
    /// Endpoint (container) namespace; must exist.
    pub netns: &'a str,
    /// Host-side veth name.
    pub host_ifname: &'a str,
    /// MAC of the host-side veth.
    pub host_mac: [u8; 6],
    /// MAC of the endpoint's `eth0`.
    pub mac: [u8; 6],
    /// The endpoint's interface inside its namespace (`eth0` unless a runtime asks otherwise).
    pub ifname: &'a str,
    /// The endpoint's address (/128 on `ifname`).
    pub addr: Ipv6Addr,
}

impl Netlink {
    /// Wires an endpoint: veth `host_ifname` ↔ `eth0`, the address /128 on `eth0`, a default
    /// route via the host's link-local gateway, and the host's /128 route back.
    pub fn plumb_endpoint(&self, ep: &EndpointLink<'_>) -> Result<(), NetError> {
        netns::run_in(ep.netns, || {
            netns::sysctl("net/ipv6/conf/all/accept_dad", "0")?;
            netns::sysctl("net/ipv6/conf/default/accept_dad", "0")
        })?;
        self.set_up(ep.netns, "lo")?;
        self.add_veth(
            ep.host_netns,
            ep.host_ifname,
            ep.host_mac,
            ep.netns,
            ep.ifname,
            ep.mac,
        )?;
        self.add_addr(ep.host_netns, ep.host_ifname, ENDPOINT_GATEWAY, 64)?;
        self.add_addr(ep.netns, ep.ifname, ep.addr, 128)?;
        self.add_route(
            ep.netns,
            Ipv6Addr::UNSPECIFIED,
            0,
            Some(ENDPOINT_GATEWAY),
            ep.ifname,
        )?;
        self.add_route(ep.host_netns, ep.addr, 128, None, ep.host_ifname)
    }
}
