"""The bad-input table: malformed case files, ``.data`` files and command
lines, each with the exit status and the words its one line must carry.

Each entry is ``Bad(id, argv, status, expect, files)``: ``files`` maps a
name to its content (str or bytes) written into a fresh directory, ``{dir}``
in ``argv`` and ``expect`` is that directory, and ``expect`` is a substring of
the one line the command prints on stderr (``status`` 2), or of stdout when
the input is a finding (``status`` 1: a conformance file that fails alone).
The reproducers of issue #13's audit are marked ``#13``.
"""

from __future__ import annotations

from typing import NamedTuple


class Bad(NamedTuple):
    id: str
    argv: list[str]
    status: int
    #: substrings of the line (or of stdout)
    expect: tuple[str, ...]
    files: dict[str, str | bytes] = {}
    #: where ``expect`` is looked for: "stderr" (one line) or "stdout"
    stream: str = "stderr"


PROG = "program p raw_tp\n    r0 = 0\n    exit\n"  # 3 lines

# --------------------------------------------------------------- case files


def _case(id: str, text: str | bytes, line: int | None, words: str) -> Bad:
    """``jitdiff run`` of one case file: exit 2, FILE:LINE: and ``words``."""
    where = f"{{dir}}/c.case:{line}: " if line else "{dir}/c.case: "
    return Bad(f"case-{id}", ["run", "{dir}/c.case"], 2, (where, words), {"c.case": text})


