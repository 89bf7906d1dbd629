"""The two kernel engines against the reference, on the shapes the JIT bug
classes live in; and the ``kernel`` engine against deliberately broken real
images (it must catch them). Every kernel interaction happens in the engines'
worker processes."""

from __future__ import annotations

import os
import threading
import time

import pytest

from harness import engines
from harness.campaign.runner import REFERENCE_BUDGET, Runner, expectation_failures, native_budget
from harness.formats import casefile
from harness.kernel import available
from harness.kernel.crashes import known_crash, signature
from harness.outcome import Status
from oracles import Verdict, compare_case

REASON = available()
needs_kernel = pytest.mark.skipif(REASON is not None, reason=f"kernel unusable: {REASON}")

COUNTS = """
map counts array max_entries=1 value_size=8
    0 = 00 00 00 00 00 00 00 00
"""

CASES = {
    # 33 tail calls, 34 runs counted in a map; then the slot is emptied
    "self_loop": COUNTS
    + """
map jt prog_array max_entries=1
    0 = entry
program entry sched_cls
main:
    r6 = r1
    r1 = map_value[counts] ll
    r2 = *(u64 *)(r1 + 0)
    r2 += 1
    *(u64 *)(r1 + 0) = r2
    r1 = r6
    r2 = map[jt] ll
    r3 = 0
    call bpf_tail_call
    r0 = 1
    exit
run entry
    expect retval 1
    expect tail_calls 33
    expect map counts 0 = 22 00 00 00 00 00 00 00
delete jt 0
run entry
    expect tail_calls 0
""",
    # the loop stops trying after 34 runs: one more tail call than the limit
    # allows would still end cleanly (see the limit test below)
    "self_loop_bounded": COUNTS
    + """
map jt prog_array max_entries=1
    0 = entry
program entry sched_cls
main:
    r6 = r1
    r1 = map_value[counts] ll
    r2 = *(u64 *)(r1 + 0)
    r2 += 1
    *(u64 *)(r1 + 0) = r2
    if r2 > 34 goto out
    r1 = r6
    r2 = map[jt] ll
    r3 = 0
    call bpf_tail_call
out:
    r0 = 1
    exit
run entry
    expect tail_calls 33
""",
    # a failed tail call (empty slot) does not consume budget on the JIT
    "empty_slot_then_loop": COUNTS
    + """
map jt prog_array max_entries=2
    0 = entry
program entry sched_cls
main:
    r6 = r1
    r1 = map_value[counts] ll
    r2 = *(u64 *)(r1 + 0)
    r2 += 1
    *(u64 *)(r1 + 0) = r2
    r1 = r6
    r2 = map[jt] ll
    r3 = 1
    call bpf_tail_call
    r1 = r6
    r2 = map[jt] ll
    r3 = 0
    call bpf_tail_call
    r0 = 1
    exit
run entry
    expect tail_calls 33
    expect map counts 0 = 22 00 00 00 00 00 00 00
""",
    # the index is a u32: (1 << 32) | 0 selects slot 0
    "u32_index": """
map jt prog_array max_entries=1
    0 = target
program entry sched_cls
main:
    r3 = 0x100000000 ll
    r2 = map[jt] ll
    call bpf_tail_call
    r0 = 1
    exit
program target sched_cls
main:
    r0 = 77
    exit
run entry
    expect retval 77
""",
    # the same loop with a key the verifier cannot know (indirect tail call)
    "self_loop_indirect": COUNTS
    + """
map jt prog_array max_entries=2
    1 = entry
map keys array max_entries=1 value_size=4
    0 = 01 00 00 00
program entry sched_cls
main:
    r6 = r1
    r1 = map_value[counts] ll
    r2 = *(u64 *)(r1 + 0)
    r2 += 1
    *(u64 *)(r1 + 0) = r2
    r1 = map_value[keys] ll
    r3 = *(u32 *)(r1 + 0)
    r1 = r6
    r2 = map[jt] ll
    call bpf_tail_call
    r0 = 2
    exit
run entry
    expect map counts 0 = 22 00 00 00 00 00 00 00
""",
    "tail_call_after_bpf2bpf": """
map jt prog_array max_entries=1
    0 = target
program entry sched_cls
main:
    r6 = r1
    r1 = 5
    call sub
    r7 = r0
    r1 = r6
    r2 = map[jt] ll
    r3 = 0
    call bpf_tail_call
    r0 = r7
    exit
sub:
    r0 = r1
    r0 += 1
    exit
program target sched_cls
main:
    r0 = 42
    exit
run entry
    expect retval 42
""",
    # entry calls sub twice, sub tail-calls entry: one counter for the hierarchy
    "hierarchy": COUNTS
    + """
map jt prog_array max_entries=1
    0 = entry
program entry sched_cls
main:
    r6 = r1
    r1 = map_value[counts] ll
    r2 = *(u64 *)(r1 + 0)
    r2 += 1
    *(u64 *)(r1 + 0) = r2
    r1 = r6
    call sub
    r1 = r6
    call sub
    r0 = 0
    exit
sub:
    r2 = map[jt] ll
    r3 = 0
    call bpf_tail_call
    r0 = 1
    exit
run entry
    expect tail_calls 33
""",
    # 240 bytes of caller stack: the most a subprog tail call allows
    "subprog_tail_call_stack_240": """
map jt prog_array max_entries=1
    0 = target
program entry sched_cls
main:
    r2 = 7
    *(u64 *)(r10 - 240) = r2
    *(u64 *)(r10 - 8) = r2
    call sub
    r1 = *(u64 *)(r10 - 240)
    r0 += r1
    exit
sub:
    r2 = map[jt] ll
    r3 = 0
    call bpf_tail_call
    r0 = 100
    exit
program target sched_cls
main:
    r0 = 5
    exit
run entry
    expect retval 12
""",
    # stack depths that are not multiples of 8 before a subprog tail call
    # (the "wrong counter slot" class)
    "unaligned_stack_subprog_tail_call": COUNTS
    + """
map jt prog_array max_entries=1
    0 = entry
program entry sched_cls
main:
    r6 = r1
    r1 = map_value[counts] ll
    r2 = *(u64 *)(r1 + 0)
    r2 += 1
    *(u64 *)(r1 + 0) = r2
    r2 = 9
    *(u8 *)(r10 - 13) = r2
    r1 = r6
    call sub
    r0 = *(u8 *)(r10 - 13)
    exit
sub:
    r2 = 3
    *(u8 *)(r10 - 5) = r2
    r2 = map[jt] ll
    r3 = 0
    call bpf_tail_call
    r0 = *(u8 *)(r10 - 5)
    exit
run entry
""",
    # a throw from a nested subprogram caught by the exception callback
    # (callback laid out right after main: see harness.kernel.crashes)
    "throw_with_callback": """
program thrower sched_cls exception_callback=cb
main:
    r1 = 3
    call sub
    r0 = 1
    exit
cb:
    r0 = r1
    r0 += 100
    exit
sub:
    r1 *= 2
    call bpf_throw
    r0 = 0
    exit
run thrower
    expect retval 106
""",
    # no callback: the program returns the cookie (64-bit; test runs see 32)
    "throw_without_callback": """
program thrower sched_cls
main:
    r6 = 0x100000005 ll
    r1 = r6
    call sub
    r0 = 1
    exit
sub:
    call bpf_throw
    r0 = 0
    exit
run thrower
    expect retval 0x100000005
""",
    # direct tail-call slot: nop->jmp, jmp->jmp, jmp->nop, nop->jmp
    "direct_slot_script": """
map jt prog_array max_entries=2
program entry sched_cls
main:
    r2 = map[jt] ll
    r3 = 1
    call bpf_tail_call
    r0 = 1
    exit
program a sched_cls
main:
    r0 = 10
    exit
program b sched_cls
main:
    r0 = 20
    exit
run entry
    expect retval 1
update jt 1 = a
run entry
    expect retval 10
update jt 1 = b
run entry
    expect retval 20
delete jt 1
run entry
    expect retval 1
update jt 1 = a
run entry
    expect retval 10
""",
    # helpers: array update (a direct call of array_map_update_elem), an
    # inlined array lookup and an inlined smp_processor_id
    "helpers": COUNTS
    + """
program h raw_tp
main:
    r1 = 0x1122334455667788 ll
    *(u64 *)(r10 - 8) = r1
    r1 = 0
    *(u32 *)(r10 - 12) = r1
    r1 = map[counts] ll
    r2 = r10
    r2 += -12
    r3 = r10
    r3 += -8
    r4 = 0
    call bpf_map_update_elem
    r6 = r0
    r1 = map[counts] ll
    r2 = r10
    r2 += -12
    call bpf_map_lookup_elem
    if r0 == 0 goto out
    r6 = *(u32 *)(r0 + 0)
    call bpf_get_smp_processor_id
    r6 += r0
out:
    r0 = r6
    exit
run h
    expect retval 0x55667788
""",
}


