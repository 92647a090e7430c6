//! The lab's topology as data: names, addresses and mappings, computed before anything touches
//! the kernel (so it is tested without root and recorded on disk as it is).

use std::net::Ipv6Addr;

use ila::{
    ChecksumMode, Identifier, IdentifierAllocator, Locator, Mapping, SirPrefix, TenantNetwork, Vnid,
};
use serde::{Deserialize, Serialize};

use crate::agents::StoreKind;
use crate::LabError;

/// Longest lab name: namespace names are `<lab>-<host>-<container>` and stay readable.
/// Longest lab name (it prefixes namespace and interface names).
pub const MAX_LAB_NAME: usize = 24;
/// Sites and containers are numbered into MAC addresses and prefixes (one byte each).
const MAX_SITES: usize = 200;
const MAX_CONTAINERS: usize = 200;

/// Name of a host's uplink to the underlay (inside the host namespace).
pub const UPLINK_IFNAME: &str = "uplink";

/// How containers on different hosts reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// ILA: destination rewritten SIR ↔ ILA by eBPF; no encapsulation (the default).
    #[default]
    Ila,
    /// Plain routed IPv6, no overlay, no translation: the physical limit for benchmarks.
    Native,
    /// Docker-Swarm-like: a VXLAN overlay between hosts, containers bridged.
    Swarm,
    /// EVPN: per tenant a VXLAN segment, MACs and flood lists learned over MP-BGP EVPN through
    /// a route server (the paper's section 4); tenants may reuse addresses.
    Evpn,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Ila => "ila",
            Mode::Native => "native",
            Mode::Swarm => "swarm",
            Mode::Evpn => "evpn",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, LabError> {
        match s {
            "ila" => Ok(Mode::Ila),
            "native" => Ok(Mode::Native),
            "swarm" => Ok(Mode::Swarm),
            "evpn" => Ok(Mode::Evpn),
            other => Err(LabError::Invalid(format!(
                "unknown lab mode '{other}': expected ila, native, swarm or evpn"
            ))),
        }
    }
}

/// What makes the containers of an ILA lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// The agents create namespaces themselves (`endpoint add`; the default).
    #[default]
    Agent,
    /// podman with runc and the CNI plugin, as on a real machine (see [`crate::podman`]).
    Podman,
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Runtime::Agent => "agent",
            Runtime::Podman => "podman",
        })
    }
}

impl std::str::FromStr for Runtime {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, LabError> {
        match s {
            "agent" => Ok(Runtime::Agent),
            "podman" => Ok(Runtime::Podman),
            other => Err(LabError::Invalid(format!(
                "unknown runtime '{other}': expected agent or podman"
            ))),
        }
    }
}

/// What the user asks for: a name, sites and how many containers each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabSpec {
    /// Lab name; prefixes every namespace and pin path, so labs never collide.
    pub name: String,
    /// Sites (container hosts), in order.
    pub sites: Vec<SiteSpec>,
    /// Checksum mode of every mapping.
    pub csum_mode: ChecksumMode,
    /// Tenant networks; containers are spread over them in turn (container k of a site joins
    /// tenant k mod n).
    pub tenants: Vec<TenantNetwork>,
    /// How hosts are joined.
    pub mode: Mode,
    /// Which mapping store the agents use (ILA mode).
    pub store: StoreKind,
    /// Lease time to live of the agents.
    pub lease_ttl: std::time::Duration,
    /// With etcd: no TLS, no client certificates, no auth (`--insecure-store`). The default
    /// (false) makes a CA and a certificate per host, and gives each host's agent a role that
    /// may write only its own keys.
    #[serde(default)]
    pub insecure_store: bool,
    /// The `ilanet` binary that runs the agents (default: the running executable).
    pub agent_binary: Option<std::path::PathBuf>,
    /// What makes the containers (ILA mode).
    pub runtime: Runtime,
    /// The CNI plugin podman calls (default: `ilanet-cni` beside the agent binary).
    pub cni_plugin: Option<std::path::PathBuf>,
    /// Give containers the mission's roles as `app` labels: the first container of the first
    /// site is the `correlate` container, every other one a `search` container.
    pub app_roles: bool,
    /// How the router and the hosts learn where each locator lives (ILA mode).
    pub routing: RoutingMode,
    /// BGP timers of the hosts' sessions (with BGP routing).
    pub bgp: BgpTimers,
}

