"""harness.formats.ubpf: the bpf_conformance .data files, positive and negative."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import AsmError
from harness.formats import isa, ubpf
from harness.formats.isa import Insn

# The suite is shared test data next to the repository, never copied into it.
CONFORMANCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance"
needs_suite = pytest.mark.skipif(
    not CONFORMANCE.is_dir(), reason=f"bpf_conformance data not found at {CONFORMANCE}"
)


def _files(sub: str) -> list[Path]:
    return sorted((CONFORMANCE / sub).glob("*.data")) if CONFORMANCE.is_dir() else []


@needs_suite
@pytest.mark.parametrize("path", _files("tests"), ids=lambda p: p.name)
def test_every_positive_file_loads(path):
    t = ubpf.load(path)
    assert t.error is None and t.result is not None
    if t.skip is None:
        assert t.insns, path
        isa.validate(t.insns)


@needs_suite
def test_skips_are_the_known_non_linux_ones():
    skipped = {p.name: ubpf.load(p).skip for p in _files("tests") if ubpf.load(p).skip}
    assert set(skipped) == {"callx.data", "call_unwind_fail.data"}
    assert "callx" in skipped["callx.data"]
    assert ubpf.load(CONFORMANCE / "tests" / "callx.data").insns is None


# What each negative file tests, read from its `-- error` text and comments:
# the line the error must name (None for file-level problems).
NEGATIVE_LINES = {
    "empty.data": None,  # no program at all
    "empty_instructions.data": None,  # sections but no instructions
    "error.data": 4,  # `or %r0, %r10` reads r0 before writing it ("Invalid")
    "invalid_imm32_dec_range.data": 5,
    "invalid_imm32_hex_range.data": 5,
    "invalid_label.data": 4,
    "invalid_lock.data": 4,
    "invalid_lock2.data": 4,
    "invalid_mnemonic.data": 5,
    "invalid_offset.data": 4,
    "invalid_offset_range.data": 5,
    "invalid_operand_count.data": 4,
    "invalid_register.data": 4,
    "invalid_unknown_directive.data": 4,
}


@needs_suite
@pytest.mark.parametrize(
    "path",
    [p for p in _files("negative") if p.name != "incorrect_return_value_high_bits.data"],
    ids=lambda p: p.name,
)
def test_every_negative_file_is_rejected(path):
    with pytest.raises(AsmError) as e:
        ubpf.load(path)
    assert e.value.file == str(path)
    if path.name.startswith("unused-"):
        # raw encodings with a reserved field set: the line of the bad slot
        assert e.value.line == 5
    else:
        assert e.value.line == NEGATIVE_LINES[path.name]
    text = path.read_text()
    if "-- error\nInvalid number of operands for lock" in text:
        assert "Invalid number of operands for lock" in e.value.message
    if "-- error\nInvalid register" in text and "directive" not in path.name:
        assert "Invalid register" in e.value.message


@needs_suite
def test_the_wrong_result_negative_loads_but_its_result_is_wrong():
    # This file's program is fine; its expected value is not. A runner must
    # report a mismatch, which we show by computing r0 by hand: ldxdw from
    # mem + 2, little-endian.
    t = ubpf.load(CONFORMANCE / "negative" / "incorrect_return_value_high_bits.data")
    actual = int.from_bytes(t.mem[2:10], "little")
    assert actual == 0x8877665544332211
    assert t.result != actual


@needs_suite
def test_sample_semantics_fields():
    t = ubpf.load(CONFORMANCE / "tests" / "mem-len.data")
    assert t.mem == bytes.fromhex("00000001 00000002") and t.result == 8
    lddw = ubpf.load(CONFORMANCE / "tests" / "lddw.data")  # asm and raw agree
    assert lddw.insns[:2] == list(isa.ld_imm64(0, 0x1122334455667788))


def test_mnemonics():
    src = """
    mov %r0, 1
    mov32 %r1, -1
    sdiv32 %r1, 3
    smod %r1, %r2
    neg %r3
    le16 %r0
    be64 %r0
    swap32 %r0
    movsx832 %r2, %r1
    movsx3264 %r0, %r9
    ldxsh %r0, [%r10-2]
    ldxdw %r0, [%r1+8]
    stxw [%r10-4], %r1
    stdw [%r10-16], 0xab
    lddw %r0, 0x123456789
    jsgt32 %r1, 5, +0
    jset %r1, %r2, done
    lock add [%r1], %r2
    lock fetch xor32 [%r10-4], %r3
    lock xchg [%r10-8], %r1
    lock cmpxchg32 [%r10-8], %r1
    call local done
    ja32 done
