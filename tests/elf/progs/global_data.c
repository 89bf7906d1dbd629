// SPDX-License-Identifier: GPL-2.0
/* Global data as libbpf maps it: .rodata (a constant the program reads),
 * .data (initialised), .bss (zeroed), next to a BTF-defined array map written
 * through bpf_map_update_elem. By hand: total = 7 * 6 + 100 = 142, stored in
 * .bss and in out[1]; the program returns total + 1 = 143; .data's start
 * becomes 101. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} out SEC(".maps");

const volatile __u64 factor = 7;
__u64 start = 100;
__u64 total;

static __noinline __u64 scale(__u64 x)
{
	return x * factor;
}

SEC("raw_tp/sys_enter")
int entry(void *ctx)
{
	__u32 key = 1;

	total = scale(6) + start;
	bpf_map_update_elem(&out, &key, &total, BPF_ANY);
	start++;
	return total + 1;
}

char _license[] SEC("license") = "GPL";
