//! EVPN mode, the shell: one host's tenant segments (VXLAN + bridge per tenant), its endpoints
//! (a namespace and a veth bridged into the tenant's segment; no eBPF), its BGP speaker
//! (L2VPN EVPN only, sockets in the host's namespace), and the task that keeps the kernel's
//! FDB, flood-list and neighbour entries equal to what [`crate::evpn`] computes from the best
//! routes. Serves a small API on a unix socket (the same line protocol as the ILA agent's:
//! `status`, `evpn_endpoint_add`, `endpoint_del`, `endpoint_list`, `evpn_state`). Needs a
//! multi-threaded tokio runtime (netlink work runs in `block_in_place`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bgp::evpn::{fmt_mac, parse_mac, BestEvpnRoute, EvpnChange, EvpnNlri, EvpnRoute, Mac};
use bgp::{Speaker, SpeakerConfig, SpeakerStatus};
use hostnet::evpn::{Segment, VXLAN6_OVERHEAD};
use hostnet::link::{Netlink, ENDPOINT_IFNAME};
use hostnet::netns;
use ila::TenantNetwork;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::api::{Request, Response};
use crate::evpn::{self, EvpnSite, KernelOp, KernelState, LocalMac};
use crate::{endpoint, lock, AgentError, ErrorKind};

/// Most endpoints one EVPN host serves.
pub const MAX_ENDPOINTS: usize = 4096;
/// Longest API request line.
const MAX_LINE: u64 = 64 * 1024;
/// How often failed kernel operations are retried (and the kernel state re-asserted).
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// What an EVPN host agent needs.
#[derive(Debug, Clone)]
pub struct EvpnConfig {
    /// Host name.
    pub host: String,
    /// The host's namespace (name or path).
    pub host_netns: String,
    /// Underlay device the VXLAN devices send through.
    pub uplink: String,
    /// The host's underlay address: its VTEP.
    pub underlay: Ipv6Addr,
    /// Tenant networks (VNID = VNI, at most 24 bits); the first is the default.
    pub tenants: Vec<TenantNetwork>,
    /// Unix socket of the API.
    pub socket: PathBuf,
    /// Record of the endpoints (their namespaces outlive the agent; `lab down` reads it).
    pub state_file: PathBuf,
    /// Prefix of endpoint namespace names (`<prefix>-<endpoint>`).
    pub netns_prefix: String,
    /// MTU of the underlay (overlay links get 70 bytes less).
    pub underlay_mtu: u32,
    /// The BGP speaker (its families are set to L2VPN EVPN).
    pub speaker: SpeakerConfig,
    /// Whether Type-3 routes are exchanged (see [`EvpnSite::type3`]).
    pub type3: bool,
    /// AS of the route targets (ASN:VNI); `None`: the speaker's own AS. Hosts in ASes of
    /// their own behind a route server share the network's.
    pub route_target_asn: Option<u32>,
}

/// One endpoint of an EVPN host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvpnEndpoint {
    /// Name.
    pub name: String,
    /// Tenant network.
    pub tenant: String,
    /// Its VNI.
    pub vni: u32,
    /// Namespace.
    pub netns: String,
    /// Host-side veth (a port of the tenant's bridge).
    pub host_ifname: String,
    /// MAC of its `eth0`.
    pub mac: String,
    /// Its address (/64 on `eth0`, on-link across the tenant's segment).
    pub addr: Ipv6Addr,
    /// MAC mobility sequence number it was announced with.
    pub seq: u32,
}

/// One installed FDB entry, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbRow {
    /// Segment.
    pub vni: u32,
    /// Remote MAC.
    pub mac: String,
    /// Remote VTEP.
    pub vtep: IpAddr,
}

/// One installed neighbour entry, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighRow {
    /// Segment.
    pub vni: u32,
    /// Address.
    pub ip: IpAddr,
    /// MAC.
    pub mac: String,
}

/// Reply of [`Request::EvpnState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvpnView {
    /// Host name.
    pub host: String,
    /// VTEP.
    pub vtep: IpAddr,
    /// Local endpoints.
    pub endpoints: Vec<EvpnEndpoint>,
    /// Routes this host announces.
    pub announced: Vec<EvpnRoute>,
    /// Best routes learned.
    pub routes: Vec<BestEvpnRoute>,
    /// Installed remote MACs.
    pub fdb: Vec<FdbRow>,
    /// Installed flood list: (VNI, VTEP).
    pub flood: Vec<(u32, IpAddr)>,
    /// Installed neighbour entries.
    pub neigh: Vec<NeighRow>,
    /// Kernel operations that failed and wait for the next resync.
    pub failed_ops: usize,
}

