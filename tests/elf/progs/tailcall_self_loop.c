// SPDX-License-Identifier: GPL-2.0
/* corpus/tail_calls/self_loop_33.case in C (kernel selftest tailcall3 shape):
 * the prog array's slot 0 holds the program itself (libbpf's __array(values)),
 * a .bss counter counts the runs: 33 tail calls, 34 runs, retval 1. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

int entry(struct __sk_buff *skb);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__array(values, int (void *));
} jmp_table SEC(".maps") = {
	.values = { [0] = (void *)&entry },
};

__u64 count = 0;

SEC("tc")
int entry(struct __sk_buff *skb)
{
	count++;
	bpf_tail_call(skb, &jmp_table, 0);
	return 1;
}

char _license[] SEC("license") = "GPL";