/// How locator reachability is distributed in a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingMode {
    /// Static locator routes on the router (no BGP).
    #[default]
    Static,
    /// BIRD 2 on the router as iBGP route reflector; the agents peer with it (SC17).
    Bird,
    /// FRR (bgpd + zebra) on the router as route reflector.
    Frr,
    /// gobgpd on the router as route reflector (kernel routes through FRR's zebra).
    Gobgp,
    /// The agents peer with each other (iBGP full mesh); BIRD on the router learns from all.
    Mesh,
}

impl RoutingMode {
    /// Whether the lab runs BGP.
    pub fn is_bgp(self) -> bool {
        self != RoutingMode::Static
    }
}

impl std::fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoutingMode::Static => "static",
            RoutingMode::Bird => "bird",
            RoutingMode::Frr => "frr",
            RoutingMode::Gobgp => "gobgp",
            RoutingMode::Mesh => "mesh",
        })
    }
}

impl std::str::FromStr for RoutingMode {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, LabError> {
        match s {
            "static" => Ok(RoutingMode::Static),
            "bird" => Ok(RoutingMode::Bird),
            "frr" => Ok(RoutingMode::Frr),
            "gobgp" => Ok(RoutingMode::Gobgp),
            "mesh" => Ok(RoutingMode::Mesh),
            other => Err(LabError::Invalid(format!(
                "unknown routing '{other}': expected static, bird, frr, gobgp or mesh"
            ))),
        }
    }
}

/// BGP timers of a lab's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpTimers {
    /// Hold time in seconds (0 or at least 3); keepalives every third of it.
    pub hold_time: u16,
    /// Graceful-restart time the agents advertise (0: off).
    pub graceful_restart: u16,
}

impl Default for BgpTimers {
    fn default() -> Self {
        Self {
            hold_time: 9,
            graceful_restart: 30,
        }
    }
}

/// One site of a [`LabSpec`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteSpec {
    /// Short host name (`[a-z0-9]`, used in namespace names).
    pub name: String,
    /// Human-readable place name (e.g. "Salt Lake City").
    pub display: String,
    /// Number of containers on this site.
    pub containers: usize,
}

impl LabSpec {
    /// `sites` generic sites (`site1`, `site2`, …) with `containers` containers each.
    pub fn generic(name: &str, sites: usize, containers: usize) -> Self {
        let sites = (1..=sites)
            .map(|i| SiteSpec {
                name: format!("site{i}"),
                display: format!("Site {i}"),
                containers,
            })
            .collect();
        Self {
            name: name.to_string(),
            sites,
            csum_mode: ChecksumMode::NeutralMap,
            tenants: vec![default_tenant()],
            mode: Mode::Ila,
            store: StoreKind::Embedded,
            lease_ttl: agent::DEFAULT_LEASE_TTL,
            insecure_store: false,
            agent_binary: None,
            runtime: Runtime::Agent,
            cni_plugin: None,
            app_roles: false,
            // Library users (tests, benchmarks) keep static routes unless they ask for BGP.
            routing: RoutingMode::Static,
            bgp: BgpTimers::default(),
        }
    }

    /// The paper's SC17 topology: New Orleans, Austin, Salt Lake City and Denver.
    pub fn sc17(name: &str, containers: usize) -> Self {
        let sites = [
            ("nola", "New Orleans"),
            ("austin", "Austin"),
            ("slc", "Salt Lake City"),
            ("denver", "Denver"),
        ]
        .into_iter()
        .map(|(n, d)| SiteSpec {
            name: n.to_string(),
            display: d.to_string(),
            containers,
        })
        .collect();
        Self {
            sites,
            tenants: vec![
                TenantNetwork {
                    name: "research".into(),
                    ..default_tenant()
                },
                TenantNetwork {
                    name: "market".into(),
                    vnid: Vnid::new(2).unwrap_or_else(|_| unreachable!("2 is a valid VNID")),
                    sir: SirPrefix::from_addr(Ipv6Addr::new(0xfd00, 0xdead, 0xbeef, 1, 0, 0, 0, 0)),
                },
            ],
            app_roles: true,
            // As at SC17: BIRD distributes the locators.
            routing: RoutingMode::Bird,
            ..Self::generic(name, 0, 0)
        }
    }
}

