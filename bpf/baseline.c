// SPDX-License-Identifier: GPL-2.0
/*
 * baseline: returns at once. Never attached; `ilanet bench micro` runs it through
 * BPF_PROG_TEST_RUN with the same frame, context and repeat count as the real programs,
 * interleaved with them, so that the harness's own cost (skb setup, the timer, the indirect
 * call) can be subtracted: what remains is the work of the data path.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("classifier")
int baseline(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
