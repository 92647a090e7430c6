// SPDX-License-Identifier: GPL-2.0
/*
 * from_container: tc ingress of an endpoint's host-side veth (DESIGN.md §2), SIR -> ILA of the
 * destination (ILA_OUT, the paper's OUT_MAP). User space (crates/ila) precomputes every address,
 * including the checksum-neutral adjustment, so the hot path is: parse, one hash lookup, a
 * 16-byte copy, one per-CPU counter. With ILA_CFG_ENFORCE: anti-spoofing, conntrack and egress
 * policy first (ila_abi.h "Enforcement", policy_abi.h), a fixed number of lookups per packet.
 *
 * Linked with from_wire.c into one object (build.rs): the maps (lib/maps.h) are shared.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/ipv6.h"
#include "lib/flow.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/events.h"
#include "lib/translate.h"

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