/// Reply of [`Request::Status`] in EVPN mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvpnStatus {
    /// Host name.
    pub host: String,
    /// Always `evpn`.
    pub mode: String,
    /// Local endpoints.
    pub endpoints: usize,
    /// Best EVPN routes learned.
    pub routes: usize,
    /// The speaker.
    pub speaker: SpeakerStatus,
}

#[derive(Default, Serialize, Deserialize)]
struct StateFile {
    endpoints: Vec<EvpnEndpoint>,
}

#[derive(Default)]
struct State {
    endpoints: BTreeMap<String, EvpnEndpoint>,
    routes: BTreeMap<EvpnNlri, BestEvpnRoute>,
    installed: KernelState,
    announced: BTreeMap<EvpnNlri, EvpnRoute>,
    failed_ops: usize,
}

impl State {
    fn local(&self) -> Vec<LocalMac> {
        self.endpoints
            .values()
            .filter_map(|e| {
                Some(LocalMac {
                    vni: e.vni,
                    mac: parse_mac(&e.mac)?,
                    ip: IpAddr::V6(e.addr),
                    seq: e.seq,
                })
            })
            .collect()
    }
}

/// One EVPN host.
pub struct EvpnHost {
    cfg: EvpnConfig,
    site: EvpnSite,
    speaker: Speaker,
    /// Blocking netlink driver (one socket in the host's namespace).
    nl: Mutex<Netlink>,
    state: tokio::sync::Mutex<State>,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |source| AgentError::Io { what, source }
}

