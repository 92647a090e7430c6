//! The ILA eBPF data path of one host: the only crate that calls `bpf()`.
//!
//! The programs (`bpf/from_container.c`, `bpf/from_wire.c`, on `bpf/lib/*.h`) are compiled and
//! linked into one object by `build.rs` and embedded. [`HostDataplane`]
//! loads them, pins their maps by name under a per-host directory on bpffs (so an agent restart
//! keeps state and traffic), and attaches them with TCX links that are pinned as well.
//! [`HostMaps`] manipulates the translation tables, the enforcement tables (local endpoints,
//! ipcache, compiled policy, conntrack), counters, switches and event ring, either from a loaded
//! [`HostDataplane`] or from the pins alone.
//!
//! Enforcement (anti-spoofing, conntrack, identity policy, tenant isolation; `bpf/ila_abi.h`
//! "Enforcement") runs only after [`HostMaps::set_enforce`]`(true)`; the policy map layout is
//! `policy::abi`, written with [`HostMaps::replace_policy`] from `policy::compile`.

#![deny(missing_docs)]

pub mod abi;
pub mod testrun;

mod maps;

use std::ffi::CString;
use std::fmt;
use std::net::Ipv6Addr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use serde::{Deserialize, Serialize};

pub use ila::ChecksumMode;
pub use maps::{
    monotonic_coarse_ns, HostMaps, PolicySync, CT_MAX_ENTRIES, ENDPOINTS_MAX_ENTRIES, EVENTS_BYTES,
    IN_MAX_ENTRIES, IPCACHE_MAX_ENTRIES, OUT_MAX_ENTRIES, POLICY_CIDR_MAX_ENTRIES,
    POLICY_EP_MAX_ENTRIES, POLICY_MAX_ENTRIES,
};

/// The `policy` compile limits that fit this data path's maps.
pub fn compile_limits() -> policy::CompileLimits {
    policy::CompileLimits {
        max_entries: POLICY_MAX_ENTRIES,
        max_cidr_entries: POLICY_CIDR_MAX_ENTRIES,
    }
}

/// The object with maps pinned by name (agents).
static OBJ_PINNED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ila.bpf.o"));
/// The same programs with unpinned maps (tests, benchmarks).
static OBJ_UNPINNED: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ila_nopin.bpf.o"));

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Everything that can go wrong in the data path crate; each variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Parsing or loading the eBPF object (maps included).
    #[error("{context}: {error}")]
    Load {
        /// What was being done.
        context: String,
        /// The loader's error.
        error: Box<aya::EbpfError>,
    },
    /// Loading, attaching or running a program.
    #[error("{context}: {error}")]
    Program {
        /// What was being done.
        context: String,
        /// The program error (verifier output included for load failures).
        error: Box<aya::programs::ProgramError>,
    },
    /// A map operation.
    #[error("{context}: {error}")]
    Map {
        /// What was being done.
        context: String,
        /// The map error.
        error: Box<aya::maps::MapError>,
    },
    /// Pinning an object on bpffs.
    #[error("{context}: {error}")]
    Pin {
        /// What was being done.
        context: String,
        /// The pin error.
        error: Box<aya::pin::PinError>,
    },
    /// A BPF link operation.
    #[error("{context}: {error}")]
    Link {
        /// What was being done.
        context: String,
        /// The link error.
        error: Box<aya::programs::links::LinkError>,
    },
    /// A file system or system call.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// A value from the kernel or the caller that does not fit the ABI.
    #[error("{0}")]
    Invalid(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DataplaneError {
    let context = context.into();
    move |error| DataplaneError::Io { context, error }
}

fn prog_err(
    context: impl Into<String>,
) -> impl FnOnce(aya::programs::ProgramError) -> DataplaneError {
    let context = context.into();
    move |error| DataplaneError::Program {
        context,
        error: Box::new(error),
    }
}

/// Which of the two programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProgramKind {
    /// tc ingress of an endpoint's host-side veth: SIR → ILA.
    FromContainer,
    /// tc ingress of the host's uplink: ILA → SIR.
    FromWire,
}

impl ProgramKind {
    /// Both programs.
    pub const ALL: [ProgramKind; 2] = [Self::FromContainer, Self::FromWire];

    /// The C function / ELF program name.
    pub fn program_name(self) -> &'static str {
        match self {
            Self::FromContainer => "from_container",
            Self::FromWire => "from_wire",
        }
    }

    /// `from-container` / `from-wire`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FromContainer => "from-container",
            Self::FromWire => "from-wire",
        }
    }
}

