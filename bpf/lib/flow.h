/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What enforcement needs from L4 (ports, ICMPv6 type, the flow an ICMPv6 error quotes), and
 * when it cannot classify a packet completely (fail closed, DESIGN.md §2).
 */
#ifndef ILANET_LIB_FLOW_H
#define ILANET_LIB_FLOW_H

#include "ipv6.h"

/* What enforcement needs from L4. */
struct flow {
	__u8 proto;     /* final next header */
	__u8 icmp_type; /* ICMPv6 type (proto 58) */
	__u8 related;   /* ICMPv6 error quoting a packet: rel_* describe the quoted flow */
	__u8 rel_proto;
	__be16 sport;  /* conntrack ports (ICMPv6 echo: identifier for both), 0 if none */
	__be16 dport;
	__be16 pdport; /* policy port: the destination port of TCP/UDP/SCTP, else 0 */
	__be16 rel_sport;
	__be16 rel_dport;
	__u16 pad;
	__u8 rel_src[16];
	__u8 rel_dst[16];
} __attribute__((aligned(8)));

union l4_head {
	__u8 b[8];
	__be16 w[4];
	__u64 q;
};

/* ICMPv6 error (types 1-4): the quoted packet's flow, if readable (extension headers not followed). */
static __always_inline void icmp_related(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	struct ipv6hdr in;
	union l4_head l4;

	if (bpf_skb_load_bytes(skb, off + 8, &in, sizeof(in)) || in.version != 6)
		return;
	switch (in.nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, off + 8 + sizeof(in), &l4, 4))
			return;
		f->rel_sport = l4.w[0];
		f->rel_dport = l4.w[1];
		break;
	case IPPROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, off + 8 + sizeof(in), &l4, 8) || (l4.b[0] != 128 && l4.b[0] != 129))
			return;
		f->rel_sport = l4.w[2];
		f->rel_dport = l4.w[2];
		break;
	default:
		break;
	}
	f->rel_proto = in.nexthdr;
	copy_addr(f->rel_src, &in.saddr);
	copy_addr(f->rel_dst, &in.daddr);
	f->related = 1;
}

/*
 * The fixed part of the L4 headers whose fields enforcement reads (what the kernel pulls
 * before it looks at them: struct tcphdr, udphdr, sctphdr, icmp6hdr); 0 for the protocols
 * policy matches on the protocol number alone.
 */
static __always_inline __u32 l4_min_len(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return 20;
	case IPPROTO_SCTP:
		return 12;
	case IPPROTO_UDP:
	case IPPROTO_ICMPV6:
		return 8;
	default:
		return 0;
	}
}

/*
 * Fills `f` (zeroed first). Returns 0 if the packet is classified completely, else the reason
 * enforcement drops it with (fail closed, DESIGN.md §2), before conntrack and policy:
 *   ILA_REASON_UNCLASSIFIED  the extension-header chain was not walked to its end (longer than
 *                            MAX_EXT_HDRS, a header unreadable or past the payload), or the
 *                            TCP/UDP/SCTP/ICMPv6 header is shorter than its fixed part. Else
 *                            the packet would be policed as "protocol 60, no port" (matching
 *                            any-protocol rules past a port deny) or on ports the kernel never
 *                            delivers.
 *   ILA_REASON_FRAGMENT      a non-first fragment. It has no L4 header, and fragments are not
 *                            tracked (like Cilium without fragment tracking): every one is
 *                            dropped under enforcement, also when the first fragment opened a
 *                            flow. A first fragment must carry the whole L4 header (RFC 7112);
 *                            it is classified and policed like any packet.
 */
static __always_inline __u8 flow_parse(struct __sk_buff *skb, const struct ipv6hdr *ip6, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 end = payload_end(skb, ip6);
	__u8 nexthdr = ip6->nexthdr;
	__u32 off = HDRS_LEN;
	bool first_frag = true;
	union l4_head l4;
	__u32 need;

	__builtin_memset(f, 0, sizeof(*f));
	if (is_ext_hdr(nexthdr) && ext_walk(skb, end, &nexthdr, &off, &first_frag))
		return ILA_REASON_UNCLASSIFIED;
	f->proto = nexthdr;
	if (!first_frag)
		return ILA_REASON_FRAGMENT;
	need = l4_min_len(nexthdr);
	if (!need)
		return 0;
	if (off + need > end)
		return ILA_REASON_UNCLASSIFIED;

	/* Every fixed part is at least 8 bytes, and they lie inside the skb (ipv6_header). */
	if (off == HDRS_LEN && data + HDRS_LEN + sizeof(l4) <= data_end) {
		/* Common case: L4 right after the IPv6 header, in the linear area. */
		l4.q = *(__u64 *)(data + HDRS_LEN);
	} else if (bpf_skb_load_bytes(skb, off, &l4, 8)) {
		return ILA_REASON_UNCLASSIFIED;
	}

	if (nexthdr != IPPROTO_ICMPV6) {
		f->sport = l4.w[0];
		f->dport = l4.w[1];
		f->pdport = l4.w[1];
		return 0;
	}
	f->icmp_type = l4.b[0];
	if (l4.b[0] == 128 || l4.b[0] == 129) {
		f->sport = l4.w[2];
		f->dport = l4.w[2];
	} else if (l4.b[0] >= 1 && l4.b[0] <= 4) {
		icmp_related(skb, off, f);
	}
	return 0;
}

/* Neighbour discovery / MLD to a link-scoped destination: never routed, never policed. */
static __always_inline bool link_control(const struct ipv6hdr *ip6, const struct flow *f)
{
	__u8 t = f->icmp_type;
	__u8 d0 = ip6->daddr.in6_u.u6_addr8[0];
	__u8 d1 = ip6->daddr.in6_u.u6_addr8[1];

	if (f->proto != IPPROTO_ICMPV6)
		return false;
	if (!((t >= 133 && t <= 137) || (t >= 130 && t <= 132) || t == 143))
		return false;
	return (d0 == 0xfe && (d1 & 0xc0) == 0x80) || (d0 == 0xff && (d1 & 0x0f) == 0x02);
}

#endif
