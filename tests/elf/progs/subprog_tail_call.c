// SPDX-License-Identifier: GPL-2.0
/* corpus/subprogs/tail_call_from_subprog_returns.case in C: a subprogram
 * tail-calls target (slot 0, a second program in the object); the target's
 * return value comes back to the subprogram's caller: 5 + 1000 = 1005. The
 * fall-through value lives in .data: clang knows nothing of tail calls and
 * would fold a constant return into the caller (1055 whatever happens). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

int target(struct __sk_buff *skb);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
	__array(values, int (void *));
} jmp_table SEC(".maps") = {
	.values = { [0] = (void *)&target },
};

volatile int fallback = 55;

static __noinline int sub(struct __sk_buff *skb)
{
	bpf_tail_call(skb, &jmp_table, 0);
	return fallback;
}

SEC("tc")
int entry(struct __sk_buff *skb)
{
	return sub(skb) + 1000;
}

SEC("classifier")
int target(struct __sk_buff *skb)
{
	return 5;
}

char _license[] SEC("license") = "GPL";