CASES = [
    # encodings (#13: UnicodeDecodeError)
    _case("binary", bytes(range(256)), 2, "not UTF-8"),  # 0x0a ends line 1
    _case("binary-elf", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), None, "not BPF"),
    _case("elf-truncated", b"\x7fELF", None, "ELF"),
    _case(
        "elf-bpf-garbage",
        b"\x7fELF\x02\x01\x01" + bytes(11) + b"\x01\x00\xf7\x00" + bytes(40),
        None,
        "ELF",
    ),  # fmt: skip
    _case("latin1-comment", b"# caf\xe9\n" + PROG.encode(), 1, "not UTF-8"),
    _case("latin1-line4", PROG.encode() + b"# \xff\n", 4, "not UTF-8 text (byte 0xff"),
    _case("nul-byte", "program p raw_tp\n    r0 = 0\x00\n    exit\n", 2, "NUL byte"),
    _case("utf16-bom", "\ufeffprogram p raw_tp\n".encode("utf-16"), 1, "not UTF-8"),
    _case("lone-surrogate-bytes", b"# \xed\xa0\x80\n" + PROG.encode(), 1, "not UTF-8"),
    # structure
    _case("empty", "", 1, "at least one program"),
    _case("comments-only", "# nothing\n# here\n", 3, "at least one program"),
    _case("ctx-only", "ctx 00 01\n", 2, "at least one program"),
    _case("unknown-keyword", "prog p raw_tp\n", 1, "expected one of"),
    _case("indented-first", "    r0 = 0\n" + PROG, 1, "expected one of"),
    _case("program-no-insns", "program p raw_tp\n", 1, "no instructions"),
    _case("program-bad-type", "program p xdp\n    r0 = 0\n    exit\n", 1, "program type"),
    _case("program-dup", PROG + PROG, 4, "already defined"),
    _case("program-bad-option", "program p raw_tp frob=1\n    exit\n", 1, "unknown program option"),
    _case(
        "program-no-cb-label",
        "program p raw_tp exception_callback=cb\n    r0 = 0\n    exit\n",
        1,
        "no such label",
    ),  # fmt: skip
    _case("program-bad-name", "program 9p raw_tp\n    r0 = 0\n    exit\n", 1, "not a valid name"),
    # maps: the kernel's limits (EINVAL, E2BIG) and jitdiff's (#13: MemoryError, 7.8 GB)
    _case(
        "map-entries-u32max",
        "map m array max_entries=4294967295 value_size=8\n" + PROG,
        1,
        "above jitdiff's bound",
    ),  # fmt: skip
    _case(
        "map-both-u32max",
        "map m array max_entries=4294967295 value_size=4294967295\n" + PROG,
        1,
        "E2BIG",
    ),  # fmt: skip
    _case(
        "map-value-u32max", "map m array max_entries=1 value_size=4294967295\n" + PROG, 1, "E2BIG"
    ),  # fmt: skip
    _case(
        "map-value-intmax+1", "map m array max_entries=1 value_size=2147483648\n" + PROG, 1, "E2BIG"
    ),  # fmt: skip
    _case(
        "map-value-over-bound",
        "map m array max_entries=1 value_size=61441\n" + PROG,
        1,
        "jitdiff's bound of 61440",
    ),  # fmt: skip
    _case(
        "map-entries-over-bound",
        "map m array max_entries=8000 value_size=8\n" + PROG,
        1,
        "64000 bytes",
    ),  # fmt: skip
    _case(
        "prog-array-u32max",
        "map m prog_array max_entries=4294967295\n" + PROG,
        1,
        "above jitdiff's bound",
    ),  # fmt: skip
    _case("map-entries-zero", "map m array max_entries=0\n" + PROG, 1, "EINVAL"),
    _case("prog-array-zero", "map m prog_array max_entries=0\n" + PROG, 1, "EINVAL"),
    _case("map-value-zero", "map m array max_entries=1 value_size=0\n" + PROG, 1, "EINVAL"),
    _case("map-entries-2^32", "map m array max_entries=4294967296\n" + PROG, 1, "out of range"),
    _case("map-entries-negative", "map m array max_entries=-1\n" + PROG, 1, "out of range"),
    _case("map-entries-text", "map m array max_entries=lots\n" + PROG, 1, "not a number"),
    _case("map-no-entries", "map m array value_size=8\n" + PROG, 1, "missing max_entries"),
    _case("map-entries-twice", "map m array max_entries=1 max_entries=2\n" + PROG, 1, "unexpected"),
    _case(
        "prog-array-value-8",
        "map m prog_array max_entries=1 value_size=8\n" + PROG,
        1,
        "value_size is 4",
    ),  # fmt: skip
    _case("map-kind", "map m hash max_entries=1\n" + PROG, 1, "map kind"),
    _case("map-reserved-name", "map r1 array max_entries=1\n" + PROG, 1, "reserved"),
    _case(
        "map-dup",
        "map m array max_entries=1\nmap m array max_entries=1\n" + PROG,
        2,
        "already defined",
    ),  # fmt: skip
    _case(
        "maps-65",
        "".join(f"map m{i} array max_entries=1\n" for i in range(65)) + PROG,
        65,
        "MAX_USED_MAPS",
    ),  # fmt: skip
    _case(
        "slot-key-range",
        "map m array max_entries=1 value_size=1\n    1 = 00\n" + PROG,
        2,
        "out of range",
    ),  # fmt: skip
    _case(
        "slot-value-size",
        "map m array max_entries=1 value_size=2\n    0 = 00\n" + PROG,
        2,
        "value_size is 2",
    ),  # fmt: skip
    _case(
        "slot-unknown-prog",
        "map m prog_array max_entries=1\n    0 = q\n" + PROG,
        1,
        "unknown program",
    ),  # fmt: skip
    _case("slot-no-equals", "map m array max_entries=1\n    0 00\n" + PROG, 2, "KEY = VALUE"),
    _case(
        "slot-bad-hex",
        "map m array max_entries=1 value_size=1\n    0 = zz\n" + PROG,
        2,
        "hex bytes",
    ),  # fmt: skip
    _case("ctx-bad-hex", "ctx 0g\n" + PROG, 1, "hex bytes"),
    _case("ctx-twice", "ctx 00\nctx 00\n" + PROG, 2, "ctx given twice"),
    # assembly
    _case("asm-mnemonic", "program p raw_tp\n    r0 = frob r1\n    exit\n", 2, ""),
    _case("asm-r11", "program p raw_tp\n    r11 = 0\n    exit\n", 2, ""),
    _case("asm-r10-written", "program p raw_tp\n    r10 = 0\n    exit\n", 2, "r10"),
    _case("asm-imm-range", "program p raw_tp\n    r0 = 0x100000000\n    exit\n", 2, ""),
    _case(
        "asm-unknown-label", "program p raw_tp\n    goto nowhere\n    exit\n", 2, "unknown label"
    ),
    _case("asm-dup-label", "program p raw_tp\na:\na:\n    exit\n", 3, "already defined"),
    _case(
        "asm-jump-outside", "program p raw_tp\n    goto +5\n    exit\n", 2, "outside the program"
    ),
    _case(
        "asm-jump-back-outside",
        "program p raw_tp\n    goto -3\n    exit\n",
        2,
        "outside the program",
    ),  # fmt: skip
    _case(
        "asm-jump-into-ldimm64",
        "program p raw_tp\n    goto +1\n    r1 = 0x1 ll\n    exit\n",
        2,
        "ld_imm64",
    ),  # fmt: skip
    # #13: a jump from one function into another (KeyError in fixups.py)
    _case(
        "asm-jump-into-callee",
        "program p raw_tp\n    call f\n    goto f\n    r0 = 0\n    exit\n"
        "f:\n    r0 = 1\n    exit\n",
        3,
        "jump out of range from insn 1 to 4",
    ),  # fmt: skip
    _case(
        "asm-jump-from-callee",
        "program p raw_tp\nmain:\n    call f\n    exit\nf:\n    if r1 > 0 goto main\n"
        "    r0 = 1\n    exit\n",
        6,
        "jump out of range from insn 2 to 0",
    ),  # fmt: skip
    _case(
        "asm-gotol-into-callee",
        "program p raw_tp\n    call f\n    gotol f\n    exit\nf:\n    r0 = 1\n    exit\n",
        3,
        "jump out of range",
    ),  # fmt: skip
    _case(
        "asm-jump-into-exception-cb",
        "program p raw_tp exception_callback=cb\n    r0 = 0\n    if r0 == 0 goto cb\n"
        "    exit\ncb:\n    r0 = 1\n    exit\n",
        3,
        "jump out of range",
    ),  # fmt: skip
    _case(
        "asm-call-outside",
        "program p raw_tp\n    call pc+100\n    exit\n",
        2,
        "outside the program",
    ),
    _case(
        "asm-func-outside",
        "program p raw_tp\n    r2 = func[pc+100] ll\n    r0 = 0\n    exit\n",
        2,
        "outside the program",
    ),  # fmt: skip
    _case("asm-raw-short", "program p raw_tp\n    .raw b7 00 00\n    exit\n", 2, ".raw"),
    _case(
        "asm-raw-hex", "program p raw_tp\n    .raw zz zz zz zz zz zz zz zz\n    exit\n", 2, ".raw"
    ),
    _case(
        "asm-raw-opcode",
        "program p raw_tp\n    .raw ff 00 00 00 00 00 00 00\n    exit\n",
        2,
        "unknown opcode",
    ),  # fmt: skip
    _case(
        "asm-unknown-map", "program p raw_tp\n    r1 = map[nope] ll\n    exit\n", 2, "unknown map"
    ),
    # the script
    _case("run-unknown", PROG + "run q\n", 4, "unknown program"),
    _case("run-extra", PROG + "run p p\n", 4, "usage: run"),
    _case("expect-garbage", PROG + "run p\n    expect nothing\n", 5, "expect"),
    _case("expect-retval-text", PROG + "run p\n    expect retval x\n", 5, "not a number"),
    _case(
        "expect-retval-2^64",
        PROG + "run p\n    expect retval 0x10000000000000000\n",
        5,
        "out of range",
    ),  # fmt: skip
    _case("expect-retval-neg", PROG + "run p\n    expect retval -1\n", 5, "out of range"),
    _case(
        "expect-retval-twice",
        PROG + "run p\n    expect retval 0\n    expect retval 0\n",
        6,
        "twice",
    ),  # fmt: skip
    _case("expect-map-unknown", PROG + "run p\n    expect map m 0 = 00\n", 5, "unknown array map"),
    _case(
        "expect-map-size",
        "map m array max_entries=1 value_size=2\n" + PROG + "run p\n    expect map m 0 = 00\n",
        6,
        "value_size 2",
    ),  # fmt: skip
    _case(
        "expect-map-key",
        "map m array max_entries=1 value_size=1\n" + PROG + "run p\n    expect map m 3 = 00\n",
        6,
        "out of range",
    ),  # fmt: skip
    _case("update-unknown-map", PROG + "update m 0 = p\n", 4, "unknown map"),
    _case(
        "update-key-range",
        "map m prog_array max_entries=1\n" + PROG + "update m 9 = p\n",
        5,
        "out of range",
    ),  # fmt: skip
    _case(
        "update-unknown-prog",
        "map m prog_array max_entries=1\n" + PROG + "update m 0 = q\n",
        5,
        "unknown program",
    ),  # fmt: skip
    _case(
        "update-value-size",
        "map m array max_entries=1 value_size=2\n" + PROG + "update m 0 = 00\n",
        5,
        "value_size is 2",
    ),  # fmt: skip
    _case("update-usage", PROG + "update m 0 p\n", 4, "usage: update"),
    _case("delete-usage", PROG + "delete m\n", 4, "usage: delete"),
    _case(
        "delete-key-text",
        "map m prog_array max_entries=1\n" + PROG + "delete m k\n",
        5,
        "not a number",
    ),  # fmt: skip
    _case(
        "delete-indented",
        "map m prog_array max_entries=1\n" + PROG + "delete m 0\n    expect retval 0\n",
        6,
        "only run takes",
    ),  # fmt: skip
]