def case(name: str):
    return casefile.parse(CASES[name], file=name)


@pytest.fixture(scope="module")
def runner():
    if REASON:
        pytest.skip(f"kernel unusable: {REASON}")
    r = Runner(["kernel-native", "kernel"])
    yield r
    r.close()


#: (case, engine) pairs the engine cannot judge, and says so (UNSUPPORTED)
POISONED: set[tuple[str, str]] = set()


def _agree(result, case_name: str) -> None:
    ref = result.reference.runs
    assert all(r.status is Status.OK for r in ref), [(r.status, r.detail) for r in ref]
    for name, (v, d, out) in result.candidates.items():
        detail = [(r.status, r.retval, r.detail[:200]) for r in out.runs]
        if (case_name, name) in POISONED:
            assert v is Verdict.POISONED and out.runs[0].status is Status.UNSUPPORTED, detail
            continue
        assert v is Verdict.AGREE, f"{name}: {d}\n{detail}"


@needs_kernel
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_engines_agree_with_interp(runner, name):
    c = case(name)
    result = runner.check(c)
    _agree(result, name)
    assert expectation_failures(c, result.reference.runs) == []
    if (name, "kernel") not in POISONED:
        assert expectation_failures(c, result.candidates["kernel"][2].runs) == []


@needs_kernel
def test_native_retval_is_the_low_32_bits(runner):
    result = runner.check(case("throw_without_callback"))
    native = result.candidates["kernel-native"][2].runs[0]
    assert native.retval == 5  # BPF_PROG_TEST_RUN's u32
    assert native.tail_calls is None
    assert result.candidates["kernel-native"][0] is Verdict.AGREE


