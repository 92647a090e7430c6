// SPDX-License-Identifier: GPL-2.0
/*
 * ILA data path (DESIGN.md §2): destination-only translation between SIR and ILA addresses.
 *
 *   from_container  tc ingress of an endpoint's host-side veth: SIR -> ILA (ILA_OUT)
 *   from_wire       tc ingress of the host's uplink:            ILA -> SIR (ILA_IN)
 *
 * User space (crates/ila) precomputes every address, including the checksum-neutral adjustment,
 * so the hot path is: parse, one hash lookup, a 16-byte copy, one per-CPU counter.
 *
 * With ILA_CFG_ENFORCE both programs also do anti-spoofing, conntrack and identity policy with
 * tenant isolation before translating (ila_abi.h "Enforcement", policy_abi.h): a fixed number of
 * hash/LPM lookups per packet, whatever the number of rules.
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
#include "policy_abi.h"

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

/* ---- Enforcement maps (ila_abi.h "Enforcement", policy_abi.h) ---- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ila_endpoint_key);
	__type(value, struct ila_endpoint_val);
	__uint(max_entries, 65536);
	ILA_PINNING
} ILA_ENDPOINTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ila_endpoint_key);
	__type(value, struct ila_ipcache_val);
	__uint(max_entries, 131072);
	ILA_PINNING
} ILA_IPCACHE SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct ilanet_policy_ep);
	__uint(max_entries, 65536);
	ILA_PINNING
} POLICY_EP SEC(".maps");

/* Sizes follow policy::CompileLimits::default(); allocated on demand. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ilanet_policy_key);
	__type(value, struct ilanet_policy_val);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	ILA_PINNING
} POLICY SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ilanet_policy_cidr_key);
	__type(value, struct ilanet_policy_val);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	ILA_PINNING
} POLICY_CIDR SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ila_ct_key);
	__type(value, struct ila_ct_val);
	__uint(max_entries, 131072);
	ILA_PINNING
} ILA_CT SEC(".maps");

/* Our own names: the uapi header may predate BPF_F_IPV6 (Linux 6.16). */
#define ILA_F_PSEUDO_HDR (1ULL << 4)
#define ILA_F_MARK_MANGLED_0 (1ULL << 5)
#define ILA_F_IPV6 (1ULL << 7)

#define L2_LEN ((__u32)sizeof(struct ethhdr))
#define L3_OFF L2_LEN
#define HDRS_LEN (L2_LEN + (__u32)sizeof(struct ipv6hdr))
#define DADDR_OFF (L3_OFF + (__u32)offsetof(struct ipv6hdr, daddr))

/*
 * Extension headers walked at most: enough for any sane chain (hop-by-hop, routing, fragment,
 * AH, destination options twice...). A longer chain is not classified: dropped under
 * enforcement (ILA_REASON_UNCLASSIFIED), its checksum not found in adj-transport mode.
 */
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