/// The SIR prefix the lab uses unless told otherwise (the paper's `dead:beef`, in ULA space).
pub fn default_sir_prefix() -> SirPrefix {
    SirPrefix::from_addr(Ipv6Addr::new(0xfd00, 0xdead, 0xbeef, 0, 0, 0, 0, 0))
}

/// The tenant the lab's containers belong to unless told otherwise.
pub fn default_vnid() -> Vnid {
    // 1 always fits in 28 bits.
    Vnid::new(1).unwrap_or_else(|_| unreachable!("1 is a valid VNID"))
}

/// The default tenant network: VNID 1 on [`default_sir_prefix`].
pub fn default_tenant() -> TenantNetwork {
    TenantNetwork {
        name: "default".into(),
        vnid: default_vnid(),
        sir: default_sir_prefix(),
    }
}

/// `n` tenant networks `t1`…`tn`: VNID k on `fd00:dead:beef:<k-1>::/64`.
pub fn numbered_tenants(n: u16) -> Vec<TenantNetwork> {
    (1..=n)
        .map(|k| TenantNetwork {
            name: format!("t{k}"),
            vnid: Vnid::new(u32::from(k)).unwrap_or_else(|_| unreachable!("u16 fits 28 bits")),
            sir: SirPrefix::from_addr(Ipv6Addr::new(0xfd00, 0xdead, 0xbeef, k - 1, 0, 0, 0, 0)),
        })
        .collect()
}

/// The whole lab, resolved: every name and address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// Lab name.
    pub name: String,
    /// Namespace of the underlay router joining the hosts.
    pub router_netns: String,
    /// Tenant networks (the first is the default).
    pub tenants: Vec<TenantNetwork>,
    /// Checksum mode of every mapping.
    pub csum_mode: ChecksumMode,
    /// How hosts are joined.
    #[serde(default)]
    pub mode: Mode,
    /// Which mapping store the agents use.
    #[serde(default)]
    pub store: StoreKind,
    /// What makes the containers.
    #[serde(default)]
    pub runtime: Runtime,
    /// How locators are routed.
    #[serde(default)]
    pub routing: RoutingMode,
    /// BGP timers (with BGP routing).
    #[serde(default)]
    pub bgp: BgpTimers,
    /// Hosts, in site order.
    pub hosts: Vec<HostPlan>,
}

/// One container host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostPlan {
    /// Short name.
    pub name: String,
    /// Place name.
    pub display: String,
    /// Network namespace of the host.
    pub netns: String,
    /// The host's locator (it owns `locator::/64`).
    pub locator: Locator,
    /// Underlay address of the host's uplink.
    pub uplink_addr: Ipv6Addr,
    /// Underlay address of the router's side of this host's link.
    pub router_addr: Ipv6Addr,
    /// Interface name of this host's link inside the router namespace.
    pub router_ifname: String,
    /// Containers on this host.
    pub containers: Vec<ContainerPlan>,
}

/// One container (endpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerPlan {
    /// Name, unique in the lab (`<host>-<n>`); with podman also the container's name.
    pub name: String,
    /// Network namespace of the container: a name under /run/netns, or (made by podman) the
    /// path the runtime gave it.
    pub netns: String,
    /// The runtime's container id (podman), once the container exists.
    #[serde(default)]
    pub container_id: Option<String>,
    /// Host-side veth name (inside the host namespace).
    pub host_ifname: String,
    /// Tenant network the container belongs to.
    pub tenant: String,
    /// Labels (`site`, `tenant`, and `app` with roles).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The container's identifier.
    pub identifier: Identifier,
    /// The container's SIR address (what it has and what peers talk to).
    pub sir_addr: Ipv6Addr,
    /// MAC of the container's `eth0`.
    pub mac: [u8; 6],
    /// MAC of the host-side veth.
    pub host_mac: [u8; 6],
}

