//! One ABI: the C headers (`bpf/ila_abi.h`, `bpf/policy_abi.h`) are the source of truth, and the
//! Rust mirrors (`dataplane::abi`, `dataplane::*_MAX_ENTRIES`, `policy::abi`) are checked here
//! against the BTF of the objects `build.rs` produced:
//!
//! * `abi_check.bpf.o` (never loaded; `bpf/abi_check.c` declares one variable of every ABI type):
//!   size of every shared struct, offset, size and name of every field (and no padding, for
//!   `aya::Pod`); value of every
//!   `ILA_STAT_*` and `ILA_REASON_*` enumerator.
//! * `ila.bpf.o` and `ila_nopin.bpf.o` (the loaded programs): every map of `.maps` with its key
//!   type, key size, value size, `max_entries` and pinning.
//!
//! The BTF reader below is deliberately small (ELF section lookup, the BTF type section); no
//! root, no kernel, no external tool.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use dataplane::abi::{
    self, reason, stat, IlaConfig, IlaCtKey, IlaCtVal, IlaEndpointVal, IlaEvent, IlaInKey,
    IlaInVal, IlaIpcacheVal, IlaOutKey, IlaOutVal, IlaVerdictEvent,
};
use policy::abi::{CidrKey, EndpointPolicy, PolicyKey, PolicyValue};

static OBJ_ABI: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/abi_check.bpf.o"));
static OBJ_PINNED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ila.bpf.o"));
static OBJ_NOPIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ila_nopin.bpf.o"));

// ---- A minimal BTF reader ----

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_ARRAY: u32 = 3;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_UNION: u32 = 5;
const BTF_KIND_ENUM: u32 = 6;
const BTF_KIND_FUNC_PROTO: u32 = 13;
const BTF_KIND_VAR: u32 = 14;
const BTF_KIND_DATASEC: u32 = 15;
const BTF_KIND_DECL_TAG: u32 = 17;
const BTF_KIND_ENUM64: u32 = 19;

/// LIBBPF_PIN_BY_NAME.
const PIN_BY_NAME: u64 = 1;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    ty: u32,
    /// In bits; bitfields are not part of the ABI.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// INT, FLOAT (size), PTR (target), typedef/const/volatile/restrict/type tag (target), and
    /// the kinds the checks do not look at.
    Other {
        kind: u32,
        size_or_type: u32,
    },
    Array {
        elem: u32,
        nelems: u32,
    },
    Struct {
        name: String,
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        name: String,
        values: Vec<(String, i64)>,
    },
    Var {
        name: String,
        ty: u32,
    },
    Datasec {
        name: String,
        vars: Vec<u32>,
    },
}

struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn cstr(b: &[u8], o: usize) -> String {
    let end = b[o..].iter().position(|&c| c == 0).expect("NUL-terminated") + o;
    String::from_utf8_lossy(&b[o..end]).into_owned()
}

/// The bytes of ELF section `name` (ELF64, little endian: what clang -target bpf emits here).
fn elf_section<'a>(elf: &'a [u8], name: &str) -> &'a [u8] {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little endian");
    let shoff = u64_at(elf, 0x28) as usize;
    let shentsize = u16_at(elf, 0x3a) as usize;
    let shnum = u16_at(elf, 0x3c) as usize;
    let shstrndx = u16_at(elf, 0x3e) as usize;
    let sh = |i: usize| &elf[shoff + i * shentsize..shoff + (i + 1) * shentsize];
    let strtab = u64_at(sh(shstrndx), 24) as usize;
    for i in 0..shnum {
        let h = sh(i);
        if cstr(elf, strtab + u32_at(h, 0) as usize) == name {
            let (off, size) = (u64_at(h, 24) as usize, u64_at(h, 32) as usize);
            return &elf[off..off + size];
        }
    }
    panic!("no section {name} in the object");
}