/// The bridge MAC of a segment on a host (stable, locally administered).
fn bridge_mac(host: &str, vni: u32) -> Mac {
    let mut m = evpn::derived_mac(host, vni, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    m[1] = 0xee;
    m
}

/// The namespaces an EVPN host's record names (for `lab down`).
pub fn recorded_netns(state_file: &std::path::Path) -> Vec<String> {
    std::fs::read(state_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<StateFile>(&b).ok())
        .map(|s| s.endpoints.into_iter().map(|e| e.netns).collect())
        .unwrap_or_default()
}

impl EvpnHost {
    /// Creates the tenant segments, starts the speaker and the task that follows its routes.
    pub async fn start(mut cfg: EvpnConfig) -> Result<Arc<Self>, AgentError> {
        endpoint::validate_name(&cfg.host)?;
        if cfg.tenants.is_empty() {
            return Err(AgentError::Invalid(format!(
                "host '{}' has no tenant network configured",
                cfg.host
            )));
        }
        let mut vnis = BTreeSet::new();
        for t in &cfg.tenants {
            let vni = t.vnid.get();
            if vni > evpn::MAX_VNI {
                return Err(AgentError::Invalid(format!(
                    "tenant '{}': VNID {vni} does not fit the 24-bit VXLAN VNI (at most {})",
                    t.name,
                    evpn::MAX_VNI
                )));
            }
            if !vnis.insert(vni) {
                return Err(AgentError::Invalid(format!(
                    "tenant '{}': VNID {vni} is used by another tenant",
                    t.name
                )));
            }
        }
        if cfg.underlay_mtu < 1280 + VXLAN6_OVERHEAD {
            return Err(AgentError::Invalid(format!(
                "underlay MTU {} leaves less than IPv6's 1280 bytes inside VXLAN",
                cfg.underlay_mtu
            )));
        }
        cfg.speaker.families = vec![bgp::Family::L2vpnEvpn];
        let site = EvpnSite {
            router_id: cfg.speaker.router_id,
            asn: cfg.route_target_asn.unwrap_or(cfg.speaker.local_as),
            vtep: IpAddr::V6(cfg.underlay),
            vnis,
            type3: cfg.type3,
        };
        let nl = Netlink::new()?;
        let mtu = cfg.underlay_mtu - VXLAN6_OVERHEAD;
        for vni in &site.vnis {
            let seg = Segment {
                vni: *vni,
                local: cfg.underlay,
                mtu,
                bridge_mac: bridge_mac(&cfg.host, *vni),
            };
            // The netlink driver blocks on a runtime of its own: off the async threads.
            tokio::task::block_in_place(|| nl.ensure_segment(&cfg.host_netns, &seg, &cfg.uplink))?;
        }
        // Endpoints recorded before a restart: kept (re-attached, announced again) where their
        // namespace and veth survived, otherwise their leftovers removed.
        let mut recovered = BTreeMap::new();
        if let Ok(bytes) = std::fs::read(&cfg.state_file) {
            let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
                AgentError::Invalid(format!(
                    "EVPN state {} is unreadable: {e}",
                    cfg.state_file.display()
                ))
            })?;
            for ep in file.endpoints {
                let alive = netns::exists(&ep.netns)
                    && site.vnis.contains(&ep.vni)
                    && tokio::task::block_in_place(|| {
                        nl.link_index(&cfg.host_netns, &ep.host_ifname)
                            .ok()
                            .flatten()
                            .is_some()
                            && nl
                                .attach_port(&cfg.host_netns, &ep.host_ifname, ep.vni, mtu)
                                .is_ok()
                    });
                if alive && recovered.len() < MAX_ENDPOINTS {
                    log::info!("host {}: endpoint {} recovered", cfg.host, ep.name);
                    recovered.insert(ep.name.clone(), ep);
                } else {
                    log::warn!(
                        "host {}: endpoint {} recorded before the restart is gone; removing what is left",
                        cfg.host,
                        ep.name
                    );
                    let _ = tokio::task::block_in_place(|| netns::delete(&ep.netns));
                }
            }
        }
        let (mut speaker, ipv6) = Speaker::start_with(
            cfg.speaker.clone(),
            crate::routing::sockets_in(&cfg.host_netns),
        )
        .await
        .map_err(|e| AgentError::Invalid(format!("host '{}': {e}", cfg.host)))?;
        let mut changes = speaker.evpn_changes().ok_or_else(|| {
            AgentError::Internal(format!("host '{}': EVPN change stream taken", cfg.host))
        })?;
        let host = Arc::new(Self {
            cfg,
            site,
            speaker,
            nl: Mutex::new(nl),
            state: tokio::sync::Mutex::new(State {
                endpoints: recovered,
                ..State::default()
            }),
        });
        host.save(&*host.state.lock().await)?;
        // Whatever arrived before the stream was taken.
        {
            let mut st = host.state.lock().await;
            for best in host.speaker.evpn_routes() {
                st.routes.insert(best.route.key(), best);
            }
        }
        host.reconcile().await;
        let me = Arc::downgrade(&host);
        tokio::spawn(async move {
            // EVPN only: nothing comes on the IPv6 stream, but it stays open with the task.
            let _ipv6 = ipv6;
            let mut tick = tokio::time::interval(RESYNC_EVERY);
            loop {
                tokio::select! {
                    change = changes.recv() => {
                        let Some(change) = change else { break };
                        let Some(h) = me.upgrade() else { break };
                        let mut batch = vec![change];
                        // Take what else is queued: one reconcile per burst.
                        while let Ok(c) = changes.try_recv() {
                            batch.push(c);
                        }
                        h.learn(batch).await;
                    }
                    _ = tick.tick() => {
                        let Some(h) = me.upgrade() else { break };
                        h.reconcile().await;
                    }
                }
            }
        });
        Ok(host)
    }

    /// The host's configuration.
    pub fn config(&self) -> &EvpnConfig {
        &self.cfg
    }

    async fn learn(&self, changes: Vec<EvpnChange>) {
        {
            let mut st = self.state.lock().await;
            for c in changes {
                match c {
                    EvpnChange::Changed(best) => {
                        log::debug!("host {}: learned {}", self.cfg.host, best.route.nlri);
                        st.routes.insert(best.route.key(), best);
                    }
                    EvpnChange::Removed { nlri } => {
                        log::debug!("host {}: withdrawn {nlri}", self.cfg.host);
                        st.routes.remove(&nlri.route_key());
                    }
                }
            }
        }
        self.reconcile().await;
    }

    /// Makes the kernel and the announcements equal to what the model wants now.
    async fn reconcile(&self) {
        let mut st = self.state.lock().await;
        let remote: Vec<BestEvpnRoute> = st.routes.values().cloned().collect();
        let local = st.local();
        let want = evpn::desired(&self.site, &remote, &local);
        let ops = evpn::diff(&st.installed, &want);
        let mut failed = 0;
        if !ops.is_empty() {
            let nl = lock(&self.nl);
            for op in &ops {
                match tokio::task::block_in_place(|| self.execute(&nl, op)) {
                    Ok(()) => evpn::apply(&mut st.installed, op),
                    Err(e) => {
                        failed += 1;
                        log::error!("host {}: {e}", self.cfg.host);
                    }
                }
            }
            log::info!(
                "host {}: {} EVPN kernel changes ({failed} failed)",
                self.cfg.host,
                ops.len()
            );
        }
        st.failed_ops = failed;
        let want_routes = evpn::local_routes(&self.site, &local, &remote);
        let (announce, withdraw) = evpn::announcements(&st.announced, &want_routes);
        for nlri in withdraw {
            log::info!("host {}: withdrawing {nlri}", self.cfg.host);
            self.speaker.withdraw_evpn(nlri).await;
        }
        for r in announce {
            log::info!("host {}: announcing {}", self.cfg.host, r.nlri);
            self.speaker.announce_evpn(r).await;
        }
        st.announced = want_routes;
    }

    fn execute(&self, nl: &Netlink, op: &KernelOp) -> Result<(), AgentError> {
        let ns = &self.cfg.host_netns;
        match *op {
            KernelOp::FdbReplace { vni, mac, vtep } => nl.fdb_replace(ns, vni, mac, vtep)?,
            KernelOp::FdbDelete { vni, mac } => nl.fdb_delete(ns, vni, mac)?,
            KernelOp::FloodAdd { vni, vtep } => nl.flood_add(ns, vni, vtep)?,
            KernelOp::FloodDelete { vni, vtep } => nl.flood_delete(ns, vni, vtep)?,
            KernelOp::NeighReplace { vni, ip, mac } => nl.neigh_replace(ns, vni, ip, mac)?,
            KernelOp::NeighDelete { vni, ip } => nl.neigh_delete(ns, vni, ip)?,
        }
        Ok(())
    }

    fn save(&self, st: &State) -> Result<(), AgentError> {
        let path = &self.cfg.state_file;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let file = StateFile {
            endpoints: st.endpoints.values().cloned().collect(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| {
            io_err(format!("encoding {}", path.display()))(std::io::Error::other(e))
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(io_err(format!("writing {}", path.display())))
    }

    /// Creates an endpoint: namespace, veth bridged into its tenant's segment, address, MTU;
    /// then announces it (with a MAC mobility sequence above the one it had elsewhere).
    pub async fn add_endpoint(
        &self,
        name: &str,
        tenant: Option<&str>,
        addr: Ipv6Addr,
        mac: Option<&str>,
    ) -> Result<EvpnEndpoint, AgentError> {
        endpoint::validate_name(name)?;
        let t = match tenant {
            None => &self.cfg.tenants[0],
            Some(n) => self
                .cfg
                .tenants
                .iter()
                .find(|t| t.name == n)
                .ok_or_else(|| {
                    AgentError::Invalid(format!(
                        "tenant '{n}' is not configured on host '{}' (it has: {})",
                        self.cfg.host,
                        self.cfg
                            .tenants
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?,
        };
        let vni = t.vnid.get();
        if ila::SirPrefix::from_addr(addr) != t.sir {
            return Err(AgentError::Invalid(format!(
                "address {addr} is not in tenant '{}''s prefix {}",
                t.name, t.sir
            )));
        }
        let mac = match mac {
            Some(m) => {
                let parsed = parse_mac(m).ok_or_else(|| {
                    AgentError::Invalid(format!("mac '{m}' is not a MAC address (02:xx:…)"))
                })?;
                if parsed[0] & 1 == 1 || parsed == [0; 6] {
                    return Err(AgentError::Invalid(format!(
                        "mac '{m}' is not a unicast MAC address"
                    )));
                }
                parsed
            }
            None => evpn::derived_mac(&self.cfg.host, vni, IpAddr::V6(addr)),
        };
        let mut st = self.state.lock().await;
        if st.endpoints.contains_key(name) {
            return Err(AgentError::Conflict(format!(
                "endpoint '{name}' exists on host '{}'",
                self.cfg.host
            )));
        }
        if st.endpoints.len() >= MAX_ENDPOINTS {
            return Err(AgentError::Invalid(format!(
                "host '{}' has {MAX_ENDPOINTS} endpoints, the most it serves",
                self.cfg.host
            )));
        }
        if let Some(e) = st
            .endpoints
            .values()
            .find(|e| e.vni == vni && (e.addr == addr || parse_mac(&e.mac) == Some(mac)))
        {
            return Err(AgentError::Conflict(format!(
                "tenant '{}' already has {addr} or {} on this host (endpoint '{}')",
                t.name,
                fmt_mac(&mac),
                e.name
            )));
        }
        let ep = EvpnEndpoint {
            name: name.to_string(),
            tenant: t.name.clone(),
            vni,
            netns: format!("{}-{name}", self.cfg.netns_prefix),
            host_ifname: endpoint::host_ifname(name),
            mac: fmt_mac(&mac),
            addr,
            seq: 0,
        };
        // Recorded first: a crash mid-way leaves a namespace `lab down` still finds.
        st.endpoints.insert(name.to_string(), ep.clone());
        self.save(&st)?;
        let plumbed = tokio::task::block_in_place(|| {
            let nl = lock(&self.nl);
            self.plumb(&nl, &ep, mac)
        });
        if let Err(e) = plumbed {
            let _ = tokio::task::block_in_place(|| {
                lock(&self.nl).close(&ep.netns);
                netns::delete(&ep.netns)
            });
            st.endpoints.remove(name);
            self.save(&st)?;
            return Err(e);
        }
        let remote: Vec<BestEvpnRoute> = st.routes.values().cloned().collect();
        let seq = evpn::mobility_seq(&self.site, &remote, vni, mac);
        if let Some(e) = st.endpoints.get_mut(name) {
            e.seq = seq;
        }
        self.save(&st)?;
        drop(st);
        self.reconcile().await;
        log::info!(
            "host {}: endpoint {name} ({addr}, {}, VNI {vni}, seq {seq})",
            self.cfg.host,
            fmt_mac(&mac)
        );
        Ok(EvpnEndpoint { seq, ..ep })
    }

    fn plumb(&self, nl: &Netlink, ep: &EvpnEndpoint, mac: Mac) -> Result<(), AgentError> {
        let host_ns = &self.cfg.host_netns;
        let mtu = self.cfg.underlay_mtu - VXLAN6_OVERHEAD;
        netns::create(&ep.netns)?;
        netns::run_in(&ep.netns, || {
            // Addresses are the tenant's to plan: no duplicate address detection delay.
            netns::sysctl("net/ipv6/conf/all/accept_dad", "0")?;
            netns::sysctl("net/ipv6/conf/default/accept_dad", "0")
        })?;
        nl.set_up(&ep.netns, "lo")?;
        let mut host_mac = mac;
        host_mac[0] = 0x06;
        nl.add_veth(
            host_ns,
            &ep.host_ifname,
            host_mac,
            &ep.netns,
            ENDPOINT_IFNAME,
            mac,
        )?;
        nl.set_mtu(&ep.netns, ENDPOINT_IFNAME, mtu)?;
        nl.add_addr(&ep.netns, ENDPOINT_IFNAME, ep.addr, 64)?;
        nl.attach_port(host_ns, &ep.host_ifname, ep.vni, mtu)?;
        nl.close(&ep.netns);
        Ok(())
    }

    /// Removes an endpoint: withdraws its route, then its namespace (the veth goes with it).
    pub async fn del_endpoint(&self, name: &str) -> Result<(), AgentError> {
        let ep = {
            let mut st = self.state.lock().await;
            let ep = st.endpoints.remove(name).ok_or_else(|| {
                AgentError::NotFound(format!("no endpoint '{name}' on host '{}'", self.cfg.host))
            })?;
            self.save(&st)?;
            ep
        };
        self.reconcile().await;
        tokio::task::block_in_place(|| netns::delete(&ep.netns))?;
        log::info!("host {}: endpoint {name} removed", self.cfg.host);
        Ok(())
    }

    /// Local endpoints.
    pub async fn endpoints(&self) -> Vec<EvpnEndpoint> {
        self.state
            .lock()
            .await
            .endpoints
            .values()
            .cloned()
            .collect()
    }

    /// The whole EVPN state.
    pub async fn view(&self) -> EvpnView {
        let st = self.state.lock().await;
        EvpnView {
            host: self.cfg.host.clone(),
            vtep: self.site.vtep,
            endpoints: st.endpoints.values().cloned().collect(),
            announced: st.announced.values().cloned().collect(),
            routes: st.routes.values().cloned().collect(),
            fdb: st
                .installed
                .fdb
                .iter()
                .map(|(&(vni, mac), &vtep)| FdbRow {
                    vni,
                    mac: fmt_mac(&mac),
                    vtep,
                })
                .collect(),
            flood: st.installed.flood.iter().copied().collect(),
            neigh: st
                .installed
                .neigh
                .iter()
                .map(|(&(vni, ip), mac)| NeighRow {
                    vni,
                    ip,
                    mac: fmt_mac(mac),
                })
                .collect(),
            failed_ops: st.failed_ops,
        }
    }

    /// The host's state in short.
    pub async fn status(&self) -> EvpnStatus {
        let st = self.state.lock().await;
        EvpnStatus {
            host: self.cfg.host.clone(),
            mode: "evpn".into(),
            endpoints: st.endpoints.len(),
            routes: st.routes.len(),
            speaker: self.speaker.status(),
        }
    }

    async fn dispatch(&self, req: Request) -> Result<serde_json::Value, AgentError> {
        let enc = |v: Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| AgentError::Internal(format!("cannot encode the response: {e}")))
        };
        match req {
            Request::Status => enc(serde_json::to_value(self.status().await)),
            Request::EndpointList => enc(serde_json::to_value(self.endpoints().await)),
            Request::EvpnState => enc(serde_json::to_value(self.view().await)),
            Request::EvpnEndpointAdd {
                name,
                tenant,
                addr,
                mac,
            } => {
                let ep = self
                    .add_endpoint(&name, tenant.as_deref(), addr, mac.as_deref())
                    .await?;
                enc(serde_json::to_value(ep))
            }
            Request::EndpointDel { name, .. } => {
                self.del_endpoint(&name).await?;
                Ok(serde_json::Value::Null)
            }
            Request::BgpStatus => enc(serde_json::to_value(self.speaker.status())),
            _ => Err(AgentError::Invalid(format!(
                "host '{}' runs in evpn mode: this request needs an agent in ila mode",
                self.cfg.host
            ))),
        }
    }

    /// Serves the API on the configured socket until the listener fails.
    pub async fn serve(self: Arc<Self>) -> Result<(), AgentError> {
        let path = &self.cfg.socket;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(io_err(format!("listening on {}", path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err(format!("restricting {}", path.display())))?;
        }
        // Bounds the connections served at once.
        let slots = Arc::new(tokio::sync::Semaphore::new(64));
        loop {
            let (conn, _) = listener
                .accept()
                .await
                .map_err(io_err(format!("accepting on {}", path.display())))?;
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                drop(conn);
                continue;
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let _permit = permit;
                let (rd, mut wr) = conn.into_split();
                let mut lines = BufReader::new(rd.take(MAX_LINE * 16));
                loop {
                    let mut line = String::new();
                    let n = match tokio::time::timeout(
                        Duration::from_secs(60),
                        (&mut lines).take(MAX_LINE).read_line(&mut line),
                    )
                    .await
                    {
                        Ok(Ok(n)) => n,
                        _ => return,
                    };
                    if n == 0 {
                        return;
                    }
                    let response = if !line.ends_with('\n') {
                        Response::error(
                            ErrorKind::BadRequest,
                            format!("request longer than {MAX_LINE} bytes"),
                        )
                    } else {
                        match serde_json::from_str::<Request>(line.trim_end()) {
                            Ok(req) => match me.dispatch(req).await {
                                Ok(v) => Response::Ok(v),
                                Err(e) => Response::error(e.kind(), e.to_string()),
                            },
                            Err(e) => {
                                Response::error(ErrorKind::BadRequest, format!("bad request: {e}"))
                            }
                        }
                    };
                    let mut out = serde_json::to_vec(&response).unwrap_or_default();
                    out.push(b'\n');
                    if wr.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
}
