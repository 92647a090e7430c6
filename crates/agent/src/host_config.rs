//! The host agent's configuration file (`ilanet agent --config /etc/ilanet/agent.yaml`): what a
//! real machine needs to run its agent. Parsing and validation are pure; the checks that need
//! the host (does the uplink exist?) are made by the caller with [`HostConfig::uplink`].
//!
//! Every error names the field (`tenants[1].sir_prefix: …`); a file with an unknown field is
//! refused, so a typo never silently falls back to a default.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ila::{ChecksumMode, Locator, SirPrefix, TenantNetwork, Vnid};
use serde::Deserialize;

use crate::{AgentConfig, MAX_LEASE_TTL};

/// Largest configuration file read (a host config is a few hundred bytes).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Most tenant networks one host serves.
pub const MAX_TENANTS: usize = 4096;

/// A configuration error, naming the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: String,
    /// The field (dotted path), or `-` for the whole file.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// The store section.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSpec {
    /// The embedded store, persisted in `data_dir` (one agent process per directory).
    Embedded {
        /// Data directory.
        data_dir: PathBuf,
    },
    /// An etcd cluster.
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
        /// The host's client certificate, its key and the CA of the members (`https://`
        /// endpoints; the certificate's CN is the host's etcd user). `None` only with
        /// `insecure: true` (or `--insecure-store`): no TLS, no credentials.
        tls: Option<store::pki::ClientTls>,
        /// The policy administrator's certificate and key (`store.policy_cert`,
        /// `store.policy_key`; CA as in `tls`): with them this agent serves `ilanet policy
        /// apply`/`delete`; without them, on etcd with TLS, it may only read policies.
        policy_tls: Option<store::pki::ClientTls>,
    },
}

