"""A tiny BPF builder for the JIT model's tests (each function returns a list
of instruction slots, so programs read as concatenations), and the check of
compiled bytes against an expected listing with relocations."""

from harness.formats import isa
from harness.formats.isa import Insn
from harness.jit.x86_64 import THIS_CPU_OFF, symbol_address
from harness.native.image import NativeSystem
from harness.system import Program


def mov(dst, imm):
    return [Insn(isa.ALU64 | isa.MOV | isa.K, dst, 0, 0, imm)]


def movr(dst, src):
    return [Insn(isa.ALU64 | isa.MOV | isa.X, dst, src)]


def alu(op, dst, imm):
    return [Insn(isa.ALU64 | op | isa.K, dst, 0, 0, imm)]


def alur(op, dst, src):
    return [Insn(isa.ALU64 | op | isa.X, dst, src)]


def ldx(size, dst, src, off):
    return [Insn(isa.LDX | isa.MEM | size, dst, src, off)]


def stx(size, dst, src, off):
    return [Insn(isa.STX | isa.MEM | size, dst, src, off)]


def ld_map(dst, index):
    return list(isa.ld_imm64(dst, index, isa.PSEUDO_MAP_FD))


def call(helper):
    return [Insn(isa.JMP | isa.CALL, 0, 0, 0, helper)]


def kfunc(n):
    return [Insn(isa.JMP | isa.CALL, 0, isa.PSEUDO_KFUNC_CALL, 0, n)]


def pcall(rel):
    return [Insn(isa.JMP | isa.CALL, 0, isa.PSEUDO_CALL, 0, rel)]


def jmp(op, dst, imm, off):
    return [Insn(isa.JMP | op | isa.K, dst, 0, off, imm)]


def exit_():
    return [Insn(isa.JMP | isa.EXIT)]


def prog(name, *parts, type="sched_cls", labels=None, cb=None):
    insns = [i for p in parts for i in p]
    return Program(name, type, insns, labels or {}, cb)


# ---- expected bytes with relocations --------------------------------------------------


def resolve(system: NativeSystem, sym: str) -> int:
    """The address a relocation names: ``func:PROG:K``, ``entry:PROG`` (tail-call
    entry), ``map:NAME``, ``privfp:K`` (frame pointer of private-stack region K),
    ``this_cpu_off`` or an external symbol, optionally ``+N``/``-N``."""
    adj = 0
    for sign in "+-":
        if sign in sym.split(":")[-1]:
            sym, _, n = sym.rpartition(sign)
            adj = int(n, 0) * (1 if sign == "+" else -1)
    kind, _, rest = sym.partition(":")
    if kind == "func":
        p, k = rest.split(":")
        value = system.progs[p].funcs[int(k)].address
    elif kind == "entry":
        value = system.progs[rest].tail_call_entry
    elif kind == "map":
        value = system.maps[rest]
    elif kind == "privfp":
        base, size = system.percpu_regions[int(rest)]
        value = base + size - 8
    elif sym == "this_cpu_off":
        value = THIS_CPU_OFF
    else:
        value = symbol_address(sym)
    return value + adj


def expect_code(system: NativeSystem, prog: str, func: int, spec: str) -> None:
    """The function's code is exactly ``spec``: hex items, where ``{rel:SYM}``
    is a rel32 to SYM and ``{abs:SYM}``/``{abs32:SYM}`` an 8/4-byte address."""
    f = system.progs[prog].funcs[func]
    code, pos = f.code, 0
    for n, line in enumerate(spec.split()):
        hexpart, _, reloc = line.partition("{")
        raw = bytes.fromhex(hexpart)
        assert code[pos : pos + len(raw)] == raw, (
            f"{prog}:{func} item {n} ({line}) at +{pos:#x}: got {code[pos : pos + 12].hex()}"
        )
        pos += len(raw)
        if reloc:
            kind, _, sym = reloc.rstrip("}").partition(":")
            value = resolve(system, sym)
            if kind == "rel":
                got = int.from_bytes(code[pos : pos + 4], "little", signed=True)
                assert f.address + pos + 4 + got == value, f"item {n}: rel32 not to {sym}"
                pos += 4
            elif kind == "abs":
                assert int.from_bytes(code[pos : pos + 8], "little") == value, f"item {n}"
                pos += 8
            else:
                assert int.from_bytes(code[pos : pos + 4], "little") == value & 0xFFFFFFFF
                pos += 4
    assert pos == len(code), f"{prog}:{func}: {len(code) - pos} extra bytes {code[pos:].hex()}"
