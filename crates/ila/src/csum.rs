//! Checksum modes and the SIR⇄ILA translation, including checksum-neutral mapping.
//!
//! Checksum-neutral mapping (RFC draft-herbert-intarea-ila, Linux `net/ipv6/ila/`) folds the
//! change of the upper 64 bits (and of the C bit) into the low 16 bits of the identifier, so
//! the one's-complement sum of the whole address, and with it every L4 pseudo-header checksum,
//! stays the same. The arithmetic here gives bit-for-bit the kernel's results.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Identifier, IlaError, Locator, SirPrefix};

/// How a translation keeps L4 checksums valid. Numeric values match the eBPF ABI `ILA_CSUM_*`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ChecksumMode {
    /// 0: checksum-neutral mapping, marked by the C bit (`neutral-map`).
    #[default]
    NeutralMap,
    /// 1: incrementally fix the TCP/UDP/ICMPv6 checksum (`adj-transport`).
    AdjTransport,
    /// 2: leave checksums alone (`no-action`), only for comparisons.
    NoAction,
}

impl ChecksumMode {
    /// All modes, in ABI order.
    pub const ALL: [ChecksumMode; 3] = [Self::NeutralMap, Self::AdjTransport, Self::NoAction];

    /// The eBPF ABI value (`ILA_CSUM_NEUTRAL_MAP` = 0, `ILA_CSUM_ADJUST_TRANSPORT` = 1,
    /// `ILA_CSUM_NO_ACTION` = 2).
    pub fn as_u8(self) -> u8 {
        match self {
            Self::NeutralMap => 0,
            Self::AdjTransport => 1,
            Self::NoAction => 2,
        }
    }

    /// The mode for an eBPF ABI value.
    pub fn from_u8(v: u8) -> Result<Self, IlaError> {
        match v {
            0 => Ok(Self::NeutralMap),
            1 => Ok(Self::AdjTransport),
            2 => Ok(Self::NoAction),
            _ => Err(IlaError::InvalidChecksumModeValue(v)),
        }
    }

    /// The canonical name (`neutral-map`, `adj-transport`, `no-action`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeutralMap => "neutral-map",
            Self::AdjTransport => "adj-transport",
            Self::NoAction => "no-action",
        }
    }
}

impl fmt::Display for ChecksumMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChecksumMode {
    type Err = IlaError;
    fn from_str(s: &str) -> Result<Self, IlaError> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| IlaError::InvalidChecksumMode {
                input: s.to_string(),
            })
    }
}

/// One's-complement addition of two 16-bit values (end-around carry).
///
/// The result is 0 only when both inputs are 0, as in the kernel's `csum_add` + fold.
pub fn ones_complement_add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Folded 16-bit one's-complement sum of `data` read as big-endian 16-bit words
/// (an odd last byte is padded with zero, as RFC 1071 does). Not complemented.
pub fn ones_complement_sum16(data: &[u8]) -> u16 {
    data.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
        .fold(0, ones_complement_add)
}

/// One's-complement sum of the four 16-bit words of a 64-bit prefix.
fn sum64(v: u64) -> u16 {
    ones_complement_sum16(&v.to_be_bytes())
}

/// The C bit seen as part of the first 16-bit word of the identifier.
const C_BIT_WORD: u16 = 0x1000;

/// The value checksum-neutral mapping adds (one's complement) to the identifier's low 16 bits
/// when the upper 64 bits change from `old_upper` to `new_upper`.
///
/// `setting_c` is true for SIR→ILA (the C bit gets set, so 0x1000 is subtracted too) and false
/// for ILA→SIR (the C bit gets cleared, so 0x1000 is added back). Exposed so that a data plane
/// can cache it per mapping, as the kernel caches `csum_diff`.
pub fn neutral_adjustment(old_upper: u64, new_upper: u64, setting_c: bool) -> u16 {
    // Subtraction in one's complement is addition of the complement.
    let d = ones_complement_add(sum64(old_upper), !sum64(new_upper));
    let flag = if setting_c { !C_BIT_WORD } else { C_BIT_WORD };
    ones_complement_add(d, flag)
}

