"""The host kernel's real JIT images, replayed under Unicorn (``harness.native.emu``).

The worker (``harness.kernel.worker``) loads the case, snapshots the live
images after the initial prog-array fill and again after every prog-array
step of the script (so the kernel's own poke-site patches are captured), and
closes everything. This module turns the snapshot into a ``NativeSystem``:

* every function at its real ksym address with its real bytes; the BPF pc ->
  address table from jited line info, with two fixes: a function's first
  entry is its start (the prologue), so it is moved past the prologue (parsed
  below), and an instruction the verifier removed as dead gets the next live
  address (and is a ``ja +0`` in the copy of the case the executor sees, so a
  dead call plants no hook);
* maps at their real addresses (found by the loader from the JIT's movabs);
  fake ``struct bpf_prog`` objects at addresses chosen in a free region;
* ``symbols``: each external call/jmp target, named through kallsyms by
  address and mapped to the executor's vocabulary by the kernel function's
  name (``KERNEL_FUNCS``; the verifier turns array-map helpers into direct
  calls of ``array_map_*``, and ``bpf_get_prandom_u32`` is ``bpf_user_rnd_u32``);
  the return thunk is whatever every image's final ``jmp`` targets; a target
  nobody models makes the case UNSUPPORTED with its name;
* per-cpu data (inlined ``bpf_get_smp_processor_id``, private stacks): the
  address of ``this_cpu_off`` is the displacement of the code's
  ``add reg, gs:[...]`` (kallsyms has no data symbols here) and each per-cpu
  address the code loads is mapped (zeroed each run, i.e. CPU 0);
* ``layout`` from BTF, with ``tail_call_offset`` discovered from a main
  prologue that has ``xor rax, rax``: the offset just after
  ``push rbp; mov rbp, rsp``.

Between script steps the executor's ``repatch`` hook writes the byte
differences between consecutive snapshots. The same oracles judge the result
as for the x86-64 model. ``mutate`` (an option) edits the built system before
it runs: the tests use it to break a real image on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from harness.engines import Engine
from harness.errors import JitdiffError
from harness.formats import isa
from harness.formats.isa import Insn
from harness.kernel import bpf
from harness.kernel.loader import UNKNOWN_ADDRESS, SystemImage
from harness.kernel.worker import Answer, Job, Worker, failed_runs
from harness.native.image import NativeFunc, NativeProg, NativeSystem
from harness.outcome import CaseOutcome, RunOutcome, Status
from harness.reference.helpers import HELPER_IDS, KFUNC_IDS, TAIL_CALL
from harness.reference.profile import LINUX, Profile
from harness.system import Case, MapDef, Program, Step

__all__ = [
    "KernelEngine",
    "KERNEL_FUNCS",
    "build_native",
    "make_repatch",
    "prologue",
    "discover_tail_call_offset",
    "NotReplayable",
]

#: kernel function (as kallsyms names it) -> the executor's symbol. The names
#: are stable kernel API; the addresses, and which of several aliases the
#: JIT calls, are found at run time.
KERNEL_FUNCS: dict[str, str] = {
    "bpf_map_lookup_elem": "helper:1",
    "array_map_lookup_elem": "helper:1",
    "bpf_map_update_elem": "helper:2",
    "array_map_update_elem": "helper:2",
    "bpf_map_delete_elem": "helper:3",
    "array_map_delete_elem": "helper:3",
    "bpf_ktime_get_ns": f"helper:{HELPER_IDS['bpf_ktime_get_ns']}",
    "bpf_user_rnd_u32": f"helper:{HELPER_IDS['bpf_get_prandom_u32']}",
    "bpf_get_smp_processor_id": f"helper:{HELPER_IDS['bpf_get_smp_processor_id']}",
    **{name: f"kfunc:{n}" for name, n in KFUNC_IDS.items()},
}
_THUNK = re.compile(r"(?:__pi_)?__x86_indirect_thunk_(r\w+)$")

#: fake ``struct bpf_prog`` objects: after the executor's own area (the
#: vmalloc range start), moved on if a real object of the system is there
PROG_OBJECT_BASE = 0xFFFF_C900_0020_0000
PROG_OBJECT_STRIDE = 0x1000
#: a private stack's extent is not in the image: map the largest frame
PRIVATE_STACK_SPAN = 512 + 16


class NotReplayable(JitdiffError):
    """Something the replay needs could not be discovered from the images."""


# --- reading the images ------------------------------------------------------


def _cs():
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    if not hasattr(_cs, "md"):
        _cs.md = Cs(CS_ARCH_X86, CS_MODE_64)
    return _cs.md


def prologue(code: bytes, address: int, limit: int | None = None) -> tuple[int, int, bool]:
    """(length of the prologue in bytes, ``sub rsp`` amount, private stack?)
    for a 6.18 x86-64 image: nops/endbr, ``xor rax,rax``, ``push rbp; mov
    rbp,rsp``, ``sub rsp``, the tail-call counter set-up, callee-saved pushes,
    the private frame pointer, or an exception callback's stack switch and
    pops. Stops at the first other instruction (or at ``limit`` bytes)."""
    end, depth, private, framed, tcc, cb = 0, 0, False, False, False, False
    for addr, size, mnem, ops in _cs().disasm_lite(code[:limit] if limit else code, address):
        off = addr - address
        ok = False
        if mnem in ("nop", "endbr64") and not framed:
            ok = True
        elif mnem == "xor" and ops == "rax, rax" and not framed:
            ok = True
        elif mnem == "push" and ops == "rbp" and not framed:
            ok = framed = True
        elif mnem == "mov" and ops == "rbp, rsp" and framed and off == end:
            ok = True
        elif mnem == "sub" and ops.startswith("rsp, ") and framed and not depth:
            depth, ok = int(ops[5:], 0), True
        elif mnem == "cmp" and ops.startswith("rax, ") and framed:
            ok = tcc = True
        elif tcc and (mnem in ("ja", "jmp") or (mnem == "mov" and ops == "rax, rsp")):
            ok = True
        elif mnem == "push" and ops in ("rax", "rbx", "r12", "r13", "r14", "r15") and framed:
            ok = True
        elif mnem == "movabs" and ops.startswith("r9, ") and framed:
            ok = private = True
        elif mnem == "add" and ops.startswith("r9, qword ptr gs:") and private:
            ok = True
        elif mnem == "mov" and ops in ("rsp, rsi", "rbp, rdx") and not framed:
            ok = cb = True
        elif mnem == "pop" and cb and ops in ("rbx", "r12", "r13", "r14", "r15"):
            ok = True
        elif mnem == "mov" and ops == "rsp, rbp" and cb:
            ok, cb = True, False
        if not ok:
            break
        end = off + size
    return end, depth, private


def discover_tail_call_offset(image: SystemImage) -> int | None:
    """The offset just after ``push rbp; mov rbp, rsp`` in a main whose
    prologue zeroes rax (the tail-call counter): where tail calls enter."""
    for pi in image.progs.values():
        code = pi.funcs[0].code
        for addr, size, mnem, ops in _cs().disasm_lite(code[:32], 0):
            if mnem == "xor" and ops == "rax, rax":
                at = code.find(b"\x55\x48\x89\xe5", addr + size)
                if 0 <= at < 32:
                    return at + 4
            if mnem == "push":
                break
    return None


def _gs_loads(code: bytes, address: int) -> list[tuple[int, int, str]]:
    """(this_cpu_off, per-cpu address loaded just before, register) for every
    ``mov/movabs reg, imm; add reg, qword ptr gs:[disp]`` pair."""
    out, last = [], None
    for _addr, _size, mnem, ops in _cs().disasm_lite(code, address):
        if mnem == "add" and "gs:[" in ops and last is not None:
            reg = ops.split(",", 1)[0]
            disp = int(ops.rsplit("[", 1)[1].rstrip("]"), 0)
            if last[0] == reg:
                out.append((disp, last[1], reg))
        last = None
        if mnem in ("mov", "movabs"):
            reg, _, imm = ops.partition(", ")
            if re.fullmatch(r"-?0x[0-9a-f]+|\d+", imm):
                last = (reg, int(imm, 0) & (2**64 - 1))
    return out


def _symbol(name: str, address: int, image: SystemImage) -> str | None:
    if address == image.return_thunk:
        return "return_thunk"
    if "+" in name:
        return None
    m = _THUNK.match(name)
    if m:
        return f"thunk:{m.group(1)}"
    return KERNEL_FUNCS.get(name)


#: where stand-in code goes: above the module area's images, below the top page
_STANDIN_BASE = 0xFFFF_FFFF_C0F0_0000


def _default_callback(start_pc: int, return_thunk: int, taken: list[int]) -> NativeFunc:
    """The kernel's hidden default exception callback, as its JIT emits it for
    ``r0 = r1; exit``: the callback prologue (restore the boundary's rsp, rbp
    and all callee-saved registers; listings: exception callback), the body,
    the epilogue."""
    address = _STANDIN_BASE + 0x100 * len(taken)
    taken.append(address)
    head = bytes.fromhex(
        "0f1f440000"
        "0f1f00"  # nop5 (fentry), nop3
        "4889f4"
        "4889d5"  # mov rsp, rsi; mov rbp, rdx
        "415f"
        "415e"
        "415d"
        "5b"
        "415c"  # pop r15, r14, r13, rbx, r12
        "4889ec"  # mov rsp, rbp
    )
    body = bytes.fromhex("4889f8")  # r0 = r1: mov rax, rdi
    leave = address + len(head) + len(body)
    if return_thunk:
        ret = b"\xe9" + ((return_thunk - (leave + 6)) & 0xFFFFFFFF).to_bytes(4, "little")
    else:  # no image returns (every path throws): the thunk is a plain ret
        ret = b"\xc3"
    code = head + body + b"\xc9" + ret
    return NativeFunc(
        "exception_cb", start_pc, address, code, [address + len(head), leave], 0, False, leave
    )


def _is_call(insn: Insn) -> bool:
    return insn.opcode == isa.JMP | isa.CALL


def _dead_to_nop(prog: Program, dead: set[int]) -> Program:
    if not dead:
        return prog
    insns = list(prog.insns)
    for pc in dead:
        insns[pc] = Insn(isa.JMP | isa.JA, 0, 0, 0, 0)
    return replace(prog, insns=insns)


def build_native(
    case: Case, image: SystemImage, tail_call_offset: int | None
) -> tuple[NativeSystem, Case]:
    """The ``NativeSystem`` of a snapshot, and the case as the executor must
    see it (dead instructions neutralised). Raises ``NotReplayable``."""
    layout = replace(image.layout, tail_call_offset=tail_call_offset or 0)
    symbols: dict[int, str] = {}
    unknown = []
    for addr, name in image.symbols.items():
        sym = _symbol(name, addr, image)
        if sym is None:
            unknown.append(name)
        else:
            symbols[addr] = sym
    if image.return_thunk:
        symbols[image.return_thunk] = "return_thunk"
    if unknown:
        raise NotReplayable(
            f"unmodelled call target(s) in the kernel's image: {', '.join(sorted(set(unknown)))}"
        )
    this_cpu_off = 0
    percpu: list[tuple[int, int]] = []
    progs: dict[str, NativeProg] = {}
    programs = dict(case.programs)
    taken_code: list[int] = []  # stand-in functions placed so far
    for pname, pi in image.progs.items():
        prog = case.programs[pname]
        funcs = []
        dead: set[int] = set()
        for f in pi.funcs:
            ia = list(f.insn_addrs)
            nxt = f.address + len(f.code)  # never executed: past the image's last byte
            for d in range(len(ia) - 1, -1, -1):
                if ia[d] is None:
                    ia[d] = nxt
                    dead.add(f.start_pc + d)
                elif ia[d] == UNKNOWN_ADDRESS:
                    pc = f.start_pc + d
                    if _is_call(prog.insns[pc]) or (pc and _is_call(prog.insns[pc - 1])):
                        raise NotReplayable(
                            f"{pname}: the kernel's line info gives no address for pc {pc}, "
                            "a call or return site (hidden-subprogram records, "
                            "docs/kernel-findings.md)"
                        )
                    ia[d] = nxt  # only lockstep steps are placed there
                else:
                    nxt = ia[d]
            # the first line record names the function start; the first
            # instruction's code (and an ld_imm64's second slot) begins after
            # the prologue, which must end before the second instruction
            later = [a for a in ia if a > f.address]
            limit = min(later) - f.address if later else None
            plen, depth, private = prologue(f.code, f.address, limit)
            ia = [f.address + plen if a == f.address else a for a in ia]
            for disp, value, reg in _gs_loads(f.code, f.address):
                this_cpu_off = disp
                if reg == "r9" and private:
                    percpu.append((value - PRIVATE_STACK_SPAN, PRIVATE_STACK_SPAN + 16))
                else:
                    percpu.append((value, 8))
            funcs.append(NativeFunc(f.name, f.start_pc, f.address, f.code, ia, depth, private))
        throws = any(
            i.opcode == isa.JMP | isa.CALL and i.src == isa.PSEUDO_KFUNC_CALL for i in pi.xlated
        )
        cb = pi.exception_callback
        if throws and cb is None:
            # 6.18 appends a hidden default callback (r0 = r1; exit) and JITs
            # it, but reports it in neither jited_ksyms nor kallsyms: stand in
            # the bytes the kernel emits for it (the callback prologue of the
            # listings, then the body), jumping to the kernel's return thunk
            funcs.append(_default_callback(len(prog.insns), image.return_thunk, taken_code))
            cb = len(funcs) - 1
        # offset None: no tail calls anywhere; point the entry past the image,
        # where the executor never sees it run
        entry = funcs[0].address + (
            tail_call_offset if tail_call_offset is not None else len(funcs[0].code)
        )
        progs[pname] = NativeProg(
            pname,
            funcs,
            entry,
            exception_callback=cb,
            exception_boundary=cb is not None,
        )
        programs[pname] = _dead_to_nop(prog, dead)
    # fake prog objects where nothing of the system lives
    taken = [(f.address, f.address + len(f.code)) for p in progs.values() for f in p.funcs]
    for name, addr in image.maps.items():
        m = case.maps[name]
        taken.append((addr, addr + layout.array_ptrs + 8 * m.max_entries * max(m.value_size, 8)))
    taken += [(a, a + s) for a, s in percpu]
    base = PROG_OBJECT_BASE
    span = PROG_OBJECT_STRIDE * max(len(progs), 1)
    while any(lo < base + span and base < hi for lo, hi in taken):
        base += 0x10_0000
    for i, p in enumerate(progs.values()):
        p.prog_object = base + i * PROG_OBJECT_STRIDE
    native = NativeSystem(
        arch="x86_64",
        progs=progs,
        maps=dict(image.maps),
        symbols=symbols,
        layout=layout,
        this_cpu_off=this_cpu_off,
        percpu_regions=sorted(set(percpu)),
    )
    return native, replace(case, programs=programs)


def _diff(old: bytes, new: bytes, address: int) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(new):
        if old[i] == new[i]:
            i += 1
            continue
        j = i
        while j < len(new) and old[j] != new[j]:
            j += 1
        out.append((address + i, new[i:j]))
        i = j
    return out


def make_repatch(case: Case, native: NativeSystem, answer: Answer) -> Callable:
    """The executor's ``repatch(map, key, old, new)``: nothing for the
    initial fill (the images already show it), then for each prog-array
    step the bytes that changed between its snapshot and the previous one."""
    steps = case.script()
    prev = {(p, k): f.code for p, np_ in native.progs.items() for k, f in enumerate(np_.funcs)}
    addr = {(p, k): f.address for p, np_ in native.progs.items() for k, f in enumerate(np_.funcs)}
    diffs: list[tuple[Step, list[tuple[int, bytes]]]] = []
    for snap in answer.snapshots:
        step = steps[snap.step]
        patches = []
        for key, code in snap.code.items():
            if key in prev and len(code) == len(prev[key]):
                patches += _diff(prev[key], code, addr[key])
            prev[key] = code
        m: MapDef = case.maps[step.map]
        if 0 <= step.key < m.max_entries:  # the executor ignores out-of-range slots
            diffs.append((step, patches))
    initial = sum(
        1
        for m in case.maps.values()
        if m.kind == "prog_array"
        for k, v in m.init.items()
        if isinstance(v, str) and 0 <= k < m.max_entries
    )
    calls = [0]

    def repatch(mname: str, key: int, old: str | None, new: str | None):
        n = calls[0]
        calls[0] += 1
        if n < initial:
            return []
        if n - initial >= len(diffs):
            raise JitdiffError(f"repatch: no snapshot for {mname}[{key}] (call {n})")
        step, patches = diffs[n - initial]
        if (step.map, step.key) != (mname, key):
            raise JitdiffError(f"repatch: expected {step.map}[{step.key}], got {mname}[{key}]")
        return patches

    return repatch


# --- the engine ----------------------------------------------------------------


def _has_tail_calls(case: Case) -> bool:
    return any(
        i.opcode == isa.JMP | isa.CALL and i.src == 0 and i.imm == TAIL_CALL
        for p in case.programs.values()
        for i in p.insns
    )


class KernelEngine(Engine):
    """Options: as ``kernel-native`` (``cpu``, ``allow_known_crashes``,
    ``crash_dir``, ``stop_on_crash``, ``timeout``, ``kmsg``), plus ``mutate``: a
    callable given the built ``NativeSystem`` before each replay."""

    name = "kernel"
    #: discovered once per process (a property of the running kernel's JIT)
    _tail_call_offset: int | None = None

    def __init__(self, profile: Profile = LINUX, **options):
        super().__init__(profile, **options)
        self.worker = Worker.from_options(options)
        self._executor = None
        self.last_native: NativeSystem | None = None

    @classmethod
    def unavailable(cls) -> str | None:
        why = bpf.available()
        if why:
            return why
        try:
            import capstone  # noqa: F401
            import unicorn  # noqa: F401

            import harness.native.emu  # noqa: F401
        except ImportError as e:
            return f"replaying images needs {e.name}"
        return None

    @property
    def executor(self):
        if self._executor is None:
            from harness.native.emu import Executor

            self._executor = Executor()
        return self._executor

    def snapshot(self, case: Case) -> Answer:
        return self.worker.submit(
            Job(
                case,
                native=False,
                images=True,
                cpu=self.options.get("cpu", 0),
                allow_known_crashes=self.options.get("allow_known_crashes", False),
            )
        )

    def _offset(self, image: SystemImage, case: Case) -> int | None:
        found = discover_tail_call_offset(image)
        if found is not None:
            KernelEngine._tail_call_offset = found
            return found
        if KernelEngine._tail_call_offset is None:
            if _has_tail_calls(case):
                raise NotReplayable("no main prologue zeroes rax: cannot find the tail-call entry")
            return None  # no tail calls: the entry offset is never used
        return KernelEngine._tail_call_offset

    def prepare(self, case: Case) -> tuple[Answer, NativeSystem | None, Case | None, str]:
        """Snapshot and build: (answer, system, case for the executor, why not)."""
        ans = self.snapshot(case)
        if ans.status != "ok":
            return ans, None, None, ans.detail
        try:
            off = self._offset(ans.image, case)
            native, ecase = build_native(case, ans.image, off)
        except NotReplayable as e:
            return ans, None, None, str(e)
        return ans, native, ecase, ""

    def run(self, case: Case, *, budget: int = 1_000_000, lockstep: bool = False) -> CaseOutcome:
        ans, native, ecase, why = self.prepare(case)
        if ans.status != "ok":
            return CaseOutcome(self.name, failed_runs(case, ans))
        if native is None:
            n = sum(1 for s in case.script() if s.kind == "run")
            return CaseOutcome(self.name, [RunOutcome(Status.UNSUPPORTED, detail=why)] * n)
        mutate = self.options.get("mutate")
        if mutate is not None:
            mutate(native)
        self.last_native = native
        from harness.native.emu import LayoutError

        try:
            runs = self.executor.run_case(
                ecase,
                native,
                profile=self.profile,
                budget=budget,
                repatch=make_repatch(case, native, ans),
                lockstep=lockstep,
            )
        except LayoutError as e:
            n = sum(1 for s in case.script() if s.kind == "run")
            return CaseOutcome(self.name, [RunOutcome(Status.UNSUPPORTED, detail=str(e))] * n)
        return CaseOutcome(self.name, runs)

    def listing(self, case: Case) -> str:
        _, native, _, why = self.prepare(case)
        if native is None:
            return f"(no listing: {why})"
        from harness.jit.x86_64 import listing

        # the original case: instructions the verifier removed print after
        # the code of their function (their address is past its end)
        return listing(native, case)

    def close(self) -> None:
        self.worker.close()
