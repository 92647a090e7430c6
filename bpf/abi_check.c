// SPDX-License-Identifier: GPL-2.0
/*
 * Never loaded: it only gives every ABI type a place in BTF (as Cilium's bpf_alignchecker.c
 * does), including the types the programs use only on the stack (events) and the enums no
 * variable is declared with. crates/dataplane/tests/abi.rs compares this object's BTF with the
 * Rust mirrors, and the map definitions of the program object with the Rust map constants.
 */
#include "lib/common.h"

#define ABI(type, name) type abi_##name

ABI(struct ila_out_key, ila_out_key);
ABI(struct ila_out_val, ila_out_val);
ABI(struct ila_in_key, ila_in_key);
ABI(struct ila_in_val, ila_in_val);
ABI(struct ila_config, ila_config);
ABI(struct ila_event, ila_event);
ABI(struct ila_endpoint_key, ila_endpoint_key);
ABI(struct ila_endpoint_val, ila_endpoint_val);
ABI(struct ila_ipcache_val, ila_ipcache_val);
ABI(struct ila_ct_key, ila_ct_key);
ABI(struct ila_ct_val, ila_ct_val);
ABI(struct ila_verdict_event, ila_verdict_event);
ABI(struct ilanet_policy_ep, ilanet_policy_ep);
ABI(struct ilanet_policy_key, ilanet_policy_key);
ABI(struct ilanet_policy_val, ilanet_policy_val);
ABI(struct ilanet_policy_cidr_key, ilanet_policy_cidr_key);
ABI(enum ila_stat, ila_stat);
ABI(enum ila_reason, ila_reason);