/// A host agent's configuration, validated.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The agent's configuration.
    pub agent: AgentConfig,
    /// Which store, and where.
    pub store: StoreSpec,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`).
    pub log_level: String,
    /// Where Prometheus metrics are served (`GET /metrics`); `None`: not served.
    pub metrics: Option<SocketAddr>,
    /// The BGP speaker that announces the host's locator; `None`: locator routes are static.
    /// In EVPN mode: the speaker of the EVPN routes (required).
    pub bgp: Option<bgp::SpeakerConfig>,
    /// Where the host stands (the dashboard's map); `None`: not placed.
    pub location: Option<Location>,
    /// How the host joins the network.
    pub mode: HostMode,
}

/// A site's place on the map: WGS 84 degrees and a display name.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude, degrees north (−90 to 90).
    pub lat: f64,
    /// Longitude, degrees east (−180 to 180).
    pub lon: f64,
    /// Place name shown on the map.
    pub name: String,
}

impl Location {
    /// Checks the ranges (errors: field under `location`, reason).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(-90.0..=90.0).contains(&self.lat) {
            return Err(("lat", format!("{}: expected -90 to 90 degrees", self.lat)));
        }
        if !(-180.0..=180.0).contains(&self.lon) {
            return Err(("lon", format!("{}: expected -180 to 180 degrees", self.lon)));
        }
        if self.name.trim().is_empty() || self.name.len() > 64 {
            return Err(("name", "expected 1 to 64 characters".into()));
        }
        Ok(())
    }
}

/// How a host joins the network (`mode:` in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostMode {
    /// ILA in eBPF (the default).
    #[default]
    Ila,
    /// VXLAN per tenant, MP-BGP EVPN (see [`crate::evpn_host`]); no eBPF, no mapping store.
    Evpn,
}

impl HostConfig {
    /// The uplink interface (the caller checks that it exists).
    pub fn uplink(&self) -> &str {
        &self.agent.uplink
    }

    /// The EVPN agent's configuration, in EVPN mode.
    pub fn evpn(&self) -> Option<crate::evpn_host::EvpnConfig> {
        if self.mode != HostMode::Evpn {
            return None;
        }
        let a = &self.agent;
        Some(crate::evpn_host::EvpnConfig {
            host: a.host.clone(),
            host_netns: a.host_netns.clone(),
            uplink: a.uplink.clone(),
            underlay: a.underlay,
            tenants: a.tenants.clone(),
            socket: a.socket.clone(),
            state_file: a.state_file.with_file_name("evpn-endpoints.json"),
            netns_prefix: a.netns_prefix.clone(),
            underlay_mtu: 1500,
            speaker: self.bgp.clone()?,
            type3: true,
            route_target_asn: None,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: String,
    uplink: String,
    locator: String,
    underlay: String,
    tenants: Vec<RawTenant>,
    store: RawStore,
    #[serde(default = "default_socket")]
    socket: PathBuf,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    pin_dir: Option<PathBuf>,
    #[serde(default)]
    csum_mode: Option<String>,
    #[serde(default = "default_log_level")]
    log_level: String,
    #[serde(default)]
    netns: Option<String>,
    #[serde(default)]
    endpoint_netns_prefix: Option<String>,
    #[serde(default)]
    metrics: Option<RawListen>,
    #[serde(default)]
    bgp: Option<RawBgp>,
    #[serde(default)]
    location: Option<Location>,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBgp {
    asn: u32,
    #[serde(default)]
    router_id: Option<String>,
    #[serde(default)]
    listen: Option<String>,
    peers: Vec<RawPeer>,
    #[serde(default = "default_graceful_restart")]
    graceful_restart: u16,
    #[serde(default = "default_connect_retry")]
    connect_retry: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    address: String,
    #[serde(default)]
    asn: Option<u32>,
    #[serde(default)]
    passive: bool,
    #[serde(default = "default_hold_time")]
    hold_time: u16,
    #[serde(default = "default_bgp_port")]
    port: u16,
    #[serde(default = "default_max_prefixes")]
    max_prefixes: usize,
    #[serde(default)]
    route_server: bool,
}

fn default_graceful_restart() -> u16 {
    120
}
fn default_connect_retry() -> u64 {
    5
}
fn default_hold_time() -> u16 {
    9
}
fn default_bgp_port() -> u16 {
    179
}
fn default_max_prefixes() -> usize {
    10_000
}

/// Most BGP neighbours one host agent has.
pub const MAX_BGP_PEERS: usize = 64;

/// A listening address: `HOST:PORT`, or a bare port (loopback).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawListen {
    Port(u16),
    Addr(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    vnid: u32,
    sir_prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
enum RawStore {
    Embedded {
        #[serde(default)]
        data_dir: Option<PathBuf>,
    },
    Etcd {
        endpoints: Vec<String>,
        #[serde(default = "default_lease_ttl")]
        lease_ttl: u64,
        #[serde(default)]
        ca: Option<PathBuf>,
        #[serde(default)]
        cert: Option<PathBuf>,
        #[serde(default)]
        key: Option<PathBuf>,
        #[serde(default)]
        insecure: bool,
        #[serde(default)]
        policy_cert: Option<PathBuf>,
        #[serde(default)]
        policy_key: Option<PathBuf>,
    },
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ilanet")
}

fn default_log_level() -> String {
    "info".into()
}

fn default_lease_ttl() -> u64 {
    crate::DEFAULT_LEASE_TTL.as_secs()
}

/// Where a host agent's API socket is unless the configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ilanet/agent.sock";

/// Parses and validates a configuration file's text. `host_netns` is the namespace the agent
/// serves (the one it runs in).
pub fn parse(file: &str, text: &[u8], host_netns: &str) -> Result<HostConfig, ConfigError> {
    parse_with(file, text, host_netns, false)
}

/// [`parse`], with `insecure_store` (`--insecure-store`): an etcd store section may then go
/// without TLS credentials, as with `store.insecure: true`.
pub fn parse_with(
    file: &str,
    text: &[u8],
    host_netns: &str,
    insecure_store: bool,
) -> Result<HostConfig, ConfigError> {
    let err = |field: &str, reason: String| ConfigError {
        file: file.to_string(),
        field: field.to_string(),
        reason,
    };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(err(
            "-",
            format!("{} bytes, over the limit of {MAX_CONFIG_BYTES}", text.len()),
        ));
    }
    let de = serde_norway::Deserializer::from_slice(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        err(
            if path.is_empty() { "-" } else { &path },
            e.into_inner().to_string(),
        )
    })?;
    crate::endpoint::validate_name(&raw.host).map_err(|_| {
        err(
            "host",
            format!(
                "'{}' is not a valid host name (a-z, 0-9, '-', '_', '.')",
                raw.host
            ),
        )
    })?;
    if raw.uplink.is_empty() || raw.uplink.len() > 15 || raw.uplink.contains(['/', ' ', ':']) {
        return Err(err(
            "uplink",
            format!("'{}' is not an interface name", raw.uplink),
        ));
    }
    let locator: Locator = raw
        .locator
        .parse()
        .map_err(|e| err("locator", format!("'{}': {e}", raw.locator)))?;
    let underlay: Ipv6Addr = raw
        .underlay
        .parse()
        .map_err(|e| err("underlay", format!("'{}': {e}", raw.underlay)))?;
    if raw.tenants.is_empty() {
        return Err(err(
            "tenants",
            "at least one tenant network is needed".into(),
        ));
    }
    if raw.tenants.len() > MAX_TENANTS {
        return Err(err(
            "tenants",
            format!(
                "{} tenant networks, at most {MAX_TENANTS}",
                raw.tenants.len()
            ),
        ));
    }
    let mut tenants = Vec::with_capacity(raw.tenants.len());
    for (i, t) in raw.tenants.iter().enumerate() {
        let field = |f: &str| format!("tenants[{i}].{f}");
        let vnid = Vnid::new(t.vnid).map_err(|e| err(&field("vnid"), e.to_string()))?;
        let sir: SirPrefix = t
            .sir_prefix
            .parse()
            .map_err(|e| err(&field("sir_prefix"), format!("'{}': {e}", t.sir_prefix)))?;
        if sir.to_string() == locator.to_string() {
            return Err(err(
                &field("sir_prefix"),
                format!("{sir} is the host's locator: a SIR prefix must not overlap a locator"),
            ));
        }
        let net = TenantNetwork::new(&t.name, vnid, sir)
            .map_err(|e| err(&field("name"), e.to_string()))?;
        if let Some(j) = tenants
            .iter()
            .position(|o: &TenantNetwork| o.name == net.name)
        {
            return Err(err(
                &field("name"),
                format!("'{}' is also tenants[{j}]", net.name),
            ));
        }
        if let Some(j) = tenants
            .iter()
            .position(|o: &TenantNetwork| o.vnid == net.vnid)
        {
            return Err(err(
                &field("vnid"),
                format!("{} is also tenants[{j}]'s", t.vnid),
            ));
        }
        tenants.push(net);
    }
    if locator.contains(underlay) {
        return Err(err(
            "underlay",
            format!("{underlay} lies inside the locator {locator}: the locator /64 is for container addresses on the wire; the uplink needs an address of its own"),
        ));
    }
    for (name, p) in [("socket", &raw.socket), ("state_dir", &raw.state_dir)] {
        if !p.is_absolute() {
            return Err(err(
                name,
                format!("{} is not an absolute path", p.display()),
            ));
        }
    }
    let csum_mode = match &raw.csum_mode {
        None => ChecksumMode::NeutralMap,
        Some(m) => m
            .parse()
            .map_err(|e| err("csum_mode", format!("'{m}': {e}")))?,
    };
    if !["error", "warn", "info", "debug", "trace"].contains(&raw.log_level.as_str()) {
        return Err(err(
            "log_level",
            format!(
                "'{}': expected error, warn, info, debug or trace",
                raw.log_level
            ),
        ));
    }
    let (store, lease_ttl) = match raw.store {
        RawStore::Embedded { data_dir } => (
            StoreSpec::Embedded {
                data_dir: data_dir.unwrap_or_else(|| raw.state_dir.join("store")),
            },
            crate::DEFAULT_LEASE_TTL,
        ),
        RawStore::Etcd {
            endpoints,
            lease_ttl,
            ca,
            cert,
            key,
            insecure,
            policy_cert,
            policy_key,
        } => {
            if endpoints.is_empty() {
                return Err(err(
                    "store.endpoints",
                    "at least one etcd client URL is needed".into(),
                ));
            }
            for (i, e) in endpoints.iter().enumerate() {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    return Err(err(
                        &format!("store.endpoints[{i}]"),
                        format!("'{e}' is not an http:// or https:// URL"),
                    ));
                }
            }
            let tls =
                etcd_tls(ca, cert, key, insecure || insecure_store).map_err(|(f, r)| err(&f, r))?;
            let want = if tls.is_some() { "https://" } else { "http://" };
            for (i, e) in endpoints.iter().enumerate() {
                if !e.starts_with(want) {
                    return Err(err(
                        &format!("store.endpoints[{i}]"),
                        format!(
                            "'{e}': {} needs {want} URLs",
                            if tls.is_some() {
                                "etcd with TLS credentials"
                            } else {
                                "etcd without TLS (insecure)"
                            }
                        ),
                    ));
                }
            }
            if lease_ttl == 0 || lease_ttl > MAX_LEASE_TTL.as_secs() {
                return Err(err(
                    "store.lease_ttl",
                    format!(
                        "{lease_ttl}: expected 1 to {} seconds",
                        MAX_LEASE_TTL.as_secs()
                    ),
                ));
            }
            let policy_tls = match (policy_cert, policy_key, &tls) {
                (None, None, _) => None,
                (Some(cert), Some(key), Some(t)) => Some(store::pki::ClientTls {
                    ca: t.ca.clone(),
                    cert,
                    key,
                }),
                (Some(_), Some(_), None) => {
                    return Err(err(
                        "store.policy_cert",
                        "the policy administrator's certificate needs TLS (store.ca, \
                         store.cert, store.key); an insecure etcd has no users"
                            .into(),
                    ))
                }
                (c, _, _) => {
                    return Err(err(
                        if c.is_none() {
                            "store.policy_cert"
                        } else {
                            "store.policy_key"
                        },
                        "give both store.policy_cert and store.policy_key (the policy \
                         administrator's client certificate and key), or neither"
                            .into(),
                    ))
                }
            };
            (
                StoreSpec::Etcd {
                    endpoints,
                    tls,
                    policy_tls,
                },
                Duration::from_secs(lease_ttl),
            )
        }
    };
    if let Some(ns) = &raw.netns {
        if ns.is_empty() || ns.contains('/') || ns.starts_with('.') {
            return Err(err(
                "netns",
                format!("'{ns}' is not a namespace name (as under /run/netns)"),
            ));
        }
    }
    let prefix = raw.endpoint_netns_prefix.unwrap_or_else(|| "ilanet".into());
    if crate::endpoint::validate_name(&prefix).is_err() {
        return Err(err(
            "endpoint_netns_prefix",
            format!("'{prefix}' is not valid (a-z, 0-9, '-', '_', '.')"),
        ));
    }
    let metrics = match &raw.metrics {
        None => None,
        Some(RawListen::Port(p)) => Some(crate::metrics::parse_listen(&p.to_string())),
        Some(RawListen::Addr(a)) => Some(crate::metrics::parse_listen(a)),
    }
    .transpose()
    .map_err(|e| err("metrics", e.to_string()))?;
    let bgp = match raw.bgp {
        None => None,
        Some(b) => Some(parse_bgp(&raw.host, b).map_err(|(f, r)| err(&f, r))?),
    };
    if let Some(l) = &raw.location {
        l.validate()
            .map_err(|(f, r)| err(&format!("location.{f}"), r))?;
    }
    let mode = match raw.mode.as_deref() {
        None | Some("ila") => HostMode::Ila,
        Some("evpn") => HostMode::Evpn,
        Some(other) => {
            return Err(err(
                "mode",
                format!("'{other}' is not a mode: expected ila or evpn"),
            ))
        }
    };
    if mode == HostMode::Evpn {
        if bgp.is_none() {
            return Err(err(
                "bgp",
                "mode evpn needs a bgp section (its speaker carries the EVPN routes)".into(),
            ));
        }
        if let Some((i, t)) = tenants
            .iter()
            .enumerate()
            .find(|(_, t)| t.vnid.get() > crate::evpn::MAX_VNI)
        {
            return Err(err(
                &format!("tenants[{i}].vnid"),
                format!(
                    "{} does not fit the 24-bit VXLAN VNI of mode evpn (at most {})",
                    t.vnid.get(),
                    crate::evpn::MAX_VNI
                ),
            ));
        }
    }
    let agent = AgentConfig {
        host: raw.host.clone(),
        host_netns: raw.netns.unwrap_or_else(|| host_netns.to_string()),
        uplink: raw.uplink,
        locator,
        underlay,
        tenants,
        csum_mode,
        pin_dir: raw
            .pin_dir
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/ilanet/host").join(&raw.host)),
        state_file: raw.state_dir.join("endpoints.json"),
        socket: raw.socket,
        netns_prefix: prefix,
        lease_ttl,
    };
    Ok(HostConfig {
        agent,
        store,
        log_level: raw.log_level,
        metrics,
        bgp,
        location: raw.location,
        mode,
    })
}

/// The store's TLS files: all three, or none when running insecure on purpose (errors: field,
/// reason).
fn etcd_tls(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure: bool,
) -> Result<Option<store::pki::ClientTls>, (String, String)> {
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some(store::pki::ClientTls { ca, cert, key })),
        (None, None, None) if insecure => Ok(None),
        (ca, cert, key) => {
            let missing: Vec<&str> = [
                ("ca", ca.is_none()),
                ("cert", cert.is_none()),
                ("key", key.is_none()),
            ]
            .into_iter()
            .filter_map(|(n, m)| m.then_some(n))
            .collect();
            let field = format!("store.{}", missing[0]);
            Err((
                field,
                format!(
                    "etcd needs TLS credentials: store.ca (the CA of the etcd members), \
                     store.cert and store.key (this host's client certificate, CN = the host \
                     name, and its key); missing: {}. To run without TLS and auth (anyone who \
                     reaches etcd can then rewrite every mapping), set store.insecure: true or \
                     start the agent with --insecure-store{}",
                    missing.join(", "),
                    if insecure {
                        " (and give none of the three)"
                    } else {
                        ""
                    }
                ),
            ))
        }
    }
}

/// The speaker's configuration from the `bgp` section (errors: field, reason).
fn parse_bgp(host: &str, b: RawBgp) -> Result<bgp::SpeakerConfig, (String, String)> {
    if b.asn == 0 {
        return Err(("bgp.asn".into(), "0 is not an AS number".into()));
    }
    let router_id = match &b.router_id {
        Some(r) => r
            .parse::<std::net::Ipv4Addr>()
            .map_err(|e| ("bgp.router_id".to_string(), format!("'{r}': {e}")))?,
        // A stable id of the host name (10.0.0.0/8, never 0).
        None => {
            let h = crate::endpoint::macs(host).0;
            std::net::Ipv4Addr::new(10, h[3], h[4], h[5].max(1))
        }
    };
    if router_id.is_unspecified() {
        return Err((
            "bgp.router_id".into(),
            "0.0.0.0 is not a BGP identifier".into(),
        ));
    }
    let listen = match b.listen.as_deref() {
        None => Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 179))),
        Some("off") => None,
        Some(a) => Some(
            a.parse::<SocketAddr>()
                .map_err(|e| ("bgp.listen".to_string(), format!("'{a}': {e} (or \"off\")")))?,
        ),
    };
    if b.peers.is_empty() {
        return Err((
            "bgp.peers".into(),
            "at least one neighbour is needed".into(),
        ));
    }
    if b.peers.len() > MAX_BGP_PEERS {
        return Err((
            "bgp.peers".into(),
            format!("{} neighbours, at most {MAX_BGP_PEERS}", b.peers.len()),
        ));
    }
    let mut peers = Vec::with_capacity(b.peers.len());
    for (i, p) in b.peers.iter().enumerate() {
        let field = |f: &str| format!("bgp.peers[{i}].{f}");
        let address: std::net::IpAddr = p
            .address
            .parse()
            .map_err(|e| (field("address"), format!("'{}': {e}", p.address)))?;
        if peers.iter().any(|q: &bgp::PeerConfig| q.address == address) {
            return Err((field("address"), format!("{address} is listed twice")));
        }
        if p.hold_time == 1 || p.hold_time == 2 {
            return Err((
                field("hold_time"),
                format!("{}: must be 0 or at least 3 seconds", p.hold_time),
            ));
        }
        if p.port == 0 {
            return Err((field("port"), "0 is not a port".into()));
        }
        if p.max_prefixes == 0 {
            return Err((field("max_prefixes"), "must be at least 1".into()));
        }
        peers.push(bgp::PeerConfig {
            address,
            remote_as: p.asn.unwrap_or(b.asn),
            passive: p.passive,
            hold_time: p.hold_time,
            port: p.port,
            max_prefixes: p.max_prefixes,
            route_server: p.route_server,
        });
    }
    if b.connect_retry == 0 || b.connect_retry > 3600 {
        return Err((
            "bgp.connect_retry".into(),
            format!("{}: expected 1 to 3600 seconds", b.connect_retry),
        ));
    }
    Ok(bgp::SpeakerConfig {
        local_as: b.asn,
        router_id,
        listen,
        local_address: None,
        peers,
        graceful_restart_time: (b.graceful_restart > 0).then_some(b.graceful_restart),
        connect_retry_secs: b.connect_retry,
        families: vec![bgp::Family::Ipv6Unicast],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "host: site1\nuplink: eth0\nlocator: 2001:db8:1::/64\nunderlay: 2001:db8:ffff:1::2\ntenants:\n  - name: research\n    vnid: 1\n    sir_prefix: fd00:dead:beef::/64\nstore:\n  kind: etcd\n  endpoints: [\"https://[2001:db8:ffff::10]:2379\"]\n  ca: /etc/ilanet/ca.crt\n  cert: /etc/ilanet/site1.crt\n  key: /etc/ilanet/site1.key\n  lease_ttl: 10\n";

    fn parse_str(s: &str) -> Result<HostConfig, ConfigError> {
        parse("agent.yaml", s.as_bytes(), "/proc/self/ns/net")
    }

    #[test]
    fn location_is_parsed_and_checked() {
        let c = parse_str(&format!(
            "{GOOD}location: {{lat: 39.74, lon: -104.99, name: Denver}}\n"
        ))
        .expect("good");
        let l = c.location.expect("location");
        assert_eq!((l.lat, l.lon, l.name.as_str()), (39.74, -104.99, "Denver"));
        assert_eq!(parse_str(GOOD).expect("good").location, None);
        let e = parse_str(&format!("{GOOD}location: {{lat: 91, lon: 0, name: x}}\n"))
            .expect_err("latitude out of range");
        assert_eq!(e.field, "location.lat", "{e}");
        let e =
            parse_str(&format!("{GOOD}location: {{lat: 1, lon: 0}}\n")).expect_err("name missing");
        assert!(e.to_string().contains("location"), "{e}");
    }

    #[test]
    fn the_example_parses() {
        let c = parse_str(GOOD).expect("good");
        assert_eq!(c.agent.host, "site1");
        assert_eq!(c.agent.tenants.len(), 1);
        assert_eq!(c.agent.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.agent.socket, PathBuf::from(DEFAULT_SOCKET));
        match &c.store {
            StoreSpec::Etcd { endpoints, tls, .. } => {
                assert_eq!(endpoints.len(), 1);
                let tls = tls.as_ref().expect("tls");
                assert_eq!(tls.cert, PathBuf::from("/etc/ilanet/site1.crt"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.metrics, None, "metrics are off unless configured");
    }

    #[test]
    fn mode_evpn_needs_bgp_and_24_bit_vnis() {
        let bgp = "bgp:\n  asn: 65000\n  peers:\n    - address: 2001:db8:ffff:1::1\n";
        let c = parse_str(&format!("{GOOD}mode: evpn\n{bgp}")).expect("evpn");
        assert_eq!(c.mode, HostMode::Evpn);
        let e = c.evpn().expect("evpn config");
        assert_eq!(e.underlay, c.agent.underlay);
        assert_eq!(e.speaker.local_as, 65000);
        assert_eq!(parse_str(GOOD).expect("ila").mode, HostMode::Ila);
        assert!(parse_str(GOOD).expect("ila").evpn().is_none());
        let err = parse_str(&format!("{GOOD}mode: evpn\n")).unwrap_err();
        assert_eq!(err.field, "bgp", "{err}");
        let err = parse_str(&format!("{GOOD}mode: vxlan\n")).unwrap_err();
        assert_eq!(err.field, "mode", "{err}");
        let big = GOOD.replace("vnid: 1", "vnid: 16777216");
        let err = parse_str(&format!("{big}mode: evpn\n{bgp}")).unwrap_err();
        assert_eq!(err.field, "tenants[0].vnid", "{err}");
    }

    #[test]
    fn metrics_address() {
        let with = |v: &str| parse_str(&format!("{GOOD}metrics: {v}\n"));
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            with("\"127.0.0.1:9477\"").expect("v4").metrics,
            Some(addr("127.0.0.1:9477"))
        );
        assert_eq!(
            with("9100").expect("port").metrics,
            Some(addr("127.0.0.1:9100"))
        );
        assert_eq!(
            with("\"[::]:9477\"").expect("any").metrics,
            Some(addr("[::]:9477"))
        );
        for bad in ["localhost:9477", "\"1.2.3.4\"", "70000", "[1, 2]"] {
            let e = with(bad).expect_err(bad);
            assert_eq!(e.field, "metrics", "{bad}: {e}");
        }
    }

    #[test]
    fn the_deploy_example_parses() {
        let text = include_str!("../../../deploy/agent.yaml");
        let c = parse_str(text).expect("deploy/agent.yaml");
        assert!(!c.agent.tenants.is_empty());
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("host: site1", "host: Site 1", "host"),
            ("uplink: eth0", "uplink: a/b", "uplink"),
            (
                "locator: 2001:db8:1::/64",
                "locator: 2001:db8:1::/48",
                "locator",
            ),
            ("underlay: 2001:db8:ffff:1::2", "underlay: nope", "underlay"),
            (
                "underlay: 2001:db8:ffff:1::2",
                "underlay: 2001:db8:1::9",
                "underlay",
            ),
            ("vnid: 1", "vnid: 999999999", "tenants[0].vnid"),
            (
                "sir_prefix: fd00:dead:beef::/64",
                "sir_prefix: 2001:db8:1::/64",
                "tenants[0].sir_prefix",
            ),
            ("lease_ttl: 10", "lease_ttl: 0", "store.lease_ttl"),
            (
                "lease_ttl: 10",
                "lease_ttl: 18446744073709551615",
                "store.lease_ttl",
            ),
            ("kind: etcd", "kind: consul", "store"),
            (
                "  lease_ttl: 10\n",
                "  lease_ttl: 10\n  tls_typo: x\n",
                "store",
            ),
            ("host: site1", "host: site1\nfavourite: blue", "favourite"),
        ];
        for (from, to, field) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "case {to} did not apply");
            let e = parse_str(&text).expect_err(to);
            assert!(
                e.field.starts_with(field) || (e.field == "-" && *field == "-"),
                "{to}: got field {} ({e})",
                e.field
            );
            assert!(e.to_string().starts_with("agent.yaml: "), "{e}");
        }
    }

    #[test]
    fn tenants_must_be_distinct() {
        let text = GOOD.replace(
            "store:",
            "  - name: research\n    vnid: 2\n    sir_prefix: fd00:dead:beef:1::/64\nstore:",
        );
        let e = parse_str(&text).expect_err("duplicate name");
        assert_eq!(e.field, "tenants[1].name", "{e}");
        let text = GOOD.replace(
            "store:",
            "  - name: market\n    vnid: 1\n    sir_prefix: fd00:dead:beef:1::/64\nstore:",
        );
        let e = parse_str(&text).expect_err("duplicate vnid");
        assert_eq!(e.field, "tenants[1].vnid", "{e}");
    }

    #[test]
    fn the_bgp_section_becomes_a_speaker_configuration_and_bad_fields_are_named() {
        let bgp = "bgp:\n  asn: 65001\n  peers:\n    - address: 2001:db8:ffff:1::1\n    - {address: 2001:db8:ffff:2::2, asn: 65002, passive: true, hold_time: 30}\n";
        let cfg = parse_str(&format!("{GOOD}{bgp}")).expect("parses");
        let s = cfg.bgp.expect("bgp");
        assert_eq!(s.local_as, 65001);
        assert_eq!(s.peers.len(), 2);
        assert_eq!(
            (s.peers[0].remote_as, s.peers[0].hold_time),
            (65001, 9),
            "iBGP by default"
        );
        assert_eq!((s.peers[1].remote_as, s.peers[1].passive), (65002, true));
        assert_eq!(s.graceful_restart_time, Some(120));
        assert_eq!(s.listen.map(|l| l.port()), Some(179));
        assert!(!s.router_id.is_unspecified());
        for (bad, field) in [
            (bgp.replace("asn: 65001", "asn: 0"), "bgp.asn"),
            (
                bgp.replace("hold_time: 30", "hold_time: 2"),
                "bgp.peers[1].hold_time",
            ),
            (
                bgp.replace("2001:db8:ffff:2::2", "2001:db8:ffff:1::1"),
                "bgp.peers[1].address",
            ),
            (
                bgp.replace("2001:db8:ffff:1::1", "not-an-address"),
                "bgp.peers[0].address",
            ),
            (format!("{bgp}  router_id: 1.2.3\n"), "bgp.router_id"),
            (format!("{bgp}  listen: nowhere\n"), "bgp.listen"),
            (format!("{bgp}  speed: 9\n"), "bgp"),
        ] {
            let e = parse_str(&format!("{GOOD}{bad}")).expect_err(field);
            assert!(e.field.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn etcd_without_tls_needs_an_explicit_insecure() {
        let plain = GOOD
            .replace("https://", "http://")
            .replace("  ca: /etc/ilanet/ca.crt\n", "")
            .replace("  cert: /etc/ilanet/site1.crt\n", "")
            .replace("  key: /etc/ilanet/site1.key\n", "");
        let e = parse_str(&plain).expect_err("no credentials");
        assert_eq!(e.field, "store.ca", "{e}");
        assert!(
            e.reason.contains("missing: ca, cert, key") && e.reason.contains("--insecure-store"),
            "{e}"
        );
        // Explicitly insecure, in the file or by the flag: accepted, without TLS.
        let insecure = plain.replace("  lease_ttl: 10\n", "  lease_ttl: 10\n  insecure: true\n");
        for c in [
            parse_str(&insecure).expect("insecure: true"),
            parse_with("agent.yaml", plain.as_bytes(), "/proc/self/ns/net", true)
                .expect("--insecure-store"),
        ] {
            assert!(matches!(c.store, StoreSpec::Etcd { tls: None, .. }));
        }
        // One file missing is named.
        let e = parse_str(&GOOD.replace("  key: /etc/ilanet/site1.key\n", "")).expect_err("key");
        assert_eq!(e.field, "store.key", "{e}");
        assert!(e.reason.contains("missing: key"), "{e}");
        // TLS credentials with http:// endpoints, and https:// without TLS, are refused.
        let e = parse_str(&GOOD.replace("https://", "http://")).expect_err("http with tls");
        assert_eq!(e.field, "store.endpoints[0]", "{e}");
        let e = parse_str(&insecure.replace("http://", "https://")).expect_err("https, no tls");
        assert_eq!(e.field, "store.endpoints[0]", "{e}");
    }

    #[test]
    fn huge_files_are_refused_before_parsing() {
        let text = format!("{GOOD}#{}", "x".repeat(MAX_CONFIG_BYTES));
        let e = parse_str(&text).expect_err("huge");
        assert!(e.reason.contains("limit"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse("fuzz.yaml", &bytes, "/proc/self/ns/net");
        }
    }
}
