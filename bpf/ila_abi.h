/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * The contract between the eBPF programs and user space, and its source of truth: crates/dataplane
 * mirrors every struct, enum and map size here in Rust (src/abi.rs, src/maps.rs), and
 * crates/dataplane/tests/abi.rs checks the mirrors against the BTF of the compiled objects
 * (sizes, field offsets, enum values, map key/value sizes and max_entries). Change both sides
 * together.
 *
 * All addresses are in network byte order, exactly as they appear in the IPv6 header.
 * Translation values are precomputed by user space (crates/ila), so the programs only look up and
 * copy: the checksum-neutral adjustment of the identifier is already folded into the stored
 * address.
 */
#ifndef ILANET_ILA_ABI_H
#define ILANET_ILA_ABI_H

#include <linux/types.h>

/* max_entries of the maps (lib/maps.h); ILA_FILTER_SLOTS and ILA_STAT_MAX below. */
#define ILA_OUT_MAX_ENTRIES 131072       /* ILA_OUT: one per remote or local SIR address */
#define ILA_IN_MAX_ENTRIES 65536         /* ILA_IN: one per local endpoint */
#define ILA_ENDPOINTS_MAX_ENTRIES 65536  /* ILA_ENDPOINTS: local endpoints */
#define ILA_IPCACHE_MAX_ENTRIES 131072   /* ILA_IPCACHE: every endpoint of the network */
#define ILA_CT_MAX_ENTRIES 131072        /* ILA_CT: flows (LRU) */
#define ILA_EVENTS_BYTES (256 * 1024)    /* ILA_EVENTS: ring buffer size in bytes */

/* Checksum handling of one mapping (same names as the kernel's ILA csum-mode). */
#define ILA_CSUM_NEUTRAL_MAP 0   /* address sum unchanged: L4 checksum untouched */
#define ILA_CSUM_ADJ_TRANSPORT 1 /* incremental fix of the TCP/UDP/ICMPv6 checksum */
#define ILA_CSUM_NO_ACTION 2     /* rewrite only (checksum wrong on the wire; for comparison) */

/* ila_out_val.flags */
#define ILA_OUT_F_LOCAL 0x1 /* destination runs on this host: no translation, kernel routes the SIR */

/* ila_in_val.flags */
#define ILA_IN_F_REDIRECT 0x1 /* macs are valid: rewrite L2 and bpf_redirect_peer to ifindex */

/* from-container: SIR address (destination) -> ILA address (the paper's OUT_MAP). */
struct ila_out_key {
	__u8 sir[16];
};

struct ila_out_val {
	__u8 ila[16];   /* full ILA address to write as destination (identifier already adjusted) */
	__u8 csum_mode; /* ILA_CSUM_* */
	__u8 flags;     /* ILA_OUT_F_* */
	__u8 pad[2];
}; /* 20 bytes */

/* from-wire: ILA address as seen on the wire (destination) -> local endpoint. */
struct ila_in_key {
	__u8 ila[16];
};

struct ila_in_val {
	__u8 sir[16];     /* full SIR address to write back as destination */
	__u32 ifindex;    /* host-side veth of the endpoint (in the host's namespace) */
	__u8 csum_mode;   /* ILA_CSUM_* */
	__u8 flags;       /* ILA_IN_F_* */
	__u8 ep_mac[6];   /* MAC of the endpoint's interface inside the container */
	__u8 host_mac[6]; /* MAC of the host-side veth */
	__u8 pad[2];
}; /* 36 bytes */

/* Index of each per-CPU counter in ILA_STATS (a PERCPU_ARRAY of __u64). */
enum ila_stat {
	ILA_STAT_OUT_TRANSLATED = 0, /* from-container: SIR -> ILA rewritten */
	ILA_STAT_OUT_LOCAL,          /* from-container: destination is local, passed untranslated */
	ILA_STAT_OUT_MISS,           /* from-container: IPv6 without mapping, passed */
	ILA_STAT_IN_TRANSLATED,      /* from-wire: ILA -> SIR rewritten */
	ILA_STAT_IN_REDIRECTED,      /* from-wire: of those, redirected straight to the endpoint */
	ILA_STAT_IN_MISS,            /* from-wire: IPv6 without mapping, passed */
	ILA_STAT_NOT_IPV6,           /* either program: not IPv6, passed */
	ILA_STAT_DROP_MALFORMED,     /* either program: IPv6 header truncated or inconsistent */
	ILA_STAT_DROP_CSUM,          /* adj-transport: L4 header unreadable or checksum fix failed */
	ILA_STAT_DROP_REWRITE,       /* storing the new address failed */
	/* Enforcement (ILA_CFG_ENFORCE): */
	ILA_STAT_DROP_POLICY,        /* a deny rule or default deny */
	ILA_STAT_DROP_TENANT,        /* no rule, peer in another tenant (tenant isolation) */
	ILA_STAT_DROP_SPOOFED,       /* from-container: source is not the endpoint's own address */
	ILA_STAT_DROP_NO_ENDPOINT,   /* local endpoint or its POLICY_EP entry unknown (fail closed) */
	ILA_STAT_CT_NEW,             /* new flow allowed by policy: conntrack entry created */
	ILA_STAT_CT_HIT,             /* passed on conntrack (established, reply or related) */
	ILA_STAT_DROP_UNCLASSIFIED,  /* not classified completely (ILA_REASON_UNCLASSIFIED) */
	ILA_STAT_DROP_FRAGMENT,      /* non-first fragment (ILA_REASON_FRAGMENT) */
	ILA_STAT_MAX,
};

