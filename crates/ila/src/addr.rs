//! The three halves of ILA addresses: locators, SIR prefixes and identifiers.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::IlaError;

/// Parses `a:b:c:d::/64` or `a:b:c:d::` into the upper 64 bits of the address.
fn parse_prefix64(input: &str) -> Result<u64, IlaError> {
    let err = |reason: &str| IlaError::InvalidPrefix {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    if let Some(len) = len {
        let len: u8 = len
            .parse()
            .map_err(|_| err(&format!("prefix length `{len}` is not a number")))?;
        if len != 64 {
            return Err(err(&format!("prefix length must be 64, got /{len}")));
        }
    }
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| err(&format!("`{addr}` is not an IPv6 address")))?;
    let bits = u128::from(addr);
    if bits as u64 != 0 {
        return Err(err(
            "the low 64 bits (interface identifier part) must be zero",
        ));
    }
    Ok((bits >> 64) as u64)
}

/// Formats upper 64 bits as `a:b:c:d::/64`.
fn fmt_prefix64(upper: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "{}/64", Ipv6Addr::from(u128::from(upper) << 64))
}

/// Joins upper 64 bits and an identifier into one address.
fn join(upper: u64, id: Identifier) -> Ipv6Addr {
    Ipv6Addr::from((u128::from(upper) << 64) | u128::from(id.0))
}

/// Serde as the Display/FromStr string, so that JSON, etcd values and BGP dumps are readable.
macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

macro_rules! prefix64 {
    ($(#[$doc:meta])* $t:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $t(pub u64);

        impl $t {
            /// Takes the upper 64 bits of an address.
            pub fn from_addr(addr: Ipv6Addr) -> Self {
                Self((u128::from(addr) >> 64) as u64)
            }

            /// The full address made of this prefix and `id`.
            pub fn with_identifier(self, id: Identifier) -> Ipv6Addr {
                join(self.0, id)
            }

            /// The prefix as an address with zero low 64 bits (`a:b:c:d::`).
            pub fn to_addr(self) -> Ipv6Addr {
                Ipv6Addr::from(u128::from(self.0) << 64)
            }

            /// Whether `addr` lies inside this /64.
            pub fn contains(self, addr: Ipv6Addr) -> bool {
                Self::from_addr(addr) == self
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt_prefix64(self.0, f)
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), self)
            }
        }

        impl FromStr for $t {
            type Err = IlaError;
            fn from_str(s: &str) -> Result<Self, IlaError> {
                parse_prefix64(s).map(Self)
            }
        }

        string_serde!($t);
    };
}

prefix64!(
    /// Upper 64 bits naming a host on the underlay; the host owns `locator::/64`.
    Locator
);
prefix64!(
    /// Upper 64 bits of the virtual prefix containers use; one per tenant network.
    SirPrefix
);

/// The type field (bits 0–2) of an identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentifierType {
    /// 1: a locally unique identifier (60-bit id).
    LocallyUnique,
    /// 2: a virtual network identifier carrying an IPv4 virtual address.
    VnidIpv4,
    /// 3: a virtual network identifier carrying (the low 32 bits of) an IPv6 unicast address.
    VnidIpv6,
    /// Any other 3-bit type code (0 = interface identifier, 4 = multicast, ...); only the low 3 bits count.
    Other(u8),
}

impl IdentifierType {
    /// The 3-bit code.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::LocallyUnique => 1,
            Self::VnidIpv4 => 2,
            Self::VnidIpv6 => 3,
            Self::Other(v) => v & 0b111,
        }
    }

    /// The type for a code; only the low 3 bits of `v` are looked at.
    pub fn from_u8(v: u8) -> Self {
        match v & 0b111 {
            1 => Self::LocallyUnique,
            2 => Self::VnidIpv4,
            3 => Self::VnidIpv6,
            o => Self::Other(o),
        }
    }

    /// Whether identifiers of this type carry a VNID and a 32-bit virtual address.
    pub fn is_vnid(self) -> bool {
        matches!(self, Self::VnidIpv4 | Self::VnidIpv6)
    }
}

impl fmt::Display for IdentifierType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LocallyUnique => f.write_str("luid"),
            Self::VnidIpv4 => f.write_str("vnid-ipv4"),
            Self::VnidIpv6 => f.write_str("vnid-ipv6"),
            Self::Other(v) => write!(f, "type-{}", v & 0b111),
        }
    }
}

