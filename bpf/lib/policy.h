/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Identity and CIDR policy (policy_abi.h): a fixed number of lookups per packet.
 */
#ifndef ILANET_LIB_POLICY_H
#define ILANET_LIB_POLICY_H

#include "maps.h"
#include "flow.h"

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

/*
 * (proto, dport), (proto, any port), (any protocol): the three lookups of one key in `map`
 * (POLICY or POLICY_CIDR). `proto_f` and `dport_f` point into `key`, which is left with the
 * last key tried. Inlined, so the map and field pointers are constants.
 */
static __always_inline struct ilanet_policy_val *policy_chain(void *map, void *key, __u8 *proto_f,
							      __be16 *dport_f, __u8 proto, __be16 dport)
{
	struct ilanet_policy_val *v;

	*proto_f = proto;
	if (dport) {
		*dport_f = dport;
		v = bpf_map_lookup_elem(map, key);
		if (v)
			return v;
	}
	*dport_f = 0;
	v = bpf_map_lookup_elem(map, key);
	if (v)
		return v;
	*proto_f = 0;
	return bpf_map_lookup_elem(map, key);
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

		hit = policy_chain(&POLICY, &k, &k.proto, &k.dport, f->proto, f->pdport);
		if (!hit && peer->identity != ILANET_IDENTITY_ANY) {
			k.peer_identity = ILANET_IDENTITY_ANY;
			hit = policy_chain(&POLICY, &k, &k.proto, &k.dport, f->proto, f->pdport);
		}
	} else {
		struct ilanet_policy_cidr_key k = {
			.prefixlen = ILANET_POLICY_CIDR_FIXED_BITS + 128,
			.ep_identity = ep_id,
			.direction = dir,
		};

		copy_addr4(k.addr, peer_addr);
		hit = policy_chain(&POLICY_CIDR, &k, &k.proto, &k.dport, f->proto, f->pdport);
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

#endif