/*
 * Prefix filters ILA_OUT_FILTER / ILA_IN_FILTER (ARRAY __u32 -> __u32, ILA_FILTER_SLOTS entries):
 * slot ila_filter_slot(upper 64 bits of an address) is nonzero if some key of ILA_OUT (resp.
 * ILA_IN) may lie in that /64. The programs skip the hash lookup when the destination's slot is 0
 * (host and Internet traffic costs an inlined array read instead of a hash lookup).
 * User space sets a slot before inserting a key with that prefix, with plain idempotent writes
 * (no read-modify-write, so concurrent writers cannot lose a slot), and never clears slots while
 * the maps are in use: a stale slot only costs one lookup.
 */
#define ILA_FILTER_SLOTS 4096

/* `upper` is the first 8 address bytes loaded as a native-endian __u64. */
static inline __u32 ila_filter_slot(__u64 upper)
{
	__u32 x = (__u32)upper ^ (__u32)(upper >> 32);

	return (x * 0x9e3779b1u) >> 20; /* Fibonacci hashing: top 12 bits */
}

/* ILA_CONFIG (ARRAY, one entry). */
#define ILA_CFG_TRACE 0x1   /* emit an ila_event per translated packet, verdict events (below) */
#define ILA_CFG_ENFORCE 0x2 /* anti-spoofing, conntrack and policy (off: translation only) */

struct ila_config {
	__u32 flags;
};

/* ILA_EVENTS (RINGBUF): one record per translated packet while tracing is on. */
#define ILA_EV_OUT 1 /* SIR -> ILA at the sender */
#define ILA_EV_IN 2  /* ILA -> SIR at the receiver */

struct ila_event {
	__u8 kind;      /* ILA_EV_* */
	__u8 csum_mode; /* ILA_CSUM_* */
	__u8 l4_proto;  /* final next header (after extension headers), 0 if the chain was not
			 * walked to its end */
	__u8 pad;
	__u32 ifindex;  /* interface the program ran on */
	__u8 src[16];
	__u8 dst_before[16];
	__u8 dst_after[16];
}; /* 56 bytes */

/*
 * ---- Enforcement (ILA_CFG_ENFORCE) ----
 *
 * from-container: parse (L4 ports) -> anti-spoofing (ILA_ENDPOINTS[saddr].ifindex must be the
 * ingress interface) -> conntrack (any hit passes) -> egress policy of the source endpoint
 * against the destination (ILA_IPCACHE hit: identity lookups; miss: CIDR lookups, see
 * policy_abi.h) -> if the destination is a local endpoint (ILA_OUT local flag, or no ILA_OUT
 * entry and an ILA_ENDPOINTS entry) also its ingress policy -> conntrack entry -> translate.
 * from-wire: ILA_IN hit -> conntrack -> ingress policy of ILA_ENDPOINTS[SIR destination]
 * against the source (ILA_IPCACHE by SIR source address) -> conntrack entry -> translate and
 * deliver. A packet arriving on the uplink already addressed to a local SIR address gets the
 * same ingress check (no policy bypass by skipping ILA).
 * Before any of this, a packet the program cannot classify completely is dropped with
 * ILA_REASON_UNCLASSIFIED or ILA_REASON_FRAGMENT: it neither rides on nor creates conntrack
 * state and never meets a wildcard rule.
 * Neighbour discovery and MLD (ICMPv6 133-137, 130-132, 143) to link-local or ff02::/16
 * destinations pass without checks (the endpoint must resolve its gateway).
 * A peer is "an endpoint" for tenant isolation when its ipcache identity is a user identity
 * (>= ILANET_IDENTITY_FIRST_USER); the host (identity 1) has no tenant.
 */

/* ILA_ENDPOINTS (HASH): SIR address -> endpoint on this host. */
struct ila_endpoint_key {
	__u8 sir[16];
};

struct ila_endpoint_val {
	__u32 identity; /* numeric identity (POLICY_EP key) */
	__u32 vnid;     /* tenant */
	__u32 ifindex;  /* host-side veth: the only interface its packets may come from */
	__u32 flags;    /* reserved, zero */
}; /* 16 bytes */

/* ILA_IPCACHE (HASH): SIR address (or host address) -> identity of every endpoint in the network. */
struct ila_ipcache_val {
	__u32 identity;
	__u32 vnid; /* ignored for reserved identities (< ILANET_IDENTITY_FIRST_USER) */
}; /* 8 bytes */