# --- broken real images must be caught ----------------------------------------

CMP_33 = bytes.fromhex("48833821")  # cmp qword ptr [rax], 0x21
POP_RBX = b"\x5b"


def _patch(native, old: bytes, new: bytes, *, func: int = 0, last: bool = False) -> int:
    """Replace one occurrence of ``old`` in a function of the first program."""
    f = next(iter(native.progs.values())).funcs[func]
    at = f.code.rfind(old) if last else f.code.find(old)
    assert at >= 0, f"{old.hex()} not in {f.name}"
    f.code = f.code[:at] + new + f.code[at + len(old) :]
    return f.address + at


def _check_mutated(c, mutate, crash_dir):
    """``Runner.check`` for one ``kernel`` engine that edits the images."""
    ref = engines.get("interp").run(c, budget=REFERENCE_BUDGET)
    eng = engines.get("kernel", mutate=mutate, crash_dir=crash_dir)
    try:
        out = eng.run(c, budget=native_budget(max(r.steps for r in ref.runs)))
    finally:
        eng.close()
    return compare_case(ref.runs, out.runs)


@needs_kernel
def test_kernel_engine_catches_a_raised_tail_call_limit(tmp_path):
    def raise_limit(native):
        _patch(native, CMP_33, CMP_33[:-1] + b"\x22")

    # With the limit at 34 the 34th tail call passes the count (34) in rax,
    # which the target's prologue takes for a pointer: the next attempt reads
    # address 0x22 and traps (as the real kernel would oops). The bounded loop
    # makes no 35th attempt, so the extra tail call is all that differs.
    v, d = _check_mutated(case("self_loop_bounded"), raise_limit, tmp_path)
    assert v is Verdict.DIVERGE
    assert d.oracle == "tail_calls", d
    assert (d.expected, d.actual) == (33, 34)


@needs_kernel
def test_kernel_engine_catches_a_missing_callee_saved_pop(tmp_path):
    def drop_pop(native):
        # the exit path's `pop rbx` (the last one in main) becomes a nop
        _patch(native, POP_RBX + b"\xc9", b"\x90\xc9", last=True)

    v, d = _check_mutated(case("helpers"), drop_pop, tmp_path)
    assert v is Verdict.DIVERGE
    assert d.oracle == "host_state", d


