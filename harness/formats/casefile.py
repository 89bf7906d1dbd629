"""The case file: one ``harness.system.Case`` as text a JIT developer writes by
hand, reads in a bug report and commits to ``corpus/``.

The format is documented in ``docs/case-format.md``. In short: comment lines
at the top, then ``map`` blocks, an optional ``ctx``, ``program`` blocks in
kernel assembly (``harness.formats.asm``), and a script of ``run`` / ``update`` /
``delete`` steps with indented ``expect`` lines. Every error is a
``CaseError`` naming the file and line, because these files are edited by
hand and the line is what the editor jumps to.

``render`` is canonical and exact: ``parse(render(c)) == c`` for every case
``render`` accepts; a case it cannot express (a label inside an ``ld_imm64``,
an invalid program) makes it raise ``CaseError`` rather than write something
that reads back differently.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import formats
from harness.errors import AsmError, CaseError, DecodeError
from harness.formats import asm, isa
from harness.system import (
    MAX_MAPS,
    PROG_TYPES,
    Case,
    Expect,
    MapDef,
    Program,
    Step,
    map_problem,
)

__all__ = ["parse", "load", "render", "save", "corpus_cases", "apply_script"]

_KEYWORDS = ("map", "ctx", "program", "run", "update", "delete")
_MAP_KINDS = ("prog_array", "array")
#: value_size when the map line does not say: a prog fd, and one u64.
_DEFAULT_VALUE_SIZE = {"prog_array": 4, "array": 8}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_U64 = (1 << 64) - 1
_CTX_PER_LINE = 16


# ---------------------------------------------------------------- parsing


@dataclass
class _Block:
    """A top-level line and the indented (or, for programs, any) lines after it."""

    line: int
    words: list[str]
    head: str
    body: list[tuple[int, str]] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str, file: str | None):
        self.text, self.file = text, file
        # Source line of each `expect map` entry, keyed by (id of its Expect,
        # map, key): those are checked once all maps are known.
        self.expect_lines: dict[tuple[int, str, int], int] = {}

    def err(self, message: str, line: int | None) -> CaseError:
        return CaseError(message, file=self.file, line=line)

    def number(self, text: str, line: int, what: str, hi: int = _U64) -> int:
        try:
            v = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            raise self.err(f"{what}: {text!r} is not a number", line) from None
        if not 0 <= v <= hi:
            raise self.err(f"{what}: {text} out of range 0..{hi}", line)
        return v

    def hexbytes(self, text: str, line: int, what: str) -> bytes:
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise self.err(
                f"{what}: expected hex bytes like '01 ff 00', got {text!r}", line
            ) from None

    def name(self, text: str, line: int, what: str) -> str:
        if not _NAME_RE.match(text):
            raise self.err(f"{what} {text!r} is not a valid name", line)
        return text

    def blocks(self) -> tuple[str, list[_Block]]:
        lines = self.text.split("\n")
        comment: list[str] = []
        n = 0
        while n < len(lines) and lines[n].startswith("#"):
            body = lines[n][1:]
            comment.append(body[1:] if body.startswith(" ") else body)
            n += 1
        blocks: list[_Block] = []
        for idx in range(n, len(lines)):
            lineno, raw = idx + 1, lines[idx]
            stripped = raw.strip()
            in_program = bool(blocks) and blocks[-1].words[0] == "program"
            words = raw.split()
            if raw[:1].strip() and words and words[0] in _KEYWORDS:
                blocks.append(_Block(lineno, _uncomment(raw).split(), raw))
            elif in_program:
                blocks[-1].body.append((lineno, raw))
            elif not stripped or stripped.startswith("#"):
                continue
            elif not raw[:1].strip() and blocks:
                blocks[-1].body.append((lineno, _uncomment(raw).strip()))
            else:
                raise self.err(f"expected one of {', '.join(_KEYWORDS)}, got {stripped!r}", lineno)
        return "\n".join(comment), blocks


def _uncomment(text: str) -> str:
    m = re.search(r"(?:^|\s)#", text)
    return text[: m.start()] if m else text


def parse(text: str, *, file: str | None = None) -> Case:
    """Parse a case file's text; errors are ``CaseError`` naming ``file`` and line."""
    p = _Parser(text, file)
    comment, blocks = p.blocks()
    maps: dict[str, MapDef] = {}
    map_line: dict[str, int] = {}
    programs: dict[str, tuple[_Block, str, str | None]] = {}
    ctx: bytes | None = None
    steps: list[tuple[int, Step]] = []
    for b in blocks:
        kw = b.words[0]
        if kw == "map":
            m = _parse_map(p, b)
            if len(maps) == MAX_MAPS:
                raise p.err(f"more than {MAX_MAPS} maps (the kernel's MAX_USED_MAPS)", b.line)
            if m.name in maps:
                raise p.err(f"map {m.name} already defined on line {map_line[m.name]}", b.line)
            maps[m.name], map_line[m.name] = m, b.line
        elif kw == "ctx":
            if ctx is not None:
                raise p.err("ctx given twice", b.line)
            parts = [(b.line, " ".join(b.words[1:]))] + b.body
            ctx = b"".join(p.hexbytes(t, ln, "ctx") for ln, t in parts)
        elif kw == "program":
            if len(b.words) not in (3, 4):
                raise p.err("usage: program NAME TYPE [exception_callback=LABEL]", b.line)
            name = p.name(b.words[1], b.line, "program name")
            if name in programs:
                raise p.err(
                    f"program {name} already defined on line {programs[name][0].line}", b.line
                )
            if b.words[2] not in PROG_TYPES:
                raise p.err(
                    f"program type {b.words[2]!r} is not one of {', '.join(PROG_TYPES)}", b.line
                )
            cb = None
            if len(b.words) == 4:
                key, _, cb = b.words[3].partition("=")
                if key != "exception_callback" or not cb:
                    raise p.err(f"unknown program option {b.words[3]!r}", b.line)
            programs[name] = (b, b.words[2], cb)
        else:
            steps.append((b.line, _parse_step(p, b)))

    map_names = list(maps)
    progs: dict[str, Program] = {}
    for name, (b, ptype, cb) in programs.items():
        progs[name] = _assemble(p, b, name, ptype, cb, map_names)
    if not progs:
        raise p.err("a case needs at least one program", len(text.split("\n")))

    for name, m in maps.items():
        if m.kind == "prog_array":
            for key, value in m.init.items():
                if value not in progs:
                    raise p.err(f"map {name} slot {key}: unknown program {value}", map_line[name])
    for line, st in steps:
        _check_step(p, line, st, maps, progs)
    case = Case(
        programs=progs,
        maps=maps,
        ctx=ctx or b"",
        steps=[s for _, s in steps],
        comment=comment,
    )
    try:  # what every engine checks; the parser above has said it with a line
        case.check()
    except CaseError as e:
        raise p.err(e.message, None) from None
    return case


