// SPDX-License-Identifier: GPL-2.0
/*
 * ILA data path (DESIGN.md §2): destination-only translation between SIR and ILA addresses.
 *
 *   from_container  tc ingress of an endpoint's host-side veth: SIR -> ILA (ILA_OUT)
 *   from_wire       tc ingress of the host's uplink:            ILA -> SIR (ILA_IN)
 *
 * User space (crates/ila) precomputes every address, including the checksum-neutral adjustment,
 * so the hot path is: parse, one hash lookup, a 16-byte copy, one per-CPU counter.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ila_abi.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * The unpinned build (-DILA_NO_PIN) exists for tests and benchmarks: aya always pins by-name maps,
 * and those runs must neither need bpffs nor share state with a running agent.
 */
#ifdef ILA_NO_PIN
#define ILA_PINNING
#else
#define ILA_PINNING __uint(pinning, LIBBPF_PIN_BY_NAME);
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ila_out_key);
	__type(value, struct ila_out_val);
	__uint(max_entries, 131072);
	ILA_PINNING
} ILA_OUT SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ila_in_key);
	__type(value, struct ila_in_val);
	__uint(max_entries, 65536);
	ILA_PINNING
} ILA_IN SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, ILA_FILTER_SLOTS);
	ILA_PINNING
} ILA_OUT_FILTER SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, ILA_FILTER_SLOTS);
	ILA_PINNING
} ILA_IN_FILTER SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, ILA_STAT_MAX);
	ILA_PINNING
} ILA_STATS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ila_config);
	__uint(max_entries, 1);
	ILA_PINNING
} ILA_CONFIG SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	ILA_PINNING
} ILA_EVENTS SEC(".maps");

/* Our own names: the uapi header may predate BPF_F_IPV6 (Linux 6.16). */
#define ILA_F_PSEUDO_HDR (1ULL << 4)
#define ILA_F_MARK_MANGLED_0 (1ULL << 5)
#define ILA_F_IPV6 (1ULL << 7)

#define L2_LEN ((__u32)sizeof(struct ethhdr))
#define L3_OFF L2_LEN
#define HDRS_LEN (L2_LEN + (__u32)sizeof(struct ipv6hdr))
#define DADDR_OFF (L3_OFF + (__u32)offsetof(struct ipv6hdr, daddr))

/* Enough for any sane chain (hop-by-hop, routing, fragment, destination options twice...). */
#define MAX_EXT_HDRS 8

/*
 * The ABI uses byte arrays, so clang assumes alignment 1 and copies byte by byte (32 instructions
 * per address). x86-64 and arm64 JITs handle unaligned loads, so move addresses as two u64.
 */
static __always_inline void copy_addr(void *dst, const void *src)
{
	((__u64 *)dst)[0] = ((const __u64 *)src)[0];
	((__u64 *)dst)[1] = ((const __u64 *)src)[1];
}

static __always_inline void copy_mac(void *dst, const void *src)
{
	*(__u32 *)dst = *(const __u32 *)src;
	*(__u16 *)(dst + 4) = *(const __u16 *)(src + 4);
}

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

static __always_inline void count(__u32 idx)
{
	/* Per-CPU slot: a plain increment is race-free and far cheaper than an atomic. */
	__u64 *v = bpf_map_lookup_elem(&ILA_STATS, &idx);

	if (v)
		*v += 1;
}

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

/* Where the L4 checksum lives, as found by walking the extension headers. */
struct l4_info {
	__u32 csum_off; /* absolute offset of the checksum field, 0 = nothing to fix */
	__u8 proto;     /* final next header, 0 if the chain could not be followed */
	__u8 udp;       /* UDP: a zero checksum means "none" and must stay zero */
};

/*
 * Walks the extension-header chain. Returns 0 on success, -1 if a header is unreadable.
 * bpf_skb_load_bytes instead of direct access: the offsets are data dependent and this path only
 * runs in adj-transport mode or while tracing, so verifier-friendliness beats a few ns.
 */
static __always_inline int l4_locate(struct __sk_buff *skb, __u8 nexthdr, struct l4_info *l4)
{
	__u32 off = HDRS_LEN;
	bool first_frag = true;
	__u8 hdr[4];

	l4->csum_off = 0;
	l4->proto = 0;
	l4->udp = 0;

	for (int i = 0; i < MAX_EXT_HDRS; i++) {
		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING &&
		    nexthdr != IPPROTO_DSTOPTS && nexthdr != IPPROTO_FRAGMENT)
			break;
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)))
			return -1;
		if (nexthdr == IPPROTO_FRAGMENT) {
			/* Offset in 8-octet units sits in the upper 13 bits of bytes 2-3. */
			if (((hdr[2] << 8) | hdr[3]) & 0xfff8)
				first_frag = false;
			off += 8;
		} else {
			off += ((__u32)hdr[1] + 1) * 8;
		}
		nexthdr = hdr[0];
	}

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
	/* The whole 2-byte field must be inside the packet, otherwise the header is truncated. */
	if (l4->csum_off + 2 > skb->len)
		return -1;
	return 0;
}

