"""The running Linux kernel as a jitdiff engine backend: a thin ctypes layer.

``bpf`` is the system call (maps, loading, test runs, object info, fds that
close themselves), ``btf`` reads vmlinux BTF and writes program BTF,
``kallsyms`` names kernel addresses, ``loader`` turns a ``Case`` into live
kernel objects and reads back the JIT's images. Every interaction with the
kernel lives here, so a worker process can own it all; ``available()`` says
why the kernel cannot be used on this machine (or None).
"""

from harness.kernel.bpf import BpfError, Fd, Rejected, TestRun, available, open_fds
from harness.kernel.loader import (
    FuncImage,
    KnownKernelBug,
    LoadedSystem,
    MapRef,
    ProgImage,
    SystemImage,
    load_case,
)

__all__ = [
    "available",
    "load_case",
    "LoadedSystem",
    "SystemImage",
    "ProgImage",
    "FuncImage",
    "MapRef",
    "TestRun",
    "Rejected",
    "BpfError",
    "KnownKernelBug",
    "Fd",
    "open_fds",
]