# ----------------------------------------------------------- .data files


GOOD_DATA = "-- asm\nmov %r0, 1\nexit\n-- result\n0x1\n"


def _data(id: str, content: str | bytes, line: int | None, words: str) -> Bad:
    """``jitdiff conformance`` of a directory holding one good file and one
    bad one: the bad one fails alone (exit 1), reported with FILE:LINE."""
    where = f"{{dir}}/bad.data:{line}: " if line else "{dir}/bad.data: FAIL "
    return Bad(f"data-{id}", ["conformance", "{dir}"], 1, (where, words),
               {"good.data": GOOD_DATA, "bad.data": content}, "stdout")  # fmt: skip


DATA = [
    _data("raw-0xzz", "-- raw\n0xzz\n-- result\n0x0\n", 2, "invalid raw slot"),  # #13
    _data("raw-overflow", "-- raw\n0x10000000000000000\n-- result\n0x0\n", 2, "64-bit"),
    _data("raw-hex", "-- raw\nb7 00 zz\n-- result\n0x0\n", 2, "invalid raw bytes"),
    _data("raw-odd", "-- raw\nb7 00 00\n-- result\n0x0\n", 2, "multiple of 8"),
    _data("binary", bytes(range(256)), 2, "not UTF-8"),  # 0x0a ends line 1  # #13
    _data("latin1", b"-- asm\nmov %r0, 1 # \xe9t\xe9\nexit\n-- result\n0x1\n", 2, "not UTF-8"),
    _data("nul", "-- asm\nmov %r0, 1\x00\nexit\n", 2, "NUL byte"),
    _data("section", "-- frob\n", 1, "unknown section"),
    _data("section-twice", "-- asm\nexit\n-- asm\nexit\n", 3, "duplicate section"),
    _data("no-program", "-- result\n0x1\n", None, "no program"),
    _data("mem-hex", "-- asm\nmov %r0, 1\nexit\n-- mem\nzz\n-- result\n0x1\n", 5, "-- mem"),
    _data("result-two", "-- asm\nmov %r0, 1\nexit\n-- result\n1 2\n", 5, "one number"),
    _data("result-text", "-- asm\nmov %r0, 1\nexit\n-- result\nx\n", 5, "invalid result"),
    _data("asm-mnemonic", "-- asm\nfrob %r0\nexit\n-- result\n0x0\n", 2, ""),
    _data("asm-jump-out", "-- asm\nja +5\nexit\n-- result\n0x0\n", 2, "outside the program"),
    _data("directory", {}, None, "cannot read: Is a directory"),  # #13
    _data("symlink-loop", "->bad.data", None, "cannot read: Too many levels"),  # #13
    _data("wrong-result", GOOD_DATA.replace("0x1\n", "0x2\n"), None, "expected 0x2"),
]

