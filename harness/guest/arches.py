"""What differs between the architectures a guest can run: one frozen record
per Debian architecture, read by the shared set-up, boot and disassembly code.

Everything here was checked on Debian's own kernels under qemu 7.2 (TCG); see
``docs/guests.md`` for how each choice was made. The only per-arch code is
the data below: no arch has a module of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Arch", "ARCHES", "SUITES", "DEFAULT_SUITE", "arch", "suites_of"]

#: Debian suites a guest kernel can come from, with the kernel line each
#: ships (bookworm has no riscv64 kernel; sid moves)
SUITES = {"bookworm": "6.1", "trixie": "6.12", "sid": "unstable"}
DEFAULT_SUITE = "trixie"


@dataclass(frozen=True)
class Arch:
    #: Debian architecture name (``dpkg --print-architecture`` on that machine)
    name: str
    #: the kernel flavour: ``linux-image-<flavour>`` is the metapackage that
    #: depends on the current kernel of a suite
    flavour: str
    #: suites that ship a kernel for this arch
    suites: tuple[str, ...]
    #: qemu-system binary and the Debian package that has it
    qemu: str
    qemu_package: str
    #: machine, cpu and anything else the machine needs (firmware, no VGA)
    machine: tuple[str, ...]
    #: the kernel's console device
    console: str
    #: GNU triplet of the cross compiler that builds the static agent
    triplet: str
    #: capstone architecture and mode names (resolved when disassembling)
    capstone: tuple[str, tuple[str, ...]]
    word_bits: int
    #: the JIT is not on by default on this arch's Debian kernels (the guest's
    #: /init sets ``net.core.bpf_jit_enable=1`` on every arch anyway)
    jit_default_on: bool
    #: the kernel has BTF (``/sys/kernel/btf/vmlinux``): kfuncs such as
    #: bpf_throw need it
    kernel_btf: bool = True
    #: why a guest of this arch cannot test a JIT, when known in advance (the
    #: kernel config decides at set-up; this only words the reason)
    note: str = ""
    #: (file, Debian package) the machine needs besides the qemu binary
    firmware: tuple[tuple[str, str], ...] = ()

    @property
    def compiler(self) -> str:
        return f"{self.triplet}-gcc"

    @property
    def compiler_packages(self) -> tuple[str, ...]:
        return ("gcc-" + self.triplet.replace("_", "-"), f"libc6-dev-{self.name}-cross")


_SEABIOS = ("/usr/share/seabios/bios-256k.bin", "seabios")
_OPENSBI = ("/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin", "qemu-system-data")

# -cpu choices, on purpose:
# - riscv64: qemu 7.2's rv64 has Zba/Zbb/Zbs and the JIT then emits add.uw,
#   zext etc., which capstone 5 cannot decode; turning them off keeps every
#   image readable (the JIT's Zb* paths are not exercised: recorded in
#   docs/guests.md).
# - arm64: max (LSE atomics, PAC, BTI) is what current cores have; the JIT
#   emits paciasp/bti and ldadd there.
# - amd64: TCG max (the /dev/kvm on these machines cannot run stock guests).
ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            "amd64",
            "amd64",
            ("bookworm", "trixie", "sid"),
            "qemu-system-x86_64",
            "qemu-system-x86",
            ("-machine", "q35", "-accel", "tcg", "-cpu", "max", "-vga", "none"),
            "ttyS0",
            "x86_64-linux-gnu",
            ("CS_ARCH_X86", ("CS_MODE_64",)),
            64,
            True,
            firmware=(_SEABIOS,),
        ),
        Arch(
            "arm64",
            "arm64",
            ("bookworm", "trixie", "sid"),
            "qemu-system-aarch64",
            "qemu-system-arm",
            ("-machine", "virt", "-cpu", "max,pauth-impdef=on"),
            "ttyAMA0",
            "aarch64-linux-gnu",
            ("CS_ARCH_ARM64", ("CS_MODE_ARM",)),
            64,
            True,
        ),
        Arch(
            "riscv64",
            "riscv64",
            ("trixie", "sid"),
            "qemu-system-riscv64",
            "qemu-system-misc",
            ("-machine", "virt", "-cpu", "rv64,zba=false,zbb=false,zbs=false", "-bios", "default"),
            "ttyS0",
            "riscv64-linux-gnu",
            ("CS_ARCH_RISCV", ("CS_MODE_RISCV64", "CS_MODE_RISCVC")),
            64,
            False,
            firmware=(
                ("/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin", "qemu-system-data"),
            ),
        ),
        Arch(
            "ppc64el",
            "powerpc64le",
            ("bookworm", "trixie", "sid"),
            "qemu-system-ppc64",
            "qemu-system-ppc",
            ("-machine", "pseries,x-vof=on", "-vga", "none"),
            "hvc0",
            "powerpc64le-linux-gnu",
            ("CS_ARCH_PPC", ("CS_MODE_64", "CS_MODE_LITTLE_ENDIAN")),
            64,
            True,
        ),
        Arch(
            "s390x",
            "s390x",
            ("bookworm", "trixie", "sid"),
            "qemu-system-s390x",
            "qemu-system-misc",
            ("-machine", "s390-ccw-virtio"),
            "ttysclp0",
            "s390x-linux-gnu",
            ("CS_ARCH_SYSZ", ("CS_MODE_BIG_ENDIAN",)),
            64,
            False,
            note="Debian builds s390x for z10 (CONFIG_MARCH_Z10), which has no eBPF JIT",
        ),
        Arch(
            "armhf",
            "armmp",
            ("bookworm", "trixie"),
            "qemu-system-arm",
            "qemu-system-arm",
            ("-machine", "virt,highmem=off", "-cpu", "cortex-a15"),
            "ttyAMA0",
            "arm-linux-gnueabihf",
            ("CS_ARCH_ARM", ("CS_MODE_ARM",)),
            32,
            False,
            kernel_btf=False,
        ),
        Arch(
            "i386",
            "686",
            ("bookworm",),  # trixie has no i386 kernel
            "qemu-system-i386",
            "qemu-system-x86",
            ("-machine", "pc", "-accel", "tcg", "-cpu", "max", "-vga", "none"),
            "ttyS0",
            "i686-linux-gnu",
            ("CS_ARCH_X86", ("CS_MODE_32",)),
            32,
            False,
            kernel_btf=False,
            firmware=(_SEABIOS,),
        ),
    )
}


def arch(name: str) -> Arch:
    from harness.errors import JitdiffError

    if name not in ARCHES:
        raise JitdiffError(f"unknown guest arch {name!r} (known: {', '.join(ARCHES)})")
    return ARCHES[name]


def suites_of(name: str) -> tuple[str, ...]:
    return arch(name).suites
