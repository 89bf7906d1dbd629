"""Programs the reference interpreter refuses as INVALID, each with what the
Linux verifier says of it: the unit tests check the interpreter against this
table, and tests/kernel checks the table against the host's verifier, so the
interpreter's refusals are judged by the kernel rather than by themselves.

``rejects`` is the verifier message a privileged load fails with (the
interpreter names the same), or None when a privileged load accepts the
program but its result is made of an address: each engine lays memory out
differently, so there is no value to compare and the interpreter refuses it
too (its message then says so)."""

from __future__ import annotations

from typing import NamedTuple


class Shape(NamedTuple):
    name: str
    body: str  # the program's instructions
    rejects: str | None  # the verifier's message, or None: accepted, layout-dependent
    pc: int  # where the interpreter stops
    maps: str = ""


SHAPES = [
    Shape("div_imm_zero", "r2 = 5\nr2 /= 0\nr0 = r2\nexit", "div by zero", 1),
    Shape("mod_imm_zero", "r2 = 5\nr2 %= 0\nr0 = r2\nexit", "div by zero", 1),
    Shape("mod32_imm_zero", "w2 = 5\nw2 %= 0\nr0 = r2\nexit", "div by zero", 1),
    Shape("lsh_64", "r2 = 5\nr2 <<= 64\nr0 = r2\nexit", "invalid shift 64", 1),
    Shape("lsh_minus_1", "r2 = 5\nr2 <<= -1\nr0 = r2\nexit", "invalid shift -1", 1),
    Shape("rsh32_32", "w2 = 5\nw2 >>= 32\nr0 = r2\nexit", "invalid shift 32", 1),
    Shape("arsh_100", "r2 = 5\nr2 s>>= 100\nr0 = r2\nexit", "invalid shift 100", 1),
    Shape(
        "alu32_on_ptr", "r2 = r1\nw2 += 8\nr0 = 0\nexit", "32-bit pointer arithmetic prohibited", 1
    ),
    Shape(
        "alu32_scalar_plus_ptr",
        "r2 = 1\nw2 += w1\nr0 = 0\nexit",
        "32-bit pointer arithmetic prohibited",
        1,
    ),
    Shape(
        "mul_ptr",
        "r2 = r1\nr2 *= 2\nr0 = 0\nexit",
        "pointer arithmetic with *= operator prohibited",
        1,
    ),
    Shape(
        "div_ptr",
        "r2 = r10\nr2 /= 3\nr0 = 0\nexit",
        "pointer arithmetic with /= operator prohibited",
        1,
    ),
    Shape(
        "lsh_ptr",
        "r2 = r1\nr2 <<= 1\nr0 = 0\nexit",
        "pointer arithmetic with <<= operator prohibited",
        1,
    ),
    Shape(
        "and_ptr", "r2 = r1\nr2 &= 2\nr0 = 0\nexit", "bitwise operator &= on pointer prohibited", 1
    ),
    Shape(
        "xor_ptr", "r2 = r10\nr2 ^= 8\nr0 = 0\nexit", "bitwise operator ^= on pointer prohibited", 1
    ),
    Shape("ptr_plus_ptr", "r2 = r1\nr2 += r1\nr0 = 0\nexit", "pointer += pointer prohibited", 1),
    Shape(
        "scalar_minus_ptr",
        "r2 = 5\nr2 -= r1\nr0 = 0\nexit",
        "tried to subtract pointer from scalar",
        1,
    ),
    Shape(
        "fp_minus_imm",
        "r2 = r10\nr2 -= 8\nr0 = 0\nexit",
        "subtraction from stack pointer prohibited",
        1,
    ),
    Shape(
        "map_ptr_plus_8",
        "r1 = map[m] ll\nr1 += 8\nr0 = 0\nexit",
        "pointer arithmetic on map_ptr prohibited",
        2,
        maps="map m array max_entries=1\n",
    ),
    # accepted by a privileged load, but the value is an address
    Shape("return_ctx", "r0 = r1\nexit", None, 1),
    Shape("return_fp", "r0 = r10\nr0 += -16\nexit", None, 2),
    Shape(
        "subprog_returns_ctx_plus_8", "call f\nr0 = 0\nexit\nf:\nr1 += 8\nr0 = r1\nexit", None, 5
    ),
    Shape("partial_copy", "w0 = w1\nexit", None, 0),
    Shape("movsx_ptr", "r2 = (s32)r1\nr0 = 0\nexit", None, 0),
    Shape("neg_ptr", "r0 = r1\nr0 = -r0\nexit", None, 1),
    Shape("bswap_ptr", "r2 = r1\nr2 = be16 r2\nr0 = 0\nexit", None, 1),
    Shape("fp_minus_ctx", "r2 = r10\nr2 -= r1\nr0 = r2\nexit", None, 1),
    Shape("sub32_ptrs", "r2 = r1\nw2 -= w1\nr0 = 0\nexit", None, 1),
]


def case_text(shape: Shape, prog_type: str = "raw_tp") -> str:
    body = "\n".join(ln if ln.endswith(":") else "    " + ln for ln in shape.body.split("\n"))
    return f"{shape.maps}program p {prog_type}\n{body}\n"
