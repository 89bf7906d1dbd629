/* A stand-in for tools/testing/selftests/bpf/test_progs.h, enough to build
 * an exported prog_tests/NAME.c outside the kernel tree: the ASSERT_* macros
 * it uses, each counting failures and printing one line. */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <errno.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
static int failures;
#define CHECK_(cond, name, fmt, ...) ({ int ok_ = (cond); if (!ok_) { failures++; fprintf(stderr, "FAIL %s: " fmt "\n", name, ##__VA_ARGS__); } else fprintf(stderr, "ok   %s\n", name); ok_; })
#define ASSERT_OK_PTR(p, name) CHECK_(!libbpf_get_error(p) && (p), name, "%p", (void*)(p))
#define ASSERT_OK(v, name) ({ long long v_ = (v); CHECK_(v_ == 0, name, "%lld", v_); })
#define ASSERT_EQ(a, b, name) ({ long long a_ = (a), b_ = (b); CHECK_(a_ == b_, name, "%lld != %lld", a_, b_); })