# --- rejections and crashes -----------------------------------------------------

REJECTED = """
program thrower raw_tp
main:
    r1 = 7
    call bpf_throw
    r0 = 0
    exit
"""


@needs_kernel
def test_a_rejected_program_the_reference_ran_is_a_divergence(runner):
    # the reference runs bpf_throw from a raw_tp program; the kernel does not
    # allow that kfunc there: never a silent pass
    c = casefile.parse(REJECTED)
    result = runner.check(c)
    for name, (v, d, out) in result.candidates.items():
        assert out.runs[0].status is Status.REJECTED, name
        assert "bpf_throw is not allowed" in out.runs[0].detail
        assert v is Verdict.DIVERGE and d.oracle == "rejected", name
        assert d.signature() == "rejected:(EACCES) calling kernel function bpf_throw is not allowed"
    # with an expectation it is a failed expectation, on the engine's own line
    c.steps = c.script()
    c.steps[0].expect.retval = 7
    out = result.candidates["kernel-native"][2]
    fails = expectation_failures(c, out.runs)
    assert len(fails) == 1 and "rejected" in fails[0] and "\n" not in fails[0]


#: twenty instructions, then a stack read the verifier refuses: a log of
#: more than forty lines
LONG_LOG = (
    "program p sched_cls\nmain:\n"
    + "    r0 = 0\n" * 20
    + "    r0 = *(u64 *)(r10 - 600)\n    exit\n"
)


@needs_kernel
def test_a_long_verifier_log_is_trimmed_and_kept_whole_in_a_file():
    from harness.kernel.worker import LOG_TAIL

    eng = engines.get("kernel-native")
    try:
        run = eng.run(casefile.parse(LONG_LOG), budget=0).runs[0]
    finally:
        eng.close()
    assert run.status is Status.REJECTED
    lines = run.detail.splitlines()
    # the reason line, the "... N lines before these (full log: PATH)" line, the tail
    assert len(lines) == 2 + LOG_TAIL
    assert "invalid" in lines[0] and "-600" in run.detail
    path = lines[1].rsplit("full log: ", 1)[1].rstrip(")")
    full = open(path).read().splitlines()
    assert len(full) > 40 and full[-LOG_TAIL:] == lines[2:]
    assert int(lines[1].split()[1]) == len(full) - LOG_TAIL


@needs_kernel
def test_a_worker_killed_from_outside_is_not_a_finding(tmp_path):
    # SIGKILL (the OOM killer, a user) with nothing in the kernel log: a
    # harness event, counted; the job runs again in a fresh child
    eng = engines.get("kernel-native", crash_dir=tmp_path, hold=2.0, kmsg=FakeKmsg())
    try:
        eng.worker.start()
        pid = eng.worker.pid

        def kill_mid_job() -> None:
            # once the job is sent (the child holds it 2 s): a kill timed from
            # the start can land before it on a loaded machine, and a child
            # found dead between jobs is restarted without an incident
            deadline = time.monotonic() + 60
            while not eng.worker._busy and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(pid, 9)

        killer = threading.Thread(target=kill_mid_job)
        killer.start()
        c = case("self_loop")
        out = eng.run(c, budget=0)
        killer.join()
        assert [r.status for r in out.runs] == [Status.OK] * 2
        assert eng.worker.pid != pid and eng.worker.starts == 2
        assert sum(eng.worker.incidents.values()) == 1
        assert "SIGKILL" in next(iter(eng.worker.incidents))
        assert not eng.worker.crashes and not list(tmp_path.iterdir())
        v, _ = compare_case(engines.get("interp").run(c, budget=10**5).runs, out.runs)
        assert v is Verdict.AGREE
    finally:
        eng.close()


@needs_kernel
def test_a_worker_that_keeps_dying_is_poisoned_not_a_finding(tmp_path):
    eng = engines.get("kernel-native", crash_dir=tmp_path, hold=30.0, kmsg=FakeKmsg())
    eng.worker.timeout = 1.0  # every attempt "hangs": killed after a second
    try:
        out = eng.run(case("self_loop"), budget=0)
        assert [r.status for r in out.runs] == [Status.UNSUPPORTED] * 2
        assert "2 times with nothing in the kernel log" in out.runs[0].detail
        assert not eng.worker.crashes and not list(tmp_path.iterdir())
    finally:
        eng.close()


