"""The guest set-up's decisions that need no network or qemu."""

from __future__ import annotations

import pytest

from harness import engines
from harness.errors import JitdiffError
from harness.guest.arches import ARCHES
from harness.guest.setup import no_jit_reason
from harness.guest.vm import excerpt

# the lines of Debian's s390x 6.1 config that decide it (docs/guests.md)
S390X_CONFIG = """CONFIG_MARCH_Z10=y
CONFIG_BPF_SYSCALL=y
# CONFIG_BPF_JIT is not set
CONFIG_VIRTIO_CONSOLE=y
"""
ARM64_CONFIG = """CONFIG_BPF_SYSCALL=y
CONFIG_HAVE_EBPF_JIT=y
CONFIG_BPF_JIT=y
CONFIG_BPF_JIT_DEFAULT_ON=y
CONFIG_VIRTIO_CONSOLE=y
"""


def test_a_kernel_without_a_jit_is_refused_with_the_reason():
    why = no_jit_reason(S390X_CONFIG, ARCHES["s390x"])
    assert "no eBPF JIT" in why and "CONFIG_BPF_JIT" in why and "z10" in why
    assert no_jit_reason(ARM64_CONFIG, ARCHES["arm64"]) == ""


@pytest.mark.parametrize(
    "spec", ["guest:", "guest:vax", "guest:arm64@potato", "guest:riscv64@bookworm"]
)
def test_bad_guest_specs_say_why(spec):
    why = engines.available(spec)
    assert why
    with pytest.raises(JitdiffError):
        engines.get_spec(spec)


def test_the_console_excerpt_starts_at_the_kernel_bug():
    console = "\n".join(
        ["[    1.0] booting"] * 30
        + ["[   11.9] Insufficient stack space to handle exception!", "[   11.9] Kernel panic"]
    )
    text = excerpt(console)
    assert text.splitlines()[2].endswith("Insufficient stack space to handle exception!")


def test_kvm_is_probed_for_the_hosts_own_architecture_only():
    from harness.guest.setup import Guest
    from harness.guest.vm import _with_kvm, kvm_problem

    arm = Guest("arm64", "trixie", "6.12", "p", "v", "/k", "/c", "/nonexistent/initrd.gz", "h", "")
    assert kvm_problem(arm) == "KVM runs the host's own architecture only"
    # the amd64 machine arguments, TCG max, become KVM with the host's CPU
    amd = ARCHES["amd64"].machine
    assert _with_kvm(amd) == ("-machine", "q35", "-accel", "kvm", "-cpu", "host", "-vga", "none")
