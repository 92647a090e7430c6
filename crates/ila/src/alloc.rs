//! Allocation of identifiers inside one identifier type (and VNID).

use std::collections::BTreeSet;

use crate::{Identifier, IdentifierType, IlaError, Vnid};

/// Hands out identifiers of one kind: VNID-IPv6 identifiers of one VNID (increasing virtual
/// address), or locally unique identifiers (increasing 60-bit id).
///
/// Never yields an identifier whose low 16 bits are 0 (it would not survive checksum-neutral
/// mapping) nor one with the C bit set (that marks the ILA form). After a release the cursor
/// keeps moving forward, so a freed identifier is reused as late as possible and stale mappings
/// for it have time to disappear.
#[derive(Debug, Clone)]
pub struct IdentifierAllocator {
    /// Fixed high bits: type (and VNID); the C bit is always clear.
    base: u64,
    /// Bits of the variable field (virtual address or LUID value).
    field_mask: u64,
    /// Inclusive range of the variable field.
    first: u64,
    last: u64,
    /// Next value to try.
    cursor: u64,
    /// Values of the variable field currently in use.
    in_use: BTreeSet<u64>,
    /// How many values of the range are allocatable (low 16 bits nonzero).
    usable: u64,
}

/// Number of values in `first..=last` whose low 16 bits are not zero.
fn usable_count(first: u64, last: u64) -> u64 {
    // Count of v in 0..=n with low16 == 0 is n / 65536 + 1.
    let zeros_upto = |n: u64| n / 0x1_0000 + 1;
    let zeros = zeros_upto(last) - if first == 0 { 0 } else { zeros_upto(first - 1) };
    (last - first + 1) - zeros
}

impl IdentifierAllocator {
    /// `field_mask` is both the variable field's bits and its largest value.
    fn build(base: u64, first: u64, last: u64, field_mask: u64) -> Result<Self, IlaError> {
        let bad = |reason: &str| IlaError::InvalidRange {
            first,
            last,
            reason: reason.to_string(),
        };
        if first > last {
            return Err(bad("first is above last"));
        }
        if last > field_mask {
            return Err(bad(&format!(
                "last exceeds the field's maximum {field_mask:#x}"
            )));
        }
        let usable = usable_count(first, last);
        if usable == 0 {
            return Err(bad("contains only values whose low 16 bits are zero"));
        }
        Ok(Self {
            base,
            field_mask,
            first,
            last,
            cursor: first,
            in_use: BTreeSet::new(),
            usable,
        })
    }

    /// VNID-IPv6 identifiers of `vnid`, virtual addresses 1 to 2^32 - 1.
    pub fn for_vnid(vnid: Vnid) -> Self {
        Self::for_vnid_range(vnid, 1, u32::MAX).expect("full VNID range is valid")
    }

    /// VNID-IPv6 identifiers of `vnid` with virtual addresses in `first..=last`.
    pub fn for_vnid_range(vnid: Vnid, first: u32, last: u32) -> Result<Self, IlaError> {
        let base = Identifier::new_vnid(IdentifierType::VnidIpv6, vnid, 0).0;
        Self::build(base, first.into(), last.into(), u32::MAX.into())
    }

    /// Locally unique identifiers, ids 1 to 2^60 - 1.
    pub fn locally_unique() -> Self {
        Self::locally_unique_range(1, Identifier::LUID_MAX).expect("full LUID range is valid")
    }

    /// Locally unique identifiers with ids in `first..=last` (at most 60 bits).
    pub fn locally_unique_range(first: u64, last: u64) -> Result<Self, IlaError> {
        let base = Identifier::new_luid(0)?.0;
        Self::build(base, first, last, Identifier::LUID_MAX)
    }

    /// The variable field of `id` if it belongs to this allocator.
    fn field_of(&self, id: Identifier) -> Result<u64, IlaError> {
        let foreign = |reason: String| IlaError::ForeignIdentifier {
            identifier: id,
            reason,
        };
        if id.c_bit() {
            return Err(foreign("the C bit is set (ILA form, not SIR form)".into()));
        }
        if id.0 & !self.field_mask != self.base {
            return Err(foreign(format!(
                "type/VNID bits differ from {}",
                Identifier(self.base)
            )));
        }
        let v = id.0 & self.field_mask;
        if v < self.first || v > self.last {
            return Err(foreign(format!(
                "value {v:#x} outside {:#x}..={:#x}",
                self.first, self.last
            )));
        }
        Ok(v)
    }

    /// A fresh identifier; fails once every usable identifier is in use.
    pub fn allocate(&mut self) -> Result<Identifier, IlaError> {
        if self.in_use.len() as u64 >= self.usable {
            return Err(IlaError::Exhausted(format!(
                "all {} identifiers of {}..={} (base {}) are in use",
                self.usable,
                Identifier(self.base | self.first),
                Identifier(self.base | self.last),
                Identifier(self.base)
            )));
        }
        // Terminates: at least one usable value is free, and the scan wraps around the range.
        loop {
            let v = self.cursor;
            self.cursor = if v == self.last { self.first } else { v + 1 };
            if v & 0xffff != 0 && !self.in_use.contains(&v) {
                self.in_use.insert(v);
                return Ok(Identifier(self.base | v));
            }
        }
    }

    /// Marks `id` as used (e.g. restored after a restart). Fails with "address in use" if it
    /// already is, and rejects identifiers this allocator would never hand out.
    pub fn reserve(&mut self, id: Identifier) -> Result<(), IlaError> {
        let v = self.field_of(id)?;
        if id.low16() == 0 {
            return Err(IlaError::ZeroLow16(id));
        }
        if !self.in_use.insert(v) {
            return Err(IlaError::AddressInUse(id));
        }
        Ok(())
    }