KNOWN_CRASH = """
program p sched_cls exception_callback=cb
main:
    r1 = 1
    if r1 == 1 goto +1
    call sub
    r0 = 0
    exit
sub:
    r0 = 1
    exit
cb:
    r0 = r1
    exit
"""


def test_known_crash_shape_is_refused_by_default():
    c = casefile.parse(KNOWN_CRASH)
    assert "jit_subprogs" in known_crash(c)
    assert known_crash(case("throw_with_callback")) is None


def test_crash_signature_has_no_addresses():
    log = (
        "BUG: kernel NULL pointer dereference, address: 0000000000000048\n"
        "#PF: supervisor read access in kernel mode\n"
        "RIP: 0010:jit_subprogs+0xa2f/0xd90\n"
    )
    assert signature(log) == "jit-subprogs-bug-kernel-null-pointer-dereference"
    assert signature("", fallback="worker-died (SIGKILL)") == "worker-died-sigkill"


@needs_kernel
def test_nondeterministic_helpers_poison_native_runs(runner):
    text = """
program t raw_tp
main:
    call bpf_ktime_get_ns
    r0 = 0
    exit
"""
    result = runner.check(casefile.parse(text))
    v, _, out = result.candidates["kernel-native"]
    assert out.runs[0].nondeterministic and v is Verdict.POISONED
    assert result.candidates["kernel"][0] is Verdict.AGREE  # the models run there


@needs_kernel
def test_known_crash_shape_is_unsupported_without_loading(runner):
    c = casefile.parse(KNOWN_CRASH)
    result = runner.check(c)
    for name, (v, _, out) in result.candidates.items():
        assert out.runs[0].status is Status.UNSUPPORTED, name
        assert "jit_subprogs" in out.runs[0].detail
        assert v is Verdict.POISONED


@needs_kernel
@pytest.mark.parametrize("name", sorted(set(CASES) - {"throw_without_callback"}))
def test_kernel_engine_agrees_in_lockstep(runner, name):
    result = runner.check(case(name), lockstep=True)
    v, d, _ = result.candidates["kernel"]
    assert v is Verdict.AGREE, d


OOPS = """BUG: kernel NULL pointer dereference, address: 0000000000000048
#PF: supervisor read access in kernel mode
Oops: Oops: 0000 [#1] SMP NOPTI
RIP: 0010:jit_subprogs+0xa2f/0xd90"""


class FakeKmsg:
    """Stands in for /dev/kmsg: one batch of lines per read()."""

    def __init__(self, *batches):
        self.batches = list(batches)

    def read(self):
        return self.batches.pop(0) if self.batches else []

    def close(self):
        pass


@needs_kernel
def test_a_bug_line_in_kmsg_is_a_crash_saved_once(tmp_path):
    from harness.kernel.worker import KernelCrash

    eng = engines.get("kernel-native", crash_dir=tmp_path)
    try:
        # first read drains what came before the job; the second sees the oops
        eng.worker._kmsg = FakeKmsg([], OOPS.splitlines())
        out = eng.run(case("self_loop"), budget=0)
        assert [r.status for r in out.runs] == [Status.CRASHED] * 2
        assert "RIP: 0010:jit_subprogs" in out.runs[0].detail
        assert "kernel tainted" in out.runs[0].detail
        path = tmp_path / "jit-subprogs-bug-kernel-null-pointer-dereference.case"
        text = path.read_text()
        assert "RIP: 0010:jit_subprogs" in text and "program entry" in text
        # the same bug again: the first reproducer is kept as it was
        eng.worker._kmsg = FakeKmsg([], OOPS.splitlines())
        again = eng.run(case("hierarchy"), budget=0)
        assert again.runs[0].status is Status.CRASHED
        assert path.read_text() == text
        assert len(list(tmp_path.iterdir())) == 1
        # asked to stop: the crash is raised
        eng.worker.stop_on_crash = True
        eng.worker._kmsg = FakeKmsg([], OOPS.splitlines())
        with pytest.raises(KernelCrash, match="jit-subprogs"):
            eng.run(case("self_loop"), budget=0)
        eng.worker.stop_on_crash = False
        ok = eng.run(case("self_loop"), budget=0)
        assert [r.status for r in ok.runs] == [Status.OK] * 2
    finally:
        eng.close()