impl fmt::Display for ProgramKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `ILA_OUT` entry (keyed by the SIR destination address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutEntry {
    /// Address to write as destination (from `ila::sir_to_ila`).
    pub ila: Ipv6Addr,
    /// Checksum handling.
    pub csum_mode: ChecksumMode,
    /// Destination is on this host: pass untranslated.
    pub local: bool,
}

/// One `ILA_IN` entry (keyed by the ILA destination address as seen on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InEntry {
    /// SIR address to write back as destination.
    pub sir: Ipv6Addr,
    /// Host-side veth of the endpoint (host namespace ifindex).
    pub ifindex: u32,
    /// Checksum handling.
    pub csum_mode: ChecksumMode,
    /// Rewrite L2 and `bpf_redirect_peer` to `ifindex` instead of letting the kernel route.
    pub redirect: Option<Redirect>,
}

/// L2 addresses for the redirect shortcut of [`InEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// MAC of the endpoint's interface inside the container (new destination MAC).
    pub endpoint_mac: [u8; 6],
    /// MAC of the host-side veth (new source MAC).
    pub host_mac: [u8; 6],
}

/// The data path counters, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// from-container: SIR → ILA rewritten.
    pub out_translated: u64,
    /// from-container: destination local, passed untranslated.
    pub out_local: u64,
    /// from-container: IPv6 without mapping, passed.
    pub out_miss: u64,
    /// from-wire: ILA → SIR rewritten.
    pub in_translated: u64,
    /// from-wire: of those, redirected to the endpoint.
    pub in_redirected: u64,
    /// from-wire: IPv6 without mapping, passed.
    pub in_miss: u64,
    /// Either program: not IPv6, passed.
    pub not_ipv6: u64,
    /// Either program: IPv6 header truncated or bad version, dropped.
    pub drop_malformed: u64,
    /// adj-transport: L4 header unreadable or checksum fix failed, dropped.
    pub drop_csum: u64,
    /// Storing the new address/MACs failed, dropped.
    pub drop_rewrite: u64,
    /// Enforcement: a deny rule or default deny, dropped.
    pub drop_policy: u64,
    /// Enforcement: no rule and the peer is in another tenant, dropped.
    pub drop_tenant: u64,
    /// Enforcement (from-container): source not the endpoint's own address on its own
    /// interface, dropped.
    pub drop_spoofed: u64,
    /// Enforcement: local endpoint (or its `POLICY_EP` entry) unknown, dropped (fail closed).
    pub drop_no_endpoint: u64,
    /// Enforcement: new flows allowed by policy (conntrack entries created).
    pub ct_new: u64,
    /// Enforcement: packets passed on conntrack (established, reply, related).
    pub ct_hit: u64,
    /// Enforcement: packet not classified completely (extension-header chain longer than the
    /// program walks, header past the payload, L4 header missing or truncated), dropped.
    pub drop_unclassified: u64,
    /// Enforcement: non-first fragment, dropped (no fragment tracking).
    pub drop_fragment: u64,
}

impl Counters {
    /// `(name, value)` for every counter, in ABI order.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("out_translated", self.out_translated),
            ("out_local", self.out_local),
            ("out_miss", self.out_miss),
            ("in_translated", self.in_translated),
            ("in_redirected", self.in_redirected),
            ("in_miss", self.in_miss),
            ("not_ipv6", self.not_ipv6),
            ("drop_malformed", self.drop_malformed),
            ("drop_csum", self.drop_csum),
            ("drop_rewrite", self.drop_rewrite),
            ("drop_policy", self.drop_policy),
            ("drop_tenant", self.drop_tenant),
            ("drop_spoofed", self.drop_spoofed),
            ("drop_no_endpoint", self.drop_no_endpoint),
            ("ct_new", self.ct_new),
            ("ct_hit", self.ct_hit),
            ("drop_unclassified", self.drop_unclassified),
            ("drop_fragment", self.drop_fragment),
        ]
    }
}

/// One translated packet, as reported while tracing is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranslationEvent {
    /// Which program translated it.
    pub direction: ProgramKind,
    /// Checksum mode of the mapping used.
    pub csum_mode: ChecksumMode,
    /// Final next header after extension headers (0 if unknown).
    pub l4_proto: u8,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Source address (unchanged by ILA).
    pub src: Ipv6Addr,
    /// Destination before translation.
    pub dst_before: Ipv6Addr,
    /// Destination after translation.
    pub dst_after: Ipv6Addr,
}