static __always_inline void emit_event(struct __sk_buff *skb, __u8 kind, __u8 csum_mode, __u8 nexthdr,
				       const struct in6_addr *saddr, const struct in6_addr *before,
				       const __u8 *after, const struct l4_info *l4, bool walked)
{
	struct ila_event ev = {};
	struct l4_info tmp;

	ev.kind = kind;
	ev.csum_mode = csum_mode;
	if (walked) {
		ev.l4_proto = l4->proto;
	} else if (l4_locate(skb, nexthdr, &tmp) == 0) {
		ev.l4_proto = tmp.proto;
	}
	ev.ifindex = skb->ifindex;
	__builtin_memcpy(ev.src, saddr, 16);
	__builtin_memcpy(ev.dst_before, before, 16);
	__builtin_memcpy(ev.dst_after, after, 16);
	/* Tracing is best effort: a full ring must never affect forwarding. */
	bpf_ringbuf_output(&ILA_EVENTS, &ev, sizeof(ev), 0);
}

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

static __always_inline bool tracing(void)
{
	__u32 zero = 0;
	struct ila_config *cfg = bpf_map_lookup_elem(&ILA_CONFIG, &zero);

	return cfg && (cfg->flags & ILA_CFG_TRACE);
}

/*
 * Writes `new_dst` as destination and handles the checksum per `csum_mode`.
 * Returns 0, or the ila_stat drop counter to bump. Packet pointers are invalid afterwards.
 */
static __always_inline int rewrite_dst(struct __sk_buff *skb, struct ipv6hdr *ip6, const __u8 *new_dst,
				       __u8 csum_mode, __u8 ev_kind)
{
	struct in6_addr old_dst, saddr;
	struct l4_info l4 = {};
	bool trace = tracing();
	bool walked = false;
	__u8 nexthdr = ip6->nexthdr;
	__u32 diff;

	if (csum_mode == ILA_CSUM_NEUTRAL_MAP && !trace) {
		/* Hot path: the mapping is checksum-neutral, so the copy is all there is. */
		copy_addr(&ip6->daddr, new_dst);
		return 0;
	}

	old_dst = ip6->daddr;
	if (trace)
		saddr = ip6->saddr;
	copy_addr(&ip6->daddr, new_dst);

	if (csum_mode == ILA_CSUM_ADJ_TRANSPORT) {
		walked = true;
		if (l4_locate(skb, nexthdr, &l4))
			return ILA_STAT_DROP_CSUM;
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
				return ILA_STAT_DROP_CSUM;
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
		emit_event(skb, ev_kind, csum_mode, nexthdr, &saddr, &old_dst, new_dst, &l4, walked);
	return 0;
}

SEC("classifier")
int from_container(struct __sk_buff *skb)
{
	struct ila_out_val *val;
	struct ipv6hdr *ip6;
	int drop;

	if (skb->protocol != bpf_htons(ETH_P_IPV6)) {
		count(ILA_STAT_NOT_IPV6);
		return TC_ACT_OK;
	}
	ip6 = ipv6_header(skb);
	if (!ip6) {
		count(ILA_STAT_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}

	/* The key is read straight from the packet: no copy to the stack. */
	val = may_be_mapped(&ILA_OUT_FILTER, ip6) ? bpf_map_lookup_elem(&ILA_OUT, &ip6->daddr) : NULL;
	if (!val) {
		count(ILA_STAT_OUT_MISS);
		return TC_ACT_OK;
	}
	if (val->flags & ILA_OUT_F_LOCAL) {
		count(ILA_STAT_OUT_LOCAL);
		return TC_ACT_OK;
	}

	drop = rewrite_dst(skb, ip6, val->ila, val->csum_mode, ILA_EV_OUT);
	if (drop) {
		count(drop);
		return TC_ACT_SHOT;
	}
	count(ILA_STAT_OUT_TRANSLATED);
	/* The kernel routes the ILA address out of the uplink. */
	return TC_ACT_OK;
}

SEC("classifier")
int from_wire(struct __sk_buff *skb)
{
	struct ila_in_val *val;
	struct ipv6hdr *ip6;
	struct ethhdr *eth;
	void *data, *data_end;
	int drop;

	if (skb->protocol != bpf_htons(ETH_P_IPV6)) {
		count(ILA_STAT_NOT_IPV6);
		return TC_ACT_OK;
	}
	ip6 = ipv6_header(skb);
	if (!ip6) {
		count(ILA_STAT_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}

	val = may_be_mapped(&ILA_IN_FILTER, ip6) ? bpf_map_lookup_elem(&ILA_IN, &ip6->daddr) : NULL;
	if (!val) {
		count(ILA_STAT_IN_MISS);
		return TC_ACT_OK;
	}

	drop = rewrite_dst(skb, ip6, val->sir, val->csum_mode, ILA_EV_IN);
	if (drop) {
		count(drop);
		return TC_ACT_SHOT;
	}
	count(ILA_STAT_IN_TRANSLATED);

	if (!(val->flags & ILA_IN_F_REDIRECT))
		return TC_ACT_OK; /* the kernel routes the SIR address to the veth */

	/* Checksum helpers may have moved the data: re-derive the pointers. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end) {
		count(ILA_STAT_DROP_REWRITE);
		return TC_ACT_SHOT;
	}
	/* Skip the host's neighbour lookup and routing: hand the frame to the container's side. */
	copy_mac(eth->h_dest, val->ep_mac);
	copy_mac(eth->h_source, val->host_mac);
	count(ILA_STAT_IN_REDIRECTED);
	return bpf_redirect_peer(val->ifindex, 0);
}