/// A 28-bit virtual network identifier (tenant network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vnid(u32);

impl Vnid {
    /// Largest valid VNID (2^28 - 1).
    pub const MAX: u32 = (1 << 28) - 1;

    /// Checks that `v` fits in 28 bits.
    pub fn new(v: u32) -> Result<Self, IlaError> {
        if v > Self::MAX {
            Err(IlaError::VnidOutOfRange(v))
        } else {
            Ok(Self(v))
        }
    }

    /// The numeric value.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Vnid {
    type Error = IlaError;
    fn try_from(v: u32) -> Result<Self, IlaError> {
        Self::new(v)
    }
}

impl From<Vnid> for u32 {
    fn from(v: Vnid) -> u32 {
        v.0
    }
}

impl fmt::Display for Vnid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The low 64 bits of a container address, unique within its SIR prefix.
///
/// Bit 0 is the most significant bit: type in bits 0–2, C (checksum-neutral) in bit 3, then
/// either a 28-bit VNID and a 32-bit virtual address, or a 60-bit locally unique id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier(pub u64);

impl Identifier {
    /// Mask of the C bit (bit 3 from the top).
    pub const C_BIT: u64 = 1 << 60;
    /// Largest locally unique id value (60 bits).
    pub const LUID_MAX: u64 = (1 << 60) - 1;
    const TYPE_SHIFT: u32 = 61;
    const VNID_SHIFT: u32 = 32;

    /// Takes the low 64 bits of an address.
    pub fn from_addr(addr: Ipv6Addr) -> Self {
        Self(u128::from(addr) as u64)
    }

    /// A VNID identifier with the C bit clear.
    ///
    /// `ty` is written as given (normally [`IdentifierType::VnidIpv4`] or
    /// [`IdentifierType::VnidIpv6`]); for other types [`Identifier::vnid`] reads back `None`.
    pub fn new_vnid(ty: IdentifierType, vnid: Vnid, virt: u32) -> Self {
        Self(
            (u64::from(ty.as_u8()) << Self::TYPE_SHIFT)
                | (u64::from(vnid.0) << Self::VNID_SHIFT)
                | u64::from(virt),
        )
    }

    /// A locally unique identifier with the C bit clear; `id` must fit in 60 bits.
    pub fn new_luid(id: u64) -> Result<Self, IlaError> {
        if id > Self::LUID_MAX {
            return Err(IlaError::LuidOutOfRange(id));
        }
        Ok(Self(
            (u64::from(IdentifierType::LocallyUnique.as_u8()) << Self::TYPE_SHIFT) | id,
        ))
    }

    /// The type field.
    pub fn id_type(self) -> IdentifierType {
        IdentifierType::from_u8((self.0 >> Self::TYPE_SHIFT) as u8)
    }

    /// Whether the C (checksum-neutral mapping) bit is set.
    pub fn c_bit(self) -> bool {
        self.0 & Self::C_BIT != 0
    }

    /// The same identifier with the C bit set or cleared (nothing else changes).
    pub fn with_c_bit(self, set: bool) -> Self {
        if set {
            Self(self.0 | Self::C_BIT)
        } else {
            Self(self.0 & !Self::C_BIT)
        }
    }

    /// The VNID, for VNID types.
    pub fn vnid(self) -> Option<Vnid> {
        self.id_type()
            .is_vnid()
            .then_some(Vnid(((self.0 >> Self::VNID_SHIFT) as u32) & Vnid::MAX))
    }

    /// The 32-bit virtual address, for VNID types.
    pub fn virtual_addr(self) -> Option<u32> {
        self.id_type().is_vnid().then_some(self.0 as u32)
    }

    /// The 60-bit id, for locally unique identifiers.
    pub fn luid(self) -> Option<u64> {
        (self.id_type() == IdentifierType::LocallyUnique).then_some(self.0 & Self::LUID_MAX)
    }

    /// The low 16 bits: the word checksum-neutral mapping adjusts.
    pub fn low16(self) -> u16 {
        self.0 as u16
    }
}

