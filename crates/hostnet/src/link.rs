//! Links, addresses and routes through rtnetlink, inside a chosen namespace.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsRawFd;

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::{self, NetnsGuard};
use crate::NetError;

/// A netlink driver: one small single-threaded runtime, and one netlink socket per namespace
/// it has worked in, opened inside that namespace the first time and reused for every later
/// request there (a socket stays bound to the namespace it was created in, so only opening it
/// needs `setns`). Keep one for a batch of work; drop it when done: each socket holds a
/// reference to its namespace, which the kernel frees only once no socket uses it.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    sessions: RefCell<HashMap<String, Session>>,
}

/// A socket opened inside one namespace, and which namespace that was (device and inode of
/// the namespace file: a name can be reused by a later namespace).
struct Session {
    id: (u64, u64),
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

/// Sockets a [`Netlink`] keeps open at most; the oldest is closed beyond (bounds the
/// namespaces one driver keeps alive).
const MAX_SESSIONS: usize = 64;

fn nl_err(what: String) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        what,
        source: Box::new(source),
    }
}

/// Device and inode of a namespace file: which namespace a path names now.
fn ns_id(ns: &str) -> Result<(u64, u64), NetError> {
    use std::os::unix::fs::MetadataExt;
    let p = netns::path(ns);
    let m = std::fs::metadata(&p).map_err(|source| NetError::Os {
        what: format!("opening namespace '{ns}'"),
        source,
    })?;
    Ok((m.dev(), m.ino()))
}

/// Whether a netlink error is the kernel's "no such device".
fn is_enodev(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.map(|c| c.get()) == Some(-libc::ENODEV))
}

impl Netlink {
    /// A netlink driver.
    pub fn new() -> Result<Self, NetError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| NetError::Os {
                what: "starting the netlink runtime".into(),
                source,
            })?;
        Ok(Self {
            runtime,
            sessions: RefCell::new(HashMap::new()),
        })
    }

    /// The socket of namespace `ns`, opened on first use; `inside` runs while the thread is in
    /// the namespace to open it (sysctls are per namespace of the writer), or right away in it
    /// if the socket is already open.
    fn handle_with(
        &self,
        ns: &str,
        inside: impl FnOnce() -> Result<(), NetError>,
    ) -> Result<Handle, NetError> {
        let id = ns_id(ns)?;
        let mut sessions = self.sessions.borrow_mut();
        if let Some(s) = sessions.get(ns) {
            if s.id == id && !s.task.is_finished() {
                let handle = s.handle.clone();
                drop(sessions);
                return Ok(handle);
            }
        }
        if let Some(old) = sessions.remove(ns) {
            old.task.abort();
        }
        if sessions.len() >= MAX_SESSIONS {
            for (_, s) in sessions.drain() {
                s.task.abort();
            }
        }
        let _rt = self.runtime.enter();
        let (connection, handle) = {
            let _guard = NetnsGuard::enter(ns)?;
            if ns_id("/proc/thread-self/ns/net")? != id {
                return Err(NetError::Invalid(format!(
                    "namespace '{ns}' changed while it was being entered"
                )));
            }
            inside()?;
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|source| NetError::Os {
                    what: format!("opening a netlink socket in '{ns}'"),
                    source,
                })?;
            (connection, handle)
        };
        let task = tokio::spawn(connection);
        sessions.insert(
            ns.to_string(),
            Session {
                id,
                handle: handle.clone(),
                task,
            },
        );
        Ok(handle)
    }

    fn handle(&self, ns: &str) -> Result<Handle, NetError> {
        self.handle_with(ns, || Ok(()))
    }

    /// Runs netlink requests inside namespace `ns`.
    pub(crate) fn within<T, F, Fut>(&self, ns: &str, f: F) -> Result<T, NetError>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = Result<T, NetError>>,
    {
        let handle = self.handle(ns)?;
        self.runtime.block_on(f(handle))
    }

    /// The index of link `name` in namespace `ns` (netlink: no `setns` once the namespace's
    /// socket is open), or `None` if there is none.
    pub fn link_index(&self, ns: &str, name: &str) -> Result<Option<u32>, NetError> {
        self.within(ns, |h| async move {
            index_request(&h, name)
                .await
                .map_err(nl_err(format!("looking {name} up in '{ns}'")))
        })
    }

    fn index_of(&self, ns: &str, name: &str) -> Result<u32, NetError> {
        self.link_index(ns, name)?
            .ok_or_else(|| NetError::NoSuchLink {
                link: name.to_string(),
                netns: ns.to_string(),
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
            add_veth_request(&h, name, mac, fd, peer, peer_mac)
                .await
                .map_err(nl_err(format!(
                    "creating veth {name} in '{ns}' (peer {peer} in '{peer_ns}')"
                )))
        })?;
        drop(peer_file);
        self.set_up(peer_ns, peer)
    }

    /// Brings a link up.
    pub fn set_up(&self, ns: &str, name: &str) -> Result<(), NetError> {
        let index = self.index_of(ns, name)?;
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
        let index = self.index_of(ns, name)?;
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
        let index = self.index_of(ns, dev)?;
        self.within(ns, |h| async move {
            add_route_request(&h, dst, plen, via, index)
                .await
                .map_err(nl_err(format!(
                    "adding route {dst}/{plen} dev {dev} in '{ns}'"
                )))
        })
    }
}