    /// Frees `id`; returns whether it was in use here.
    pub fn release(&mut self, id: Identifier) -> bool {
        match self.field_of(id) {
            Ok(v) => self.in_use.remove(&v),
            Err(_) => false,
        }
    }

    /// Whether `id` is currently allocated or reserved here.
    pub fn is_allocated(&self, id: Identifier) -> bool {
        self.field_of(id)
            .map(|v| self.in_use.contains(&v))
            .unwrap_or(false)
    }

    /// How many identifiers are currently in use.
    pub fn allocated_count(&self) -> usize {
        self.in_use.len()
    }

    /// How many identifiers this allocator can hand out in total.
    pub fn capacity(&self) -> u64 {
        self.usable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vnid(v: u32) -> Vnid {
        Vnid::new(v).unwrap()
    }

    #[test]
    fn vnid_allocator_counts_up_and_skips_zero_low16() {
        let mut a = IdentifierAllocator::for_vnid_range(vnid(7), 0xfffe, 0x1_0002).unwrap();
        assert_eq!(a.capacity(), 4);
        let got: Vec<Identifier> = (0..4).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(
            got,
            vec![
                Identifier(0x6000_0007_0000_fffe),
                Identifier(0x6000_0007_0000_ffff),
                Identifier(0x6000_0007_0001_0001),
                Identifier(0x6000_0007_0001_0002),
            ]
        );
        for id in &got {
            assert_eq!(id.vnid(), Some(vnid(7)));
            assert_eq!(id.id_type(), IdentifierType::VnidIpv6);
        }
        let e = a.allocate().unwrap_err();
        assert!(matches!(e, IlaError::Exhausted(_)), "{e}");
        // A release makes exactly that one available again.
        assert!(a.release(got[1]));
        assert!(!a.release(got[1]));
        assert_eq!(a.allocate().unwrap(), got[1]);
        assert!(a.allocate().is_err());
    }

    #[test]
    fn full_ranges_start_at_one() {
        let mut a = IdentifierAllocator::for_vnid(vnid(1));
        assert_eq!(a.allocate().unwrap(), Identifier(0x6000_0001_0000_0001));
        assert_eq!(a.capacity(), u64::from(u32::MAX) - 0xffff);
        let mut l = IdentifierAllocator::locally_unique();
        assert_eq!(l.allocate().unwrap(), Identifier(0x2000_0000_0000_0001));
        assert_eq!(l.allocate().unwrap(), Identifier(0x2000_0000_0000_0002));
    }

    #[test]
    fn released_identifiers_are_reused_late() {
        let mut a = IdentifierAllocator::locally_unique_range(1, 3).unwrap();
        let x = a.allocate().unwrap();
        assert!(a.release(x));
        // The cursor moved on: the next two are fresh, only then does x come back.
        assert_eq!(a.allocate().unwrap().luid(), Some(2));
        assert_eq!(a.allocate().unwrap().luid(), Some(3));
        assert_eq!(a.allocate().unwrap(), x);
    }

    #[test]
    fn reserve_rules() {
        let mut a = IdentifierAllocator::for_vnid_range(vnid(3), 1, 5).unwrap();
        let id = Identifier::new_vnid(IdentifierType::VnidIpv6, vnid(3), 2);
        a.reserve(id).unwrap();
        assert!(a.is_allocated(id));
        let e = a.reserve(id).unwrap_err();
        assert_eq!(e, IlaError::AddressInUse(id));
        assert!(e.to_string().starts_with("address in use"));
        // Allocation steps around the reserved one.
        let got: Vec<u32> = (0..4)
            .map(|_| a.allocate().unwrap().virtual_addr().unwrap())
            .collect();
        assert_eq!(got, vec![1, 3, 4, 5]);
        assert!(a.allocate().is_err());
        assert_eq!(a.allocated_count(), 5);

        let other_vnid = Identifier::new_vnid(IdentifierType::VnidIpv6, vnid(4), 9);
        assert!(matches!(
            a.reserve(other_vnid),
            Err(IlaError::ForeignIdentifier { .. })
        ));
        let out_of_range = Identifier::new_vnid(IdentifierType::VnidIpv6, vnid(3), 6);
        assert!(matches!(
            a.reserve(out_of_range),
            Err(IlaError::ForeignIdentifier { .. })
        ));
        assert!(matches!(
            a.reserve(id.with_c_bit(true)),
            Err(IlaError::ForeignIdentifier { .. })
        ));
        assert!(!a.release(other_vnid));

        let mut big = IdentifierAllocator::for_vnid_range(vnid(3), 0, 0x2_0000).unwrap();
        let zero = Identifier::new_vnid(IdentifierType::VnidIpv6, vnid(3), 0x1_0000);
        assert_eq!(big.reserve(zero), Err(IlaError::ZeroLow16(zero)));
    }

    #[test]
    fn bad_ranges() {
        assert!(IdentifierAllocator::for_vnid_range(vnid(1), 5, 4).is_err());
        assert!(IdentifierAllocator::for_vnid_range(vnid(1), 0x1_0000, 0x1_0000).is_err());
        assert!(IdentifierAllocator::locally_unique_range(1, 1 << 60).is_err());
        assert_eq!(
            IdentifierAllocator::locally_unique_range(0, 0x2_0000)
                .unwrap()
                .capacity(),
            0x2_0001 - 3
        );
    }
}
