/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Checksums: the inline address diff and where the L4 checksum of a packet lives.
 */
#ifndef ILANET_LIB_CSUM_H
#define ILANET_LIB_CSUM_H

#include "ipv6.h"

/* Our own names: the uapi header may predate BPF_F_IPV6 (Linux 6.16). */
#define ILA_F_PSEUDO_HDR (1ULL << 4)
#define ILA_F_MARK_MANGLED_0 (1ULL << 5)
#define ILA_F_IPV6 (1ULL << 7)

/*
 * 32-bit partial checksum of "replace `from` by `to`" (what bpf_csum_diff computes), inline: saves
 * a helper call per packet. Native-endian words are fine: one's-complement sums commute with
 * byte swapping, and the kernel folds the result the same way.
 */
static __always_inline __u32 addr_csum_diff(const void *from, const void *to)
{
	const __u32 *f = from, *t = to;
	__u64 s = 0;

	for (int i = 0; i < 4; i++)
		s += (__u32)~f[i] + (__u64)t[i];
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	return (__u32)s;
}

/* Where the L4 checksum lives, as found by walking the extension headers. */
struct l4_info {
	__u32 csum_off; /* absolute offset of the checksum field, 0 = nothing to fix */
	__u8 proto;     /* final next header, 0 if the chain was not walked to its end */
	__u8 udp;       /* UDP: a zero checksum means "none" and must stay zero */
};

/*
 * Walks the extension headers and finds the L4 checksum. Returns 0, or -1 if the chain was not
 * walked to its end or the checksum field lies past `end`.
 */
static __always_inline int l4_locate(struct __sk_buff *skb, __u32 end, __u8 nexthdr, struct l4_info *l4)
{
	__u32 off = HDRS_LEN;
	bool first_frag = true;

	l4->csum_off = 0;
	l4->proto = 0;
	l4->udp = 0;

	if (ext_walk(skb, end, &nexthdr, &off, &first_frag))
		return -1;

	l4->proto = nexthdr;
	/* A non-first fragment carries no L4 header: the checksum is fixed in the first one. */
	if (!first_frag)
		return 0;

	switch (nexthdr) {
	case IPPROTO_TCP:
		l4->csum_off = off + 16;
		break;
	case IPPROTO_UDP:
		l4->csum_off = off + 6;
		l4->udp = 1;
		break;
	case IPPROTO_ICMPV6:
		l4->csum_off = off + 2;
		break;
	default:
		return 0;
	}
	/* The whole 2-byte field must be inside the payload, otherwise the header is truncated. */
	if (l4->csum_off + 2 > end)
		return -1;
	return 0;
}

#endif
