//! Property tests for the checksum-neutral translation and the allocator, cross-checked against
//! a naive model of the kernel's 32-bit arithmetic (`ila_csum_do_neutral_fmt`).

use std::collections::HashSet;
use std::net::Ipv6Addr;

use ila::{
    ila_to_sir, ones_complement_sum16, sir_to_ila, ChecksumMode, Identifier, IdentifierAllocator,
    IlaError, Locator, SirPrefix, Vnid,
};
use proptest::prelude::*;

/// Independent RFC 1071 fold: sum all 16-bit words in a wide integer, then fold carries.
fn naive_fold(bytes: &[u8; 16]) -> u16 {
    let mut s: u64 = bytes
        .chunks(2)
        .map(|c| u64::from(c[0]) << 8 | u64::from(c[1]))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Model of the kernel: 32-bit `csum_add` with end-around carry.
fn k_add(a: u32, b: u32) -> u32 {
    let (s, c) = a.overflowing_add(b);
    s.wrapping_add(u32::from(c))
}

/// Model of the kernel's `csum_fold` (returns the complement of the folded sum).
fn k_fold(s: u32) -> u16 {
    let mut v = (s & 0xffff) + (s >> 16);
    v = (v & 0xffff) + (v >> 16);
    !(v as u16)
}

/// Model of the kernel's neutral rewrite on the low 64 bits, given old and new upper 64 bits.
fn kernel_model(old_upper: u64, new_upper: u64, ident: u64) -> u64 {
    let words = |v: u64| [(v >> 32) as u32, v as u32];
    // compute_csum_diff8(from = new, to = old) = ~new + old.
    let mut diff = 0u32;
    for w in words(new_upper) {
        diff = k_add(diff, !w);
    }
    for w in words(old_upper) {
        diff = k_add(diff, w);
    }
    let c_set = ident & (1 << 60) != 0;
    let flag: u32 = 0x1000_0000;
    diff = k_add(diff, if c_set { flag } else { !flag });
    let adjust = !k_fold(k_add(diff, u32::from(ident as u16)));
    ((ident & !0xffff) | u64::from(adjust)) ^ (1 << 60)
}

fn sir_identifier() -> impl Strategy<Value = u64> {
    any::<u64>()
        .prop_map(|v| v & !(1u64 << 60))
        .prop_filter("low16 != 0", |v| v & 0xffff != 0)
}

fn mode() -> impl Strategy<Value = ChecksumMode> {
    prop_oneof![
        Just(ChecksumMode::NeutralMap),
        Just(ChecksumMode::AdjTransport),
        Just(ChecksumMode::NoAction),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn round_trip_is_exact(sir in any::<u64>(), loc in any::<u64>(), id in sir_identifier(), mode in mode()) {
        let a = SirPrefix(sir).with_identifier(Identifier(id));
        let ila = sir_to_ila(a, Locator(loc), mode).unwrap();
        prop_assert_eq!(Locator::from_addr(ila), Locator(loc));
        let back = ila_to_sir(ila, SirPrefix(sir), mode).unwrap();
        prop_assert_eq!(u128::from(back), u128::from(a));
    }

    #[test]
    fn neutral_map_keeps_the_address_sum(sir in any::<u64>(), loc in any::<u64>(), id in sir_identifier()) {
        let a = SirPrefix(sir).with_identifier(Identifier(id));
        let ila = sir_to_ila(a, Locator(loc), ChecksumMode::NeutralMap).unwrap();
        prop_assert_eq!(naive_fold(&ila.octets()), naive_fold(&a.octets()));
        prop_assert_eq!(ones_complement_sum16(&ila.octets()), naive_fold(&a.octets()));
        let out = Identifier::from_addr(ila);
        prop_assert!(out.c_bit());
        // Only the C bit and the low 16 bits may change.
        prop_assert_eq!(out.0 & !0xffff & !(1u64 << 60), id & !0xffff);
        prop_assert_ne!(out.low16(), 0);
    }

    #[test]
    fn neutral_map_matches_kernel_model(sir in any::<u64>(), loc in any::<u64>(), id in sir_identifier()) {
        let a = SirPrefix(sir).with_identifier(Identifier(id));
        let ila = sir_to_ila(a, Locator(loc), ChecksumMode::NeutralMap).unwrap();
        prop_assert_eq!(Identifier::from_addr(ila).0, kernel_model(sir, loc, id));
        let back = ila_to_sir(ila, SirPrefix(sir), ChecksumMode::NeutralMap).unwrap();
        prop_assert_eq!(Identifier::from_addr(back).0, kernel_model(loc, sir, Identifier::from_addr(ila).0));
    }

    #[test]
    fn other_modes_only_swap_the_prefix(sir in any::<u64>(), loc in any::<u64>(), id in any::<u64>(),
                                        mode in prop_oneof![Just(ChecksumMode::AdjTransport), Just(ChecksumMode::NoAction)]) {
        let a = SirPrefix(sir).with_identifier(Identifier(id));
        let ila = sir_to_ila(a, Locator(loc), mode).unwrap();
        prop_assert_eq!(ila, Locator(loc).with_identifier(Identifier(id)));
    }

    #[test]
    fn neutral_map_rejects_zero_low16_and_c_set(sir in any::<u64>(), loc in any::<u64>(), hi in any::<u64>()) {
        let zero = Identifier((hi & !(1u64 << 60)) & !0xffff);
        let a = SirPrefix(sir).with_identifier(zero);
        prop_assert_eq!(sir_to_ila(a, Locator(loc), ChecksumMode::NeutralMap), Err(IlaError::ZeroLow16(zero)));
        let c = Identifier(hi | (1u64 << 60));
        let a = SirPrefix(sir).with_identifier(c);
        prop_assert_eq!(sir_to_ila(a, Locator(loc), ChecksumMode::NeutralMap), Err(IlaError::CBitAlreadySet(c)));
    }

    #[test]
    fn text_forms_round_trip(upper in any::<u64>(), id in any::<u64>()) {
        prop_assert_eq!(Locator(upper).to_string().parse::<Locator>().unwrap(), Locator(upper));
        prop_assert_eq!(SirPrefix(upper).to_string().parse::<SirPrefix>().unwrap(), SirPrefix(upper));
        prop_assert_eq!(Identifier(id).to_string().parse::<Identifier>().unwrap(), Identifier(id));
        // The identifier text is the low half of the full IPv6 text, group by group.
        let full: Ipv6Addr = format!("0:0:0:0:{}", Identifier(id)).parse().unwrap();
        prop_assert_eq!(u128::from(full), u128::from(id));
    }

    #[test]
    fn allocator_never_yields_zero_low16_c_bit_or_duplicates(
        vnid in 0u32..(1 << 28),
        first in 0u32..0x3_0000,
        span in 1u32..600,
        ops in proptest::collection::vec(0u8..4, 1..800),
    ) {
        let last = first + span;
        let mut a = IdentifierAllocator::for_vnid_range(Vnid::new(vnid).unwrap(), first, last).unwrap();
        let mut live: HashSet<Identifier> = HashSet::new();
        for op in ops {
            if op == 0 && !live.is_empty() {
                let victim = *live.iter().next().unwrap();
                prop_assert!(a.release(victim));
                live.remove(&victim);
                continue;
            }
            match a.allocate() {
                Ok(id) => {
                    prop_assert_ne!(id.low16(), 0);
                    prop_assert!(!id.c_bit());
                    prop_assert_eq!(id.vnid(), Some(Vnid::new(vnid).unwrap()));
                    let v = id.virtual_addr().unwrap();
                    prop_assert!(v >= first && v <= last);
                    prop_assert!(live.insert(id), "duplicate {}", id);
                }
                Err(IlaError::Exhausted(_)) => {
                    let usable = (first..=last).filter(|v| v & 0xffff != 0).count();
                    prop_assert_eq!(live.len(), usable);
                }
                Err(e) => prop_assert!(false, "unexpected error {}", e),
            }
            prop_assert_eq!(a.allocated_count(), live.len());
        }
    }
}

#[test]
fn luid_allocator_exhausts_and_stays_unique() {
    // 0xfff0..=0x1_0010 holds one zero-low16 value (0x1_0000).
    let mut a = IdentifierAllocator::locally_unique_range(0xfff0, 0x1_0010).unwrap();
    let mut seen = HashSet::new();
    for _ in 0..0x20 {
        let id = a.allocate().unwrap();
        assert_ne!(id.low16(), 0);
        assert!(seen.insert(id));
    }
    assert!(matches!(a.allocate(), Err(IlaError::Exhausted(_))));
}