# ------------------------------------------------------------ command lines

_ENGINE_VERBS = {
    "run": ["run", "{dir}/c.case"],
    "show": ["show", "{dir}/c.case"],
    "replay": ["replay", "{dir}/c.case"],
    "fuzz": ["fuzz", "--examples", "2", "--workers", "1", "--no-save"],
    "bench": ["bench", "--cases", "1", "--rounds", "1"],
    "conformance": ["conformance", "{dir}"],
}
_SPECS = {  # #13: worker tracebacks, then exit 0
    "x86_64+nonexistent": "unknown fault",
    "x86_64@bogus": "unknown profile 'bogus'",
    "nonexistent": "unknown engine",
    "kernel+fault": "takes no +modifiers",
    "x86_64+": "empty +modifier",
}


def _cli(id: str, argv: list[str], words: str, status: int = 2) -> Bad:
    return Bad(f"cli-{id}", argv, status, (words,), {"c.case": PROG, "good.data": GOOD_DATA})


CLI = (
    [
        _cli(f"{verb}-engine-{spec}", [*argv, "--engine", spec], words)
        for verb, argv in _ENGINE_VERBS.items()
        for spec, words in _SPECS.items()
    ]
    + [
        _cli(f"{verb}-profile", [*argv, "--profile", "bogus"], "unknown profile 'bogus'")
        for verb, argv in _ENGINE_VERBS.items()
    ]
    + [
        _cli("fuzz-time-nan", ["fuzz", "--time", "nan"], "finite"),  # #13
        _cli("fuzz-time-inf", ["fuzz", "--time", "inf"], "finite"),  # #13
        _cli("fuzz-time-neg-inf", ["fuzz", "--time=-inf"], "finite"),
        _cli("fuzz-time-zero", ["fuzz", "--time", "0"], "above zero"),
        _cli("fuzz-time-text", ["fuzz", "--time", "soon"], "not a number"),
        _cli("fuzz-examples-zero", ["fuzz", "--examples", "0"], "above zero"),
        _cli("fuzz-examples-float", ["fuzz", "--examples", "1.5"], "not a number"),
        _cli("fuzz-workers-neg", ["fuzz", "--workers", "-2"], "above zero"),
        _cli("fuzz-seed-text", ["fuzz", "--seed", "x"], "invalid int value"),
        _cli(
            "fuzz-corpus-no-save", ["fuzz", "--corpus", "{dir}/x", "--no-save"], "--no-save"
        ),  # #13
        _cli("show-width-zero", ["show", "{dir}/c.case", "--width", "0"], "at least 40"),  # #13
        _cli("show-width-neg", ["show", "{dir}/c.case", "--width", "-5"], "at least 40"),  # #13
        _cli("show-width-nan", ["show", "{dir}/c.case", "--width", "nan"], "not a number"),
        _cli("bench-cases-zero", ["bench", "--cases", "0"], "above zero"),
        _cli("bench-rounds-inf", ["bench", "--rounds", "inf"], "not a number"),
        _cli("mutants-time-nan", ["mutants", "--time", "nan"], "finite"),
        _cli("mutants-workers-zero", ["mutants", "--workers", "0"], "above zero"),
        _cli("mutants-only-bogus", ["mutants", "--only", "bogus", "--time", "1"], "unknown mutant"),
        _cli("run-missing", ["run", "{dir}/missing.case"], "{dir}/missing.case: No such file"),
        _cli("run-directory", ["run", "{dir}"], "{dir}: Is a directory"),
        _cli("show-missing", ["show", "{dir}/missing.case"], "No such file"),
        _cli("replay-empty", ["replay", "{dir}/empty"], "no case files"),
        _cli("conformance-missing", ["conformance", "{dir}/missing"], "no such directory"),
        _cli("conformance-file", ["conformance", "{dir}/c.case"], "no such directory"),
        _cli("conformance-no-data", ["conformance", "{dir}/empty"], "no .data files"),  # #13
        _cli(
            "conformance-parent-of-tests", ["conformance", "{dir}/suite"], "{dir}/suite/tests"
        ),  # #13
        _cli("no-verb", [], "required"),
        _cli("bad-verb", ["frob"], "invalid choice"),
        _cli("run-no-case", ["run"], "required"),
        _cli("unknown-option", ["run", "{dir}/c.case", "--frob"], "unrecognized arguments"),
    ]
)

TABLE = CASES + DATA + CLI