impl Btf {
    fn from_elf(elf: &[u8]) -> Self {
        let b = elf_section(elf, ".BTF");
        assert_eq!(u16_at(b, 0), 0xeb9f, "BTF magic");
        let hdr_len = u32_at(b, 4) as usize;
        let (type_off, type_len) = (u32_at(b, 8) as usize, u32_at(b, 12) as usize);
        let str_off = u32_at(b, 16) as usize;
        let strs = &b[hdr_len + str_off..];
        let name = |o: u32| cstr(strs, o as usize);
        let mut types = vec![Type::Other {
            kind: 0,
            size_or_type: 0,
        }];
        let mut p = hdr_len + type_off;
        let end = p + type_len;
        while p < end {
            let (name_off, info, sot) = (u32_at(b, p), u32_at(b, p + 4), u32_at(b, p + 8));
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            p += 12;
            let ty = match kind {
                BTF_KIND_INT | BTF_KIND_VAR | BTF_KIND_DECL_TAG => {
                    p += 4;
                    if kind == BTF_KIND_VAR {
                        Type::Var {
                            name: name(name_off),
                            ty: sot,
                        }
                    } else {
                        Type::Other {
                            kind,
                            size_or_type: sot,
                        }
                    }
                }
                BTF_KIND_ARRAY => {
                    let t = Type::Array {
                        elem: u32_at(b, p),
                        nelems: u32_at(b, p + 8),
                    };
                    p += 12;
                    t
                }
                BTF_KIND_STRUCT | BTF_KIND_UNION => {
                    let bitfields = info >> 31 == 1;
                    let members = (0..vlen)
                        .map(|i| {
                            let m = p + 12 * i;
                            let off = u32_at(b, m + 8);
                            Member {
                                name: name(u32_at(b, m)),
                                ty: u32_at(b, m + 4),
                                bit_offset: if bitfields { off & 0xff_ffff } else { off },
                            }
                        })
                        .collect();
                    p += 12 * vlen;
                    Type::Struct {
                        name: name(name_off),
                        size: sot,
                        members,
                    }
                }
                BTF_KIND_ENUM => {
                    let values = (0..vlen)
                        .map(|i| {
                            let v = u32_at(b, p + 8 * i + 4);
                            let v = if info >> 31 == 1 {
                                i64::from(v as i32)
                            } else {
                                i64::from(v)
                            };
                            (name(u32_at(b, p + 8 * i)), v)
                        })
                        .collect();
                    p += 8 * vlen;
                    Type::Enum {
                        name: name(name_off),
                        values,
                    }
                }
                BTF_KIND_ENUM64 => {
                    let values = (0..vlen)
                        .map(|i| {
                            let e = p + 12 * i;
                            let v = u64::from(u32_at(b, e + 4)) | u64::from(u32_at(b, e + 8)) << 32;
                            (name(u32_at(b, e)), v as i64)
                        })
                        .collect();
                    p += 12 * vlen;
                    Type::Enum {
                        name: name(name_off),
                        values,
                    }
                }
                BTF_KIND_FUNC_PROTO => {
                    p += 8 * vlen;
                    Type::Other {
                        kind,
                        size_or_type: sot,
                    }
                }
                BTF_KIND_DATASEC => {
                    let vars = (0..vlen).map(|i| u32_at(b, p + 12 * i)).collect();
                    p += 12 * vlen;
                    Type::Datasec {
                        name: name(name_off),
                        vars,
                    }
                }
                2 | 7..=12 | 16 | 18 => Type::Other {
                    kind,
                    size_or_type: sot,
                },
                _ => panic!("unknown BTF kind {kind}"),
            };
            types.push(ty);
        }
        Self { types }
    }

    /// Skips typedef, const, volatile, restrict and type tags.
    fn resolve(&self, mut id: u32) -> u32 {
        while let Type::Other {
            kind: 8..=11 | 18,
            size_or_type,
        } = self.types[id as usize]
        {
            id = size_or_type;
        }
        id
    }

    fn size(&self, id: u32) -> usize {
        match &self.types[self.resolve(id) as usize] {
            Type::Other {
                kind: BTF_KIND_INT | 16,
                size_or_type,
            } => *size_or_type as usize,
            Type::Other {
                kind: BTF_KIND_PTR, ..
            } => 8,
            Type::Array { elem, nelems } => self.size(*elem) * *nelems as usize,
            Type::Struct { size, .. } => *size as usize,
            Type::Enum { .. } => 4,
            t => panic!("no size for BTF type {id} ({t:?})"),
        }
    }

