//! Endpoint plumbing on the host: namespace, veth, address, routes, program attachment — and
//! its removal. Blocking (netlink, setns); the agent runs it off the async threads.

use std::net::Ipv6Addr;
use std::sync::Mutex;

use dataplane::{HostDataplane, ProgramKind};
use hostnet::link::{self, EndpointLink, Netlink};
use hostnet::netns;

use crate::reconcile::LocalEndpoint;
use crate::{AgentConfig, AgentError};

/// Longest endpoint name (namespace names are `<prefix>-<name>`).
pub const MAX_NAME: usize = 40;

/// Checks an endpoint name: 1–40 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), AgentError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(AgentError::Invalid(format!(
            "endpoint name '{name}' is not valid: use 1 to {MAX_NAME} characters of a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
        )))
    }
}

/// 32-bit FNV-1a: a stable short hash for interface names and MACs.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Host-side veth name of an endpoint (stable across agent restarts, ≤ 15 characters).
pub fn host_ifname(name: &str) -> String {
    format!("lxc{:08x}", fnv1a(name))
}

/// MACs of an endpoint (`eth0`) and of its host-side veth: locally administered, stable.
pub fn macs(name: &str) -> ([u8; 6], [u8; 6]) {
    let h = fnv1a(name).to_be_bytes();
    (
        [0x02, 0x1b, h[0], h[1], h[2], h[3]],
        [0x02, 0x1c, h[0], h[1], h[2], h[3]],
    )
}

/// Checks what a runtime names an attachment by (CNI spec: a container id of letters, digits,
/// `_`, `.` and `-`; an interface name as the kernel takes it; an absolute namespace path).
pub fn validate_cni(
    container_id: &str,
    ifname: &str,
    netns: Option<&str>,
) -> Result<(), AgentError> {
    let id_ok = !container_id.is_empty()
        && container_id.len() <= 1024
        && container_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !id_ok {
        return Err(AgentError::Invalid(format!(
            "container id {container_id:?} is not valid: 1 to 1024 of letters, digits, '_', '.' and '-'"
        )));
    }
    let if_ok = !ifname.is_empty()
        && ifname.len() <= 15
        && ifname != "."
        && ifname != ".."
        && ifname
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !if_ok {
        return Err(AgentError::Invalid(format!(
            "interface name {ifname:?} is not valid: 1 to 15 printable characters, no '/' or ':'"
        )));
    }
    if let Some(ns) = netns {
        if !ns.starts_with('/') || ns.contains('\0') || ns.split('/').any(|c| c == "..") {
            return Err(AgentError::Invalid(format!(
                "netns {ns:?} is not an absolute path to a network namespace"
            )));
        }
    }
    Ok(())
}

/// The endpoint name of a CNI attachment: stable for one container interface, within the
/// endpoint name rules whatever the runtime's id looks like.
pub fn cni_endpoint_name(container_id: &str, ifname: &str) -> String {
    let h = [container_id, "/", ifname]
        .concat()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("cni-{h:016x}")
}

/// A MAC in the usual colon notation.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Verifies an endpoint's plumbing: namespace, interface with its /128, default route via the
/// gateway, host-side veth.
pub fn check(cfg: &AgentConfig, ep: &LocalEndpoint) -> Result<(), AgentError> {
    let bad = |what: String| {
        Err(AgentError::Invalid(format!(
            "endpoint '{}': {what}",
            ep.name
        )))
    };
    if !netns::exists(&ep.netns) {
        return bad(format!("namespace {} is gone", ep.netns));
    }
    if link::ifindex_in(&cfg.host_netns, &ep.host_ifname).is_err() {
        return bad(format!("host-side veth {} is gone", ep.host_ifname));
    }
    let nl = Netlink::new()?;
    let addrs = match nl.ipv6_addrs(&ep.netns, &ep.ifname) {
        Ok(a) => a,
        Err(_) => return bad(format!("interface {} is gone from {}", ep.ifname, ep.netns)),
    };
    if !addrs.contains(&(ep.sir_addr, 128)) {
        return bad(format!(
            "{} lacks its address {}/128",
            ep.ifname, ep.sir_addr
        ));
    }
    if !nl
        .default_gateways(&ep.netns, &ep.ifname)?
        .contains(&link::ENDPOINT_GATEWAY)
    {
        return bad(format!(
            "no default route via {} on {}",
            link::ENDPOINT_GATEWAY,
            ep.ifname
        ));
    }
    Ok(())
}

