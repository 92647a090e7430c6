//! Typed access to the pinned or freshly loaded maps.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use aya::Ebpf;
use policy::abi::{CidrKey, EndpointPolicy, PolicyKey, PolicyValue};
use policy::CompiledPolicy;

use crate::abi::{
    self, stat, IlaConfig, IlaCtKey, IlaCtVal, IlaEndpointVal, IlaEvent, IlaInKey, IlaInVal,
    IlaIpcacheVal, IlaOutKey, IlaOutVal, IlaVerdictEvent,
};
use crate::{
    ChecksumMode, Counters, CtEntry, DataplaneError, FlowEvent, FlowVerdict, InEntry, IpcacheEntry,
    LocalEndpoint, OutEntry, PolicyDirection, ProgramKind, Redirect, TranslationEvent,
    VerdictEvent, VerdictReason,
};

/// Map names, as in `bpf/lib/maps.h` and as pinned under the pin directory (never rename them:
/// pinned maps are reused across agent restarts).
pub(crate) const MAP_OUT: &str = "ILA_OUT";
pub(crate) const MAP_IN: &str = "ILA_IN";
pub(crate) const MAP_STATS: &str = "ILA_STATS";
pub(crate) const MAP_CONFIG: &str = "ILA_CONFIG";
pub(crate) const MAP_EVENTS: &str = "ILA_EVENTS";
pub(crate) const MAP_OUT_FILTER: &str = "ILA_OUT_FILTER";
pub(crate) const MAP_IN_FILTER: &str = "ILA_IN_FILTER";
pub(crate) const MAP_ENDPOINTS: &str = "ILA_ENDPOINTS";
pub(crate) const MAP_IPCACHE: &str = "ILA_IPCACHE";
pub(crate) const MAP_CT: &str = "ILA_CT";
pub(crate) const MAP_POLICY_EP: &str = "POLICY_EP";
pub(crate) const MAP_POLICY: &str = "POLICY";
pub(crate) const MAP_POLICY_CIDR: &str = "POLICY_CIDR";

/// `ILA_OUT_MAX_ENTRIES`: `max_entries` of `ILA_OUT`.
pub const OUT_MAX_ENTRIES: usize = 131072;
/// `ILA_IN_MAX_ENTRIES`: `max_entries` of `ILA_IN`.
pub const IN_MAX_ENTRIES: usize = 65536;
/// `ILA_ENDPOINTS_MAX_ENTRIES`: `max_entries` of `ILA_ENDPOINTS`.
pub const ENDPOINTS_MAX_ENTRIES: usize = 65536;
/// `ILA_IPCACHE_MAX_ENTRIES`: `max_entries` of `ILA_IPCACHE`.
pub const IPCACHE_MAX_ENTRIES: usize = 131072;
/// `ILA_CT_MAX_ENTRIES`: `max_entries` of `ILA_CT`.
pub const CT_MAX_ENTRIES: usize = 131072;
/// `ILA_EVENTS_BYTES`: size of the `ILA_EVENTS` ring buffer in bytes.
pub const EVENTS_BYTES: usize = 256 * 1024;
/// `max_entries` of the policy maps: `policy::abi` holds them (the defaults of
/// `policy::CompileLimits`).
pub use policy::abi::{POLICY_CIDR_MAX_ENTRIES, POLICY_EP_MAX_ENTRIES, POLICY_MAX_ENTRIES};

/// `POLICY_CIDR` keys after `prefixlen` (the rest of [`CidrKey`]).
type CidrData = [u8; CidrKey::SIZE - 4];

use policy::sync::{PolicyOps, PolicyWrite};

/// What [`HostMaps::replace_policy`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicySync {
    /// Entries written (new or changed, over the three maps).
    pub written: usize,
    /// Stale entries removed.
    pub removed: usize,
}

fn map_err(context: impl Into<String>) -> impl FnOnce(MapError) -> DataplaneError {
    let context = context.into();
    move |error| DataplaneError::Map {
        context,
        error: Box::new(error),
    }
}

