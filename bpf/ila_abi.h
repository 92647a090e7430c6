/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * The contract between the eBPF programs and user space (crates/dataplane mirrors every struct
 * here with #[repr(C)] and asserts the sizes). Change both sides together.
 *
 * All addresses are in network byte order, exactly as they appear in the IPv6 header.
 * Translation values are precomputed by user space (crates/ila), so the programs only look up and
 * copy: the checksum-neutral adjustment of the identifier is already folded into the stored
 * address.
 */
#ifndef ILANET_ILA_ABI_H
#define ILANET_ILA_ABI_H

#include <linux/types.h>

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
#define ILA_CFG_TRACE 0x1 /* emit an ila_event for every translated packet */

struct ila_config {
	__u32 flags;
};

/* ILA_EVENTS (RINGBUF): one record per translated packet while tracing is on. */
#define ILA_EV_OUT 1 /* SIR -> ILA at the sender */
#define ILA_EV_IN 2  /* ILA -> SIR at the receiver */

struct ila_event {
	__u8 kind;      /* ILA_EV_* */
	__u8 csum_mode; /* ILA_CSUM_* */
	__u8 l4_proto;  /* final next header (after extension headers), 0 if unknown */
	__u8 pad;
	__u32 ifindex;  /* interface the program ran on */
	__u8 src[16];
	__u8 dst_before[16];
	__u8 dst_after[16];
}; /* 56 bytes */

#endif
