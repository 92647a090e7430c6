// SPDX-License-Identifier: GPL-2.0
/*
 * from_wire: tc ingress of the host's uplink (DESIGN.md §2), ILA -> SIR of the destination
 * (ILA_IN), then delivery to the endpoint's veth. With ILA_CFG_ENFORCE: conntrack and the
 * ingress policy of the local endpoint first (ila_abi.h "Enforcement", policy_abi.h).
 *
 * Linked with from_container.c into one object (build.rs): the maps (lib/maps.h) are shared.
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

SEC("classifier")
int from_wire(struct __sk_buff *skb)
{
	struct ila_endpoint_val *dep;
	struct ila_in_val *val;
	struct ipv6hdr *ip6;
	struct ethhdr *eth;
	void *data, *data_end;
	const void *dst;
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
	if (cfg & ILA_CFG_ENFORCE) {
		dep = NULL;
		if (val) {
			dst = val->sir;
		} else if (may_be_mapped(&ILA_OUT_FILTER, ip6) &&
			   (dep = bpf_map_lookup_elem(&ILA_ENDPOINTS, &ip6->daddr))) {
			/* Already a local SIR address (not through ILA): the same ingress policy applies. */
			dst = &ip6->daddr;
		} else {
			dst = NULL;
		}
		if (dst && enforce_in(skb, ip6, dst, dep, cfg & ILA_CFG_TRACE) != TC_ACT_OK)
			return TC_ACT_SHOT;
	}
	if (!val) {
		count(ILA_STAT_IN_MISS);
		return TC_ACT_OK;
	}

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

