"""Reading a kernel log for bug reports (``harness.kernel.crashes``): fed
synthetic lines shaped like this kernel's reports, never a real crash."""

from __future__ import annotations

from harness.kernel.crashes import STACK_OVERFLOW, kernel_report, signature
from harness.kernel.worker import log_tail, save_log

NOISE = ["eth0: link up", "audit: type=1400 apparmor=ALLOWED", "bpf: JIT enabled"]


def warn(pid: int) -> list[str]:
    return [
        "------------[ cut here ]------------",
        "verifier bug: REG INVARIANTS VIOLATION (true_reg1): range bounds violation "
        "u64=[0x5, 0x4] s64=[0x5, 0x4] u32=[0x5, 0x4] s32=[0x5, 0x4] var_off=(0x0, 0x7)",
        f"WARNING: CPU: 1 PID: {pid} at kernel/bpf/verifier.c:2731 "
        "reg_bounds_sanity_check+0x1e0/0x280",
        "Modules linked in:",
        f"CPU: 1 UID: 0 PID: {pid} Comm: python3 Tainted: G        W          6.18.44 #1",
        "RIP: 0010:reg_bounds_sanity_check+0x1e0/0x280",
        "Call Trace:",
        " <TASK>",
        " do_check_common+0x1a2/0x2d0",
        " </TASK>",
        "---[ end trace 0000000000000000 ]---",
    ]


OOPS = [
    "BUG: kernel NULL pointer dereference, address: 0000000000000048",
    "#PF: supervisor read access in kernel mode",
    "Oops: Oops: 0000 [#1] SMP NOPTI",
    "CPU: 0 UID: 0 PID: 777 Comm: python3 Not tainted 6.18.44 #1",
    "RIP: 0010:jit_subprogs+0xa2f/0xd90",
]


def test_a_quiet_log_has_no_report():
    assert kernel_report(NOISE) is None
    assert kernel_report([]) is None


def test_a_warn_with_no_oops_is_a_report_from_its_message_line():
    report = kernel_report(NOISE + warn(4242) + NOISE, pids={4242})
    assert report is not None
    lines = report.splitlines()
    assert lines[0].startswith("verifier bug: REG INVARIANTS VIOLATION")
    assert lines[-1].startswith("---[ end trace")  # the report, not the noise after it
    assert signature(report) == (
        "reg-bounds-sanity-check-verifier-bug-reg-invariants-violation-true-reg1"
    )


def test_another_task_report_is_skipped_for_ours():
    assert kernel_report(warn(1) + NOISE, pids={4242}) is None
    # another task's WARN, then ours: ours is found
    report = kernel_report(warn(1) + OOPS[:3] + OOPS[4:], pids={4242})
    assert report is not None and report.startswith("BUG: kernel NULL pointer")
    # a report that names no task is ours (an oops may die before saying)
    assert kernel_report(OOPS[:3], pids={4242}) == "\n".join(OOPS[:3])
    # no pids: every report counts
    assert kernel_report(warn(1)) is not None


def test_a_signature_does_not_depend_on_cpu_pid_or_addresses():
    a = kernel_report(warn(11))
    b = kernel_report([ln.replace("CPU: 1", "CPU: 0") for ln in warn(99)])
    assert signature(a) == signature(b)
    assert signature("\n".join(OOPS)) == "jit-subprogs-bug-kernel-null-pointer-dereference"


def test_a_plain_warning_line_names_the_warn_site_not_the_task():
    lines = warn(5)[2:]  # no message line: the WARNING line is the first
    assert signature(kernel_report(lines)) == signature(kernel_report(warn(6)[2:]))


def test_a_long_log_keeps_its_tail_and_the_whole_in_a_file():
    log = "\n".join(f"{i}: insn" for i in range(1000)) + "\nprocessed 1000 insns\n"
    tail = log_tail(log, lines=5)
    lines = tail.splitlines()
    assert lines[1:] == ["996: insn", "997: insn", "998: insn", "999: insn", "processed 1000 insns"]
    assert lines[0].startswith("... 996 lines before these (full log: ")
    path = lines[0].rsplit("full log: ", 1)[1].rstrip(")")
    assert open(path).read() == log and save_log(log) == path
    assert log_tail("a\nb\n", lines=5) == "a\nb"  # short: whole, no file