impl Plan {
    /// Resolves a spec into names and addresses; rejects what cannot be built.
    pub fn new(spec: &LabSpec) -> Result<Self, LabError> {
        validate_lab_name(&spec.name)?;
        if spec.lease_ttl.as_secs() == 0 || spec.lease_ttl > agent::MAX_LEASE_TTL {
            return Err(LabError::Invalid(format!(
                "lease TTL {:?} is out of range: 1 to {} seconds",
                spec.lease_ttl,
                agent::MAX_LEASE_TTL.as_secs()
            )));
        }
        if spec.sites.is_empty() || spec.sites.len() > MAX_SITES {
            return Err(LabError::Invalid(format!(
                "--sites must be between 1 and {MAX_SITES}, got {}",
                spec.sites.len()
            )));
        }
        if spec.runtime == Runtime::Podman && spec.mode != Mode::Ila {
            return Err(LabError::Invalid(format!(
                "--runtime podman needs ILA mode (the CNI plugin asks ilanet's agents), not {}",
                spec.mode
            )));
        }
        if spec.mode == Mode::Evpn && !matches!(spec.routing, RoutingMode::Gobgp | RoutingMode::Frr)
        {
            return Err(LabError::Invalid(format!(
                "--mode evpn needs a route server: --routing gobgp (the default) or frr, not {}",
                spec.routing
            )));
        }
        if spec.mode == Mode::Evpn {
            if let Some(t) = spec.tenants.iter().find(|t| t.vnid.get() > MAX_EVPN_VNI) {
                return Err(LabError::Invalid(format!(
                    "tenant '{}': VNID {} does not fit the 24-bit VXLAN VNI (at most {MAX_EVPN_VNI})",
                    t.name,
                    t.vnid.get()
                )));
            }
        }
        if spec.routing.is_bgp() && !matches!(spec.mode, Mode::Ila | Mode::Evpn) {
            return Err(LabError::Invalid(format!(
                "--routing {} needs ILA mode (the agents speak BGP), not {}; use --routing static",
                spec.routing, spec.mode
            )));
        }
        if spec.bgp.hold_time == 1 || spec.bgp.hold_time == 2 {
            return Err(LabError::Invalid(format!(
                "BGP hold time must be 0 or at least 3 seconds, not {}",
                spec.bgp.hold_time
            )));
        }
        if spec.tenants.is_empty() {
            return Err(LabError::Invalid(
                "a lab needs at least one tenant network".into(),
            ));
        }
        let mut allocators: Vec<IdentifierAllocator> = spec
            .tenants
            .iter()
            .map(|t| IdentifierAllocator::for_vnid(t.vnid))
            .collect();
        let mut hosts = Vec::with_capacity(spec.sites.len());
        for (h, site) in spec.sites.iter().enumerate() {
            validate_name("site name", &site.name, 16)?;
            if hosts.iter().any(|x: &HostPlan| x.name == site.name) {
                return Err(LabError::Invalid(format!(
                    "site name '{}' appears twice",
                    site.name
                )));
            }
            if site.containers > MAX_CONTAINERS {
                return Err(LabError::Invalid(format!(
                    "--containers must be at most {MAX_CONTAINERS}, got {} (site '{}')",
                    site.containers, site.name
                )));
            }
            let n = h as u16 + 1;
            let netns = format!("{}-{}", spec.name, site.name);
            let mut containers = Vec::with_capacity(site.containers);
            for c in 0..site.containers {
                let t = c % spec.tenants.len();
                let tenant = &spec.tenants[t];
                let identifier = if spec.mode == Mode::Evpn {
                    // Each tenant plans its own addresses: the k-th container of a tenant on
                    // host n is ::n:k in the tenant's prefix, whatever other tenants use (two
                    // tenants on one prefix then have the same addresses, on different VNIs).
                    Identifier(((n as u64) << 16) | (c / spec.tenants.len() + 1) as u64)
                } else {
                    allocators[t].allocate()?
                };
                containers.push(ContainerPlan {
                    name: format!("{}-{}", site.name, c + 1),
                    netns: format!("{netns}-{}", c + 1),
                    container_id: None,
                    host_ifname: format!("lxc{}", c + 1),
                    tenant: tenant.name.clone(),
                    labels: {
                        let mut l = std::collections::BTreeMap::from([
                            ("site".to_string(), site.name.clone()),
                            ("tenant".to_string(), tenant.name.clone()),
                        ]);
                        if spec.app_roles {
                            let role = if h == 0 && c == 0 {
                                "correlate"
                            } else {
                                "search"
                            };
                            l.insert("app".to_string(), role.to_string());
                        }
                        l
                    },
                    identifier,
                    sir_addr: if spec.mode == Mode::Evpn {
                        evpn_address(tenant, identifier)
                    } else {
                        tenant.address(identifier)
                    },
                    mac: [0x02, 0x1a, 0x00, n as u8, c as u8 + 1, 0x01],
                    host_mac: [0x02, 0x1a, 0x00, n as u8, c as u8 + 1, 0x02],
                });
            }
            hosts.push(HostPlan {
                name: site.name.clone(),
                display: site.display.clone(),
                netns,
                // Locators 2001:db8:<n>::/64, underlay links 2001:db8:ffff:<n>::/64.
                locator: Locator::from_addr(Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 0)),
                uplink_addr: Ipv6Addr::new(0x2001, 0xdb8, 0xffff, n, 0, 0, 0, 2),
                router_addr: Ipv6Addr::new(0x2001, 0xdb8, 0xffff, n, 0, 0, 0, 1),
                router_ifname: format!("to-{}", truncate(&site.name, 12)),
                containers,
            });
        }
        Ok(Self {
            name: spec.name.clone(),
            router_netns: format!("{}-underlay", spec.name),
            tenants: spec.tenants.clone(),
            csum_mode: spec.csum_mode,
            mode: spec.mode,
            store: spec.store,
            runtime: spec.runtime,
            routing: spec.routing,
            bgp: spec.bgp,
            hosts,
        })
    }

    /// The namespaces the lab creates itself, router first. In ILA mode the agents create the
    /// containers' namespaces.
    pub fn lab_netns(&self) -> Vec<String> {
        let mut names = vec![self.router_netns.clone()];
        for host in &self.hosts {
            names.push(host.netns.clone());
            if !matches!(self.mode, Mode::Ila | Mode::Evpn) {
                names.extend(host.containers.iter().map(|c| c.netns.clone()));
            }
        }
        names
    }

    /// Every namespace of the lab (its own and its containers'), router first.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = vec![self.router_netns.clone()];
        for host in &self.hosts {
            names.push(host.netns.clone());
            names.extend(host.containers.iter().map(|c| c.netns.clone()));
        }
        names
    }

    /// The mapping of every container: its identifier to its host's locator.
    pub fn mappings(&self) -> Vec<(&HostPlan, &ContainerPlan, Mapping)> {
        self.hosts
            .iter()
            .flat_map(|host| {
                host.containers.iter().map(move |c| {
                    let mapping = Mapping {
                        sir: SirPrefix::from_addr(c.sir_addr),
                        identifier: c.identifier,
                        locator: host.locator,
                        mode: self.csum_mode,
                    };
                    (host, c, mapping)
                })
            })
            .collect()
    }

    /// Finds a container by name.
    pub fn container(&self, name: &str) -> Option<(&HostPlan, &ContainerPlan)> {
        self.hosts
            .iter()
            .flat_map(|h| h.containers.iter().map(move |c| (h, c)))
            .find(|(_, c)| c.name == name)
    }
}

