/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * The contract between the eBPF policy enforcement and user space for identity-based policy.
 * crates/policy/src/abi.rs mirrors every struct and map size here; crates/dataplane/tests/abi.rs
 * checks the mirrors against the BTF of the compiled objects. Change both sides together.
 *
 * Byte order: integers are host order, except dport (network order, exactly as in the L4
 * header, so the program copies it without swapping) and addr (as on the wire).
 *
 * Maps:
 *   POLICY_EP    HASH      key __u32 endpoint identity   value struct ilanet_policy_ep
 *   POLICY       HASH      key struct ilanet_policy_key  value struct ilanet_policy_val
 *   POLICY_CIDR  LPM_TRIE  key struct ilanet_policy_cidr_key (BPF_F_NO_PREALLOC)
 *                                                        value struct ilanet_policy_val
 *   (the ipcache, SIR address -> {identity, vnid}, belongs to the data path.)
 *
 * Lookup, per packet and direction (dir = ingress at the receiving endpoint with peer = source,
 * egress at the sending endpoint with peer = destination), at most 6 hash or 3 LPM lookups:
 *
 *   ep = POLICY_EP[local identity];  missing -> DROP (fail closed)
 *   dport = 0 unless proto is TCP, UDP or SCTP
 *   if the peer address is in the ipcache (an endpoint, or the host with identity 1):
 *       for peer in { peer identity, 0 (= any) }:
 *           for (p, d) in { (proto, dport), (proto, 0), (0, 0) }:
 *               v = POLICY[{ep_identity, peer, dir, p, d}]; if v: goto hit
 *   else (external address, identity 2 = world):
 *       for (p, d) in { (proto, dport), (proto, 0), (0, 0) }:
 *           v = POLICY_CIDR[{64 + 128, ep_identity, dir, p, d, peer address}]; if v: goto hit
 *   no rule:
 *       if ep.flags & (dir == INGRESS ? ILANET_EP_F_INGRESS_ENFORCED : ILANET_EP_F_EGRESS_ENFORCED)
 *           -> DROP (default deny)
 *       else if peer is an endpoint and ipcache.vnid != ep.vnid -> DROP (tenant isolation)
 *       else -> PASS
 *   hit:
 *       ILANET_VERDICT_ALLOW -> PASS, ILANET_VERDICT_DENY -> DROP (rule_id for the event),
 *       ILANET_VERDICT_NONE -> "no rule" above.
 *
 * The first hit is final: user space has already merged into every entry all rules of the
 * less specific keys that cover it (deny beats allow), and materialised the intersections of
 * specific-peer and wildcard-peer keys.
 */
#ifndef ILANET_POLICY_ABI_H
#define ILANET_POLICY_ABI_H

#include <linux/types.h>

#define ILANET_IDENTITY_ANY 0   /* wildcard peer in POLICY keys */
#define ILANET_IDENTITY_HOST 1  /* the host itself */
#define ILANET_IDENTITY_WORLD 2 /* any address outside the network */
#define ILANET_IDENTITY_FIRST_USER 256

#define ILANET_DIR_INGRESS 0
#define ILANET_DIR_EGRESS 1

#define ILANET_VERDICT_NONE 0  /* POLICY_CIDR carve-out: no rule applies */
#define ILANET_VERDICT_ALLOW 1
#define ILANET_VERDICT_DENY 2

/* ilanet_policy_ep.flags */
#define ILANET_EP_F_INGRESS_ENFORCED 0x1
#define ILANET_EP_F_EGRESS_ENFORCED 0x2

/* max_entries (policy::abi::*_MAX_ENTRIES, the defaults of policy::CompileLimits). */
#define ILANET_POLICY_EP_MAX_ENTRIES 65536      /* POLICY_EP: endpoint identities */
#define ILANET_POLICY_MAX_ENTRIES (1 << 20)     /* POLICY (BPF_F_NO_PREALLOC) */
#define ILANET_POLICY_CIDR_MAX_ENTRIES (1 << 18) /* POLICY_CIDR (BPF_F_NO_PREALLOC) */

/* Bits of ilanet_policy_cidr_key after prefixlen that always match fully. */
#define ILANET_POLICY_CIDR_FIXED_BITS 64

/* POLICY_EP value. */
struct ilanet_policy_ep {
	__u32 vnid;  /* tenant (28-bit VNID) of the endpoint identity */
	__u32 flags; /* ILANET_EP_F_* */
}; /* 8 bytes */

/* POLICY key. */
struct ilanet_policy_key {
	__u32 ep_identity;   /* local endpoint */
	__u32 peer_identity; /* ILANET_IDENTITY_ANY = any */
	__u8 direction;      /* ILANET_DIR_* */
	__u8 proto;          /* IPPROTO_*, 0 = any (then dport is 0) */
	__be16 dport;        /* 0 = any */
}; /* 12 bytes */

/* POLICY and POLICY_CIDR value. */
struct ilanet_policy_val {
	__u8 verdict; /* ILANET_VERDICT_* */
	__u8 pad[3];
	__u32 rule_id; /* 1-based rule number for flow events / explain; 0 = none */
}; /* 8 bytes */

/* POLICY_CIDR key (LPM trie: prefixlen = 64 + CIDR length; lookups use 64 + 128). */
struct ilanet_policy_cidr_key {
	__u32 prefixlen;
	__u32 ep_identity;
	__u8 direction;
	__u8 proto;
	__be16 dport;
	__u8 addr[16];
}; /* 28 bytes */

#endif