/// One `ILA_ENDPOINTS` entry: an endpoint on this host, keyed by its SIR address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LocalEndpoint {
    /// Numeric identity (the `POLICY_EP` key of its policy).
    pub identity: u32,
    /// Tenant (VNID).
    pub vnid: u32,
    /// Host-side veth (host namespace ifindex): the only interface its packets may come from.
    pub ifindex: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// One `ILA_IPCACHE` entry: the identity and tenant behind an address (every endpoint of the
/// network, and the host addresses with identity 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IpcacheEntry {
    /// Identity.
    pub identity: u32,
    /// Tenant; ignored for reserved identities (< 256), which have none.
    pub vnid: u32,
}

/// One conntrack entry, oriented as the flow was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtEntry {
    /// Address that opened the flow.
    pub src: Ipv6Addr,
    /// Its peer.
    pub dst: Ipv6Addr,
    /// Source port (ICMPv6 echo: identifier; 0 without ports).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// L4 protocol.
    pub proto: u8,
    /// Created by from-wire (ingress at this host) rather than from-container.
    pub from_wire: bool,
    /// Creation, `CLOCK_MONOTONIC_COARSE` nanoseconds.
    pub created_ns: u64,
    /// Last packet (refreshed at most once a second), same clock.
    pub last_seen_ns: u64,
}

/// Allow or drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowVerdict {
    /// Passed.
    Allow,
    /// Dropped.
    Drop,
}

/// Why a verdict event was emitted (`enum ila_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictReason {
    /// A rule decided (see `rule_id`).
    Rule,
    /// No rule and the endpoint is not enforced in this direction.
    DefaultAllow,
    /// No rule and the endpoint is enforced (default deny).
    DefaultDeny,
    /// No rule and the peer is an endpoint of another tenant.
    TenantIsolation,
    /// The endpoint's identity has no `POLICY_EP` entry (fail closed).
    NoPolicy,
    /// Source address or ingress interface is not the endpoint's.
    Spoofed,
    /// The local destination has no `ILA_ENDPOINTS` entry.
    NoEndpoint,
    /// L4 header unreadable while enforcing (older programs; now [`Self::Unclassified`]).
    Malformed,
    /// Checksum fix failed.
    Checksum,
    /// Rewrite failed.
    Rewrite,
    /// Enforcement could not classify the packet completely: extension-header chain longer
    /// than the program walks, a header running past the payload, a missing or truncated L4
    /// header (fail closed, never matched against wildcard rules).
    Unclassified,
    /// Enforcement: a non-first fragment (no L4 header; fragments are not tracked).
    Fragment,
}

impl VerdictReason {
    fn from_u8(v: u8) -> Option<Self> {
        use abi::reason as r;
        Some(match v {
            r::RULE => Self::Rule,
            r::DEFAULT_ALLOW => Self::DefaultAllow,
            r::DEFAULT_DENY => Self::DefaultDeny,
            r::TENANT => Self::TenantIsolation,
            r::NO_POLICY => Self::NoPolicy,
            r::SPOOFED => Self::Spoofed,
            r::NO_ENDPOINT => Self::NoEndpoint,
            r::MALFORMED => Self::Malformed,
            r::CSUM => Self::Checksum,
            r::REWRITE => Self::Rewrite,
            r::UNCLASSIFIED => Self::Unclassified,
            r::FRAGMENT => Self::Fragment,
            _ => return None,
        })
    }
}

/// Direction of the policy that decided a verdict, seen from the enforcing endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyDirection {
    /// Packets arriving at the endpoint.
    Ingress,
    /// Packets leaving the endpoint.
    Egress,
}

impl From<PolicyDirection> for policy::Direction {
    fn from(d: PolicyDirection) -> Self {
        match d {
            PolicyDirection::Ingress => policy::Direction::Ingress,
            PolicyDirection::Egress => policy::Direction::Egress,
        }
    }
}

/// A policy verdict on a new flow (allow or drop), or any drop, while tracing is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictEvent {
    /// Program that decided.
    pub program: ProgramKind,
    /// Allow or drop.
    pub verdict: FlowVerdict,
    /// Why.
    pub reason: VerdictReason,
    /// Policy direction evaluated (`None`: no policy involved, e.g. spoofing).
    pub direction: Option<PolicyDirection>,
    /// L4 protocol (final next header).
    pub proto: u8,
    /// Source port (ICMPv6 echo: identifier; 0 without ports).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination SIR address.
    pub dst: Ipv6Addr,
    /// Source identity (0 unknown, 2 world).
    pub src_identity: u32,
    /// Destination identity (0 unknown, 2 world).
    pub dst_identity: u32,
    /// Source tenant (0 unknown / none).
    pub src_vnid: u32,
    /// Destination tenant (0 unknown / none).
    pub dst_vnid: u32,
    /// Deciding rule (`policy::RuleId` value), if a rule decided.
    pub rule_id: Option<u32>,
}