/// Durations of the steps of one plumbing operation, logged at debug level (what `bench cni`
/// figures are made of).
struct Steps {
    what: String,
    last: std::time::Instant,
    parts: Vec<(&'static str, std::time::Duration)>,
}

impl Steps {
    fn new(what: String) -> Self {
        Self {
            what,
            last: std::time::Instant::now(),
            parts: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.parts.push((step, now - self.last));
        self.last = now;
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if log::log_enabled!(log::Level::Debug) {
            let total: std::time::Duration = self.parts.iter().map(|p| p.1).sum();
            let parts: Vec<String> = self
                .parts
                .iter()
                .map(|(s, d)| format!("{s} {:.2}", d.as_secs_f64() * 1e3))
                .collect();
            log::debug!(
                "{}: {:.2} ms ({} ms)",
                self.what,
                total.as_secs_f64() * 1e3,
                parts.join(", ")
            );
        }
    }
}

/// Namespace name of an endpoint.
pub fn netns_name(cfg: &AgentConfig, name: &str) -> String {
    format!("{}-{name}", cfg.netns_prefix)
}

/// Where an endpoint's namespace comes from.
#[derive(Debug, Clone)]
pub enum Sandbox {
    /// The agent creates `<prefix>-<name>` (the lab, `ilanet endpoint add`).
    Own,
    /// A runtime created it (CNI): the agent plumbs it and never deletes it.
    Runtime {
        /// Namespace path (`CNI_NETNS`).
        netns: String,
        /// Interface to create inside it (`CNI_IFNAME`).
        ifname: String,
        /// The runtime's container id.
        container_id: String,
    },
}

/// Creates the endpoint's namespace (unless a runtime made it) and wiring and attaches
/// from-container. On failure nothing is left behind. The data path is locked only for the
/// attachment: the plumbing takes tens of milliseconds and must not hold up map updates from
/// the watch.
#[allow(clippy::too_many_arguments)]
pub fn create(
    cfg: &AgentConfig,
    dp: &Mutex<HostDataplane>,
    name: &str,
    sandbox: &Sandbox,
    identifier: ila::Identifier,
    sir_addr: Ipv6Addr,
    labels: std::collections::BTreeMap<String, String>,
    identity: u32,
) -> Result<LocalEndpoint, AgentError> {
    let mut steps = Steps::new(format!("plumbing endpoint '{name}'"));
    let host_if = host_ifname(name);
    // One driver for the whole endpoint: one socket per namespace, each opened once.
    let nl = Netlink::new()?;
    if nl.link_index(&cfg.host_netns, &host_if)?.is_some() {
        return Err(AgentError::Invalid(format!(
            "interface {host_if} for endpoint '{name}' already exists on host '{}'",
            cfg.host
        )));
    }
    let (ns, ifname, container_id) = match sandbox {
        Sandbox::Own => {
            let ns = netns_name(cfg, name);
            netns::create(&ns).map_err(|e| match e {
                hostnet::NetError::NetnsExists(_) => AgentError::Invalid(format!(
                    "endpoint name '{name}' is taken on host '{}': its namespace {ns} already \
                     exists (an endpoint of that name on another host, or one of the network's \
                     own namespaces such as a host's); choose another name",
                    cfg.host
                )),
                e => AgentError::from(e),
            })?;
            (ns, link::ENDPOINT_IFNAME.to_string(), None)
        }
        Sandbox::Runtime {
            netns: path,
            ifname,
            container_id,
        } => {
            if !netns::exists(path) {
                return Err(AgentError::Invalid(format!(
                    "container namespace {path} does not exist"
                )));
            }
            if nl.link_index(path, ifname)?.is_some() {
                return Err(AgentError::Invalid(format!(
                    "interface {ifname} already exists in container namespace {path}"
                )));
            }
            (path.clone(), ifname.clone(), Some(container_id.clone()))
        }
    };
    steps.mark("checks+netns");
    let owns_netns = container_id.is_none();
    let (mac, host_mac) = macs(name);
    let built = (|| -> Result<u32, AgentError> {
        let ifindex = nl.plumb(&EndpointLink {
            host_netns: &cfg.host_netns,
            netns: &ns,
            host_ifname: &host_if,
            host_mac,
            mac,
            ifname: &ifname,
            addr: sir_addr,
        })?;
        steps.mark("plumb");
        netns::run_in(&cfg.host_netns, || {
            crate::lock(dp)
                .attach(ProgramKind::FromContainer, &host_if)
                .map_err(AgentError::from)
        })?;
        steps.mark("attach");
        Ok(ifindex)
    })();
    match built {
        Ok(ifindex) => Ok(LocalEndpoint {
            name: name.to_string(),
            identifier,
            sir_addr,
            netns: ns,
            host_ifname: host_if,
            ifindex,
            mac,
            host_mac,
            labels,
            identity,
            container_id,
            ifname,
        }),
        Err(e) => {
            if owns_netns {
                destroy_parts(cfg, &ns, &host_if);
            } else {
                remove_veth(cfg, &host_if);
            }
            Err(e)
        }
    }
}

/// Removes what is left of an endpoint whose namespace vanished while the agent was down (a
/// container removed meanwhile): its veth, if any, and its link pin.
pub fn forget(cfg: &AgentConfig, ep: &LocalEndpoint) {
    remove_veth(cfg, &ep.host_ifname);
}

/// Removes a host-side veth (its peer in the container goes with it) and its link pin.
fn remove_veth(cfg: &AgentConfig, host_if: &str) {
    if let Err(e) = Netlink::new().and_then(|nl| nl.del_link(&cfg.host_netns, host_if)) {
        log::error!("removing {host_if}: {e}");
    }
    if let Err(e) = remove_link_pin(cfg, host_if) {
        log::error!("cleaning up the link pin of {host_if}: {e}");
    }
}

/// Removes what a creation interrupted by a crash made. The namespace is removed only where it
/// is evidently this host's: our host-side veth exists, or it holds nothing but `lo` yet (a
/// namespace of the same name that is in use elsewhere — another host's endpoint, a host — is
/// left alone).
pub fn remove_unfinished(cfg: &AgentConfig, p: &crate::PendingEndpoint) {
    if !p.owns_netns {
        // A runtime's namespace: only our veth goes.
        remove_veth(cfg, &p.host_ifname);
        return;
    }
    // A file that cannot be entered is a namespace whose creation the crash cut between the
    // file and its mount: nobody else can be using it.
    let empty = || {
        link::names_in(&p.netns)
            .map(|names| names.iter().all(|n| n == "lo"))
            .unwrap_or(true)
    };
    let ours = link::ifindex_in(&cfg.host_netns, &p.host_ifname).is_ok()
        || (netns::exists(&p.netns) && p.netns != cfg.host_netns && empty());
    if ours {
        log::warn!(
            "host {}: endpoint '{}' was being created when the agent stopped; removing its parts",
            cfg.host,
            p.name
        );
        destroy_parts(cfg, &p.netns, &p.host_ifname);
    }
}

/// Removes an endpoint's namespace (its veth pair goes with it) and pinned link; of an
/// endpoint in a runtime's namespace only the veth pair and the pin.
pub fn destroy(cfg: &AgentConfig, ep: &LocalEndpoint) -> Result<(), AgentError> {
    let mut steps = Steps::new(format!("removing endpoint '{}'", ep.name));
    if ep.container_id.is_some() {
        Netlink::new()?.del_link(&cfg.host_netns, &ep.host_ifname)?;
        steps.mark("veth");
    } else {
        netns::delete(&ep.netns)?;
        steps.mark("netns");
    }
    let r = remove_link_pin(cfg, &ep.host_ifname);
    steps.mark("pin");
    r
}

fn destroy_parts(cfg: &AgentConfig, ns: &str, ifname: &str) {
    if let Err(e) = netns::delete(ns) {
        log::error!("cleaning up namespace {ns}: {e}");
    }
    if let Err(e) = remove_link_pin(cfg, ifname) {
        log::error!("cleaning up the link pin of {ifname}: {e}");
    }
}

fn remove_link_pin(cfg: &AgentConfig, ifname: &str) -> Result<(), AgentError> {
    // The link is already defunct once the veth is gone; the pin only holds the object.
    let pin = cfg.pin_dir.join("links").join(ifname);
    match std::fs::remove_file(&pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AgentError::Io {
            what: format!("removing {}", pin.display()),
            source,
        }),
    }
}

/// Whether an endpoint recorded before a restart is still wired (namespace and veth exist);
/// refreshes its interface index.
pub fn revalidate(cfg: &AgentConfig, ep: &mut LocalEndpoint) -> bool {
    if !netns::exists(&ep.netns) {
        return false;
    }
    match link::ifindex_in(&cfg.host_netns, &ep.host_ifname) {
        Ok(i) => {
            ep.ifindex = i;
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("nola-1").is_ok());
        assert!(validate_name("a.b_c").is_ok());
        for bad in ["", "-x", "UP", "a/b", &"x".repeat(41)] {
            let e = validate_name(bad).expect_err(bad);
            assert!(e.to_string().contains("not valid"), "{e}");
        }
    }

    #[test]
    fn interface_names_fit_and_differ() {
        let a = host_ifname("nola-1");
        let b = host_ifname("nola-2");
        assert!(a.len() <= 15);
        assert_ne!(a, b);
        let (m1, h1) = macs("nola-1");
        assert_ne!(m1, h1);
        assert_eq!(m1[0] & 0x03, 0x02, "locally administered unicast");
    }
}