/// The translation tables, counters, trace switch and event ring of one host.
pub struct HostMaps {
    out: HashMap<MapData, IlaOutKey, IlaOutVal>,
    inn: HashMap<MapData, IlaInKey, IlaInVal>,
    stats: PerCpuArray<MapData, u64>,
    config: Array<MapData, IlaConfig>,
    events: RingBuf<MapData>,
    out_filter: Array<MapData, u32>,
    in_filter: Array<MapData, u32>,
    endpoints: HashMap<MapData, [u8; 16], IlaEndpointVal>,
    ipcache: HashMap<MapData, [u8; 16], IlaIpcacheVal>,
    ct: HashMap<MapData, IlaCtKey, IlaCtVal>,
    policy_ep: HashMap<MapData, u32, [u8; EndpointPolicy::SIZE]>,
    policy: HashMap<MapData, [u8; PolicyKey::SIZE], [u8; PolicyValue::SIZE]>,
    policy_cidr: LpmTrie<MapData, CidrData, [u8; PolicyValue::SIZE]>,
}

impl fmt::Debug for HostMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostMaps").finish_non_exhaustive()
    }
}

fn typed<T>(name: &str, map: Map) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(map_err(format!("map {name} has an unexpected type")))
}

impl HostMaps {
    pub(crate) fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let mut take = |name: &str| {
            ebpf.take_map(name).ok_or_else(|| {
                DataplaneError::Invalid(format!("map {name} missing from the object"))
            })
        };
        Ok(Self {
            out: typed(MAP_OUT, take(MAP_OUT)?)?,
            inn: typed(MAP_IN, take(MAP_IN)?)?,
            stats: typed(MAP_STATS, take(MAP_STATS)?)?,
            config: typed(MAP_CONFIG, take(MAP_CONFIG)?)?,
            events: typed(MAP_EVENTS, take(MAP_EVENTS)?)?,
            out_filter: typed(MAP_OUT_FILTER, take(MAP_OUT_FILTER)?)?,
            in_filter: typed(MAP_IN_FILTER, take(MAP_IN_FILTER)?)?,
            endpoints: typed(MAP_ENDPOINTS, take(MAP_ENDPOINTS)?)?,
            ipcache: typed(MAP_IPCACHE, take(MAP_IPCACHE)?)?,
            ct: typed(MAP_CT, take(MAP_CT)?)?,
            policy_ep: typed(MAP_POLICY_EP, take(MAP_POLICY_EP)?)?,
            policy: typed(MAP_POLICY, take(MAP_POLICY)?)?,
            policy_cidr: typed(MAP_POLICY_CIDR, take(MAP_POLICY_CIDR)?)?,
        })
    }

    /// Opens the maps pinned under `pin_dir` by [`crate::HostDataplane::load`], without programs.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, DataplaneError> {
        let open = |name: &str| -> Result<Map, DataplaneError> {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path)
                .map_err(map_err(format!("opening pinned map {}", path.display())))?;
            Map::from_map_data(data)
                .map_err(map_err(format!("typing pinned map {}", path.display())))
        };
        Ok(Self {
            out: typed(MAP_OUT, open(MAP_OUT)?)?,
            inn: typed(MAP_IN, open(MAP_IN)?)?,
            stats: typed(MAP_STATS, open(MAP_STATS)?)?,
            config: typed(MAP_CONFIG, open(MAP_CONFIG)?)?,
            events: typed(MAP_EVENTS, open(MAP_EVENTS)?)?,
            out_filter: typed(MAP_OUT_FILTER, open(MAP_OUT_FILTER)?)?,
            in_filter: typed(MAP_IN_FILTER, open(MAP_IN_FILTER)?)?,
            endpoints: typed(MAP_ENDPOINTS, open(MAP_ENDPOINTS)?)?,
            ipcache: typed(MAP_IPCACHE, open(MAP_IPCACHE)?)?,
            ct: typed(MAP_CT, open(MAP_CT)?)?,
            policy_ep: typed(MAP_POLICY_EP, open(MAP_POLICY_EP)?)?,
            policy: typed(MAP_POLICY, open(MAP_POLICY)?)?,
            policy_cidr: typed(MAP_POLICY_CIDR, open(MAP_POLICY_CIDR)?)?,
        })
    }

    /// Marks the /64 of every key of `ILA_OUT` and `ILA_IN` in the prefix filters. Needed when
    /// the tables were filled by a version without filters; harmless (idempotent) otherwise.
    pub(crate) fn rebuild_filters(&mut self) -> Result<(), DataplaneError> {
        let outs: Vec<Ipv6Addr> = self.out_entries()?.into_iter().map(|(k, _)| k).collect();
        for k in outs {
            mark(&mut self.out_filter, MAP_OUT_FILTER, k)?;
        }
        let ins: Vec<Ipv6Addr> = self.in_entries()?.into_iter().map(|(k, _)| k).collect();
        for k in ins {
            mark(&mut self.in_filter, MAP_IN_FILTER, k)?;
        }
        // from-wire checks SIR destinations of local endpoints through the ILA_OUT filter.
        let eps: Vec<Ipv6Addr> = self.endpoints()?.into_iter().map(|(k, _)| k).collect();
        for k in eps {
            mark(&mut self.out_filter, MAP_OUT_FILTER, k)?;
        }
        Ok(())
    }

    /// Inserts or replaces the `ILA_OUT` entry for SIR destination `sir`.
    pub fn insert_out(&mut self, sir: Ipv6Addr, e: &OutEntry) -> Result<(), DataplaneError> {
        // Filter first: the entry must never be in the table while its prefix is filtered out.
        mark(&mut self.out_filter, MAP_OUT_FILTER, sir)?;
        let val = IlaOutVal {
            ila: e.ila.octets(),
            csum_mode: e.csum_mode.as_u8(),
            flags: if e.local { abi::ILA_OUT_F_LOCAL } else { 0 },
            pad: [0; 2],
        };
        self.out
            .insert(IlaOutKey { sir: sir.octets() }, val, 0)
            .map_err(map_err(format!("inserting {sir} into {MAP_OUT}")))
    }

    /// Removes the `ILA_OUT` entry for `sir`; removing an absent entry is not an error.
    pub fn remove_out(&mut self, sir: Ipv6Addr) -> Result<(), DataplaneError> {
        match self.out.remove(&IlaOutKey { sir: sir.octets() }) {
            Err(e) if !is_not_found(&e) => {
                Err(map_err(format!("removing {sir} from {MAP_OUT}"))(e))
            }
            _ => Ok(()),
        }
    }

    /// The `ILA_OUT` entry for `sir`, if any (one lookup syscall: cheap enough to poll).
    pub fn get_out(&self, sir: Ipv6Addr) -> Result<Option<OutEntry>, DataplaneError> {
        match self.out.get(&IlaOutKey { sir: sir.octets() }, 0) {
            Ok(val) => Ok(Some(OutEntry {
                ila: Ipv6Addr::from(val.ila),
                csum_mode: csum_mode(val.csum_mode)?,
                local: val.flags & abi::ILA_OUT_F_LOCAL != 0,
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(format!("looking up {sir} in {MAP_OUT}"))(e)),
        }
    }

    /// All `ILA_OUT` entries (SIR address, entry).
    pub fn out_entries(&self) -> Result<Vec<(Ipv6Addr, OutEntry)>, DataplaneError> {
        let mut v = Vec::new();
        for item in self.out.iter() {
            let (k, val) = item.map_err(map_err(format!("iterating {MAP_OUT}")))?;
            v.push((
                Ipv6Addr::from(k.sir),
                OutEntry {
                    ila: Ipv6Addr::from(val.ila),
                    csum_mode: csum_mode(val.csum_mode)?,
                    local: val.flags & abi::ILA_OUT_F_LOCAL != 0,
                },
            ));
        }
        Ok(v)
    }

    /// Inserts or replaces the `ILA_IN` entry for ILA destination `ila`.
    pub fn insert_in(&mut self, ila: Ipv6Addr, e: &InEntry) -> Result<(), DataplaneError> {
        mark(&mut self.in_filter, MAP_IN_FILTER, ila)?;
        let (flags, ep_mac, host_mac) = match e.redirect {
            Some(r) => (abi::ILA_IN_F_REDIRECT, r.endpoint_mac, r.host_mac),
            None => (0, [0; 6], [0; 6]),
        };
        let val = IlaInVal {
            sir: e.sir.octets(),
            ifindex: e.ifindex,
            csum_mode: e.csum_mode.as_u8(),
            flags,
            ep_mac,
            host_mac,
            pad: [0; 2],
        };
        self.inn
            .insert(IlaInKey { ila: ila.octets() }, val, 0)
            .map_err(map_err(format!("inserting {ila} into {MAP_IN}")))
    }

    /// Removes the `ILA_IN` entry for `ila`; removing an absent entry is not an error.
    pub fn remove_in(&mut self, ila: Ipv6Addr) -> Result<(), DataplaneError> {
        match self.inn.remove(&IlaInKey { ila: ila.octets() }) {
            Err(e) if !is_not_found(&e) => Err(map_err(format!("removing {ila} from {MAP_IN}"))(e)),
            _ => Ok(()),
        }
    }

    /// The `ILA_IN` entry for `ila`, if any (one lookup syscall).
    pub fn get_in(&self, ila: Ipv6Addr) -> Result<Option<InEntry>, DataplaneError> {
        match self.inn.get(&IlaInKey { ila: ila.octets() }, 0) {
            Ok(val) => Ok(Some(in_entry(&val)?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(format!("looking up {ila} in {MAP_IN}"))(e)),
        }
    }

    /// All `ILA_IN` entries (ILA address, entry).
    pub fn in_entries(&self) -> Result<Vec<(Ipv6Addr, InEntry)>, DataplaneError> {
        let mut v = Vec::new();
        for item in self.inn.iter() {
            let (k, val) = item.map_err(map_err(format!("iterating {MAP_IN}")))?;
            v.push((Ipv6Addr::from(k.ila), in_entry(&val)?));
        }
        Ok(v)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        let mut c = [0u64; stat::MAX as usize];
        for (i, slot) in (0u32..).zip(c.iter_mut()) {
            let per_cpu = match self.stats.get(&i, 0) {
                Ok(v) => v,
                // Pins of a version with fewer counters: those counters do not exist (yet).
                Err(MapError::OutOfBounds { .. }) => continue,
                Err(e) => {
                    return Err(map_err(format!("reading counter {i} of {MAP_STATS}"))(e));
                }
            };
            *slot = per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
        Ok(Counters {
            out_translated: c[stat::OUT_TRANSLATED as usize],
            out_local: c[stat::OUT_LOCAL as usize],
            out_miss: c[stat::OUT_MISS as usize],
            in_translated: c[stat::IN_TRANSLATED as usize],
            in_redirected: c[stat::IN_REDIRECTED as usize],
            in_miss: c[stat::IN_MISS as usize],
            not_ipv6: c[stat::NOT_IPV6 as usize],
            drop_malformed: c[stat::DROP_MALFORMED as usize],
            drop_csum: c[stat::DROP_CSUM as usize],
            drop_rewrite: c[stat::DROP_REWRITE as usize],
            drop_policy: c[stat::DROP_POLICY as usize],
            drop_tenant: c[stat::DROP_TENANT as usize],
            drop_spoofed: c[stat::DROP_SPOOFED as usize],
            drop_no_endpoint: c[stat::DROP_NO_ENDPOINT as usize],
            ct_new: c[stat::CT_NEW as usize],
            ct_hit: c[stat::CT_HIT as usize],
            drop_unclassified: c[stat::DROP_UNCLASSIFIED as usize],
            drop_fragment: c[stat::DROP_FRAGMENT as usize],
        })
    }

    fn config_flags(&self) -> Result<u32, DataplaneError> {
        Ok(self
            .config
            .get(&0, 0)
            .map_err(map_err(format!("reading {MAP_CONFIG}")))?
            .flags)
    }

    fn set_config_flag(&mut self, flag: u32, on: bool) -> Result<(), DataplaneError> {
        let mut cfg = IlaConfig {
            flags: self.config_flags()?,
        };
        if on {
            cfg.flags |= flag;
        } else {
            cfg.flags &= !flag;
        }
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(format!("writing {MAP_CONFIG}")))
    }

    /// Turns events on or off: one per translated packet, one per policy verdict on a new flow,
    /// one per drop.
    pub fn set_trace(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.set_config_flag(abi::ILA_CFG_TRACE, on)
    }

    /// Turns enforcement (anti-spoofing, conntrack, policy) on or off. Off, the programs only
    /// translate, exactly as without the enforcement maps.
    pub fn set_enforce(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.set_config_flag(abi::ILA_CFG_ENFORCE, on)
    }

    /// Whether enforcement is on.
    pub fn enforce(&self) -> Result<bool, DataplaneError> {
        Ok(self.config_flags()? & abi::ILA_CFG_ENFORCE != 0)
    }

    /// Takes every event currently in the ring and returns the translation events; verdict
    /// events are discarded (use [`Self::drain_flow_events`] to get both). Records that do not
    /// decode are skipped (logged).
    pub fn drain_events(&mut self) -> Result<Vec<TranslationEvent>, DataplaneError> {
        Ok(self
            .drain_flow_events()?
            .into_iter()
            .filter_map(|e| match e {
                FlowEvent::Translation(t) => Some(t),
                FlowEvent::Verdict(_) => None,
            })
            .collect())
    }

    /// Takes every event currently in the ring, in ring order. Records that do not decode are
    /// skipped (logged).
    pub fn drain_flow_events(&mut self) -> Result<Vec<FlowEvent>, DataplaneError> {
        let mut v = Vec::new();
        while let Some(item) = self.events.next() {
            let ev = if item.first() == Some(&abi::ILA_EV_VERDICT) {
                decode_verdict(&item).map(FlowEvent::Verdict)
            } else {
                decode_event(&item).map(FlowEvent::Translation)
            };
            match ev {
                Some(ev) => v.push(ev),
                None => log::warn!("skipping undecodable ila_event of {} bytes", item.len()),
            }
        }
        Ok(v)
    }

    // ---- Enforcement maps ----

    /// Inserts or replaces the `ILA_ENDPOINTS` entry of the local endpoint with SIR address `sir`.
    pub fn insert_endpoint(
        &mut self,
        sir: Ipv6Addr,
        ep: &LocalEndpoint,
    ) -> Result<(), DataplaneError> {
        // from-wire polices packets already addressed to a local SIR behind this filter.
        mark(&mut self.out_filter, MAP_OUT_FILTER, sir)?;
        let val = IlaEndpointVal {
            identity: ep.identity,
            vnid: ep.vnid,
            ifindex: ep.ifindex,
            flags: ep.flags,
        };
        self.endpoints
            .insert(sir.octets(), val, 0)
            .map_err(map_err(format!("inserting {sir} into {MAP_ENDPOINTS}")))
    }

    /// Removes the `ILA_ENDPOINTS` entry of `sir`; removing an absent entry is not an error.
    pub fn remove_endpoint(&mut self, sir: Ipv6Addr) -> Result<(), DataplaneError> {
        ignore_absent(
            self.endpoints.remove(&sir.octets()),
            format!("removing {sir} from {MAP_ENDPOINTS}"),
        )
    }

    /// The `ILA_ENDPOINTS` entry of `sir`, if any.
    pub fn get_endpoint(&self, sir: Ipv6Addr) -> Result<Option<LocalEndpoint>, DataplaneError> {
        let v = absent_as_none(
            self.endpoints.get(&sir.octets(), 0),
            format!("looking up {sir} in {MAP_ENDPOINTS}"),
        )?;
        Ok(v.map(local_endpoint))
    }

    /// All `ILA_ENDPOINTS` entries (SIR address, endpoint).
    pub fn endpoints(&self) -> Result<Vec<(Ipv6Addr, LocalEndpoint)>, DataplaneError> {
        let mut v = Vec::new();
        for item in self.endpoints.iter() {
            let (k, val) = item.map_err(map_err(format!("iterating {MAP_ENDPOINTS}")))?;
            v.push((Ipv6Addr::from(k), local_endpoint(val)));
        }
        Ok(v)
    }

    /// Inserts or replaces the `ILA_IPCACHE` entry of `addr`.
    pub fn insert_ipcache(
        &mut self,
        addr: Ipv6Addr,
        e: &IpcacheEntry,
    ) -> Result<(), DataplaneError> {
        let val = IlaIpcacheVal {
            identity: e.identity,
            vnid: e.vnid,
        };
        self.ipcache
            .insert(addr.octets(), val, 0)
            .map_err(map_err(format!("inserting {addr} into {MAP_IPCACHE}")))
    }

    /// Removes the `ILA_IPCACHE` entry of `addr`; removing an absent entry is not an error.
    pub fn remove_ipcache(&mut self, addr: Ipv6Addr) -> Result<(), DataplaneError> {
        ignore_absent(
            self.ipcache.remove(&addr.octets()),
            format!("removing {addr} from {MAP_IPCACHE}"),
        )
    }

    /// The `ILA_IPCACHE` entry of `addr`, if any.
    pub fn get_ipcache(&self, addr: Ipv6Addr) -> Result<Option<IpcacheEntry>, DataplaneError> {
        let v = absent_as_none(
            self.ipcache.get(&addr.octets(), 0),
            format!("looking up {addr} in {MAP_IPCACHE}"),
        )?;
        Ok(v.map(|v| IpcacheEntry {
            identity: v.identity,
            vnid: v.vnid,
        }))
    }

    /// All `ILA_IPCACHE` entries.
    pub fn ipcache(&self) -> Result<Vec<(Ipv6Addr, IpcacheEntry)>, DataplaneError> {
        let mut v = Vec::new();
        for item in self.ipcache.iter() {
            let (k, val) = item.map_err(map_err(format!("iterating {MAP_IPCACHE}")))?;
            v.push((
                Ipv6Addr::from(k),
                IpcacheEntry {
                    identity: val.identity,
                    vnid: val.vnid,
                },
            ));
        }
        Ok(v)
    }

    /// Inserts or replaces the `POLICY_EP` entry of endpoint identity `identity`.
    pub fn insert_policy_ep(
        &mut self,
        identity: u32,
        ep: &EndpointPolicy,
    ) -> Result<(), DataplaneError> {
        self.policy_ep
            .insert(identity, ep.to_bytes(), 0)
            .map_err(map_err(format!(
                "inserting identity {identity} into {MAP_POLICY_EP}"
            )))
    }

    /// Removes the `POLICY_EP` entry of `identity` (its traffic is then dropped, fail closed);
    /// removing an absent entry is not an error.
    pub fn remove_policy_ep(&mut self, identity: u32) -> Result<(), DataplaneError> {
        ignore_absent(
            self.policy_ep.remove(&identity),
            format!("removing identity {identity} from {MAP_POLICY_EP}"),
        )
    }

    /// All `POLICY_EP` entries.
    pub fn policy_eps(&self) -> Result<Vec<(u32, EndpointPolicy)>, DataplaneError> {
        let mut v = Vec::new();
        for item in self.policy_ep.iter() {
            let (k, val) = item.map_err(map_err(format!("iterating {MAP_POLICY_EP}")))?;
            v.push((k, EndpointPolicy::from_bytes(&val)));
        }
        Ok(v)
    }

    /// Inserts or replaces one `POLICY` entry.
    pub fn insert_policy(&mut self, k: &PolicyKey, v: &PolicyValue) -> Result<(), DataplaneError> {
        self.policy
            .insert(k.to_bytes(), v.to_bytes(), 0)
            .map_err(map_err(format!("inserting {k:?} into {MAP_POLICY}")))
    }

    /// Removes one `POLICY` entry; removing an absent entry is not an error.
    pub fn remove_policy(&mut self, k: &PolicyKey) -> Result<(), DataplaneError> {
        ignore_absent(
            self.policy.remove(&k.to_bytes()),
            format!("removing {k:?} from {MAP_POLICY}"),
        )
    }

    /// All `POLICY` entries.
    pub fn policy_entries(&self) -> Result<Vec<(PolicyKey, PolicyValue)>, DataplaneError> {
        let mut v = Vec::new();
        for item in self.policy.iter() {
            let (k, val) = item.map_err(map_err(format!("iterating {MAP_POLICY}")))?;
            v.push((PolicyKey::from_bytes(&k), PolicyValue::from_bytes(&val)));
        }
        Ok(v)
    }

    /// Inserts or replaces one `POLICY_CIDR` entry.
    pub fn insert_cidr(&mut self, k: &CidrKey, v: &PolicyValue) -> Result<(), DataplaneError> {
        let (len, data) = cidr_parts(k);
        self.policy_cidr
            .insert(&LpmKey::new(len, data), v.to_bytes(), 0)
            .map_err(map_err(format!("inserting {k:?} into {MAP_POLICY_CIDR}")))
    }

    /// Removes one `POLICY_CIDR` entry (exact prefix); removing an absent entry is not an error.
    pub fn remove_cidr(&mut self, k: &CidrKey) -> Result<(), DataplaneError> {
        let (len, data) = cidr_parts(k);
        ignore_absent(
            self.policy_cidr.remove(&LpmKey::new(len, data)),
            format!("removing {k:?} from {MAP_POLICY_CIDR}"),
        )
    }

    /// All `POLICY_CIDR` entries.
    pub fn cidr_entries(&self) -> Result<Vec<(CidrKey, PolicyValue)>, DataplaneError> {
        let mut v = Vec::new();
        for item in self.policy_cidr.iter() {
            let (k, val) = item.map_err(map_err(format!("iterating {MAP_POLICY_CIDR}")))?;
            v.push((cidr_key(&k), PolicyValue::from_bytes(&val)));
        }
        Ok(v)
    }

    /// Makes `POLICY_EP`, `POLICY` and `POLICY_CIDR` equal to `compiled`: reads them, diffs
    /// (mark and sweep) and applies the difference with [`HostMaps::apply_policy`].
    pub fn replace_policy(
        &mut self,
        compiled: &CompiledPolicy,
    ) -> Result<PolicySync, DataplaneError> {
        if compiled.entries.len() > POLICY_MAX_ENTRIES
            || compiled.cidr_entries.len() > POLICY_CIDR_MAX_ENTRIES
            || compiled.endpoints.len() > POLICY_EP_MAX_ENTRIES
        {
            return Err(DataplaneError::Invalid(format!(
                "compiled policy too large for the maps: {} entries (max {POLICY_MAX_ENTRIES}), \
                 {} CIDR entries (max {POLICY_CIDR_MAX_ENTRIES}), {} identities (max \
                 {POLICY_EP_MAX_ENTRIES})",
                compiled.entries.len(),
                compiled.cidr_entries.len(),
                compiled.endpoints.len()
            )));
        }
        let ops = policy::sync::against_current(
            compiled,
            &self.policy_eps()?,
            &self.policy_entries()?,
            &self.cidr_entries()?,
        );
        self.apply_policy(&ops)?;
        Ok(PolicySync {
            written: ops.put.len() + ops.cidr_put.len() + ops.ep_put.len(),
            removed: ops.del.len() + ops.cidr_del.len() + ops.ep_del.len(),
        })
    }

    /// Applies policy changes in the one safe order of [`PolicyOps::ordered`] (every policy
    /// change, by the agent or a test, is written this way).
    pub fn apply_policy(&mut self, ops: &PolicyOps) -> Result<(), DataplaneError> {
        for w in ops.ordered() {
            match w {
                PolicyWrite::Rule(k, v) => self.insert_policy(&k, &v)?,
                PolicyWrite::Cidr(k, v) => self.insert_cidr(&k, &v)?,
                PolicyWrite::Endpoint(k, v) => self.insert_policy_ep(k, &v)?,
                PolicyWrite::RemoveRule(k) => self.remove_policy(&k)?,
                PolicyWrite::RemoveCidr(k) => self.remove_cidr(&k)?,
                PolicyWrite::RemoveEndpoint(k) => self.remove_policy_ep(k)?,
            }
        }
        Ok(())
    }

    /// All conntrack entries, oriented as their flows were opened.
    pub fn conntrack(&self) -> Result<Vec<CtEntry>, DataplaneError> {
        let mut v = Vec::new();
        for item in self.ct.iter() {
            let (k, val) = item.map_err(map_err(format!("iterating {MAP_CT}")))?;
            v.push(ct_entry(&k, &val));
        }
        Ok(v)
    }

    /// Removes every conntrack entry (established flows are policed again); returns how many.
    pub fn flush_conntrack(&mut self) -> Result<usize, DataplaneError> {
        self.sweep_conntrack(|_| true)
    }

    /// Removes the conntrack entries idle for longer than `idle`; returns how many.
    pub fn expire_conntrack(&mut self, idle: Duration) -> Result<usize, DataplaneError> {
        let now = monotonic_coarse_ns();
        let idle = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        self.sweep_conntrack(|v| now.saturating_sub(v.last_seen) > idle)
    }

    fn sweep_conntrack(
        &mut self,
        stale: impl Fn(&IlaCtVal) -> bool,
    ) -> Result<usize, DataplaneError> {
        let mut keys = Vec::new();
        for item in self.ct.iter() {
            let (k, val) = item.map_err(map_err(format!("iterating {MAP_CT}")))?;
            if stale(&val) {
                keys.push(k);
            }
        }
        let n = keys.len();
        for k in keys {
            ignore_absent(self.ct.remove(&k), format!("removing a flow from {MAP_CT}"))?;
        }
        Ok(n)
    }
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds (the clock of conntrack timestamps).
pub fn monotonic_coarse_ns() -> u64 {
    // SAFETY: timespec is plain old data; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn ignore_absent(r: Result<(), MapError>, context: String) -> Result<(), DataplaneError> {
    match r {
        Err(e) if !is_not_found(&e) => Err(map_err(context)(e)),
        _ => Ok(()),
    }
}

fn absent_as_none<T>(r: Result<T, MapError>, context: String) -> Result<Option<T>, DataplaneError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(map_err(context)(e)),
    }
}

fn local_endpoint(v: IlaEndpointVal) -> LocalEndpoint {
    LocalEndpoint {
        identity: v.identity,
        vnid: v.vnid,
        ifindex: v.ifindex,
        flags: v.flags,
    }
}

fn cidr_parts(k: &CidrKey) -> (u32, CidrData) {
    let b = k.to_bytes();
    let mut data = [0u8; CidrKey::SIZE - 4];
    data.copy_from_slice(&b[4..]);
    (k.prefixlen, data)
}

fn cidr_key(k: &LpmKey<CidrData>) -> CidrKey {
    let mut b = [0u8; CidrKey::SIZE];
    b[0..4].copy_from_slice(&k.prefix_len().to_ne_bytes());
    b[4..].copy_from_slice(&k.data());
    CidrKey::from_bytes(&b)
}

fn ct_entry(k: &IlaCtKey, v: &IlaCtVal) -> CtEntry {
    let (a, pa) = (Ipv6Addr::from(k.a), u16::from_be_bytes(k.port_a));
    let (b, pb) = (Ipv6Addr::from(k.b), u16::from_be_bytes(k.port_b));
    let ((src, sport), (dst, dport)) = if v.flags & abi::ILA_CT_F_ORIG_B != 0 {
        ((b, pb), (a, pa))
    } else {
        ((a, pa), (b, pb))
    };
    CtEntry {
        src,
        dst,
        sport,
        dport,
        proto: k.proto,
        from_wire: v.flags & abi::ILA_CT_F_FROM_WIRE != 0,
        created_ns: v.created,
        last_seen_ns: v.last_seen,
    }
}

/// Sets the filter slot of `addr`'s /64 (a plain write: concurrent writers cannot undo it).
fn mark(
    filter: &mut Array<MapData, u32>,
    name: &str,
    addr: Ipv6Addr,
) -> Result<(), DataplaneError> {
    let slot = abi::filter_slot(&addr.octets());
    filter
        .set(slot, 1u32, 0)
        .map_err(map_err(format!("marking the /64 of {addr} in {name}")))
}

/// Deleting an absent key: aya reports ENOENT from the syscall (or `KeyNotFound`).
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn in_entry(val: &IlaInVal) -> Result<InEntry, DataplaneError> {
    let redirect = (val.flags & abi::ILA_IN_F_REDIRECT != 0).then_some(Redirect {
        endpoint_mac: val.ep_mac,
        host_mac: val.host_mac,
    });
    Ok(InEntry {
        sir: Ipv6Addr::from(val.sir),
        ifindex: val.ifindex,
        csum_mode: csum_mode(val.csum_mode)?,
        redirect,
    })
}

fn csum_mode(v: u8) -> Result<ChecksumMode, DataplaneError> {
    ChecksumMode::from_u8(v)
        .map_err(|e| DataplaneError::Invalid(format!("checksum mode {v} in a map entry: {e}")))
}

fn decode_verdict(b: &[u8]) -> Option<VerdictEvent> {
    let ev = IlaVerdictEvent::from_bytes(b)?;
    let program = match ev.program {
        abi::ILA_EV_OUT => ProgramKind::FromContainer,
        abi::ILA_EV_IN => ProgramKind::FromWire,
        _ => return None,
    };
    let verdict = match ev.verdict {
        abi::ILA_VERDICT_ALLOW => FlowVerdict::Allow,
        abi::ILA_VERDICT_DROP => FlowVerdict::Drop,
        _ => return None,
    };
    let direction = match ev.direction {
        policy::abi::DIR_INGRESS => Some(PolicyDirection::Ingress),
        policy::abi::DIR_EGRESS => Some(PolicyDirection::Egress),
        _ => None,
    };
    Some(VerdictEvent {
        program,
        verdict,
        reason: VerdictReason::from_u8(ev.reason)?,
        direction,
        proto: ev.proto,
        sport: u16::from_be_bytes(ev.sport),
        dport: u16::from_be_bytes(ev.dport),
        ifindex: ev.ifindex,
        src: Ipv6Addr::from(ev.src),
        dst: Ipv6Addr::from(ev.dst),
        src_identity: ev.src_identity,
        dst_identity: ev.dst_identity,
        src_vnid: ev.src_vnid,
        dst_vnid: ev.dst_vnid,
        rule_id: (ev.rule_id != 0).then_some(ev.rule_id),
    })
}

fn decode_event(b: &[u8]) -> Option<TranslationEvent> {
    let ev = IlaEvent::from_bytes(b)?;
    let direction = match ev.kind {
        abi::ILA_EV_OUT => ProgramKind::FromContainer,
        abi::ILA_EV_IN => ProgramKind::FromWire,
        _ => return None,
    };
    Some(TranslationEvent {
        direction,
        csum_mode: ChecksumMode::from_u8(ev.csum_mode).ok()?,
        l4_proto: ev.l4_proto,
        ifindex: ev.ifindex,
        src: Ipv6Addr::from(ev.src),
        dst_before: Ipv6Addr::from(ev.dst_before),
        dst_after: Ipv6Addr::from(ev.dst_after),
    })
}
