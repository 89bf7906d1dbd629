// SPDX-License-Identifier: GPL-2.0
/* bpf_throw from the program itself (cookie 21), with an exception callback
 * that returns cookie * 2 = 42. The callback is the program's only
 * subprogram, laid out right after it: the shape the host kernel loads
 * (harness/kernel/crashes.py refuses a callback after other subprograms). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

extern void bpf_throw(__u64 cookie) __ksym;
#define __exception_cb(name) __attribute__((btf_decl_tag("exception_callback:" #name)))

volatile __u64 cookie = 21;

__noinline int cb(__u64 c)
{
	return c * 2;
}

SEC("tc") __exception_cb(cb)
int entry(struct __sk_buff *skb)
{
	bpf_throw(cookie);
	return 1;
}

char _license[] SEC("license") = "GPL";