def apply_script(case: Case, text: str, *, file: str | None = None) -> Case:
    """``case`` with the ctx and script of a sidecar case file (``text``): the
    header comment, ``ctx`` and ``run``/``update``/``delete`` blocks of the case
    format, checked against the case's maps and programs. Maps and programs
    come from the object the sidecar sits next to, so a sidecar cannot add any."""
    p = _Parser(text, file)
    comment, blocks = p.blocks()
    ctx: bytes | None = None
    steps: list[tuple[int, Step]] = []
    for b in blocks:
        kw = b.words[0]
        if kw in ("map", "program"):
            raise p.err(f"a sidecar gives ctx and the script; {kw}s come from the object", b.line)
        if kw == "ctx":
            if ctx is not None:
                raise p.err("ctx given twice", b.line)
            parts = [(b.line, " ".join(b.words[1:]))] + b.body
            ctx = b"".join(p.hexbytes(t, ln, "ctx") for ln, t in parts)
        else:
            steps.append((b.line, _parse_step(p, b)))
    for line, st in steps:
        _check_step(p, line, st, case.maps, case.programs)
    return Case(
        programs=case.programs,
        maps=case.maps,
        ctx=case.ctx if ctx is None else ctx,
        steps=[s for _, s in steps] or case.steps,
        comment=comment or case.comment,
    )