# console lines as the guests' kernels print them (arch/*/mm/fault.c, die(),
# kernel/watchdog.c, kernel/panic.c), timestamps included
GUEST_BUGS = [
    "[   12.3] Unable to handle kernel paging request at virtual address ffff800080a3c000",
    "[   12.3] Unable to handle kernel NULL pointer dereference at virtual address 00000048",
    "[   12.3] Internal error: Oops: 0000000096000006 [#1] SMP",
    "[   12.3] Kernel panic - not syncing: Fatal exception",
    "[   12.3] Insufficient stack space to handle exception!",
    "[   12.3] kernel BUG at arch/powerpc/net/bpf_jit_comp.c:312!",
    "[   12.3] rcu: INFO: rcu_sched self-detected stall on CPU",
    "[   12.3] INFO: task agent:93 blocked for more than 120 seconds.",
]


def test_the_other_arches_crash_lines_are_reports():
    for line in GUEST_BUGS:
        assert kernel_report(NOISE + [line]) == line
    # ppc64's boot says this on every boot, and nothing is wrong
    assert (
        kernel_report(["[    0.5] WARNING: nvram corruption detected: 0-length partition"]) is None
    )


def test_repeated_soft_lockups_are_one_signature():
    def lockup(cpu: int, secs: int, pid: int) -> str:
        return "\n".join(
            [
                f"[  {secs + 40}.1] watchdog: BUG: soft lockup - CPU#{cpu} stuck for {secs}s! "
                f"[agent:{pid}]",
                f"[  {secs + 40}.1] epc : ___bpf_prog_run+0x1c/0x1e40",
            ]
        )

    a, b = signature(lockup(0, 22, 93)), signature(lockup(1, 48, 117))
    assert a == b == "bpf-prog-run-bug-soft-lockup-cpu-stuck-for"


def test_stack_overruns_in_any_bpf_program_are_one_signature():
    """Each system's programs have their own tags and names; the bug is the
    same (docs/kernel-findings.md section 0): consoles of two campaign
    systems in a 6.12 x86-64 guest."""

    def overrun(prog: str) -> str:
        return "\n".join(
            [
                "[    4.730310] BUG: TASK stack guard page was hit at 00000000d6b5307a "
                "(stack is 000000003f9e7d1f..000000000efc8cbe)",
                "[    4.733924] Oops: stack guard page: 0000 [#1] PREEMPT SMP NOPTI",
                f"[    4.734537] RIP: 0010:{prog}+0x1b/0x122",
            ]
        )

    a = signature(overrun("bpf_prog_14f27b6d17f71891_f0"))
    b = signature(overrun("bpf_prog_5147e7832c369db1_main"))
    assert a == b == "bpf-prog-bug-task-stack-guard-page-was-hit"
    assert STACK_OVERFLOW.search(overrun("bpf_prog_14f27b6d17f71891_f0"))


def test_a_cpu_stuck_in_bpf_programs_is_one_signature_wherever_it_was_caught():
    """Two soft lockups of the 6.1 arm64 guest (the tailcall hierarchy bug):
    the watchdog caught one in a program, the other in a helper it called."""
    head = "[   31.2] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [agent:1]"
    in_prog = [head, "[   31.2] pc : bpf_prog_97571f3f5de50ef7_main+0x60/0xb0"]
    in_helper = [
        head,
        "[   31.2] pc : ktime_get_mono_fast_ns+0x4c/0xd0",
        "[   31.2]  bpf_prog_5147e7832c369db1_f1+0x34/0x60",
    ]
    a, b = signature("\n".join(in_prog)), signature("\n".join(in_helper))
    assert a == b == "bpf-prog-bug-soft-lockup-cpu-stuck-for"
