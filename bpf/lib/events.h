/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Ring-buffer events (translation, verdicts, drops) and the counting of drops.
 */
#ifndef ILANET_LIB_EVENTS_H
#define ILANET_LIB_EVENTS_H

#include "maps.h"
#include "csum.h"
#include "flow.h"

/* One ila_event per translated packet while tracing; `walked`: `l4` was filled by rewrite_dst. */
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

#endif
