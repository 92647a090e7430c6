/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every program file needs: kernel headers, the ABI, pinning, header offsets and the
 * address copies.
 */
#ifndef ILANET_LIB_COMMON_H
#define ILANET_LIB_COMMON_H

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

/*
 * Weak, so that the per-attach-point objects link into one (bpftool gen object) with one
 * license, and every map defined once (lib/maps.h).
 */
#define __ila_weak __attribute__((weak))

char LICENSE[] SEC("license") __ila_weak = "GPL";

/*
 * The unpinned build (-DILA_NO_PIN) exists for tests and benchmarks: aya always pins by-name maps,
 * and those runs must neither need bpffs nor share state with a running agent.
 */
#ifdef ILA_NO_PIN
#define ILA_PINNING
#else
#define ILA_PINNING __uint(pinning, LIBBPF_PIN_BY_NAME);
#endif

#define L2_LEN ((__u32)sizeof(struct ethhdr))
#define L3_OFF L2_LEN
#define HDRS_LEN (L2_LEN + (__u32)sizeof(struct ipv6hdr))
#define DADDR_OFF (L3_OFF + (__u32)offsetof(struct ipv6hdr, daddr))

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

#endif
