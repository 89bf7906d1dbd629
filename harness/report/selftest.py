"""A case as a Linux kernel BPF selftest, ready to go upstream.

``export`` writes the two halves a selftest has in ``tools/testing/selftests/bpf``:

- ``progs/NAME.c``: every function of the case as a ``__naked`` function whose
  body is the case's instructions as inline assembly (the style of
  ``progs/verifier_*.c``: ``asm volatile(...)`` with ``__imm``/``__imm_addr``
  operands and ``__clobber_all``, from ``bpf_misc.h``); subprograms are static
  ``.text`` functions called by name, an exception callback is a global one
  named by ``__exception_cb``; prog arrays are BTF-defined ``.maps`` with their
  initial slots (``__array(values, ...)``, as ``progs/tailcall*.c`` do), array
  maps are ``.maps`` arrays, and a one-entry array the case addresses as
  ``map_value[M]`` is global data in its own ``.data.M`` section (the only way
  C gets a map value's address into an ``ld_imm64``);
- ``prog_tests/NAME.c``: a ``test_progs`` test that opens the skeleton, applies
  the script (map updates and deletes between ``BPF_PROG_TEST_RUN`` runs) and
  asserts the reference interpreter's retval and map contents after every run.
  The kernel's test run cannot report tail calls, so tail-call counts are
  asserted through the map counters the case keeps (and named in comments).

A third file, ``progs/NAME.bpf.case``, is the sidecar that makes the compiled
object a jitdiff input with the same script: ``jitdiff run progs/NAME.bpf.o``.

``check`` compiles the program part with clang (with a small stand-in for
``bpf_misc.h`` and ``bpf_experimental.h``, which live in the kernel tree) and
reads the object back through ``harness.formats.elf``: the round trip case ->
C -> object -> case must reach the same outcome on every engine it names.

What the selftest framework cannot express (a ``test`` program, a map value
address of a map also used as a map pointer) stops the export with one
``Unsupported`` line.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import JitdiffError, Unsupported
from harness.formats import asm, casefile, isa
from harness.outcome import Status
from harness.reference.helpers import HELPERS, KFUNCS
from harness.system import Case, MapDef, Program, Step

__all__ = ["Selftest", "export", "write", "check", "compile_program", "toolchain", "SHIM"]

#: what each case program type is in libbpf's SEC() names
_SECTIONS = {"sched_cls": "tc", "raw_tp": "raw_tp"}
_ETH_HLEN = 14
_C_RESERVED = (
    frozenset(
        """auto break case char const continue default do double else enum extern float for goto
    if inline int long register restrict return short signed sizeof static struct switch
    typedef union unsigned void volatile while main _license jitdiff_ksym_btf""".split()
    )
    | {h.name for h in HELPERS.values()}
    | set(KFUNCS.values())
)

#: stand-ins for the kernel tree's bpf_misc.h, bpf_experimental.h and the
#: vmlinux.h it includes, enough to compile an exported program outside the
#: tree (the macros are upstream's)
SHIM = {
    "bpf_misc.h": """\
/* jitdiff's stand-in for tools/testing/selftests/bpf/progs/bpf_misc.h */
#ifndef __BPF_MISC_H__
#define __BPF_MISC_H__
#define __naked __attribute__((naked))
#define __clobber_all "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "memory"
#define __imm(name) [name]"i"(name)
#define __imm_addr(name) [name]"i"(&name)
#ifndef __used
#define __used __attribute__((used))
#endif
#endif
""",
    "vmlinux.h": """\
/* jitdiff's stand-in for the vmlinux.h bpftool generates: the UAPI types */
#ifndef __VMLINUX_H__
#define __VMLINUX_H__
#include <linux/bpf.h>
#endif
""",
    "bpf_experimental.h": """\