impl fmt::Display for Identifier {
    /// Four hex groups without `::` compression, e.g. `3000:1:0:2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:x}:{:x}:{:x}:{:x}",
            (v >> 48) as u16,
            (v >> 32) as u16,
            (v >> 16) as u16,
            v as u16
        )
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identifier({self})")
    }
}

impl FromStr for Identifier {
    type Err = IlaError;

    /// Parses four hex groups (`0:0:0:1`); `::` may stand for one or more zero groups.
    fn from_str(input: &str) -> Result<Self, IlaError> {
        let err = |reason: String| IlaError::InvalidIdentifier {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        let split = |part: &str| -> Vec<String> {
            if part.is_empty() {
                Vec::new()
            } else {
                part.split(':').map(str::to_string).collect()
            }
        };
        let groups: Vec<String> = match s.split_once("::") {
            Some((left, right)) => {
                if right.contains("::") {
                    return Err(err("`::` may appear only once".into()));
                }
                let (l, r) = (split(left), split(right));
                if l.len() + r.len() > 3 {
                    return Err(err("`::` must stand for at least one zero group".into()));
                }
                let zeros = 4 - l.len() - r.len();
                l.into_iter()
                    .chain(std::iter::repeat_n("0".to_string(), zeros))
                    .chain(r)
                    .collect()
            }
            None => s.split(':').map(str::to_string).collect(),
        };
        if groups.len() != 4 {
            return Err(err(format!(
                "expected 4 groups of hex digits separated by `:`, found {}",
                groups.len()
            )));
        }
        let mut v: u64 = 0;
        for g in &groups {
            if g.is_empty() || g.len() > 4 || !g.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(format!("group `{g}` is not 1 to 4 hex digits")));
            }
            // Cannot fail: checked above to be 1–4 hex digits.
            let w = u16::from_str_radix(g, 16).map_err(|e| err(e.to_string()))?;
            v = (v << 16) | u64::from(w);
        }
        Ok(Self(v))
    }
}