/// Any record of the event ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FlowEvent {
    /// A translated packet.
    Translation(TranslationEvent),
    /// A policy verdict or a drop.
    Verdict(VerdictEvent),
}

/// Mounts bpffs at `/sys/fs/bpf` unless it is mounted already.
pub fn ensure_bpffs() -> Result<(), DataplaneError> {
    if is_bpffs(Path::new(BPFFS))? {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).map_err(io_err(format!("creating {BPFFS}")))?;
    let target = CString::new(BPFFS).map_err(|e| DataplaneError::Invalid(e.to_string()))?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DataplaneError::Io {
            context: format!("mounting bpffs at {BPFFS}"),
            error: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether `path` exists and lies on a bpffs (`false` if it does not exist).
fn is_bpffs(path: &Path) -> Result<bool, DataplaneError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| DataplaneError::Invalid(format!("path {} contains NUL", path.display())))?;
    // SAFETY: statfs is plain old data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(DataplaneError::Io {
            context: format!("statfs {}", path.display()),
            error: e,
        });
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Removes a pin directory (pinned links, which detaches them, and maps). Idempotent; refuses
/// any directory that is not on bpffs.
pub fn remove_pins(pin_dir: &Path) -> Result<(), DataplaneError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    if !is_bpffs(pin_dir)? {
        return Err(DataplaneError::Invalid(format!(
            "refusing to remove {}: not on bpffs",
            pin_dir.display()
        )));
    }
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing pins under {}", pin_dir.display()))(e)),
    }
}

/// The programs and maps of one host.
pub struct HostDataplane {
    ebpf: Ebpf,
    maps: HostMaps,
    pin_dir: Option<PathBuf>,
}