    fn name(&self, id: u32) -> String {
        match &self.types[self.resolve(id) as usize] {
            Type::Struct { name, .. } | Type::Enum { name, .. } => name.clone(),
            Type::Other {
                kind: BTF_KIND_INT, ..
            } => format!("int{}", self.size(id) * 8),
            t => format!("{t:?}"),
        }
    }

    fn named_struct(&self, name: &str) -> Option<(u32, &[Member])> {
        self.types.iter().find_map(|t| match t {
            Type::Struct {
                name: n,
                size,
                members,
            } if n == name => Some((*size, &members[..])),
            _ => None,
        })
    }

    fn named_enum(&self, name: &str) -> Option<&[(String, i64)]> {
        self.types.iter().find_map(|t| match t {
            Type::Enum { name: n, values } if n == name => Some(&values[..]),
            _ => None,
        })
    }

    /// The maps of `.maps`: name -> (member name -> member type), as `__uint`/`__type` declare them.
    fn maps(&self) -> BTreeMap<String, BTreeMap<String, u32>> {
        let vars = self
            .types
            .iter()
            .find_map(|t| match t {
                Type::Datasec { name, vars } if name == ".maps" => Some(vars),
                _ => None,
            })
            .expect("a .maps section in BTF");
        vars.iter()
            .map(|&v| {
                let Type::Var { name, ty } = &self.types[v as usize] else {
                    panic!(".maps entry {v} is not a VAR");
                };
                let Type::Struct { members, .. } = &self.types[self.resolve(*ty) as usize] else {
                    panic!("map {name} is not a struct");
                };
                let fields = members.iter().map(|m| (m.name.clone(), m.ty)).collect();
                (name.clone(), fields)
            })
            .collect()
    }

    /// `__uint(name, N)` is `int (*name)[N]`: N.
    fn uint_of(&self, ptr: u32) -> u64 {
        let Type::Other {
            kind: BTF_KIND_PTR,
            size_or_type,
        } = self.types[ptr as usize]
        else {
            panic!("__uint member {ptr} is not a pointer");
        };
        let Type::Array { nelems, .. } = self.types[self.resolve(size_or_type) as usize] else {
            panic!("__uint member {ptr} does not point to an array");
        };
        u64::from(nelems)
    }

    /// `__type(name, T)` is `T *name`: T.
    fn type_of(&self, ptr: u32) -> u32 {
        let Type::Other {
            kind: BTF_KIND_PTR,
            size_or_type,
        } = self.types[ptr as usize]
        else {
            panic!("__type member {ptr} is not a pointer");
        };
        size_or_type
    }
}

// ---- The Rust side of the contract ----

/// The size of a field, from an accessor (works for any field type).
fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