done:
    exit
    """
    insns, lines, skip = ubpf.assemble(src)
    assert skip is None
    want = [
        Insn(0xB7, 0, 0, 0, 1), Insn(0xB4, 1, 0, 0, -1), Insn(0x34, 1, 0, 1, 3),
        Insn(0x9F, 1, 2, 1), Insn(0x87, 3), Insn(0xD4, 0, imm=16), Insn(0xDC, 0, imm=64),
        Insn(0xD7, 0, imm=32), Insn(0xBC, 2, 1, 8), Insn(0xBF, 0, 9, 32), Insn(0x89, 0, 10, -2),
        Insn(0x79, 0, 1, 8), Insn(0x63, 10, 1, -4), Insn(0x7A, 10, 0, -16, 0xAB),
        *isa.ld_imm64(0, 0x123456789), Insn(0x66, 1, 0, 0, 5), Insn(0x4D, 1, 2, 6),
        Insn(0xDB, 1, 2, 0, isa.ADD), Insn(0xC3, 10, 3, -4, isa.XOR | isa.FETCH),
        Insn(0xDB, 10, 1, -8, isa.XCHG), Insn(0xC3, 10, 1, -8, isa.CMPXCHG),
        Insn(0x85, 0, 1, 0, 1), Insn(0x06, imm=0), Insn(0x95),
    ]  # fmt: skip
    assert insns == want
    assert lines[0] == 2 and lines[-1] == 26  # 1-based; the text starts with a newline


def test_first_exit_is_a_label_and_hex_imm_wraps():
    insns, _, _ = ubpf.assemble("jne %r1, 0x80000000, exit\nmov %r0, 0\nexit")
    assert insns[0] == Insn(0x55, 1, 0, 1, -(1 << 31))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("-- asm\nmov %r0, 1\nmov32 %r0, 2147483648\nexit\n", "out of 32-bit range"),
        ("-- asm\nmov %r0, 1\nldxb %r0, [%r1+0x10000]\nexit\n", "out of 16-bit range"),
        ("-- asm\nmov %r0, 1\nfoo %r0\nexit\n", "Invalid mnemonic"),
        ("-- asm\nmov %r0, 1\nja nowhere\nexit\n", "Invalid label"),
    ],
)
def test_errors_name_file_and_line(text, needle):
    with pytest.raises(AsmError) as e:
        ubpf.parse(text, file="t.data")
    assert (e.value.file, e.value.line) == ("t.data", 3)
    assert needle in e.value.message


def test_uninitialized_reads_follow_control_flow():
    ok = "-- asm\njeq %r1, 0, +1\nmov %r0, 1\nmov %r0, 2\nexit\n"
    assert ubpf.parse(ok).insns
    bad = "-- asm\njeq %r1, 0, +1\nmov %r0, 1\nexit\n"
    with pytest.raises(AsmError) as e:
        ubpf.parse(bad)
    assert e.value.line == 4 and "r0" in e.value.message
    after_call = "-- asm\nmov %r0, 0\ncall local f\nmov %r0, %r1\nexit\nf:\nmov %r0, 1\nexit\n"
    with pytest.raises(AsmError, match="r1 is read"):
        ubpf.parse(after_call)