def warn_splat(pid: int) -> list[str]:
    """A WARN as this kernel logged it for a random system (the message line
    comes first; there is no oops)."""
    return [
        "------------[ cut here ]------------",
        "verifier bug: REG INVARIANTS VIOLATION (false_reg1): range bounds violation "
        "u64=[0x0, 0xffffffff] s64=[0x80000000, 0x7fffffff] u32=[0x1, 0x0] s32=[0x1, 0x0] "
        "var_off=(0x0, 0xffffffff)",
        f"WARNING: CPU: 0 PID: {pid} at kernel/bpf/verifier.c:2731 "
        "reg_bounds_sanity_check+0x1e0/0x280",
        "Modules linked in:",
        f"CPU: 0 UID: 0 PID: {pid} Comm: python3 Not tainted 6.18.44 #1",
        "RIP: 0010:reg_bounds_sanity_check+0x1e0/0x280",
        "---[ end trace 0000000000000000 ]---",
    ]


class WarnOnJob(FakeKmsg):
    """The kernel log of a kernel that WARNs while the worker runs a job:
    the WARN names the worker's pid (read at the job's end)."""

    def __init__(self, worker_pid):
        super().__init__()
        self.pid, self.reads = worker_pid, 0

    def read(self):
        self.reads += 1
        return warn_splat(self.pid()) if self.reads % 2 == 0 else []


@needs_kernel
def test_a_warn_in_kmsg_is_a_finding_saved_with_its_excerpt(tmp_path):
    eng = engines.get("kernel-native", crash_dir=tmp_path)
    try:
        eng.worker._kmsg = WarnOnJob(lambda: eng.worker.pid)
        out = eng.run(case("self_loop"), budget=0)
        assert [r.status for r in out.runs] == [Status.CRASHED] * 2
        assert "REG INVARIANTS VIOLATION" in out.runs[0].detail
        (saved,) = tmp_path.iterdir()
        # the RIP's function, then the first 48 characters of the message, slugged
        want = "reg-bounds-sanity-check-verifier-bug-reg-invariants-violation-false-reg1"
        assert saved.name == want + ".case"
        text = saved.read_text()
        assert "WARNING: CPU: 0 PID:" in text and "program entry" in text
        assert (saved.stat().st_mode & 0o777) == 0o666 & ~_umask()
    finally:
        eng.close()


@needs_kernel
def test_another_process_warn_is_not_ours(tmp_path):
    # the kernel log is the whole machine's: a WARN naming another task
    eng = engines.get("kernel-native", crash_dir=tmp_path)
    try:
        eng.worker._kmsg = WarnOnJob(lambda: 1)
        out = eng.run(case("self_loop"), budget=0)
        assert [r.status for r in out.runs] == [Status.OK] * 2
        assert not list(tmp_path.iterdir()) and not eng.worker.crashes
    finally:
        eng.close()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class BlindKmsg(FakeKmsg):
    """No kernel log to read (/dev/kmsg unreadable)."""

    fd = None


@needs_kernel
def test_without_a_kernel_log_a_new_warn_taint_is_the_evidence(tmp_path, monkeypatch):
    import harness.kernel.worker as worker

    eng = engines.get("kernel-native", crash_dir=tmp_path, kmsg=BlindKmsg())
    try:
        # the W bit (9) appears while the job runs
        values = iter([0, 1 << 9, 1 << 9])
        monkeypatch.setattr(worker, "tainted", lambda: next(values, 1 << 9))
        out = eng.run(case("self_loop"), budget=0)
        assert [r.status for r in out.runs] == [Status.CRASHED] * 2
        assert "tainted the kernel" in out.runs[0].detail
        # a taint already there before the job is not this case's
        monkeypatch.setattr(worker, "tainted", lambda: 1 << 9)
        again = eng.run(case("self_loop"), budget=0)
        assert [r.status for r in again.runs] == [Status.OK] * 2
    finally:
        eng.close()
