// SPDX-License-Identifier: GPL-2.0
/* corpus/exceptions/nested_throw_callback.case in C: bpf_throw two
 * subprograms deep with the cookie 21; the exception callback (named by the
 * exception_callback: decl tag, bpf_experimental.h's __exception_cb) doubles
 * it: 42. libbpf appends the callback after f1 and f2, a layout the host
 * kernel engines refuse (harness/kernel/crashes.py); throw_direct.c runs there. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

extern void bpf_throw(__u64 cookie) __ksym;
#define __exception_cb(name) __attribute__((btf_decl_tag("exception_callback:" #name)))

__noinline int cb(__u64 cookie)
{
	return cookie * 2;
}

static __noinline int f2(__u64 x)
{
	bpf_throw(x + 1);
	return 2;
}

static __noinline int f1(__u64 x)
{
	return f2(x) + 1;
}

SEC("tc") __exception_cb(cb)
int entry(struct __sk_buff *skb)
{
	return f1(20) + 3;
}

char _license[] SEC("license") = "GPL";