def _parse_map(p: _Parser, b: _Block) -> MapDef:
    usage = "usage: map NAME prog_array|array max_entries=N [value_size=N]"
    if len(b.words) < 4:
        raise p.err(usage, b.line)
    name = p.name(b.words[1], b.line, "map name")
    if not asm._printable_label(name):
        raise p.err(f"map name {name!r} is reserved in assembly", b.line)
    kind = b.words[2]
    if kind not in _MAP_KINDS:
        raise p.err(f"map kind {kind!r} is not one of {', '.join(_MAP_KINDS)}", b.line)
    opts: dict[str, int] = {}
    for w in b.words[3:]:
        key, eq, val = w.partition("=")
        if not eq or key not in ("max_entries", "value_size") or key in opts:
            raise p.err(f"unexpected {w!r}; {usage}", b.line)
        opts[key] = p.number(val, b.line, key, hi=0xFFFFFFFF)
    if "max_entries" not in opts:
        raise p.err(f"missing max_entries; {usage}", b.line)
    vsize = opts.get("value_size", _DEFAULT_VALUE_SIZE[kind])
    m = MapDef(name, kind, opts["max_entries"], vsize)
    why = map_problem(m)  # the kernel's limits and jitdiff's, before any slot
    if why:
        raise p.err(f"map {name}: {why}", b.line)
    for ln, text in b.body:
        key, value = _slot(p, m, ln, text)
        if key in m.init:
            raise p.err(f"map {name} slot {key} given twice", ln)
        m.init[key] = value
    return m


def _slot(p: _Parser, m: MapDef, line: int, text: str) -> tuple[int, str | bytes]:
    """``KEY = PROGNAME`` or ``KEY = hex bytes`` for map ``m``."""
    left, eq, right = text.partition("=")
    if not eq or not left.strip() or not right.strip():
        raise p.err(f"expected 'KEY = VALUE', got {text!r}", line)
    key = p.number(left.strip(), line, "key", hi=0xFFFFFFFF)
    if key >= m.max_entries:
        raise p.err(f"key {key} out of range for map {m.name} (max_entries={m.max_entries})", line)
    if m.kind == "prog_array":
        return key, p.name(right.strip(), line, "program")
    value = p.hexbytes(right, line, "value")
    if len(value) != m.value_size:
        raise p.err(
            f"map {m.name} value has {len(value)} bytes, value_size is {m.value_size}", line
        )
    return key, value


def _parse_step(p: _Parser, b: _Block) -> Step:
    kw, words = b.words[0], b.words
    if kw == "run":
        if len(words) != 2:
            raise p.err("usage: run PROGRAM", b.line)
        st = Step("run", program=words[1])
        for ln, text in b.body:
            _parse_expect(p, ln, text, st.expect)
        return st
    if b.body:
        raise p.err(f"only run takes indented expect lines, not {kw}", b.body[0][0])
    if kw == "delete":
        if len(words) != 3:
            raise p.err("usage: delete MAP KEY", b.line)
        return Step("delete", map=words[1], key=p.number(words[2], b.line, "key", 0xFFFFFFFF))
    # update MAP KEY = VALUE; the value is checked against the map later
    if len(words) < 5 or words[3] != "=":
        raise p.err("usage: update MAP KEY = PROGRAM|HEX", b.line)
    key = p.number(words[2], b.line, "key", hi=0xFFFFFFFF)
    return Step("update", map=words[1], key=key, value=" ".join(words[4:]))


def _parse_expect(p: _Parser, line: int, text: str, e: Expect) -> None:
    w = text.split()
    if len(w) < 3 or w[0] != "expect":
        raise p.err(f"expected 'expect retval|retval32|tail_calls|map ...', got {text!r}", line)
    if w[1] == "retval" and len(w) == 3:
        if e.retval is not None:
            raise p.err("expect retval given twice", line)
        e.retval = p.number(w[2], line, "retval")
    elif w[1] == "retval32" and len(w) == 3:
        if e.retval32 is not None:
            raise p.err("expect retval32 given twice", line)
        e.retval32 = p.number(w[2], line, "retval32", hi=0xFFFF_FFFF)
    elif w[1] == "tail_calls" and len(w) == 3:
        if e.tail_calls is not None:
            raise p.err("expect tail_calls given twice", line)
        e.tail_calls = p.number(w[2], line, "tail_calls")
    elif w[1] == "map" and len(w) >= 6 and w[4] == "=":
        key = p.number(w[3], line, "key", hi=0xFFFFFFFF)
        if (w[2], key) in e.maps:
            raise p.err(f"expect map {w[2]} {key} given twice", line)
        # bytes only; the map name and size are checked once all maps are known
        e.maps[(w[2], key)] = p.hexbytes(" ".join(w[5:]), line, "value")
        p.expect_lines[id(e), w[2], key] = line
    else:
        raise p.err(
            f"expected 'expect retval N', 'expect retval32 N', 'expect tail_calls N' or "
            f"'expect map NAME KEY = HEX', got {text!r}",
            line,
        )


