"""A tiny BPF builder for the JIT model's tests: each function returns a list
of instruction slots, so programs read as concatenations."""

from harness import isa
from harness.isa import Insn
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
