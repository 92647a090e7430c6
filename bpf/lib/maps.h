/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every map of the data path, and the two one-line accessors of ILA_STATS and ILA_CONFIG.
 * Names are the pin names under bpffs (maps are reused across agent restarts): never rename.
 * Sizes come from the ABI headers (ILA_*_MAX_ENTRIES, ILANET_POLICY_*_MAX_ENTRIES), which the
 * dataplane crate checks against its constants (crates/dataplane/tests/abi.rs).
 */
#ifndef ILANET_LIB_MAPS_H
#define ILANET_LIB_MAPS_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ila_out_key);
	__type(value, struct ila_out_val);
	__uint(max_entries, ILA_OUT_MAX_ENTRIES);
	ILA_PINNING
} ILA_OUT SEC(".maps") __ila_weak;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ila_in_key);
	__type(value, struct ila_in_val);
	__uint(max_entries, ILA_IN_MAX_ENTRIES);
	ILA_PINNING
} ILA_IN SEC(".maps") __ila_weak;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, ILA_FILTER_SLOTS);
	ILA_PINNING
} ILA_OUT_FILTER SEC(".maps") __ila_weak;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, ILA_FILTER_SLOTS);
	ILA_PINNING
} ILA_IN_FILTER SEC(".maps") __ila_weak;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, ILA_STAT_MAX);
	ILA_PINNING
} ILA_STATS SEC(".maps") __ila_weak;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ila_config);
	__uint(max_entries, 1);
	ILA_PINNING
} ILA_CONFIG SEC(".maps") __ila_weak;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, ILA_EVENTS_BYTES);
	ILA_PINNING
} ILA_EVENTS SEC(".maps") __ila_weak;

/* ---- Enforcement maps (ila_abi.h "Enforcement", policy_abi.h) ---- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ila_endpoint_key);
	__type(value, struct ila_endpoint_val);
	__uint(max_entries, ILA_ENDPOINTS_MAX_ENTRIES);
	ILA_PINNING
} ILA_ENDPOINTS SEC(".maps") __ila_weak;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ila_endpoint_key);
	__type(value, struct ila_ipcache_val);
	__uint(max_entries, ILA_IPCACHE_MAX_ENTRIES);
	ILA_PINNING
} ILA_IPCACHE SEC(".maps") __ila_weak;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct ilanet_policy_ep);
	__uint(max_entries, ILANET_POLICY_EP_MAX_ENTRIES);
	ILA_PINNING
} POLICY_EP SEC(".maps") __ila_weak;

/* Sizes are policy::CompileLimits::default(); allocated on demand. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ilanet_policy_key);
	__type(value, struct ilanet_policy_val);
	__uint(max_entries, ILANET_POLICY_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	ILA_PINNING
} POLICY SEC(".maps") __ila_weak;

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ilanet_policy_cidr_key);
	__type(value, struct ilanet_policy_val);
	__uint(max_entries, ILANET_POLICY_CIDR_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	ILA_PINNING
} POLICY_CIDR SEC(".maps") __ila_weak;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ila_ct_key);
	__type(value, struct ila_ct_val);
	__uint(max_entries, ILA_CT_MAX_ENTRIES);
	ILA_PINNING
} ILA_CT SEC(".maps") __ila_weak;

static __always_inline void count(__u32 idx)
{
	/* Per-CPU slot: a plain increment is race-free and far cheaper than an atomic. */
	__u64 *v = bpf_map_lookup_elem(&ILA_STATS, &idx);

	if (v)
		*v += 1;
}

static __always_inline __u32 config_flags(void)
{
	__u32 zero = 0;
	struct ila_config *cfg = bpf_map_lookup_elem(&ILA_CONFIG, &zero);

	return cfg ? cfg->flags : 0;
}

#endif