def _check_step(
    p: _Parser, line: int, st: Step, maps: dict[str, MapDef], progs: dict[str, Program]
) -> None:
    if st.kind == "run":
        if st.program not in progs:
            raise p.err(f"run: unknown program {st.program}", line)
        for (mname, key), value in st.expect.maps.items():
            ln = p.expect_lines.get((id(st.expect), mname, key), line)
            m = maps.get(mname)
            if m is None or m.kind != "array":
                raise p.err(f"expect map: unknown array map {mname}", ln)
            if key >= m.max_entries:
                raise p.err(f"expect map: key {key} out of range for {mname}", ln)
            if len(value) != m.value_size:
                raise p.err(
                    f"expect map: {len(value)} bytes, {mname} has value_size {m.value_size}", ln
                )
        return
    m = maps.get(st.map or "")
    if m is None:
        raise p.err(f"{st.kind}: unknown map {st.map}", line)
    assert st.key is not None
    if st.key >= m.max_entries:
        raise p.err(f"{st.kind}: key {st.key} out of range for {m.name}", line)
    if st.kind == "update":
        assert isinstance(st.value, str)
        st.value = _slot(p, m, line, f"{st.key} = {st.value}")[1]
        if m.kind == "prog_array" and st.value not in progs:
            raise p.err(f"update: unknown program {st.value}", line)


def _assemble(
    p: _Parser, b: _Block, name: str, ptype: str, cb: str | None, maps: list[str]
) -> Program:
    text = "\n".join(t for _, t in b.body)  # the lines right after the header
    try:
        insns, labels = asm.assemble(
            text, maps=maps, file=p.file, first_line=b.line + 1, function=cb
        )
    except AsmError as e:
        raise CaseError(e.message, file=e.file, line=e.line) from None
    if not insns:
        raise p.err(f"program {name} has no instructions", b.line)
    for pc, i in enumerate(insns):
        if (
            i.opcode == isa.LD_IMM64
            and i.src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE)
            and not 0 <= i.imm < len(maps)
        ):
            raise p.err(f"program {name}, insn {pc}: map index {i.imm} has no map", b.line)
    if cb is not None and cb not in labels.values():
        raise p.err(f"exception_callback={cb}: no such label in program {name}", b.line)
    return Program(name, ptype, insns, labels, cb)


# ---------------------------------------------------------------- rendering


def _num(v: int) -> str:
    return str(v) if v < 0x10000 else hex(v)


def _bytes(b: bytes) -> str:
    return " ".join(f"{x:02x}" for x in b)