impl fmt::Debug for HostDataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostDataplane")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl HostDataplane {
    /// Loads both programs; maps pinned by name under `pin_dir` (created), reusing maps already
    /// pinned there (agent restart without loss).
    pub fn load(pin_dir: &Path) -> Result<Self, DataplaneError> {
        ensure_bpffs()?;
        std::fs::create_dir_all(pin_dir).map_err(io_err(format!(
            "creating pin directory {}",
            pin_dir.display()
        )))?;
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJ_PINNED)
            .map_err(|error| DataplaneError::Load {
                error: Box::new(error),
                context: format!(
                    "loading ila.bpf.o with maps pinned under {}",
                    pin_dir.display()
                ),
            })?;
        let mut dp = Self::finish(ebpf, Some(pin_dir.to_path_buf()))?;
        // Entries may predate the prefix filters (pins of an older version).
        dp.maps.rebuild_filters()?;
        Ok(dp)
    }

    /// Loads with unpinned maps (tests, benchmarks).
    pub fn load_unpinned() -> Result<Self, DataplaneError> {
        let ebpf = EbpfLoader::new()
            .load(OBJ_UNPINNED)
            .map_err(|error| DataplaneError::Load {
                error: Box::new(error),
                context: "loading ila_nopin.bpf.o".into(),
            })?;
        Self::finish(ebpf, None)
    }

    fn finish(mut ebpf: Ebpf, pin_dir: Option<PathBuf>) -> Result<Self, DataplaneError> {
        for kind in ProgramKind::ALL {
            classifier_mut(&mut ebpf, kind)?
                .load()
                .map_err(prog_err(format!("loading program {}", kind.program_name())))?;
        }
        let maps = HostMaps::from_ebpf(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            pin_dir,
        })
    }

    /// The pin directory this data path was loaded with (`None` when unpinned).
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Attaches to TCX ingress of `ifname` as seen from the calling thread's network namespace
    /// and pins the link at `pin_dir/links/<ifname>` so it outlives this process, replacing
    /// (atomically where the kernel allows) an existing pinned link of that name. Unpinned data
    /// paths keep the link in this process instead: it is detached when `self` is dropped.
    pub fn attach(&mut self, kind: ProgramKind, ifname: &str) -> Result<(), DataplaneError> {
        validate_ifname(ifname)?;
        let Some(pin_dir) = self.pin_dir.clone() else {
            let prog = classifier_mut(&mut self.ebpf, kind)?;
            prog.attach_with_options(ifname, TcAttachType::Ingress, tcx_default())
                .map_err(prog_err(format!(
                    "attaching {kind} to TCX ingress of {ifname}"
                )))?;
            return Ok(());
        };
        let links = pin_dir.join("links");
        std::fs::create_dir_all(&links).map_err(io_err(format!("creating {}", links.display())))?;
        let path = links.join(ifname);
        let prog = classifier_mut(&mut self.ebpf, kind)?;

        // Restart path: swap the program inside the existing link (BPF_LINK_UPDATE), so the
        // interface is never without a program. Falls back to a fresh attach if the old link is
        // gone or defunct (its interface was deleted).
        let mut id = None;
        if path.exists() {
            match PinnedLink::from_pin(&path) {
                Ok(pinned) => {
                    let old = pinned
                        .unpin()
                        .map_err(io_err(format!("unpinning {}", path.display())))?;
                    match SchedClassifierLink::try_from(old) {
                        Ok(link) => match prog.attach_to_link(link) {
                            Ok(new_id) => id = Some(new_id),
                            Err(e) => log::info!(
                                "pinned link {} not reusable ({e}); attaching anew",
                                path.display()
                            ),
                        },
                        Err(e) => log::info!(
                            "pinned object {} is not a TCX link ({e}); attaching anew",
                            path.display()
                        ),
                    }
                }
                Err(e) => {
                    log::info!("stale pin {} ({e}); removing", path.display());
                    std::fs::remove_file(&path)
                        .map_err(io_err(format!("removing stale pin {}", path.display())))?;
                }
            }
        }
        let id = match id {
            Some(id) => id,
            None => prog
                .attach_with_options(ifname, TcAttachType::Ingress, tcx_default())
                .map_err(prog_err(format!(
                    "attaching {kind} to TCX ingress of {ifname}"
                )))?,
        };
        let link = prog
            .take_link(id)
            .map_err(prog_err(format!("taking the {kind} link of {ifname}")))?;
        let fd_link = FdLink::try_from(link).map_err(|error| DataplaneError::Link {
            error: Box::new(error),
            context: format!("{kind} link of {ifname} is not an fd link"),
        })?;
        fd_link.pin(&path).map_err(|error| DataplaneError::Pin {
            error: Box::new(error),
            context: format!("pinning the {kind} link at {}", path.display()),
        })?;
        Ok(())
    }

    /// The maps of this data path.
    pub fn maps(&mut self) -> &mut HostMaps {
        &mut self.maps
    }

    /// Runs `kind` on `packet` (Ethernet frame) `repeat` times with `BPF_PROG_TEST_RUN`.
    ///
    /// The kernel reuses one skb for all repeats, so modifications accumulate across them.
    pub fn test_run(
        &self,
        kind: ProgramKind,
        packet: &[u8],
        repeat: u32,
    ) -> Result<testrun::Outcome, DataplaneError> {
        self.test_run_on(kind, packet, repeat, 0)
    }

    /// [`Self::test_run`] as if the frame had arrived on interface `ingress_ifindex`
    /// (`skb->ingress_ifindex`, what anti-spoofing compares with `ILA_ENDPOINTS`).
    pub fn test_run_on(
        &self,
        kind: ProgramKind,
        packet: &[u8],
        repeat: u32,
        ingress_ifindex: u32,
    ) -> Result<testrun::Outcome, DataplaneError> {
        let prog = self
            .ebpf
            .program(kind.program_name())
            .ok_or_else(|| missing_program(kind))?;
        let prog: &SchedClassifier = prog.try_into().map_err(prog_err(format!(
            "{} is not a classifier",
            kind.program_name()
        )))?;
        testrun::run(prog, kind.program_name(), packet, repeat, ingress_ifindex)
    }
}

fn missing_program(kind: ProgramKind) -> DataplaneError {
    DataplaneError::Invalid(format!(
        "program {} missing from the object",
        kind.program_name()
    ))
}

fn classifier_mut(
    ebpf: &mut Ebpf,
    kind: ProgramKind,
) -> Result<&mut SchedClassifier, DataplaneError> {
    ebpf.program_mut(kind.program_name())
        .ok_or_else(|| missing_program(kind))?
        .try_into()
        .map_err(prog_err(format!(
            "{} is not a classifier",
            kind.program_name()
        )))
}

fn tcx_default() -> TcAttachOptions {
    TcAttachOptions::TcxOrder(LinkOrder::default())
}

/// Interface names become file names under the pin directory: keep them to what the kernel allows.
fn validate_ifname(ifname: &str) -> Result<(), DataplaneError> {
    let ok = !ifname.is_empty()
        && ifname.len() < libc::IFNAMSIZ
        && ifname != "."
        && ifname != ".."
        && !ifname
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(DataplaneError::Invalid(format!(
            "invalid interface name {ifname:?}"
        )))
    }
}
