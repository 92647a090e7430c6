/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Conntrack (ILA_CT, ila_abi.h): normalised keys, lookup, refresh, RELATED, creation.
 */
#ifndef ILANET_LIB_CONNTRACK_H
#define ILANET_LIB_CONNTRACK_H

#include "maps.h"
#include "flow.h"

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

#endif