/// Applies the checksum-neutral adjustment and flips the C bit.
fn neutral_rewrite(id: Identifier, old_upper: u64, new_upper: u64, setting_c: bool) -> Identifier {
    let adj = neutral_adjustment(old_upper, new_upper, setting_c);
    let low = ones_complement_add(id.low16(), adj);
    Identifier((id.0 & !0xffff) | u64::from(low)).with_c_bit(setting_c)
}

fn split(addr: Ipv6Addr) -> (u64, Identifier) {
    let v = u128::from(addr);
    ((v >> 64) as u64, Identifier(v as u64))
}

/// Translates a SIR address to the ILA address that crosses the underlay toward `locator`.
///
/// In [`ChecksumMode::NeutralMap`] the identifier gets the C bit and an adjusted low 16 bits;
/// this fails if the C bit is already set or the low 16 bits are 0 (they would not come back).
/// In the other modes only the upper 64 bits change.
pub fn sir_to_ila(
    addr: Ipv6Addr,
    locator: Locator,
    mode: ChecksumMode,
) -> Result<Ipv6Addr, IlaError> {
    let (old_upper, id) = split(addr);
    let id = match mode {
        ChecksumMode::NeutralMap => {
            if id.c_bit() {
                return Err(IlaError::CBitAlreadySet(id));
            }
            if id.low16() == 0 {
                return Err(IlaError::ZeroLow16(id));
            }
            neutral_rewrite(id, old_upper, locator.0, true)
        }
        ChecksumMode::AdjTransport | ChecksumMode::NoAction => id,
    };
    Ok(locator.with_identifier(id))
}