/// RTM_NEWLINK of a veth pair whose peer goes into the namespace open as `peer_fd`; the first
/// end up (the peer cannot be: a veth opens only once it has its peer, which it gets after
/// the peer is configured).
async fn add_veth_request(
    h: &Handle,
    name: &str,
    mac: [u8; 6],
    peer_fd: std::os::fd::RawFd,
    peer: &str,
    peer_mac: [u8; 6],
) -> Result<(), rtnetlink::Error> {
    let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .address(peer_mac.to_vec())
        .setns_by_fd(peer_fd)
        .build();
    let msg = LinkVeth::new(name, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .address(mac.to_vec())
        .up()
        .build();
    h.link().add(msg).execute().await
}

/// RTM_NEWROUTE of `dst/plen` out of link `index`, through `via` if given.
async fn add_route_request(
    h: &Handle,
    dst: Ipv6Addr,
    plen: u8,
    via: Option<Ipv6Addr>,
    index: u32,
) -> Result<(), rtnetlink::Error> {
    let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(dst, plen)
        .output_interface(index);
    if let Some(gw) = via {
        builder = builder.gateway(gw);
    }
    h.route().add(builder.build()).execute().await
}

/// RTM_NEWADDR of an IPv6 address without duplicate address detection (the addresses the
/// network plans are unique; DAD would hold them tentative, unusable, for a second).
async fn add_addr_nodad(
    h: &Handle,
    index: u32,
    addr: Ipv6Addr,
    plen: u8,
) -> Result<(), rtnetlink::Error> {
    use rtnetlink::packet_route::address::AddressHeaderFlags;
    let mut req = h.address().add(index, IpAddr::V6(addr), plen);
    req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    req.execute().await
}

/// The index of link `name` over an open socket, `None` if there is no such link.
async fn index_request(h: &Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    use futures_util::TryStreamExt;
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m.map(|m| m.header.index)),
        Err(e) if is_enodev(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Netlink {
    /// Deletes a link (a veth takes its peer with it). A link that is already gone is not an
    /// error.
    pub fn del_link(&self, ns: &str, name: &str) -> Result<(), NetError> {
        self.within(ns, |h| async move {
            let Some(index) = index_request(&h, name)
                .await
                .map_err(nl_err(format!("looking {name} up in '{ns}'")))?
            else {
                return Ok(());
            };
            match h.link().del(index).execute().await {
                Err(e) if is_enodev(&e) => Ok(()),
                other => other.map_err(nl_err(format!("deleting {name} in '{ns}'"))),
            }
        })
    }

    /// The IPv6 addresses (with prefix length) of a link.
    pub fn ipv6_addrs(&self, ns: &str, name: &str) -> Result<Vec<(Ipv6Addr, u8)>, NetError> {
        use futures_util::TryStreamExt;
        use rtnetlink::packet_route::address::AddressAttribute;
        let index = self.index_of(ns, name)?;
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
        let index = self.index_of(ns, dev)?;
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
    /// Wires an endpoint: veth `host_ifname` ↔ `ifname` (both up), the address /128 on
    /// `ifname`, a default route via the host's link-local gateway, and the host's /128 route
    /// back; returns the host-side veth's index. One socket per namespace, the endpoint's
    /// opened with the one `setns` that also sets its sysctls; the requests of each side after
    /// the veth go out together.
    pub fn plumb(&self, ep: &EndpointLink<'_>) -> Result<u32, NetError> {
        let host = self.handle(ep.host_netns)?;
        let inner = self.handle_with(ep.netns, || {
            netns::sysctl("net/ipv6/conf/all/accept_dad", "0")?;
            netns::sysctl("net/ipv6/conf/default/accept_dad", "0")
        })?;
        let peer_file = netns::open(ep.netns)?;
        let fd = peer_file.as_raw_fd();
        let (host_ns, ns, host_if, ifname) = (ep.host_netns, ep.netns, ep.host_ifname, ep.ifname);
        self.runtime.block_on(async {
            let lo = async {
                inner
                    .link()
                    .set(LinkUnspec::new_with_name("lo").up().build())
                    .execute()
                    .await
                    .map_err(nl_err(format!("bringing lo up in '{ns}'")))
            };
            let veth = async {
                add_veth_request(&host, host_if, ep.host_mac, fd, ifname, ep.mac)
                    .await
                    .map_err(nl_err(format!(
                        "creating veth {host_if} in '{host_ns}' (peer {ifname} in '{ns}')"
                    )))
            };
            futures_util::future::try_join(lo, veth).await?;
            let missing = |link: &str, netns: &str| NetError::NoSuchLink {
                link: link.to_string(),
                netns: netns.to_string(),
            };
            let host_side = async {
                let index = index_request(&host, host_if)
                    .await
                    .map_err(nl_err(format!("looking {host_if} up in '{host_ns}'")))?
                    .ok_or_else(|| missing(host_if, host_ns))?;
                add_addr_nodad(&host, index, ENDPOINT_GATEWAY, 64)
                    .await
                    .map_err(nl_err(format!(
                        "adding {ENDPOINT_GATEWAY}/64 to {host_if} in '{host_ns}'"
                    )))?;
                add_route_request(&host, ep.addr, 128, None, index)
                    .await
                    .map_err(nl_err(format!(
                        "adding route {}/128 dev {host_if} in '{host_ns}'",
                        ep.addr
                    )))?;
                Ok::<u32, NetError>(index)
            };
            let inner_side = async {
                let index = index_request(&inner, ifname)
                    .await
                    .map_err(nl_err(format!("looking {ifname} up in '{ns}'")))?
                    .ok_or_else(|| missing(ifname, ns))?;
                inner
                    .link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
                    .map_err(nl_err(format!("bringing {ifname} up in '{ns}'")))?;
                add_addr_nodad(&inner, index, ep.addr, 128)
                    .await
                    .map_err(nl_err(format!(
                        "adding {}/128 to {ifname} in '{ns}'",
                        ep.addr
                    )))?;
                add_route_request(
                    &inner,
                    Ipv6Addr::UNSPECIFIED,
                    0,
                    Some(ENDPOINT_GATEWAY),
                    index,
                )
                .await
                .map_err(nl_err(format!(
                    "adding the default route via {ENDPOINT_GATEWAY} dev {ifname} in '{ns}'"
                )))
            };
            let (index, ()) = futures_util::future::try_join(host_side, inner_side).await?;
            Ok(index)
        })
    }

    /// [`Netlink::plumb`], for callers that need no index.
    pub fn plumb_endpoint(&self, ep: &EndpointLink<'_>) -> Result<(), NetError> {
        self.plumb(ep).map(|_| ())
    }

    /// Forgets the socket of namespace `ns` (it holds the namespace alive): for a driver kept
    /// across endpoints, after one's namespace is done with.
    pub fn close(&self, ns: &str) {
        if let Some(s) = self.sessions.borrow_mut().remove(ns) {
            s.task.abort();
        }
    }
}
