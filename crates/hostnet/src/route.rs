//! Routes a routing daemon installs: IPv6 prefixes in one namespace's main table, marked with
//! the daemon's own route protocol number (so they are told apart from static and kernel
//! routes, listed and flushed as the daemon's). Async: the BGP speaker runs in the agent's
//! tokio runtime.

use std::net::Ipv6Addr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::netns;
use crate::NetError;

/// The route protocol number ilanet's routes carry (`ip -6 route show proto 200`; numbers
/// above 192 are free for daemons' own use).
pub const ILANET_ROUTE_PROTOCOL: u8 = 200;

/// One route: destination, prefix length, gateway (none: on-link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// Destination prefix address.
    pub dest: Ipv6Addr,
    /// Prefix length.
    pub plen: u8,
    /// Gateway, if any.
    pub via: Option<Ipv6Addr>,
}

/// A netlink socket bound to one namespace (opened there once; it stays bound to it).
pub struct RouteTable {
    netns: String,
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RouteTable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn nl_err(what: String) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        what,
        source: Box::new(source),
    }
}

/// Whether `addr` is inside `dest/plen`.
fn contains(dest: Ipv6Addr, plen: u8, addr: Ipv6Addr) -> bool {
    let plen = u32::from(plen.min(128));
    if plen == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - plen);
    (u128::from(dest) & mask) == (u128::from(addr) & mask)
}

/// How to reach `next_hop` given the table `routes` (longest prefix match, as the kernel
/// would): through the gateway of the best route to it, or directly when that route is
/// on-link. `None`: no route at all. Routes of our own protocol are not used (a learned route
/// must never resolve through another learned one).
pub fn resolve(routes: &[Route], next_hop: Ipv6Addr) -> Option<Ipv6Addr> {
    routes
        .iter()
        .filter(|r| contains(r.dest, r.plen, next_hop))
        .max_by_key(|r| r.plen)
        .map(|r| r.via.unwrap_or(next_hop))
}

fn route_of(m: &RouteMessage) -> Route {
    let mut r = Route {
        dest: Ipv6Addr::UNSPECIFIED,
        plen: m.header.destination_prefix_length,
        via: None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => r.dest = *d,
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => r.via = Some(*g),
            _ => {}
        }
    }
    r
}

impl RouteTable {
    /// Opens a netlink socket inside namespace `ns` (a name under /run/netns or a path). Call
    /// from within a tokio runtime.
    pub fn open(ns: &str) -> Result<Self, NetError> {
        let (connection, handle, _) = netns::run_in(ns, || {
            rtnetlink::new_connection().map_err(|source| NetError::Os {
                what: format!("opening a netlink socket in '{ns}'"),
                source,
            })
        })?;
        let task = tokio::spawn(connection);
        Ok(RouteTable {
            netns: ns.to_string(),
            handle,
            task,
        })
    }

    async fn dump(&self) -> Result<Vec<RouteMessage>, NetError> {
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(format!("listing routes in '{}'", self.netns)))
    }

    /// The IPv6 routes of the main table carrying `protocol`.
    pub async fn list(&self, protocol: u8) -> Result<Vec<Route>, NetError> {
        let mut v: Vec<Route> = self
            .dump()
            .await?
            .iter()
            .filter(|m| m.header.protocol == RouteProtocol::from(protocol))
            .map(route_of)
            .collect();
        v.sort();
        Ok(v)
    }

    /// Installs (or replaces) `dest/plen` towards `next_hop`, resolved through the table as it
    /// is (a next hop that is not on-link goes through the gateway of the route to it).
    /// Returns the gateway used.
    pub async fn replace(
        &self,
        dest: Ipv6Addr,
        plen: u8,
        next_hop: Ipv6Addr,
        protocol: u8,
    ) -> Result<Ipv6Addr, NetError> {
        let others: Vec<Route> = self
            .dump()
            .await?
            .iter()
            .filter(|m| m.header.protocol != RouteProtocol::from(protocol))
            .map(route_of)
            .collect();
        let via = resolve(&others, next_hop).ok_or_else(|| {
            NetError::Invalid(format!(
                "no route to next hop {next_hop} of {dest}/{plen} in '{}'",
                self.netns
            ))
        })?;
        let mut msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dest, plen)
            .gateway(via)
            .protocol(RouteProtocol::from(protocol))
            .build();
        msg.header.protocol = RouteProtocol::from(protocol);
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!(
                "installing {dest}/{plen} via {via} in '{}'",
                self.netns
            )))?;
        Ok(via)
    }

    /// Removes `dest/plen` if it carries `protocol` (absent is fine). The kernel matches the
    /// protocol itself: a static or kernel route of the same prefix is never touched.
    pub async fn delete(&self, dest: Ipv6Addr, plen: u8, protocol: u8) -> Result<(), NetError> {
        let mut msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dest, plen)
            .protocol(RouteProtocol::from(protocol))
            .build();
        msg.header.protocol = RouteProtocol::from(protocol);
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| c.get()) == Some(-libc::ESRCH) =>
            {
                Ok(())
            }
            Err(e) => Err(nl_err(format!(
                "removing {dest}/{plen} in '{}'",
                self.netns
            ))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(dest: &str, plen: u8, via: Option<&str>) -> Route {
        Route {
            dest: dest.parse().expect("addr"),
            plen,
            via: via.map(|v| v.parse().expect("addr")),
        }
    }

    #[test]
    fn next_hops_resolve_by_longest_prefix() {
        let table = [
            r("::", 0, Some("2001:db8:ff:1::1")),
            r("2001:db8:ff:1::", 64, None),
            r("2001:db8:ff:9::", 64, Some("2001:db8:ff:1::7")),
        ];
        let on_link: Ipv6Addr = "2001:db8:ff:1::5".parse().expect("addr");
        assert_eq!(resolve(&table, on_link), Some(on_link));
        let far: Ipv6Addr = "2001:db8:ff:2::2".parse().expect("addr");
        assert_eq!(resolve(&table, far), "2001:db8:ff:1::1".parse().ok());
        let nine: Ipv6Addr = "2001:db8:ff:9::2".parse().expect("addr");
        assert_eq!(resolve(&table, nine), "2001:db8:ff:1::7".parse().ok());
        assert_eq!(resolve(&table[1..2], far), None);
    }

    #[test]
    fn prefix_containment() {
        let d: Ipv6Addr = "2001:db8:1:2::".parse().expect("addr");
        assert!(contains(d, 64, "2001:db8:1:2::9".parse().expect("addr")));
        assert!(!contains(d, 64, "2001:db8:1:3::9".parse().expect("addr")));
        assert!(contains(d, 0, "::1".parse().expect("addr")));
        assert!(contains(d, 200, d));
    }
}