/// Translates an ILA address back to the SIR address in `sir`; the inverse of [`sir_to_ila`]
/// with the same mode.
///
/// In [`ChecksumMode::NeutralMap`] this fails if the C bit is not set.
pub fn ila_to_sir(
    addr: Ipv6Addr,
    sir: SirPrefix,
    mode: ChecksumMode,
) -> Result<Ipv6Addr, IlaError> {
    let (old_upper, id) = split(addr);
    let id = match mode {
        ChecksumMode::NeutralMap => {
            if !id.c_bit() {
                return Err(IlaError::CBitNotSet(id));
            }
            neutral_rewrite(id, old_upper, sir.0, false)
        }
        ChecksumMode::AdjTransport | ChecksumMode::NoAction => id,
    };
    Ok(sir.with_identifier(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn add_and_sum_by_hand() {
        assert_eq!(ones_complement_add(0xffff, 0x0001), 0x0001);
        assert_eq!(ones_complement_add(0x8000, 0x8000), 0x0001);
        assert_eq!(ones_complement_add(0x0000, 0x0000), 0x0000);
        assert_eq!(ones_complement_add(0x1234, 0xedcb), 0xffff);
        // RFC 1071 §3 example: 0001 f203 f4f5 f6f7 sums to ddf2 (folded).
        assert_eq!(
            ones_complement_sum16(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        // An odd trailing byte is the high byte of a zero-padded word.
        assert_eq!(ones_complement_sum16(&[0x12, 0x34, 0x56]), 0x6834);
        assert_eq!(ones_complement_sum16(&[]), 0);
    }

    #[test]
    fn worked_example_neutral_map() {
        // SIR words 2001+0db8+ffff+0000 = 2db9; locator words 2001+0db8+0001+0001 = 2dbb.
        // D = 2db9 - 2dbb = -2; minus 0x1000 for the C bit = -0x1002.
        // Low 16 bits: 0x0002 - 0x1002 = -0x1000 = 0xefff. C bit turns 6000 into 7000.
        let sir = a("2001:db8:ffff::6000:1:0:2");
        let loc: Locator = "2001:db8:1:1::/64".parse().unwrap();
        assert_eq!(
            neutral_adjustment(0x2001_0db8_ffff_0000, loc.0, true),
            0xeffd
        );
        let ila = sir_to_ila(sir, loc, ChecksumMode::NeutralMap).unwrap();
        assert_eq!(ila, a("2001:db8:1:1:7000:1:0:efff"));
        assert_eq!(
            ones_complement_sum16(&ila.octets()),
            ones_complement_sum16(&sir.octets())
        );
        let sp: SirPrefix = "2001:db8:ffff::/64".parse().unwrap();
        assert_eq!(ila_to_sir(ila, sp, ChecksumMode::NeutralMap).unwrap(), sir);
    }

    #[test]
    fn zero_residue_is_written_as_ffff_and_round_trips() {
        // With the example above the adjustment is 0xeffd; low16 0x1002 sums to 0xffff,
        // which is one's-complement zero and must not become 0x0000.
        let sir = a("2001:db8:ffff::6000:1:0:1002");
        let loc: Locator = "2001:db8:1:1::".parse().unwrap();
        let ila = sir_to_ila(sir, loc, ChecksumMode::NeutralMap).unwrap();
        assert_eq!(ila, a("2001:db8:1:1:7000:1:0:ffff"));
        let sp: SirPrefix = "2001:db8:ffff::".parse().unwrap();
        assert_eq!(ila_to_sir(ila, sp, ChecksumMode::NeutralMap).unwrap(), sir);
    }

    #[test]
    fn neutral_map_rejects_what_would_not_round_trip() {
        let loc = Locator(0x2001_0db8_0001_0001);
        let sp = SirPrefix(0x2001_0db8_ffff_0000);
        assert_eq!(
            sir_to_ila(
                a("2001:db8:ffff::6000:1:2:0"),
                loc,
                ChecksumMode::NeutralMap
            ),
            Err(IlaError::ZeroLow16(Identifier(0x6000_0001_0002_0000)))
        );
        assert_eq!(
            sir_to_ila(
                a("2001:db8:ffff::7000:1:0:2"),
                loc,
                ChecksumMode::NeutralMap
            ),
            Err(IlaError::CBitAlreadySet(Identifier(0x7000_0001_0000_0002)))
        );
        assert_eq!(
            ila_to_sir(a("2001:db8:1:1:6000:1:0:2"), sp, ChecksumMode::NeutralMap),
            Err(IlaError::CBitNotSet(Identifier(0x6000_0001_0000_0002)))
        );
        // Other modes do not care about C or low 16 bits: plain prefix swap.
        for mode in [ChecksumMode::AdjTransport, ChecksumMode::NoAction] {
            assert_eq!(
                sir_to_ila(a("2001:db8:ffff::7000:1:2:0"), loc, mode).unwrap(),
                a("2001:db8:1:1:7000:1:2:0")
            );
            assert_eq!(
                ila_to_sir(a("2001:db8:1:1:6000:1:0:2"), sp, mode).unwrap(),
                a("2001:db8:ffff::6000:1:0:2")
            );
        }
    }

    #[test]
    fn mode_names_numbers_and_errors() {
        for (m, s, n) in [
            (ChecksumMode::NeutralMap, "neutral-map", 0),
            (ChecksumMode::AdjTransport, "adj-transport", 1),
            (ChecksumMode::NoAction, "no-action", 2),
        ] {
            assert_eq!(m.to_string(), s);
            assert_eq!(s.parse::<ChecksumMode>().unwrap(), m);
            assert_eq!(m.as_u8(), n);
            assert_eq!(ChecksumMode::from_u8(n).unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{s}\""));
            assert_eq!(
                serde_json::from_str::<ChecksumMode>(&format!("\"{s}\"")).unwrap(),
                m
            );
        }
        assert_eq!(ChecksumMode::default(), ChecksumMode::NeutralMap);
        let e = "neutral".parse::<ChecksumMode>().unwrap_err().to_string();
        assert!(e.contains("`neutral`"), "{e}");
        assert!(e.contains("neutral-map, adj-transport, no-action"), "{e}");
        assert_eq!(
            ChecksumMode::from_u8(3),
            Err(IlaError::InvalidChecksumModeValue(3))
        );
        assert!(serde_json::from_str::<ChecksumMode>("\"NeutralMap\"").is_err());
    }
}
