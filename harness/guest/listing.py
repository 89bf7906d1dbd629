"""A guest's JIT images as text: capstone for the guest's arch, each BPF
instruction printed before the first machine instruction of its code.

Where a BPF instruction's code starts comes from the kernel itself: the
loader writes one ``line_info`` record per instruction whose line number is
the instruction's pc (``harness.kernel.btf``), and ``jited_line_info`` gives
the address of each record's code. Instructions the verifier removed have no
record and are not printed. Bytes capstone cannot decode (ppc64 keeps data
after the final ``blr``) are shown as ``.byte`` (skipdata).
"""

from __future__ import annotations

import capstone

from harness.formats.asm import format_insn
from harness.guest.arches import Arch
from harness.kernel.bpf import ProgInfo
from harness.kernel.btf import line_to_pc
from harness.kernel.loader import function_names
from harness.system import Case

__all__ = ["render", "disassembler"]


def disassembler(a: Arch) -> capstone.Cs:
    arch_name, modes = a.capstone
    if arch_name == "CS_ARCH_ARM64" and not hasattr(capstone, arch_name):
        arch_name = "CS_ARCH_AARCH64"  # capstone 6's name
    mode = 0
    for m in modes:
        mode |= getattr(capstone, m)
    md = capstone.Cs(getattr(capstone, arch_name), mode)
    md.skipdata = True
    return md


def render(case: Case, infos: dict[str, ProgInfo], a: Arch) -> str:
    md = disassembler(a)
    maps = list(case.maps)
    out: list[str] = []
    for name, info in infos.items():
        prog = case.programs[name]
        fnames = function_names(prog)
        # address -> original pcs whose code starts there
        at: dict[int, list[int]] = {}
        for rec, addr in zip(info.line_info, info.jited_line_info, strict=False):
            at.setdefault(addr, []).append(line_to_pc(rec[3]))
        starts = [off for off, _ in info.func_info] or [0]
        out.append(f"== {name} ({len(info.jited)} bytes of {a.name} code, id {info.id})")
        for k, (addr, code) in enumerate(info.func_images()):
            label = _function_label(info, k, fnames, starts)
            out.append(f"{label}:  ; {addr:#x}, {len(code)} bytes")
            shown: set[int] = set()
            for ins in md.disasm(code, addr):
                for pc in sorted(set(at.get(ins.address, ()))):
                    if pc in shown or pc >= len(prog.insns):
                        continue
                    shown.add(pc)
                    text = format_insn(prog.insns, pc, labels=prog.labels, maps=maps)
                    out.append(f"    ; {pc:4d}: {text}")
                raw = ins.bytes.hex()
                out.append(
                    f"  {ins.address - addr:5x}: {raw:<16} {ins.mnemonic} {ins.op_str}".rstrip()
                )
        out.append("")
    return "\n".join(out)


def _function_label(info: ProgInfo, k: int, fnames, starts) -> str:
    # func_info insn_offs are xlated numbering; the first line record at or
    # after a function's start carries its original pc
    if k >= len(starts):
        return f"func{k}"
    off = starts[k]
    for rec in info.line_info:
        if rec[0] >= off:
            pc = line_to_pc(rec[3])
            return fnames.get(pc, f"func{k} (pc {pc})")
    return f"func{k}"