/*
 * ILA_CT (LRU_HASH): one entry per flow, both directions. The key is normalised so that a packet
 * and its reply find the same entry: `a` is the smaller of the two addresses (comparing the two
 * native-endian 64-bit halves, then the ports), port_a is a's port. ICMPv6 echo uses the echo
 * identifier as both ports; other protocols without ports use 0. An ICMPv6 error (types 1-4)
 * looks up the flow of the packet it quotes (RELATED).
 */
struct ila_ct_key {
	__u8 a[16];
	__u8 b[16];
	__be16 port_a;
	__be16 port_b;
	__u8 proto;
	__u8 pad[3];
} __attribute__((aligned(8))); /* 40 bytes */

#define ILA_CT_F_ORIG_B 0x1    /* the flow was opened by b (else by a) */
#define ILA_CT_F_FROM_WIRE 0x2 /* created by from-wire (ingress); else by from-container */
#define ILA_CT_F_LOCAL_B 0x4   /* the local endpoint is b (else a); see local_ifindex */
#define ILA_CT_F_BOTH_LOCAL 0x8 /* both ends are endpoints of this host (no single ifindex) */

struct ila_ct_val {
	__u64 last_seen; /* bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC_COARSE), refreshed at most 1/s */
	__u64 created;   /* same clock */
	__u32 flags;     /* ILA_CT_F_* */
	__u32 local_ifindex; /* host-side veth of the local endpoint: an established packet from it
			      * passes anti-spoofing without the ILA_ENDPOINTS lookup */
}; /* 24 bytes */

/* ILA_EVENTS record of a policy verdict on a new flow, or of a drop (while ILA_CFG_TRACE). */
#define ILA_EV_VERDICT 3

#define ILA_VERDICT_ALLOW 1 /* same values as ILANET_VERDICT_* */
#define ILA_VERDICT_DROP 2

enum ila_reason {
	ILA_REASON_RULE = 1,      /* a rule decided (rule_id) */
	ILA_REASON_DEFAULT_ALLOW, /* no rule, the endpoint is not enforced in this direction */
	ILA_REASON_DEFAULT_DENY,  /* no rule, the endpoint is enforced (default deny) */
	ILA_REASON_TENANT,        /* no rule, the peer is an endpoint of another tenant */
	ILA_REASON_NO_POLICY,     /* no POLICY_EP entry for the endpoint identity (fail closed) */
	ILA_REASON_SPOOFED,       /* source address / ingress interface mismatch */
	ILA_REASON_NO_ENDPOINT,   /* the local destination has no ILA_ENDPOINTS entry */
	ILA_REASON_MALFORMED,     /* unused since ILA_REASON_UNCLASSIFIED (was: L4 unreadable) */
	ILA_REASON_CSUM,          /* checksum fix failed (ILA_STAT_DROP_CSUM) */
	ILA_REASON_REWRITE,       /* rewrite failed (ILA_STAT_DROP_REWRITE) */
	/*
	 * Fail closed (DESIGN.md §2): enforcement could not classify the packet completely, so it
	 * is dropped before conntrack and policy: an extension-header chain longer than the
	 * program walks, a header running past the IPv6 payload, a TCP/UDP/SCTP/ICMPv6 header
	 * shorter than its fixed part (ILA_STAT_DROP_UNCLASSIFIED).
	 */
	ILA_REASON_UNCLASSIFIED,
	/* Fail closed: a non-first fragment (no L4 header; fragments are not tracked). */
	ILA_REASON_FRAGMENT,
};

#define ILA_DIR_NONE 0xff /* verdict_event.direction when no policy was evaluated */

/* Addresses sit at 8-byte offsets: the programs copy them as two u64 on the (aligned) stack. */
struct ila_verdict_event {
	__u8 kind;      /* ILA_EV_VERDICT */
	__u8 program;   /* ILA_EV_OUT (from-container) or ILA_EV_IN (from-wire) */
	__u8 verdict;   /* ILA_VERDICT_* */
	__u8 reason;    /* enum ila_reason */
	__u8 direction; /* ILANET_DIR_* of the policy evaluated, ILA_DIR_NONE */
	__u8 proto;     /* final next header */
	__be16 sport;   /* ports as on the wire (ICMPv6 echo: identifier), 0 if none */
	__be16 dport;
	__u16 pad;
	__u32 ifindex;      /* interface the program ran on */
	__u32 src_identity; /* 0 = unknown, 2 = world */
	__u32 dst_identity;
	__u32 src_vnid; /* 0 = unknown / none */
	__u32 dst_vnid;
	__u32 rule_id; /* deciding rule, 0 = none */
	__u32 pad2;
	__u8 src[16];
	__u8 dst[16]; /* SIR destination (before SIR->ILA, after ILA->SIR) */
} __attribute__((aligned(8))); /* 72 bytes */

#endif