struct Layout {
    c_name: &'static str,
    rust_name: &'static str,
    size: usize,
    /// (name, offset, size)
    fields: Vec<(&'static str, usize, usize)>,
}

macro_rules! layout {
    ($c:literal => $t:ty { $($f:ident),* $(,)? }) => {
        Layout {
            c_name: $c,
            rust_name: stringify!($t),
            size: size_of::<$t>(),
            fields: vec![$((stringify!($f), offset_of!($t, $f), field_size(|x: &$t| &x.$f))),*],
        }
    };
}

fn layouts() -> Vec<Layout> {
    vec![
        layout!("ila_out_key" => IlaOutKey { sir }),
        layout!("ila_out_val" => IlaOutVal { ila, csum_mode, flags, pad }),
        layout!("ila_in_key" => IlaInKey { ila }),
        layout!("ila_in_val" => IlaInVal { sir, ifindex, csum_mode, flags, ep_mac, host_mac, pad }),
        layout!("ila_config" => IlaConfig { flags }),
        layout!("ila_event" => IlaEvent {
            kind, csum_mode, l4_proto, pad, ifindex, src, dst_before, dst_after
        }),
        layout!("ila_endpoint_val" => IlaEndpointVal { identity, vnid, ifindex, flags }),
        layout!("ila_ipcache_val" => IlaIpcacheVal { identity, vnid }),
        layout!("ila_ct_key" => IlaCtKey { a, b, port_a, port_b, proto, pad }),
        layout!("ila_ct_val" => IlaCtVal { last_seen, created, flags, local_ifindex }),
        layout!("ila_verdict_event" => IlaVerdictEvent {
            kind, program, verdict, reason, direction, proto, sport, dport, pad, ifindex,
            src_identity, dst_identity, src_vnid, dst_vnid, rule_id, pad2, src, dst
        }),
        layout!("ilanet_policy_ep" => EndpointPolicy { vnid, flags }),
        layout!("ilanet_policy_key" => PolicyKey {
            ep_identity, peer_identity, direction, proto, dport
        }),
        layout!("ilanet_policy_val" => PolicyValue { verdict, pad, rule_id }),
        layout!("ilanet_policy_cidr_key" => CidrKey {
            prefixlen, ep_identity, direction, proto, dport, addr
        }),
    ]
}

/// `enum ila_stat` and `enum ila_reason` as the Rust constants spell them.
fn enums() -> Vec<(&'static str, Vec<(String, i64)>)> {
    macro_rules! values {
        ($prefix:literal, $m:ident: $($v:ident),* $(,)?) => {
            vec![$((format!("{}{}", $prefix, stringify!($v)), i64::from($m::$v))),*]
        };
    }
    vec![
        (
            "ila_stat",
            values!("ILA_STAT_", stat: OUT_TRANSLATED, OUT_LOCAL, OUT_MISS, IN_TRANSLATED,
                IN_REDIRECTED, IN_MISS, NOT_IPV6, DROP_MALFORMED, DROP_CSUM, DROP_REWRITE,
                DROP_POLICY, DROP_TENANT, DROP_SPOOFED, DROP_NO_ENDPOINT, CT_NEW, CT_HIT,
                DROP_UNCLASSIFIED, DROP_FRAGMENT, MAX),
        ),
        (
            "ila_reason",
            values!("ILA_REASON_", reason: RULE, DEFAULT_ALLOW, DEFAULT_DENY, TENANT, NO_POLICY,
                SPOOFED, NO_ENDPOINT, MALFORMED, CSUM, REWRITE, UNCLASSIFIED, FRAGMENT),
        ),
    ]
}

struct MapAbi {
    name: &'static str,
    /// C type name of the key/value (`int32`, `int64` for integers; `None`: no key/value, ring).
    key: Option<&'static str>,
    key_size: usize,
    value: Option<&'static str>,
    value_size: usize,
    max_entries: usize,
}

fn maps() -> Vec<MapAbi> {
    let m = |name, key, key_size, value, value_size, max_entries| MapAbi {
        name,
        key,
        key_size,
        value,
        value_size,
        max_entries,
    };
    let u32s = size_of::<u32>();
    vec![
        m(
            "ILA_OUT",
            Some("ila_out_key"),
            size_of::<IlaOutKey>(),
            Some("ila_out_val"),
            size_of::<IlaOutVal>(),
            dataplane::OUT_MAX_ENTRIES,
        ),
        m(
            "ILA_IN",
            Some("ila_in_key"),
            size_of::<IlaInKey>(),
            Some("ila_in_val"),
            size_of::<IlaInVal>(),
            dataplane::IN_MAX_ENTRIES,
        ),
        m(
            "ILA_OUT_FILTER",
            Some("int32"),
            u32s,
            Some("int32"),
            u32s,
            abi::ILA_FILTER_SLOTS as usize,
        ),
        m(
            "ILA_IN_FILTER",
            Some("int32"),
            u32s,
            Some("int32"),
            u32s,
            abi::ILA_FILTER_SLOTS as usize,
        ),
        m(
            "ILA_STATS",
            Some("int32"),
            u32s,
            Some("int64"),
            size_of::<u64>(),
            stat::MAX as usize,
        ),
        m(
            "ILA_CONFIG",
            Some("int32"),
            u32s,
            Some("ila_config"),
            size_of::<IlaConfig>(),
            1,
        ),
        m("ILA_EVENTS", None, 0, None, 0, dataplane::EVENTS_BYTES),
        m(
            "ILA_ENDPOINTS",
            Some("ila_endpoint_key"),
            size_of::<[u8; 16]>(),
            Some("ila_endpoint_val"),
            size_of::<IlaEndpointVal>(),
            dataplane::ENDPOINTS_MAX_ENTRIES,
        ),
        m(
            "ILA_IPCACHE",
            Some("ila_endpoint_key"),
            size_of::<[u8; 16]>(),
            Some("ila_ipcache_val"),
            size_of::<IlaIpcacheVal>(),
            dataplane::IPCACHE_MAX_ENTRIES,
        ),
        m(
            "ILA_CT",
            Some("ila_ct_key"),
            size_of::<IlaCtKey>(),
            Some("ila_ct_val"),
            size_of::<IlaCtVal>(),
            dataplane::CT_MAX_ENTRIES,
        ),
        m(
            "POLICY_EP",
            Some("int32"),
            u32s,
            Some("ilanet_policy_ep"),
            EndpointPolicy::SIZE,
            dataplane::POLICY_EP_MAX_ENTRIES,
        ),
        m(
            "POLICY",
            Some("ilanet_policy_key"),
            PolicyKey::SIZE,
            Some("ilanet_policy_val"),
            PolicyValue::SIZE,
            dataplane::POLICY_MAX_ENTRIES,
        ),
        m(
            "POLICY_CIDR",
            Some("ilanet_policy_cidr_key"),
            CidrKey::SIZE,
            Some("ilanet_policy_val"),
            PolicyValue::SIZE,
            dataplane::POLICY_CIDR_MAX_ENTRIES,
        ),
    ]
}

fn report(what: &str, errors: Vec<String>) {
    assert!(
        errors.is_empty(),
        "{what}: the Rust mirror drifted from the C ABI (bpf/*_abi.h is the source of truth):\n  {}",
        errors.join("\n  ")
    );
}

// ---- The checks ----

#[test]
fn structs_match_the_c_layout() {
    let btf = Btf::from_elf(OBJ_ABI);
    let mut errors = Vec::new();
    for l in layouts() {
        let Some((size, members)) = btf.named_struct(l.c_name) else {
            errors.push(format!(
                "struct {} is not in the BTF of abi_check.bpf.o",
                l.c_name
            ));
            continue;
        };
        if size as usize != l.size {
            errors.push(format!(
                "struct {}: {size} bytes in C, {} has {}",
                l.c_name, l.rust_name, l.size
            ));
        }
        for m in members {
            let (c_off, c_size) = ((m.bit_offset / 8) as usize, btf.size(m.ty));
            match l.fields.iter().find(|f| f.0 == m.name) {
                None => errors.push(format!(
                    "struct {}: field {} (offset {c_off}) has no counterpart in {}",
                    l.c_name, m.name, l.rust_name
                )),
                Some(&(_, off, sz)) if off != c_off || sz != c_size => errors.push(format!(
                    "struct {}: field {} at offset {c_off} size {c_size} in C, {}::{} at \
                     offset {off} size {sz}",
                    l.c_name, m.name, l.rust_name, m.name
                )),
                Some(_) => {}
            }
        }
        // aya::Pod: no padding bytes, so the fields cover the whole struct.
        let covered: usize = l.fields.iter().map(|f| f.2).sum();
        if covered != l.size {
            errors.push(format!(
                "{}: fields cover {covered} of {} bytes (padding: name it `pad` in C and Rust)",
                l.rust_name, l.size
            ));
        }
        for f in &l.fields {
            if !members.iter().any(|m| m.name == f.0) {
                errors.push(format!(
                    "{}::{} has no counterpart in struct {}",
                    l.rust_name, f.0, l.c_name
                ));
            }
        }
    }
    report("structs", errors);
}

#[test]
fn counters_and_reasons_match_the_c_enums() {
    let btf = Btf::from_elf(OBJ_ABI);
    let mut errors = Vec::new();
    for (c_name, rust) in enums() {
        let Some(values) = btf.named_enum(c_name) else {
            errors.push(format!(
                "enum {c_name} is not in the BTF of abi_check.bpf.o"
            ));
            continue;
        };
        for (name, v) in values {
            match rust.iter().find(|r| &r.0 == name) {
                None => errors.push(format!("enum {c_name}: {name} = {v} has no Rust constant")),
                Some((_, rv)) if rv != v => {
                    errors.push(format!("enum {c_name}: {name} = {v} in C, {rv} in Rust"))
                }
                Some(_) => {}
            }
        }
        for (name, rv) in &rust {
            if !values.iter().any(|(n, _)| n == name) {
                errors.push(format!("enum {c_name}: Rust has {name} = {rv}, C does not"));
            }
        }
    }
    report("enums", errors);
}

fn check_maps(object: &str, elf: &[u8], pinned: bool) -> Vec<String> {
    let btf = Btf::from_elf(elf);
    let found = btf.maps();
    let expected = maps();
    let mut errors = Vec::new();
    for name in found.keys() {
        if !expected.iter().any(|m| m.name == name) {
            errors.push(format!(
                "{object}: map {name} is not known to the Rust side"
            ));
        }
    }
    for m in &expected {
        let Some(fields) = found.get(m.name) else {
            errors.push(format!("{object}: map {} is missing", m.name));
            continue;
        };
        let mut side = |what: &str, c_type: Option<u32>, name: Option<&str>, size: usize| {
            let (c_name, c_size) = match c_type {
                Some(t) => (Some(btf.name(btf.type_of(t))), btf.size(btf.type_of(t))),
                None => (None, 0),
            };
            if c_name.as_deref() != name || c_size != size {
                errors.push(format!(
                    "{object}: map {} {what}: {c_name:?} of {c_size} bytes in C, Rust expects \
                     {name:?} of {size} bytes",
                    m.name
                ));
            }
        };
        side("key", fields.get("key").copied(), m.key, m.key_size);
        side("value", fields.get("value").copied(), m.value, m.value_size);
        let max = fields.get("max_entries").map(|&t| btf.uint_of(t));
        if max != Some(m.max_entries as u64) {
            errors.push(format!(
                "{object}: map {} max_entries {max:?} in C, {} in Rust",
                m.name, m.max_entries
            ));
        }
        let pinning = fields.get("pinning").map(|&t| btf.uint_of(t));
        let want = pinned.then_some(PIN_BY_NAME);
        if pinning != want {
            errors.push(format!(
                "{object}: map {} pinning {pinning:?}, expected {want:?}",
                m.name
            ));
        }
    }
    errors
}

#[test]
fn maps_match_the_rust_constants() {
    let mut errors = check_maps("ila.bpf.o", OBJ_PINNED, true);
    errors.extend(check_maps("ila_nopin.bpf.o", OBJ_NOPIN, false));
    report("maps", errors);
}

#[test]
fn the_map_types_are_the_checked_structs() {
    // Every named key/value type of a map is one whose layout `structs_match_the_c_layout`
    // checks (so a map cannot use an unchecked struct).
    let checked: Vec<&str> = layouts().iter().map(|l| l.c_name).collect();
    for m in maps() {
        for t in [m.key, m.value].into_iter().flatten() {
            assert!(
                t.starts_with("int") || checked.contains(&t) || t == "ila_endpoint_key",
                "map {} uses struct {t}, whose layout is not checked",
                m.name
            );
        }
    }
    // ila_endpoint_key is the bare 16-byte address the Rust side uses as key.
    let btf = Btf::from_elf(OBJ_ABI);
    let (size, members) = btf
        .named_struct("ila_endpoint_key")
        .expect("ila_endpoint_key");
    assert_eq!(size as usize, size_of::<[u8; 16]>());
    assert_eq!(members.len(), 1);
}

#[test]
fn policy_compile_limits_are_the_map_sizes() {
    let d = policy::CompileLimits::default();
    assert_eq!(d.max_entries, dataplane::POLICY_MAX_ENTRIES);
    assert_eq!(d.max_cidr_entries, dataplane::POLICY_CIDR_MAX_ENTRIES);
    assert_eq!(dataplane::compile_limits(), d);
}