/* The same for a destination that is only 4-byte aligned on the stack (the verifier insists). */
static __always_inline void copy_addr4(void *dst, const void *src)
{
	((__u32 *)dst)[0] = ((const __u32 *)src)[0];
	((__u32 *)dst)[1] = ((const __u32 *)src)[1];
	((__u32 *)dst)[2] = ((const __u32 *)src)[2];
	((__u32 *)dst)[3] = ((const __u32 *)src)[3];
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

/*
 * Absolute offset of the end of the IPv6 payload: what follows (Ethernet padding) is not part
 * of any header. A payload length of 0 (BIG TCP, jumbogram) extends to the end of the skb.
 */
static __always_inline __u32 payload_end(const struct __sk_buff *skb, const struct ipv6hdr *ip6)
{
	__u32 plen = bpf_ntohs(ip6->payload_len);

	return plen ? HDRS_LEN + plen : skb->len;
}

/* Where the L4 checksum lives, as found by walking the extension headers. */
struct l4_info {
	__u32 csum_off; /* absolute offset of the checksum field, 0 = nothing to fix */
	__u8 proto;     /* final next header, 0 if the chain was not walked to its end */
	__u8 udp;       /* UDP: a zero checksum means "none" and must stay zero */
};

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

static __always_inline void emit_event(struct __sk_buff *skb, __u8 kind, __u8 csum_mode, __u8 nexthdr,
				       __u32 end, const struct in6_addr *saddr, const struct in6_addr *before,
				       const __u8 *after, const struct l4_info *l4, bool walked)
{
	struct ila_event ev = {};
	struct l4_info tmp;

	ev.kind = kind;
	ev.csum_mode = csum_mode;
	if (walked) {
		ev.l4_proto = l4->proto;
	} else if (l4_locate(skb, end, nexthdr, &tmp) == 0) {
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

static __always_inline __u32 config_flags(void)
{
	__u32 zero = 0;
	struct ila_config *cfg = bpf_map_lookup_elem(&ILA_CONFIG, &zero);

	return cfg ? cfg->flags : 0;
}

/* ---- Enforcement (ILA_CFG_ENFORCE): flow key, conntrack, policy, verdict events ---- */

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

/* Normalised conntrack key (ila_abi.h). Returns true if the source became `b`. */
static __always_inline bool ct_key_init(struct ila_ct_key *k, const void *src, const void *dst,
					__be16 sport, __be16 dport, __u8 proto)
{
	__u64 s0 = ((const __u64 *)src)[0], s1 = ((const __u64 *)src)[1];
	__u64 d0 = ((const __u64 *)dst)[0], d1 = ((const __u64 *)dst)[1];
	bool swap;

	if (s0 != d0)
		swap = s0 > d0;
	else if (s1 != d1)
		swap = s1 > d1;
	else
		swap = sport > dport;

	__builtin_memset(k, 0, sizeof(*k));
	if (swap) {
		copy_addr(k->a, dst);
		copy_addr(k->b, src);
		k->port_a = dport;
		k->port_b = sport;
	} else {
		copy_addr(k->a, src);
		copy_addr(k->b, dst);
		k->port_a = sport;
		k->port_b = dport;
	}
	k->proto = proto;
	return swap;
}

#define CT_REFRESH_NS 1000000000ULL

/*
 * The flow of this packet, if known and if the packet may belong to it: an ICMPv6 echo request
 * only continues a flow its source opened, an echo reply only one its destination opened (else
 * a request in the other direction with the same identifier would pass as a "reply").
 * `src_is_b`: the packet's source is side b of the normalised key.
 */
static __always_inline struct ila_ct_val *ct_find(const struct ila_ct_key *k, const struct flow *f,
						 bool src_is_b)
{
	struct ila_ct_val *v = bpf_map_lookup_elem(&ILA_CT, k);
	bool opened_by_src;

	if (!v)
		return NULL;
	if (f->proto == IPPROTO_ICMPV6 && !f->related) {
		opened_by_src = !!(v->flags & ILA_CT_F_ORIG_B) == src_is_b;
		if ((f->icmp_type == 128 && !opened_by_src) || (f->icmp_type == 129 && opened_by_src))
			return NULL;
	}
	return v;
}

/* Refreshes last_seen (at most once a second: fewer dirty cache lines). */
static __always_inline void ct_touch(struct ila_ct_val *v)
{
	__u64 now = bpf_ktime_get_coarse_ns();

	if (now - v->last_seen > CT_REFRESH_NS)
		v->last_seen = now;
}

/* Whether the quoted flow of an ICMPv6 error is known (RELATED). */
static __always_inline bool ct_related(const struct flow *f)
{
	struct ila_ct_key ck;
	struct ila_ct_val *v;

	ct_key_init(&ck, f->rel_src, f->rel_dst, f->rel_sport, f->rel_dport, f->rel_proto);
	v = bpf_map_lookup_elem(&ILA_CT, &ck);
	if (!v)
		return false;
	ct_touch(v);
	return true;
}

static __always_inline void ct_create(const struct ila_ct_key *k, bool orig_b, __u32 flags,
				      __u32 local_ifindex, bool local_b)
{
	struct ila_ct_val v = {};

	v.last_seen = bpf_ktime_get_coarse_ns();
	v.created = v.last_seen;
	v.flags = flags | (orig_b ? ILA_CT_F_ORIG_B : 0) | (local_b ? ILA_CT_F_LOCAL_B : 0);
	v.local_ifindex = local_ifindex;
	/* A full LRU evicts; a failure only means the next packet is policed again. */
	bpf_map_update_elem(&ILA_CT, k, &v, BPF_ANY);
}

/* The peer of a policy lookup. */
struct peer {
	__u32 identity;
	__u32 vnid;
	bool known; /* in the ipcache: identity lookups; else an external address: CIDR lookups */
};

struct decision {
	__u8 verdict; /* ILA_VERDICT_* */
	__u8 reason;  /* enum ila_reason */
	__u32 rule_id;
};

/* (proto, dport), (proto, any port), (any protocol) for one peer identity. */
static __always_inline struct ilanet_policy_val *policy_chain(struct ilanet_policy_key *k, __u8 proto,
							      __be16 dport)
{
	struct ilanet_policy_val *v;

	k->proto = proto;
	if (dport) {
		k->dport = dport;
		v = bpf_map_lookup_elem(&POLICY, k);
		if (v)
			return v;
	}
	k->dport = 0;
	v = bpf_map_lookup_elem(&POLICY, k);
	if (v)
		return v;
	k->proto = 0;
	return bpf_map_lookup_elem(&POLICY, k);
}

static __always_inline struct ilanet_policy_val *cidr_chain(struct ilanet_policy_cidr_key *k, __u8 proto,
							    __be16 dport)
{
	struct ilanet_policy_val *v;

	k->proto = proto;
	if (dport) {
		k->dport = dport;
		v = bpf_map_lookup_elem(&POLICY_CIDR, k);
		if (v)
			return v;
	}
	k->dport = 0;
	v = bpf_map_lookup_elem(&POLICY_CIDR, k);
	if (v)
		return v;
	k->proto = 0;
	return bpf_map_lookup_elem(&POLICY_CIDR, k);
}

/* The policy of endpoint identity `ep_id` in direction `dir` for `peer` (policy_abi.h). */
static __always_inline void policy_decide(__u32 ep_id, __u8 dir, const struct peer *peer,
					  const void *peer_addr, const struct flow *f, struct decision *d)
{
	struct ilanet_policy_ep *ep = bpf_map_lookup_elem(&POLICY_EP, &ep_id);
	struct ilanet_policy_val *hit;
	__u32 bit;

	d->rule_id = 0;
	if (!ep) {
		d->verdict = ILA_VERDICT_DROP;
		d->reason = ILA_REASON_NO_POLICY;
		return;
	}
	if (peer->known) {
		struct ilanet_policy_key k = {
			.ep_identity = ep_id,
			.peer_identity = peer->identity,
			.direction = dir,
		};

		hit = policy_chain(&k, f->proto, f->pdport);
		if (!hit && peer->identity != ILANET_IDENTITY_ANY) {
			k.peer_identity = ILANET_IDENTITY_ANY;
			hit = policy_chain(&k, f->proto, f->pdport);
		}
	} else {
		struct ilanet_policy_cidr_key k = {
			.prefixlen = ILANET_POLICY_CIDR_FIXED_BITS + 128,
			.ep_identity = ep_id,
			.direction = dir,
		};

		copy_addr4(k.addr, peer_addr);
		hit = cidr_chain(&k, f->proto, f->pdport);
	}
	if (hit && hit->verdict != ILANET_VERDICT_NONE) {
		/* Anything but a valid allow fails closed. */
		d->verdict = hit->verdict == ILANET_VERDICT_ALLOW ? ILA_VERDICT_ALLOW : ILA_VERDICT_DROP;
		d->reason = ILA_REASON_RULE;
		d->rule_id = hit->rule_id;
		return;
	}
	bit = dir == ILANET_DIR_INGRESS ? ILANET_EP_F_INGRESS_ENFORCED : ILANET_EP_F_EGRESS_ENFORCED;
	if (ep->flags & bit) {
		d->verdict = ILA_VERDICT_DROP;
		d->reason = ILA_REASON_DEFAULT_DENY;
	} else if (peer->known && peer->identity >= ILANET_IDENTITY_FIRST_USER && peer->vnid != ep->vnid) {
		d->verdict = ILA_VERDICT_DROP;
		d->reason = ILA_REASON_TENANT;
	} else {
		d->verdict = ILA_VERDICT_ALLOW;
		d->reason = ILA_REASON_DEFAULT_ALLOW;
	}
}

/* Identities and tenants of both ends, for events. */
struct ends {
	__u32 src_identity;
	__u32 dst_identity;
	__u32 src_vnid;
	__u32 dst_vnid;
};

static __always_inline void emit_verdict(struct __sk_buff *skb, __u8 program, __u8 verdict, __u8 reason,
					 __u8 dir, __u32 rule_id, const struct flow *f, const void *src,
					 const void *dst, const struct ends *e)
{
	struct ila_verdict_event ev = {};

	ev.kind = ILA_EV_VERDICT;
	ev.program = program;
	ev.verdict = verdict;
	ev.reason = reason;
	ev.direction = dir;
	ev.proto = f->proto;
	ev.sport = f->sport;
	ev.dport = f->dport;
	ev.ifindex = skb->ifindex;
	ev.src_identity = e->src_identity;
	ev.dst_identity = e->dst_identity;
	ev.src_vnid = e->src_vnid;
	ev.dst_vnid = e->dst_vnid;
	ev.rule_id = rule_id;
	copy_addr(ev.src, src);
	copy_addr(ev.dst, dst);
	bpf_ringbuf_output(&ILA_EVENTS, &ev, sizeof(ev), 0);
}

/* A drop outside policy (checksum, rewrite): addresses and protocol only. */
static __always_inline void emit_drop(struct __sk_buff *skb, __u8 program, __u8 reason, __u8 proto,
				      const void *src, const void *dst)
{
	struct flow f = {};
	struct ends e = {};

	f.proto = proto;
	emit_verdict(skb, program, ILA_VERDICT_DROP, reason, ILA_DIR_NONE, 0, &f, src, dst, &e);
}

static __always_inline __u32 drop_stat(__u8 reason)
{
	switch (reason) {
	case ILA_REASON_TENANT:
		return ILA_STAT_DROP_TENANT;
	case ILA_REASON_SPOOFED:
		return ILA_STAT_DROP_SPOOFED;
	case ILA_REASON_NO_POLICY:
	case ILA_REASON_NO_ENDPOINT:
		return ILA_STAT_DROP_NO_ENDPOINT;
	case ILA_REASON_MALFORMED:
		return ILA_STAT_DROP_MALFORMED;
	case ILA_REASON_UNCLASSIFIED:
		return ILA_STAT_DROP_UNCLASSIFIED;
	case ILA_REASON_FRAGMENT:
		return ILA_STAT_DROP_FRAGMENT;
	default:
		return ILA_STAT_DROP_POLICY;
	}
}

/* Counts and (while tracing) reports a drop; returns TC_ACT_SHOT. */
static __always_inline int deny(struct __sk_buff *skb, bool trace, __u8 program, __u8 reason, __u8 dir,
				__u32 rule_id, const struct flow *f, const void *src, const void *dst,
				const struct ends *e)
{
	count(drop_stat(reason));
	if (trace)
		emit_verdict(skb, program, ILA_VERDICT_DROP, reason, dir, rule_id, f, src, dst, e);
	return TC_ACT_SHOT;
}

/*
 * from-container enforcement, before translation. `out` is the ILA_OUT entry of the destination
 * (NULL if none). Returns TC_ACT_OK to go on, TC_ACT_SHOT (already counted) to drop.
 */
static __always_inline int enforce_out(struct __sk_buff *skb, struct ipv6hdr *ip6,
				       const struct ila_out_val *out, bool trace)
{
	struct ila_endpoint_val *sep, *dep = NULL;
	struct ila_ipcache_val *ipc;
	struct ila_ct_val *ct;
	struct ila_ct_key ck;
	struct decision d;
	struct ends e = {};
	struct peer peer, src_peer;
	struct flow f;
	bool orig_b, local;
	__u8 unclassified;

	/* Fail closed first: no conntrack lookup, no anti-spoofing, no policy on a partial key. */
	unclassified = flow_parse(skb, ip6, &f);
	if (unclassified)
		return deny(skb, trace, ILA_EV_OUT, unclassified, ILA_DIR_NONE, 0, &f, &ip6->saddr,
			    &ip6->daddr, &e);
	if (link_control(ip6, &f))
		return TC_ACT_OK;

	/*
	 * Established flow: the entry remembers the local endpoint's veth and side, which is the
	 * anti-spoofing check for its packets (source address = that side, arriving on that veth)
	 * without the ILA_ENDPOINTS lookup. Flows between two local endpoints take the full check.
	 */
	orig_b = ct_key_init(&ck, &ip6->saddr, &ip6->daddr, f.sport, f.dport, f.proto);
	ct = ct_find(&ck, &f, orig_b);
	if (ct && !(ct->flags & ILA_CT_F_BOTH_LOCAL) && ct->local_ifindex == skb->ingress_ifindex &&
	    !!(ct->flags & ILA_CT_F_LOCAL_B) == orig_b) {
		ct_touch(ct);
		count(ILA_STAT_CT_HIT);
		return TC_ACT_OK;
	}

	/* Anti-spoofing: the source is this interface's own endpoint. */
	sep = bpf_map_lookup_elem(&ILA_ENDPOINTS, &ip6->saddr);
	if (!sep || sep->ifindex != skb->ingress_ifindex)
		return deny(skb, trace, ILA_EV_OUT, ILA_REASON_SPOOFED, ILA_DIR_NONE, 0, &f, &ip6->saddr,
			    &ip6->daddr, &e);
	e.src_identity = sep->identity;
	e.src_vnid = sep->vnid;

	if ((f.related && ct_related(&f)) || (ct && (ct->flags & ILA_CT_F_BOTH_LOCAL))) {
		if (ct)
			ct_touch(ct);
		count(ILA_STAT_CT_HIT);
		return TC_ACT_OK;
	}

	/* New flow. A destination without a translation may still be a local endpoint. */
	local = out && (out->flags & ILA_OUT_F_LOCAL);
	if (!out || local)
		dep = bpf_map_lookup_elem(&ILA_ENDPOINTS, &ip6->daddr);
	ipc = bpf_map_lookup_elem(&ILA_IPCACHE, &ip6->daddr);
	if (ipc) {
		peer.identity = ipc->identity;
		peer.vnid = ipc->vnid;
		peer.known = true;
	} else if (dep) {
		peer.identity = dep->identity;
		peer.vnid = dep->vnid;
		peer.known = true;
	} else {
		peer.identity = ILANET_IDENTITY_WORLD;
		peer.vnid = 0;
		peer.known = false;
	}
	e.dst_identity = peer.identity;
	e.dst_vnid = peer.vnid;
	if (local && !dep)
		return deny(skb, trace, ILA_EV_OUT, ILA_REASON_NO_ENDPOINT, ILANET_DIR_INGRESS, 0, &f,
			    &ip6->saddr, &ip6->daddr, &e);

	policy_decide(sep->identity, ILANET_DIR_EGRESS, &peer, &ip6->daddr, &f, &d);
	if (d.verdict != ILA_VERDICT_ALLOW)
		return deny(skb, trace, ILA_EV_OUT, d.reason, ILANET_DIR_EGRESS, d.rule_id, &f, &ip6->saddr,
			    &ip6->daddr, &e);
	if (trace)
		emit_verdict(skb, ILA_EV_OUT, ILA_VERDICT_ALLOW, d.reason, ILANET_DIR_EGRESS, d.rule_id, &f,
			     &ip6->saddr, &ip6->daddr, &e);

	if (dep) {
		/* from-wire will not see this packet: the destination's ingress policy applies here. */
		src_peer.identity = sep->identity;
		src_peer.vnid = sep->vnid;
		src_peer.known = true;
		e.dst_identity = dep->identity;
		e.dst_vnid = dep->vnid;
		policy_decide(dep->identity, ILANET_DIR_INGRESS, &src_peer, &ip6->saddr, &f, &d);
		if (d.verdict != ILA_VERDICT_ALLOW)
			return deny(skb, trace, ILA_EV_OUT, d.reason, ILANET_DIR_INGRESS, d.rule_id, &f,
				    &ip6->saddr, &ip6->daddr, &e);
		if (trace)
			emit_verdict(skb, ILA_EV_OUT, ILA_VERDICT_ALLOW, d.reason, ILANET_DIR_INGRESS, d.rule_id,
				     &f, &ip6->saddr, &ip6->daddr, &e);
	}

	/* The source is the local side; a local destination makes both ends local. */
	ct_create(&ck, orig_b, dep ? ILA_CT_F_BOTH_LOCAL : 0, sep->ifindex, orig_b);
	count(ILA_STAT_CT_NEW);
	return TC_ACT_OK;
}

/*
 * from-wire enforcement for a packet to the local SIR address `dst` (before it is written).
 * `dep` is the endpoint if already looked up. Returns TC_ACT_OK or TC_ACT_SHOT (counted).
 */
static __always_inline int enforce_in(struct __sk_buff *skb, struct ipv6hdr *ip6, const void *dst,
				      struct ila_endpoint_val *dep, bool trace)
{
	struct ila_ipcache_val *ipc;
	struct ila_ct_val *ct;
	struct ila_ct_key ck;
	struct decision d;
	struct ends e = {};
	struct peer peer;
	struct flow f;
	bool orig_b;
	__u8 unclassified;

	unclassified = flow_parse(skb, ip6, &f);
	if (unclassified)
		return deny(skb, trace, ILA_EV_IN, unclassified, ILA_DIR_NONE, 0, &f, &ip6->saddr, dst, &e);

	if (f.related && ct_related(&f)) {
		count(ILA_STAT_CT_HIT);
		return TC_ACT_OK;
	}
	orig_b = ct_key_init(&ck, &ip6->saddr, dst, f.sport, f.dport, f.proto);
	ct = ct_find(&ck, &f, orig_b);
	/* From the wire, the destination must be the flow's local side. */
	if (ct && !!(ct->flags & ILA_CT_F_LOCAL_B) == !orig_b) {
		ct_touch(ct);
		count(ILA_STAT_CT_HIT);
		return TC_ACT_OK;
	}

	ipc = bpf_map_lookup_elem(&ILA_IPCACHE, &ip6->saddr);
	if (ipc) {
		peer.identity = ipc->identity;
		peer.vnid = ipc->vnid;
		peer.known = true;
	} else {
		peer.identity = ILANET_IDENTITY_WORLD;
		peer.vnid = 0;
		peer.known = false;
	}
	e.src_identity = peer.identity;
	e.src_vnid = peer.vnid;
	if (!dep)
		dep = bpf_map_lookup_elem(&ILA_ENDPOINTS, dst);
	if (!dep)
		return deny(skb, trace, ILA_EV_IN, ILA_REASON_NO_ENDPOINT, ILANET_DIR_INGRESS, 0, &f,
			    &ip6->saddr, dst, &e);
	e.dst_identity = dep->identity;
	e.dst_vnid = dep->vnid;

	policy_decide(dep->identity, ILANET_DIR_INGRESS, &peer, &ip6->saddr, &f, &d);
	if (d.verdict != ILA_VERDICT_ALLOW)
		return deny(skb, trace, ILA_EV_IN, d.reason, ILANET_DIR_INGRESS, d.rule_id, &f, &ip6->saddr,
			    dst, &e);
	if (trace)
		emit_verdict(skb, ILA_EV_IN, ILA_VERDICT_ALLOW, d.reason, ILANET_DIR_INGRESS, d.rule_id, &f,
			     &ip6->saddr, dst, &e);

	/* The destination is the local side. */
	ct_create(&ck, orig_b, ILA_CT_F_FROM_WIRE, dep->ifindex, !orig_b);
	count(ILA_STAT_CT_NEW);
	return TC_ACT_OK;
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

SEC("classifier")
int from_container(struct __sk_buff *skb)
{
	struct ila_out_val *val;
	struct ipv6hdr *ip6;
	__u32 cfg;
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
	cfg = config_flags();

	/* The key is read straight from the packet: no copy to the stack. */
	val = may_be_mapped(&ILA_OUT_FILTER, ip6) ? bpf_map_lookup_elem(&ILA_OUT, &ip6->daddr) : NULL;
	if ((cfg & ILA_CFG_ENFORCE) && enforce_out(skb, ip6, val, cfg & ILA_CFG_TRACE) != TC_ACT_OK)
		return TC_ACT_SHOT;
	if (!val) {
		count(ILA_STAT_OUT_MISS);
		return TC_ACT_OK;
	}
	if (val->flags & ILA_OUT_F_LOCAL) {
		count(ILA_STAT_OUT_LOCAL);
		return TC_ACT_OK;
	}

	drop = rewrite_dst(skb, ip6, val->ila, val->csum_mode, ILA_EV_OUT, cfg & ILA_CFG_TRACE);
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
	struct ila_endpoint_val *dep;
	struct ila_in_val *val;
	struct ipv6hdr *ip6;
	struct ethhdr *eth;
	void *data, *data_end;
	__u32 cfg;
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
	cfg = config_flags();

	val = may_be_mapped(&ILA_IN_FILTER, ip6) ? bpf_map_lookup_elem(&ILA_IN, &ip6->daddr) : NULL;
	if (!val) {
		/* Already a local SIR address (not through ILA): the same ingress policy applies. */
		if ((cfg & ILA_CFG_ENFORCE) && may_be_mapped(&ILA_OUT_FILTER, ip6)) {
			dep = bpf_map_lookup_elem(&ILA_ENDPOINTS, &ip6->daddr);
			if (dep && enforce_in(skb, ip6, &ip6->daddr, dep, cfg & ILA_CFG_TRACE) != TC_ACT_OK)
				return TC_ACT_SHOT;
		}
		count(ILA_STAT_IN_MISS);
		return TC_ACT_OK;
	}
	if ((cfg & ILA_CFG_ENFORCE) && enforce_in(skb, ip6, val->sir, NULL, cfg & ILA_CFG_TRACE) != TC_ACT_OK)
		return TC_ACT_SHOT;

	drop = rewrite_dst(skb, ip6, val->sir, val->csum_mode, ILA_EV_IN, cfg & ILA_CFG_TRACE);
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