string_serde!(Identifier);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_print() {
        let l: Locator = "2001:db8:1:1::/64".parse().unwrap();
        assert_eq!(l, Locator(0x2001_0db8_0001_0001));
        assert_eq!(l.to_string(), "2001:db8:1:1::/64");
        assert_eq!("2001:db8:1:1::".parse::<Locator>().unwrap(), l);
        let s: SirPrefix = " fd00:ffff:0:7::/64 ".parse().unwrap();
        assert_eq!(s, SirPrefix(0xfd00_ffff_0000_0007));
        assert_eq!(s.to_string(), "fd00:ffff:0:7::/64");
        assert_eq!(format!("{l:?}"), "Locator(2001:db8:1:1::/64)");
        assert_eq!(Locator(0).to_string(), "::/64");
    }

    #[test]
    fn prefix_errors_name_input_and_problem() {
        let e = "2001:db8::/48".parse::<Locator>().unwrap_err().to_string();
        assert!(
            e.contains("`2001:db8::/48`") && e.contains("must be 64"),
            "{e}"
        );
        let e = "2001:db8::1/64"
            .parse::<SirPrefix>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`2001:db8::1/64`") && e.contains("low 64 bits"),
            "{e}"
        );
        let e = "nonsense".parse::<Locator>().unwrap_err().to_string();
        assert!(e.contains("`nonsense`") && e.contains("not an IPv6"), "{e}");
        let e = "2001:db8::/x".parse::<Locator>().unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
    }

    #[test]
    fn addresses_split_and_join() {
        let addr: Ipv6Addr = "2001:db8:1:1:6000:1:a00:2".parse().unwrap();
        let l = Locator::from_addr(addr);
        let id = Identifier::from_addr(addr);
        assert_eq!(l, Locator(0x2001_0db8_0001_0001));
        assert_eq!(id, Identifier(0x6000_0001_0a00_0002));
        assert_eq!(l.with_identifier(id), addr);
        assert!(l.contains(addr));
        assert!(!Locator(1).contains(addr));
        let s = SirPrefix(0xfd00_0000_0000_0001);
        assert_eq!(
            s.with_identifier(id),
            "fd00::1:6000:1:a00:2".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn identifier_text() {
        let id: Identifier = "3000:1:0:2".parse().unwrap();
        assert_eq!(id, Identifier(0x3000_0001_0000_0002));
        assert_eq!(id.to_string(), "3000:1:0:2");
        assert_eq!(Identifier(1).to_string(), "0:0:0:1");
        assert_eq!("::1".parse::<Identifier>().unwrap(), Identifier(1));
        assert_eq!(
            "6000::2".parse::<Identifier>().unwrap(),
            Identifier(0x6000_0000_0000_0002)
        );
        assert_eq!(
            "ABCD:0:0:FFFF".parse::<Identifier>().unwrap().to_string(),
            "abcd:0:0:ffff"
        );
        for bad in [
            "1:2:3",
            "1:2:3:4:5",
            "1:2:3:12345",
            "1:2:3:g",
            "1::2::3",
            "1:2::3:4",
            "",
        ] {
            let e = bad.parse::<Identifier>().unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn identifier_fields() {
        let v = Vnid::new(0x0abc_def1).unwrap();
        let id = Identifier::new_vnid(IdentifierType::VnidIpv6, v, 0x0a00_0002);
        // 011 0 | abcdef1 | 0a000002
        assert_eq!(id, Identifier(0x6abc_def1_0a00_0002));
        assert_eq!(id.id_type(), IdentifierType::VnidIpv6);
        assert!(!id.c_bit());
        assert_eq!(id.vnid(), Some(v));
        assert_eq!(id.virtual_addr(), Some(0x0a00_0002));
        assert_eq!(id.luid(), None);
        let c = id.with_c_bit(true);
        assert_eq!(c, Identifier(0x7abc_def1_0a00_0002));
        assert!(c.c_bit());
        assert_eq!(c.vnid(), Some(v), "C bit must not leak into the VNID");
        assert_eq!(c.with_c_bit(false), id);

        let v4 = Identifier::new_vnid(IdentifierType::VnidIpv4, Vnid::new(5).unwrap(), 7);
        assert_eq!(v4, Identifier(0x4000_0005_0000_0007));
        assert_eq!(v4.id_type(), IdentifierType::VnidIpv4);

        let l = Identifier::new_luid(0x0fff_ffff_ffff_ffff).unwrap();
        assert_eq!(l, Identifier(0x2fff_ffff_ffff_ffff));
        assert_eq!(l.id_type(), IdentifierType::LocallyUnique);
        assert_eq!(l.vnid(), None);
        assert_eq!(l.virtual_addr(), None);
        assert_eq!(l.luid(), Some(0x0fff_ffff_ffff_ffff));
        assert_eq!(
            Identifier::new_luid(1 << 60),
            Err(IlaError::LuidOutOfRange(1 << 60))
        );
        assert_eq!(Identifier(0).id_type(), IdentifierType::Other(0));
        assert_eq!(Identifier(0xe000 << 48).id_type(), IdentifierType::Other(7));
        for code in 0..8u8 {
            assert_eq!(IdentifierType::from_u8(code).as_u8(), code);
        }
    }

    #[test]
    fn vnid_range() {
        assert_eq!(Vnid::new((1 << 28) - 1).unwrap().get(), (1 << 28) - 1);
        assert_eq!(Vnid::new(1 << 28), Err(IlaError::VnidOutOfRange(1 << 28)));
        assert!(Vnid::new(1 << 28)
            .unwrap_err()
            .to_string()
            .contains("268435456"));
        assert_eq!(
            serde_json::to_string(&Vnid::new(42).unwrap()).unwrap(),
            "42"
        );
        assert!(serde_json::from_str::<Vnid>("268435456").is_err());
    }

    #[test]
    fn serde_as_strings() {
        let l = Locator(0x2001_0db8_0001_0001);
        assert_eq!(serde_json::to_string(&l).unwrap(), "\"2001:db8:1:1::/64\"");
        assert_eq!(
            serde_json::from_str::<Locator>("\"2001:db8:1:1::\"").unwrap(),
            l
        );
        let s = SirPrefix(0xfd00 << 48);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"fd00::/64\"");
        let id = Identifier(0x6000_0001_0000_0002);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"6000:1:0:2\"");
        assert_eq!(
            serde_json::from_str::<Identifier>("\"6000:1:0:2\"").unwrap(),
            id
        );
        let e = serde_json::from_str::<Locator>("\"2001:db8::/48\"").unwrap_err();
        assert!(e.to_string().contains("must be 64"), "{e}");
    }
}