/* jitdiff's stand-in for tools/testing/selftests/bpf/bpf_experimental.h */
#ifndef __BPF_EXPERIMENTAL__
#define __BPF_EXPERIMENTAL__
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
extern void bpf_throw(__u64 cookie) __ksym;
#define __exception_cb(name) __attribute__((btf_decl_tag("exception_callback:" #name)))
#endif
""",
}


@dataclass
class Selftest:
    name: str
    #: progs/NAME.c
    prog_c: str
    #: prog_tests/NAME.c
    test_c: str
    #: progs/NAME.bpf.case: ctx and script for ``jitdiff run progs/NAME.bpf.o``
    sidecar: str
    #: case map name -> the map's name in the object (``data_M`` for global data)
    map_names: dict[str, str] = field(default_factory=dict)

    def files(self) -> dict[str, str]:
        return {
            f"progs/{self.name}.c": self.prog_c,
            f"prog_tests/{self.name}.c": self.test_c,
            f"progs/{self.name}.bpf.case": self.sidecar,
        }


# ---------------------------------------------------------------- planning


def _map_uses(case: Case) -> dict[int, set[int]]:
    """map index -> the ld_imm64 pseudo sources that name it."""
    uses: dict[int, set[int]] = {}
    for prog in case.programs.values():
        for i in prog.insns:
            if i.opcode == isa.LD_IMM64 and i.src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
                uses.setdefault(i.imm, set()).add(i.src)
    return uses


def _plan_maps(case: Case) -> dict[str, str]:
    """case map -> "btf" (a .maps definition) or "data" (a .data.NAME section)."""
    uses = _map_uses(case)
    plan = {}
    for idx, (name, m) in enumerate(case.maps.items()):
        u = uses.get(idx, set())
        if isa.PSEUDO_MAP_VALUE not in u:
            plan[name] = "btf"
            continue
        if m.kind != "array" or m.max_entries != 1 or isa.PSEUDO_MAP_FD in u:
            why = (
                "it is a prog_array"
                if m.kind != "array"
                else f"it has {m.max_entries} entries"
                if m.max_entries != 1
                else f"map[{name}] uses it as a map too"
            )
            raise Unsupported(
                f"map_value[{name}]: C gets a map value's address only from global data "
                f"(a one-entry array), and {why}"
            )
        plan[name] = "data"
    return plan


def _function_names(case: Case) -> dict[str, dict[int, str]]:
    """program -> function start -> C function name (programs keep theirs,
    subprograms are PROGRAM__LABEL)."""
    out = {}
    for pname, prog in case.programs.items():
        names = {}
        for start in prog.function_starts():
            names[start] = pname if start == 0 else f"{pname}__{prog.function_name(start)}"
        out[pname] = names
    return out


def _check_names(case: Case, funcs: dict[str, dict[int, str]]) -> None:
    seen: dict[str, str] = {}
    items = [(m, f"map {m}") for m in case.maps]
    items += [(c, f"function {c}") for names in funcs.values() for c in names.values()]
    for cname, what in items:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cname) or cname in _C_RESERVED:
            raise Unsupported(f"{what}: {cname!r} cannot be a C name in a selftest")
        if cname in seen:
            raise Unsupported(f"{what} and {seen[cname]} would share the C name {cname}")
        seen[cname] = what


# ---------------------------------------------------------------- the program part


# Instructions LLVM 14's BPF assembler (Debian bookworm's clang, the oldest
# toolchain jitdiff checks with) cannot parse, measured form by form: the cpu
# v4 forms, stores of an immediate, jset, modulo, the fetching atomics,
# xchg/cmpxchg and the legacy packet loads with a register. They are written
# as raw .8byte words, which keep the layout slot for slot (jump offsets stay
# right), with the instruction in a comment.
def _needs_raw(i: isa.Insn) -> bool:
    c, code, mode = i.opcode & 0x07, i.opcode & 0xF0, i.opcode & 0xE0
    if c in (isa.ALU, isa.ALU64):
        return (
            code == isa.MOD
            or (code == isa.DIV and i.off != 0)
            or (code == isa.MOV and i.off != 0)
            or (code == isa.END and c == isa.ALU64)
        )
    if c in (isa.JMP, isa.JMP32):
        return code == isa.JSET or i.opcode == isa.JMP32 | isa.JA
    if c == isa.LDX:
        return mode == isa.MEMSX
    if c == isa.ST:
        return True
    if c == isa.STX:
        return mode == isa.ATOMIC and i.imm not in (isa.ADD, isa.OR, isa.AND, isa.XOR)
    return c == isa.LD and mode == isa.IND


_PCT = "JITDIFF_PCT"


def _asm_lines(
    prog: Program, start: int, end: int, fnames: dict[int, str], maps: list[str], plan
) -> tuple[list[str], list[str]]:
    """The inline assembly of one function and its operands."""
    insns = prog.insns
    jump_targets = set()
    pc = start
    while pc < end:
        i = insns[pc]
        if isa.is_jump(i):
            jump_targets.add(isa.jump_target(pc, i))
        pc += 2 if i.opcode == isa.LD_IMM64 else 1
    # upstream's local labels end in %= (unique per asm statement); the
    # formatter prints only plain names, so a placeholder stands in for it
    labels = {t: f"l{t - start}_{_PCT}" for t in jump_targets}
    lines: list[str] = []
    operands: dict[str, str] = {}
    pc = start
    while pc < end:
        i = insns[pc]
        if pc in labels:
            lines.append(f"{labels[pc].replace(_PCT, '%=')}:")
        if i.opcode == isa.LD_IMM64 and i.src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
            m = maps[i.imm]
            operands[m] = f"__imm_addr({m})"
            off = insns[pc + 1].imm
            text = f"r{i.dst} = %[{m}]" + (f" + {off}" if off else "") + " ll"
        elif i.opcode == isa.LD_IMM64 and i.src == isa.PSEUDO_FUNC:
            target = fnames[pc + 1 + i.imm]
            operands[target] = f"__imm({target})"
            text = f"r{i.dst} = %[{target}] ll"
        elif i.opcode == isa.LD_IMM64 and i.src:
            raise Unsupported(f"{prog.name} insn {pc}: ld_imm64 with pseudo source {i.src}")
        elif i.opcode == isa.JMP | isa.CALL and i.src == 0:
            h = HELPERS.get(i.imm)
            if h is None:
                raise Unsupported(f"{prog.name} insn {pc}: helper #{i.imm} has no name")
            operands[h.name] = f"__imm({h.name})"
            text = f"call %[{h.name}]"
        elif i.opcode == isa.JMP | isa.CALL and i.src == isa.PSEUDO_CALL:
            text = f"call {fnames[pc + 1 + i.imm]}"
        elif i.opcode == isa.JMP | isa.CALL and i.src == isa.PSEUDO_KFUNC_CALL:
            k = KFUNCS.get(i.imm)
            if k is None:
                raise Unsupported(f"{prog.name} insn {pc}: kfunc #{i.imm} has no name")
            operands[k] = f"__imm({k})"
            text = f"call %[{k}]"
        elif _needs_raw(i):
            text = f".8byte {int.from_bytes(isa.encode(i), 'little'):#018x}"
            lines.append(f"/* {asm.format_insn(insns, pc, labels=labels).replace(_PCT, '%=')} */")
        else:
            text = asm.format_insn(insns, pc, labels=labels)
            if text.startswith(".raw"):
                raise Unsupported(f"{prog.name} insn {pc}: {text} has no assembly syntax")
        lines.append(text.replace(_PCT, "%=") + ";")
        pc += 2 if i.opcode == isa.LD_IMM64 else 1
    if end in labels:  # a jump to the end of the function (the verifier refuses it)
        raise Unsupported(f"{prog.name}: a jump past the end of a function")
    return lines, list(operands.values())


def _padded(text: str, width: int = 48) -> str:
    """``text`` and a line continuation at ``width`` columns, padded with tabs
    as upstream's sources are."""
    col = len(text.expandtabs(8))
    tabs = max(1, (width - col + 7) // 8)
    return text + "\t" * tabs + "\\"


def _function_c(signature: str, lines: list[str], operands: list[str]) -> list[str]:
    """One ``__naked`` function in upstream's layout: one instruction per line
    of a continued string, labels at column 0, then operands and clobbers."""
    body = [_padded(ln if ln.endswith(":") else "\t" + ln) for ln in lines]
    tail = (
        ['"\t:', f"\t: {', '.join(operands)}", "\t: __clobber_all);"]
        if operands
        else ['"\t::: __clobber_all);']
    )
    return [signature, "{", _padded('\tasm volatile ("'), *body, *tail, "}", ""]


def _bytes_c(data: bytes) -> str:
    return ", ".join(f"0x{b:02x}" for b in data)


def _prog_c(case: Case, name: str, plan, funcs, source: str | None) -> str:
    maps = list(case.maps)
    out = [
        "// SPDX-License-Identifier: GPL-2.0",
        f"/* {name}: exported by jitdiff" + (f" from {source}" if source else "") + ".",
    ]
    out += [f" * {ln}".rstrip() for ln in case.comment.splitlines()]
    uses_throw = any(
        i.opcode == isa.JMP | isa.CALL and i.src == isa.PSEUDO_KFUNC_CALL
        for p in case.programs.values()
        for i in p.insns
    )
    experimental = uses_throw or any(p.exception_callback for p in case.programs.values())
    # bpf_experimental.h (bpf_throw, __exception_cb) includes vmlinux.h, which
    # clashes with linux/bpf.h: such programs include vmlinux.h as upstream's
    # exceptions*.c do
    out += [" */", "", "#include <vmlinux.h>" if experimental else "#include <linux/bpf.h>"]
    out += ["#include <bpf/bpf_helpers.h>", '#include "bpf_misc.h"']
    if experimental:
        out.append('#include "bpf_experimental.h"')
    out.append("")
    slot_progs = sorted(
        {v for m in case.maps.values() if m.kind == "prog_array" for v in m.init.values()}
    )
    for p in slot_progs:
        out.append(f"int {p}(void);")
    if slot_progs:
        out.append("")
    for mname, m in case.maps.items():
        out += _map_c(mname, m, plan[mname])
    # a function whose address an operand takes (func[f]) must be declared first
    taken = []
    for pname, prog in case.programs.items():
        for pc, i in enumerate(prog.insns):
            if i.opcode == isa.LD_IMM64 and i.src == isa.PSEUDO_FUNC:
                start = pc + 1 + i.imm
                cname = funcs[pname][start]
                if start == prog.exception_callback_pc():
                    taken.append(f"int {cname}(__u64 cookie);")
                else:
                    taken.append(f"static int {cname}(void);")
    if taken:
        out += sorted(set(taken)) + [""]
    for pname, prog in case.programs.items():
        names = funcs[pname]
        starts = sorted(names)
        cb = prog.exception_callback_pc()
        blocks = []
        for k, start in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(prog.insns)
            lines, ops = _asm_lines(prog, start, end, names, maps, plan)
            cname = names[start]
            if start == 0:
                tag = f" __exception_cb({names[cb]})" if cb is not None else ""
                sig = f'SEC("{_SECTIONS[prog.type]}"){tag}\n__naked int {cname}(void)'
            elif start == cb:
                # the verifier wants the exception callback global, with the cookie argument
                sig = f"__naked __noinline __used int {cname}(__u64 cookie)"
            else:
                sig = f"static __naked __noinline __used int {cname}(void)"
            blocks.append(_function_c(sig, lines, ops))
        # subprograms first, as upstream's sources put them
        for b in blocks[1:] + blocks[:1]:
            out += b
    if uses_throw:
        out += [
            "/* Never called: a C call makes clang write bpf_throw's BTF, which libbpf",
            " * needs to resolve the __ksym (the asm above names it only as an operand). */",
            "__used static void jitdiff_ksym_btf(void)",
            "{",
            "\tbpf_throw(0);",
            "}",
            "",
        ]
    out += ['char _license[] SEC("license") = "GPL";', ""]
    return "\n".join(out)


def _map_c(mname: str, m: MapDef, plan: str) -> list[str]:
    if plan == "data":
        init = m.init.get(0, bytes(m.value_size))
        return [
            f"/* {mname}: a one-entry array addressed as map_value[{mname}]: global data */",
            f'__u8 {mname}[{m.value_size}] __attribute__((aligned(8))) SEC(".data.{mname}") = '
            f"{{ {_bytes_c(init)} }};",
            "",
        ]
    if m.kind == "prog_array":
        lines = [
            "struct {",
            "\t__uint(type, BPF_MAP_TYPE_PROG_ARRAY);",
            f"\t__uint(max_entries, {m.max_entries});",
            "\t__uint(key_size, sizeof(__u32));",
            "\t__uint(value_size, sizeof(__u32));",
        ]
        if not m.init:
            return lines + [f'}} {mname} SEC(".maps");', ""]
        lines.append("\t__array(values, int (void));")
        lines.append(f'}} {mname} SEC(".maps") = {{')
        lines.append("\t.values = {")
        lines += [f"\t\t[{k}] = (void *)&{v}," for k, v in sorted(m.init.items())]
        return lines + ["\t},", "};", ""]
    return [
        "struct {",
        "\t__uint(type, BPF_MAP_TYPE_ARRAY);",
        f"\t__uint(max_entries, {m.max_entries});",
        "\t__type(key, __u32);",
        f"\t__uint(value_size, {m.value_size});",
        f'}} {mname} SEC(".maps");',
        "",
    ]


# ---------------------------------------------------------------- the test part


def _script(case: Case, plan) -> list[Step]:
    """The steps with the initial contents of .maps arrays first (libbpf
    creates those zeroed; global data carries its bytes in the object)."""
    pre = [
        Step("update", map=n, key=k, value=v)
        for n, m in case.maps.items()
        if m.kind == "array" and plan[n] == "btf"
        for k, v in sorted(m.init.items())
        if any(v)
    ]
    return pre + case.script()


def _test_c(case: Case, name: str, obj: dict[str, str], steps: list[Step]) -> str:
    """The prog_tests half: declarations first and only those used (test_progs
    builds with -Wall -Werror), then the script step by step."""
    ctx = case.ctx
    runs = [case.programs[st.program].type for st in steps if st.kind == "run"]
    updates = [st for st in steps if st.kind == "update"]
    keyed = any(st.kind != "run" or st.expect.maps for st in steps)
    valued = any(st.expect.maps for st in steps) or any(
        case.maps[st.map].kind == "array" for st in updates
    )
    out = [
        "// SPDX-License-Identifier: GPL-2.0",
        f"/* {name}: exported by jitdiff; the expected values are the reference",
        " * interpreter's (harness/reference/interp.py). */",
        "#include <test_progs.h>",
        f'#include "{name}.skel.h"',
        "",
        f"void test_{name}(void)",
        "{",
    ]
    if "raw_tp" in runs and ctx:
        out.append(f"\t__u8 ctx[] = {{ {_bytes_c(ctx)} }};")
        out.append(
            "\tLIBBPF_OPTS(bpf_test_run_opts, raw_opts, .ctx_in = ctx, .ctx_size_in = sizeof(ctx));"
        )
    elif "raw_tp" in runs:
        out.append("\tLIBBPF_OPTS(bpf_test_run_opts, raw_opts);")
    if "sched_cls" in runs:
        # the packet: the ctx bytes, at least an Ethernet header
        out.append(f"\t__u8 pkt[] = {{ {_bytes_c(ctx.ljust(_ETH_HLEN, bytes(1)))} }};")
        out.append(
            "\tLIBBPF_OPTS(bpf_test_run_opts, tc_opts, .data_in = pkt, "
            ".data_size_in = sizeof(pkt), .repeat = 1);"
        )
    out.append(f"\tstruct {name} *skel;")
    if valued:
        size = max([m.value_size for m in case.maps.values() if m.kind == "array"] + [8])
        out.append(f"\t__u8 value[{size}];")
    if keyed:
        out.append("\t__u32 key;")
    out.append(
        "\tint err, fd;"
        if any(case.maps[st.map].kind == "prog_array" for st in updates)
        else "\tint err;"
    )
    out += [
        "",
        f"\tskel = {name}__open_and_load();",
        '\tif (!ASSERT_OK_PTR(skel, "open_and_load"))',
        "\t\treturn;",
    ]
    run = 0
    for st in steps:
        out.append("")
        if st.kind in ("update", "delete"):
            m = case.maps[st.map]
            mfd = f"bpf_map__fd(skel->maps.{obj[st.map]})"
            out.append(f"\tkey = {st.key};")
            if st.kind == "delete":
                out.append(f"\t/* delete {st.map} {st.key} (an empty slot is no error here) */")
                out.append(f"\tbpf_map_delete_elem({mfd}, &key);")
            elif m.kind == "prog_array":
                out.append(f"\tfd = bpf_program__fd(skel->progs.{st.value});")
                out.append(f"\terr = bpf_map_update_elem({mfd}, &key, &fd, BPF_ANY);")
            else:
                data = st.value if isinstance(st.value, bytes) else b""
                out.append(f"\tmemcpy(value, (__u8[]){{ {_bytes_c(data)} }}, {len(data)});")
                out.append(f"\terr = bpf_map_update_elem({mfd}, &key, value, BPF_ANY);")
            if st.kind == "update":
                out.append(f'\tASSERT_OK(err, "update {st.map} {st.key}");')
            continue
        prog = case.programs[st.program]
        e = st.expect
        opts = "raw_opts" if prog.type == "raw_tp" else "tc_opts"
        out.append(f"\t/* run {run}: {st.program} */")
        out.append(
            f"\terr = bpf_prog_test_run_opts(bpf_program__fd(skel->progs.{st.program}), &{opts});"
        )
        out.append(f'\tASSERT_OK(err, "run {run} {st.program}");')
        if e.retval is not None:
            # the test run reports r0's low 32 bits
            out.append(
                f'\tASSERT_EQ({opts}.retval, {e.retval & 0xFFFFFFFF:#x}, "run {run} retval");'
            )
        elif e.retval32 is not None:
            out.append(f'\tASSERT_EQ({opts}.retval, {e.retval32:#x}, "run {run} retval32");')
        if e.tail_calls:
            counters = ", ".join(sorted({m for m, _ in e.maps})) or "no map, so not asserted"
            out.append(f"\t/* {e.tail_calls} tail calls: counted in {counters} */")
        for (mname, key), value in sorted(e.maps.items()):
            mfd = f"bpf_map__fd(skel->maps.{obj[mname]})"
            out.append(f"\tkey = {key};")
            out.append(f'\tASSERT_OK(bpf_map_lookup_elem({mfd}, &key, value), "lookup");')
            out.append(
                f"\tASSERT_OK(memcmp(value, (__u8[]){{ {_bytes_c(value)} }}, {len(value)}), "
                f'"run {run} {mname}[{key}]");'
            )
        run += 1
    out += ["", f"\t{name}__destroy(skel);", "}", ""]
    return "\n".join(out)


def _sidecar(case: Case, name: str, obj: dict[str, str], steps: list[Step]) -> str:
    renamed = copy.deepcopy(steps)
    for st in renamed:
        if st.map:
            st.map = obj[st.map]
        st.expect.maps = {(obj[m], k): v for (m, k), v in st.expect.maps.items()}
    text = casefile.render(
        Case(
            programs={},
            ctx=case.ctx,
            steps=renamed,
            comment=f"ctx and script of {name}.bpf.o (jitdiff export): jitdiff run {name}.bpf.o",
        )
    )
    if not case.ctx:  # say it: an object without a sidecar ctx runs with a zero one
        head, _, rest = text.partition("\n\n")
        text = f"{head}\n\nctx\n\n{rest}"
    return text


# ---------------------------------------------------------------- the entry points


def default_name(path: str | os.PathLike[str]) -> str:
    """A selftest name from a case file's name: a C identifier (a crash
    reproducer is named by its signature, with hyphens)."""
    name = re.sub(r"\W", "_", Path(path).name.split(".")[0])
    return "jitdiff_" + name if name[:1].isdigit() else name


def export(case: Case, name: str, *, source: str | None = None, profile=None) -> Selftest:
    """The selftest of ``case`` called ``name`` (a C identifier: the skeleton
    and test function are named after it); ``Unsupported`` if it cannot be one."""
    from harness import engines
    from harness.campaign.runner import REFERENCE_BUDGET
    from harness.report import with_expectations

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise Unsupported(f"selftest name {name!r} is not a C identifier (use --name)")
    for prog in case.programs.values():
        if prog.type not in _SECTIONS:
            raise Unsupported(
                f"program {prog.name}: type {prog.type} has no kernel program type for a selftest"
            )
    plan = _plan_maps(case)
    funcs = _function_names(case)
    _check_names(case, funcs)
    obj = {n: (f"data_{n}" if p == "data" else n) for n, p in plan.items()}
    clash = next((n for n in obj if obj[n] != n and obj[n] in obj), None)
    if clash:
        raise Unsupported(f"map {clash} becomes data_{clash} in the object, a name map uses")

    eng = engines.get("interp", profile) if profile is not None else engines.get("interp")
    try:
        ref = eng.run(case, budget=REFERENCE_BUDGET)
    finally:
        eng.close()
    for k, r in enumerate(ref.runs):
        if r.status is not Status.OK:
            raise Unsupported(
                f"run {k}: the reference stops with {r.status.value} ({r.detail}); "
                "a selftest asserts a run that completes"
            )
    expected = with_expectations(case, ref.runs)
    steps = _script(expected, plan)
    return Selftest(
        name=name,
        prog_c=_prog_c(case, name, plan, funcs, source),
        test_c=_test_c(case, name, obj, steps),
        sidecar=_sidecar(case, name, obj, steps),
        map_names=obj,
    )


def write(test: Selftest, directory: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Write the selftest's files under ``directory``; refuses to replace an
    existing file unless ``force``. Returns the paths written."""
    root = Path(directory)
    targets = {root / rel: text for rel, text in test.files().items()}
    if not force:
        taken = [str(p) for p in targets if p.exists()]
        if taken:
            raise JitdiffError(f"{taken[0]} exists (use --force to replace it)")
    for path, text in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return list(targets)


# ---------------------------------------------------------------- the round trip


def _multiarch_include() -> Path | None:
    """Where ``asm/types.h`` lives (linux/bpf.h needs it; Debian keeps it per arch)."""
    for d in sorted(Path("/usr/include").glob("*-linux-gnu*")):
        if (d / "asm" / "types.h").is_file():
            return d
    return Path("/usr/include") if Path("/usr/include/asm/types.h").is_file() else None


def toolchain() -> str | None:
    """Why the program part cannot be compiled here, or None if it can."""
    if shutil.which("clang") is None:
        return "clang is not installed (Debian: apt install clang llvm)"
    if not Path("/usr/include/bpf/bpf_helpers.h").is_file():
        return "libbpf headers are not installed (Debian: apt install libbpf-dev)"
    if _multiarch_include() is None:
        return "no asm/types.h for linux/bpf.h (Debian: linux-libc-dev)"
    return None


def compile_program(source: str, workdir: str | os.PathLike[str], name: str = "prog") -> Path:
    """Compile a selftest's program part (``clang -target bpf -O2 -g``, cpu v3 for
    the 32-bit and atomic instructions) with the shim headers; the object's path."""
    why = toolchain()
    if why:
        raise Unsupported(why)
    work = Path(workdir)
    shim = work / "shim"
    shim.mkdir(parents=True, exist_ok=True)
    for fname, text in SHIM.items():
        (shim / fname).write_text(text)
    src, obj = work / f"{name}.c", work / f"{name}.bpf.o"
    src.write_text(source)
    cmd = ["clang", "-target", "bpf", "-O2", "-g", "-mcpu=v3", f"-I{shim}"]
    cmd += [f"-I{_multiarch_include()}", "-c", str(src), "-o", str(obj)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        first = next((ln for ln in res.stderr.splitlines() if "error" in ln), res.stderr.strip())
        raise JitdiffError(f"clang cannot compile the exported program: {first}")
    return obj


def _summary(out, rename: dict[str, str]) -> list[tuple]:
    return [
        (
            r.status.value,
            r.retval,
            r.tail_calls,
            tuple(sorted((rename.get(k, k), bytes(v)) for k, v in r.maps.items())),
        )
        for r in out.runs
    ]


def check(
    test: Selftest, case: Case, engines_: tuple[str, ...] = ("x86_64",), profile=None
) -> list[str]:
    """The round trip: compile the program part, read the object back with its
    sidecar and run both cases on the reference and ``engines_``. Returns the
    differences (none: the object behaves as the case)."""
    from harness.campaign.runner import Runner, expectation_failures
    from harness.formats import elf

    with tempfile.TemporaryDirectory(prefix="jitdiff-selftest-") as tmp:
        obj = compile_program(test.prog_c, tmp, test.name)
        back = elf.parse(obj.read_bytes(), file=str(obj))
        back = casefile.apply_script(back, test.sidecar, file=f"{test.name}.bpf.case")
    runner = Runner(list(engines_), **({"profile": profile} if profile else {}))
    try:
        a, b = runner.check(case), runner.check(back)
    finally:
        runner.close()
    problems = [f"round trip, interp: {f}" for f in expectation_failures(back, b.reference.runs)]
    pairs = [("interp", a.reference, b.reference)] + [
        (n, a.candidates[n][2], b.candidates[n][2]) for n in a.candidates
    ]
    for name, x, y in pairs:
        sx = _summary(x, test.map_names)
        sy = _summary(y, {})
        if sx != sy:
            problems.append(f"{name}: case {sx} but the object {sy}")
    # a divergence the case itself has (corpus/kernel-findings) is no round-trip problem
    known = {n for n, _ in a.divergences}
    problems += [f"round trip: {d}" for n, d in b.divergences if n not in known]
    return problems