def render(case: Case) -> str:
    """The canonical text of ``case``; raises ``CaseError`` if it has none."""
    out: list[str] = []
    if case.comment:
        if any(c in case.comment for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            raise CaseError("the comment may only break lines with \\n")
        out += [f"# {ln}" if ln else "#" for ln in case.comment.split("\n")]
        out.append("")
    map_names = list(case.maps)
    for name, m in case.maps.items():
        if name != m.name or not _NAME_RE.match(name) or not asm._printable_label(name):
            raise CaseError(f"map {name!r} cannot be written as a case-file name")
        if m.kind not in _MAP_KINDS or (m.kind == "prog_array" and m.value_size != 4):
            raise CaseError(f"map {name}: kind {m.kind} with value_size {m.value_size}")
        # An array always states its value size: the reader needs it to read the values.
        vs = "" if m.kind == "prog_array" else f" value_size={m.value_size}"
        out.append(f"map {name} {m.kind} max_entries={m.max_entries}{vs}")
        for key, value in m.init.items():
            out.append(f"    {key} = {value if isinstance(value, str) else _bytes(value)}")
    if case.maps:
        out.append("")
    if case.ctx:
        chunks = [case.ctx[o : o + _CTX_PER_LINE] for o in range(0, len(case.ctx), _CTX_PER_LINE)]
        out.append("ctx " + _bytes(chunks[0]))
        out += ["    " + _bytes(c) for c in chunks[1:]]
        out.append("")
    for name, prog in case.programs.items():
        out += _render_program(name, prog, map_names)
        out.append("")
    for st in case.steps:
        if st.kind == "run":
            out.append(f"run {st.program}")
            e = st.expect
            if e.retval is not None:
                out.append(f"    expect retval {_num(e.retval)}")
            if e.retval32 is not None:
                out.append(f"    expect retval32 {_num(e.retval32)}")
            if e.tail_calls is not None:
                out.append(f"    expect tail_calls {e.tail_calls}")
            for (mname, key), value in e.maps.items():
                out.append(f"    expect map {mname} {key} = {_bytes(value)}")
        elif st.kind == "update":
            v = st.value if isinstance(st.value, str) else _bytes(st.value or b"")
            out.append(f"update {st.map} {st.key} = {v}")
        elif st.kind == "delete":
            out.append(f"delete {st.map} {st.key}")
        else:
            raise CaseError(f"unknown step kind {st.kind!r}")
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def _render_program(name: str, prog: Program, maps: list[str]) -> list[str]:
    if name != prog.name or not _NAME_RE.match(name) or prog.type not in PROG_TYPES:
        raise CaseError(f"program {name!r} ({prog.type}) cannot be written as a case file")
    try:  # what parse would refuse has no text (a sidecar's script-only case has no programs)
        isa.validate(prog.insns, extra_start=prog.exception_callback_pc())
    except (DecodeError, KeyError) as e:
        raise CaseError(f"program {name}: {e}") from None
    boundaries, pc = {len(prog.insns)}, 0
    while pc < len(prog.insns):
        boundaries.add(pc)
        pc += 2 if prog.insns[pc].opcode == isa.LD_IMM64 else 1
    seen: set[str] = set()
    for pc, label in prog.labels.items():
        if pc not in boundaries or not asm._printable_label(label) or label in seen:
            raise CaseError(f"program {name}: label {label!r} at pc {pc} cannot be written")
        seen.add(label)
    if prog.exception_callback is not None and prog.exception_callback not in seen:
        raise CaseError(
            f"program {name}: exception callback {prog.exception_callback} has no label"
        )
    head = f"program {name} {prog.type}"
    if prog.exception_callback is not None:
        head += f" exception_callback={prog.exception_callback}"
    # Labels print in pc order so the text reads top to bottom.
    labels = dict(sorted(prog.labels.items()))
    return [head, *asm.disassemble(prog.insns, labels=labels, maps=maps).rstrip("\n").split("\n")]


# ---------------------------------------------------------------- files


def load(path: str | os.PathLike[str]) -> Case:
    """Read and parse a case file; errors name ``path``."""
    p = Path(path)
    return parse(formats.read_text(p, CaseError), file=str(p))


def _umask() -> int:
    # the only portable way to read the umask is to set it: set it back at once
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save(case: Case, path: str | os.PathLike[str]) -> None:
    """Write ``case`` atomically: a reader sees the old file or the new one,
    never a partial one, even if rendering fails or the machine crashes."""
    text = render(case)  # before touching the file system: it may raise
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; a case is a source file: 0666 less
        # the umask, as open() would have made it
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable; not every platform can open a directory.
    try:
        dfd = os.open(target.parent or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


#: corpus folders whose cases diverge on purpose (a documented kernel bug, a
#: crash reproducer): replayed only when named
DIVERGENT = frozenset({"crashes", "kernel-findings"})


def corpus_cases(*paths) -> list[Path]:
    """The case files under ``paths`` (files named explicitly always count),
    without the DIVERGENT folders, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        else:
            out += [f for f in p.rglob("*.case") if not DIVERGENT & set(f.parts)]
    return sorted(out)
