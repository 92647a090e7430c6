/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ILA translation: the prefix filter in front of ILA_OUT / ILA_IN and the destination rewrite
 * with its checksum mode.
 */
#ifndef ILANET_LIB_TRANSLATE_H
#define ILANET_LIB_TRANSLATE_H

#include "maps.h"
#include "csum.h"
#include "events.h"

/*
 * Whether the destination's /64 may be mapped at all. An ARRAY lookup is inlined by the verifier,
 * so a foreign destination costs a few instructions instead of a 16-byte jhash and bucket walk.
 */
static __always_inline bool may_be_mapped(void *filter, const struct ipv6hdr *ip6)
{
	__u64 upper;
	__u32 slot;
	__u32 *hit;

	__builtin_memcpy(&upper, &ip6->daddr, sizeof(upper));
	slot = ila_filter_slot(upper);
	hit = bpf_map_lookup_elem(filter, &slot);
	return hit && *hit;
}

/*
 * Writes `new_dst` as destination and handles the checksum per `csum_mode`.
 * Returns 0, or the ila_stat drop counter to bump. Packet pointers are invalid afterwards.
 */
static __always_inline int rewrite_dst(struct __sk_buff *skb, struct ipv6hdr *ip6, const __u8 *new_dst,
				       __u8 csum_mode, __u8 ev_kind, bool trace)
{
	struct in6_addr old_dst, saddr;
	struct l4_info l4 = {};
	bool walked = false;
	__u8 nexthdr = ip6->nexthdr;
	__u32 end, diff;

	if (csum_mode == ILA_CSUM_NEUTRAL_MAP && !trace) {
		/* Hot path: the mapping is checksum-neutral, so the copy is all there is. */
		copy_addr(&ip6->daddr, new_dst);
		return 0;
	}

	old_dst = ip6->daddr;
	if (trace)
		saddr = ip6->saddr;
	end = payload_end(skb, ip6);
	copy_addr(&ip6->daddr, new_dst);

	if (csum_mode == ILA_CSUM_ADJ_TRANSPORT) {
		/* A chain it cannot walk hides the checksum: dropped rather than sent out wrong. */
		walked = true;
		if (l4_locate(skb, end, nexthdr, &l4))
			goto csum_drop;
		if (l4.csum_off) {
			diff = addr_csum_diff(&old_dst, new_dst);
			/*
			 * PSEUDO_HDR: the address is part of the pseudo-header (matters for
			 * CHECKSUM_PARTIAL). IPV6: the address change and the checksum change cancel
			 * in a CHECKSUM_COMPLETE skb->csum, so the helper must leave it alone.
			 */
			if (bpf_l4_csum_replace(skb, l4.csum_off, 0, diff,
						ILA_F_PSEUDO_HDR | ILA_F_IPV6 |
							(l4.udp ? ILA_F_MARK_MANGLED_0 : 0)))
				goto csum_drop;
		}
	} else if (csum_mode == ILA_CSUM_NO_ACTION) {
		/*
		 * The L4 checksum is left wrong on purpose, but a driver-supplied CHECKSUM_COMPLETE
		 * sum must follow the new bytes or the stack reports a hardware checksum fault. The
		 * helper is a no-op for other skbs.
		 */
		bpf_csum_update(skb, addr_csum_diff(&old_dst, new_dst));
	}

	if (trace)
		emit_event(skb, ev_kind, csum_mode, nexthdr, end, &saddr, &old_dst, new_dst, &l4, walked);
	return 0;

csum_drop:
	if (trace)
		emit_drop(skb, ev_kind, ILA_REASON_CSUM, l4.proto, &saddr, &old_dst);
	return ILA_STAT_DROP_CSUM;
}

#endif
