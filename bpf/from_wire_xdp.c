// SPDX-License-Identifier: GPL-2.0
/*
 * from_wire_xdp: from-wire as an XDP program on the uplink (`uplink_hook: xdp`): the same source
 * as from_wire.c, built against the xdp_md context (lib/common.h, ILA_XDP). It runs before the
 * stack allocates an skb on drivers with native XDP (veth has it), beside or instead of the
 * TCX program; one of the two is attached to an uplink at a time.
 */
#define ILA_XDP 1
#include "from_wire.c"
