/* SPDX-License-Identifier: GPL-2.0 */
/*
 * IPv6 parsing: the fixed header, the payload bounds and the extension-header walk.
 */
#ifndef ILANET_LIB_IPV6_H
#define ILANET_LIB_IPV6_H

#include "common.h"

/*
 * Extension headers walked at most: enough for any sane chain (hop-by-hop, routing, fragment,
 * AH, destination options twice...). A longer chain is not classified: dropped under
 * enforcement (ILA_REASON_UNCLASSIFIED), its checksum not found in adj-transport mode.
 */
#define MAX_EXT_HDRS 8

/*
 * Returns the IPv6 header, pulling it into the linear area only when the driver left it paged.
 * NULL if the header is truncated, is not version 6, or announces more payload than there is
 * (ipv6_rcv would drop those anyway; a payload length of 0, as in BIG TCP, passes).
 */
static __always_inline struct ipv6hdr *ipv6_header(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6;

	if (data + HDRS_LEN > data_end) {
		if (skb->len < HDRS_LEN || bpf_skb_pull_data(skb, HDRS_LEN))
			return NULL;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + HDRS_LEN > data_end)
			return NULL;
	}
	ip6 = data + L3_OFF;
	if (ip6->version != 6 || skb->len < HDRS_LEN + bpf_ntohs(ip6->payload_len))
		return NULL;
	return ip6;
}

/*
 * Absolute offset of the end of the IPv6 payload: what follows (Ethernet padding) is not part
 * of any header. A payload length of 0 (BIG TCP, jumbogram) extends to the end of the skb.
 */
static __always_inline __u32 payload_end(const struct __sk_buff *skb, const struct ipv6hdr *ip6)
{
	__u32 plen = bpf_ntohs(ip6->payload_len);

	return plen ? HDRS_LEN + plen : skb->len;
}


/*
 * The extension headers the walk steps over (the kernel's ipv6_ext_hdr() minus "no next
 * header"). ESP ends the chain: what follows is encrypted, policy sees protocol 50.
 */
static __always_inline bool is_ext_hdr(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT || nexthdr == IPPROTO_AH;
}

/*
 * Walks the extension-header chain from the IPv6 header to its end, or to a non-first fragment
 * header (what follows one is the middle of a payload, not headers). On return *nexthdr is the
 * final next header, *off its absolute offset, *first_frag false for a non-first fragment.
 * Returns 0, or -1 if the chain was not walked to its end: a header unreadable or running past
 * `end` (payload_end), or more than MAX_EXT_HDRS of them. *nexthdr and *off are only set on
 * success, so a caller never mistakes an extension header for the L4 protocol.
 * bpf_skb_load_bytes instead of direct access: the offsets are data dependent and this path only
 * runs with extension headers, in adj-transport mode or while tracing, so verifier-friendliness
 * beats a few ns.
 */
static __always_inline int ext_walk(struct __sk_buff *skb, __u32 end, __u8 *nexthdr, __u32 *off,
				    bool *first_frag)
{
	__u8 nh = *nexthdr;
	__u32 o = HDRS_LEN;
	__u8 hdr[4];

	*first_frag = true;
	for (int i = 0; i < MAX_EXT_HDRS && is_ext_hdr(nh); i++) {
		if (bpf_skb_load_bytes(skb, o, hdr, sizeof(hdr)))
			return -1;
		if (nh == IPPROTO_FRAGMENT) {
			o += 8;
			/* Offset in 8-octet units sits in the upper 13 bits of bytes 2-3. */
			if (((hdr[2] << 8) | hdr[3]) & 0xfff8)
				*first_frag = false;
		} else if (nh == IPPROTO_AH) {
			o += ((__u32)hdr[1] + 2) * 4; /* 4-octet units, minus 2 (RFC 4302) */
		} else {
			o += ((__u32)hdr[1] + 1) * 8;
		}
		if (o > end)
			return -1;
		nh = hdr[0];
		if (!*first_frag)
			break;
	}
	/* Still an extension header: the chain is longer than the walk. */
	if (*first_frag && is_ext_hdr(nh))
		return -1;
	*nexthdr = nh;
	*off = o;
	return 0;
}

#endif