/// Largest VNI of an EVPN lab's tenants (24 bits in VXLAN).
pub const MAX_EVPN_VNI: u32 = (1 << 24) - 1;

/// An EVPN container's address: the tenant's prefix and the identifier as plain low bits (no
/// ILA identifier format: EVPN never translates).
pub fn evpn_address(tenant: &TenantNetwork, identifier: Identifier) -> Ipv6Addr {
    let prefix = u128::from(tenant.sir.to_addr()) & !u128::from(u64::MAX);
    Ipv6Addr::from(prefix | u128::from(identifier.0))
}

/// `n` tenant networks `t1`…`tn` for EVPN, all on the default prefix: VNID k keeps tenant k
/// apart, and the same addresses appear in every tenant.
pub fn overlapping_tenants(n: u16) -> Vec<TenantNetwork> {
    (1..=n)
        .map(|k| TenantNetwork {
            name: format!("t{k}"),
            vnid: Vnid::new(u32::from(k)).unwrap_or_else(|_| unreachable!("u16 fits 28 bits")),
            sir: default_sir_prefix(),
        })
        .collect()
}

fn truncate(s: &str, n: usize) -> &str {
    &s[..s.len().min(n)]
}

/// Checks a lab name as `lab up` does. Every command that takes a lab name calls this before
/// building a path from it: a name like `''`, `.` or `..` would otherwise point at other labs'
/// records and pins, or at all of /sys/fs/bpf.
pub fn validate_lab_name(name: &str) -> Result<(), LabError> {
    validate_name("lab name", name, MAX_LAB_NAME)
}

