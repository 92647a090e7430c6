//! Typed access to the pinned or freshly loaded maps.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use aya::Ebpf;

use crate::abi::{self, stat, IlaConfig, IlaEvent, IlaInKey, IlaInVal, IlaOutKey, IlaOutVal};
use crate::{
    ChecksumMode, Counters, DataplaneError, InEntry, OutEntry, ProgramKind, Redirect,
    TranslationEvent,
};

/// Map names, as in `bpf/ila.bpf.c` and as pinned under the pin directory.
pub(crate) const MAP_OUT: &str = "ILA_OUT";
pub(crate) const MAP_IN: &str = "ILA_IN";
pub(crate) const MAP_STATS: &str = "ILA_STATS";
pub(crate) const MAP_CONFIG: &str = "ILA_CONFIG";
pub(crate) const MAP_EVENTS: &str = "ILA_EVENTS";
pub(crate) const MAP_OUT_FILTER: &str = "ILA_OUT_FILTER";
pub(crate) const MAP_IN_FILTER: &str = "ILA_IN_FILTER";

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
            let per_cpu = self
                .stats
                .get(&i, 0)
                .map_err(map_err(format!("reading counter {i} of {MAP_STATS}")))?;
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
        })
    }

    /// Turns per-packet translation events on or off.
    pub fn set_trace(&mut self, on: bool) -> Result<(), DataplaneError> {
        let mut cfg = self
            .config
            .get(&0, 0)
            .map_err(map_err(format!("reading {MAP_CONFIG}")))?;
        if on {
            cfg.flags |= abi::ILA_CFG_TRACE;
        } else {
            cfg.flags &= !abi::ILA_CFG_TRACE;
        }
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(format!("writing {MAP_CONFIG}")))
    }

    /// Takes every event currently in the ring. Records that do not decode are skipped (logged).
    pub fn drain_events(&mut self) -> Result<Vec<TranslationEvent>, DataplaneError> {
        let mut v = Vec::new();
        while let Some(item) = self.events.next() {
            match decode_event(&item) {
                Some(ev) => v.push(ev),
                None => log::warn!("skipping undecodable ila_event of {} bytes", item.len()),
            }
        }
        Ok(v)
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