fn validate_name(what: &str, name: &str, max: usize) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "{what} '{name}' is not valid: use 1 to {max} characters of a-z, 0-9 and '-', not starting with '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sc17_plan_has_four_named_sites_and_distinct_addresses() {
        let plan = Plan::new(&LabSpec::sc17("t", 2)).expect("plan");
        let names: Vec<_> = plan.hosts.iter().map(|h| h.display.as_str()).collect();
        assert_eq!(names, ["New Orleans", "Austin", "Salt Lake City", "Denver"]);
        let mut sirs: Vec<_> = plan.mappings().iter().map(|(_, c, _)| c.sir_addr).collect();
        assert_eq!(sirs.len(), 8);
        sirs.sort();
        sirs.dedup();
        assert_eq!(sirs.len(), 8, "SIR addresses must be unique");
        let mut locs: Vec<_> = plan.hosts.iter().map(|h| h.locator).collect();
        locs.dedup();
        assert_eq!(locs.len(), 4);
        // 1 router + 4 hosts + 8 containers
        assert_eq!(plan.netns_names().len(), 13);
    }

    #[test]
    fn mapping_addresses_share_the_identifier() {
        let plan = Plan::new(&LabSpec::generic("t", 2, 3)).expect("plan");
        for (host, c, m) in plan.mappings() {
            assert_eq!(m.sir_address(), c.sir_addr);
            let ila = m.ila_address().expect("translatable");
            assert_eq!(Locator::from_addr(ila), host.locator);
        }
    }

    #[test]
    fn evpn_tenants_reuse_addresses_and_need_a_route_server() {
        let mut spec = LabSpec::generic("t", 2, 3);
        spec.mode = Mode::Evpn;
        spec.tenants = overlapping_tenants(2);
        let err = Plan::new(&spec).unwrap_err();
        assert!(err.to_string().contains("route server"), "{err}");
        spec.routing = RoutingMode::Gobgp;
        let plan = Plan::new(&spec).expect("plan");
        let h1 = &plan.hosts[0].containers;
        // t1, t2, t1: the first of each tenant is ::1:1, the second of t1 ::1:2.
        assert_eq!(
            h1[0].sir_addr,
            "fd00:dead:beef::1:1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(h1[1].sir_addr, h1[0].sir_addr);
        assert_ne!(h1[1].tenant, h1[0].tenant);
        assert_eq!(
            h1[2].sir_addr,
            "fd00:dead:beef::1:2".parse::<Ipv6Addr>().unwrap()
        );
        let mut macs: Vec<_> = plan
            .hosts
            .iter()
            .flat_map(|h| &h.containers)
            .map(|c| c.mac)
            .collect();
        macs.sort();
        macs.dedup();
        assert_eq!(macs.len(), 6, "MACs stay unique");
        // The agents make the containers' namespaces, as in ILA mode.
        assert_eq!(plan.lab_netns().len(), 3);
        spec.tenants[1].vnid = Vnid::new(1 << 24).expect("28-bit VNID");
        let err = Plan::new(&spec).unwrap_err();
        assert!(err.to_string().contains("24-bit"), "{err}");
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let err = Plan::new(&LabSpec::generic("Bad Name", 1, 1)).unwrap_err();
        assert!(err.to_string().contains("lab name 'Bad Name'"), "{err}");
        let err = Plan::new(&LabSpec::generic("ok", 0, 1)).unwrap_err();
        assert!(err.to_string().contains("--sites"), "{err}");
        let err = Plan::new(&LabSpec::generic("ok", 1, 1000)).unwrap_err();
        assert!(err.to_string().contains("--containers"), "{err}");
        for ttl in [0, agent::MAX_LEASE_TTL.as_secs() + 1, u64::MAX] {
            let mut spec = LabSpec::generic("ok", 1, 1);
            spec.lease_ttl = std::time::Duration::from_secs(ttl);
            let err = Plan::new(&spec).unwrap_err();
            assert!(err.to_string().contains("lease TTL"), "{err}");
        }
    }
}
