"""One running guest: qemu with the set-up kernel and initramfs, and the
agent's virtio-serial port as a unix socket on the host.

``Vm.boot()`` starts qemu (TCG, one vCPU, ``-no-reboot``; the kernel panics
on an oops or a WARN, so any kernel bug ends the qemu process), connects to
the port and waits for the agent's hello. ``Vm.call(payload, timeout)`` sends
one request and returns the reply, or raises ``GuestDown`` (how it went down
and the console excerpt) when qemu exits or the agent does not answer within
``timeout`` seconds; the caller reboots for the next request.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from harness.errors import JitdiffError
from harness.guest import protocol
from harness.guest.arches import Arch, arch
from harness.guest.setup import Guest, host_arch
from harness.kernel.crashes import CRASH_LINE

__all__ = ["Vm", "GuestDown", "BOOT_TIMEOUT", "excerpt", "kvm_problem"]

#: seconds from qemu's start to the agent's hello (TCG on a loaded machine)
BOOT_TIMEOUT = 240.0
MEMORY = "512M"
#: console lines kept around the first crash line
EXCERPT_LINES = 60


class GuestDown(JitdiffError):
    """The guest stopped serving: ``how`` (exited, hung, ...) and ``console``
    (the excerpt from the first kernel bug line, or the console's tail)."""

    def __init__(self, how: str, console: str):
        super().__init__(how)
        self.how, self.console = how, console


#: seconds a KVM boot may take before the probe calls it hung (TCG boots of
#: the same guest take 4-20 s here)
KVM_PROBE_TIMEOUT = 60.0


def kvm_problem(guest: Guest) -> str:
    """"" when ``guest`` boots under KVM on this machine, else why not.

    Probed once per guest (one boot, cached beside its initramfs): a
    ``/dev/kvm`` is no promise. The one of the project machines is a nested
    shim on which a stock kernel aborts on an MSR or hangs after SeaBIOS."""
    if guest.arch != "amd64" or host_arch() != "amd64":
        return "KVM runs the host's own architecture only"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no usable /dev/kvm"
    cache = Path(guest.initrd).parent / "kvm.json"
    try:
        return json.loads(cache.read_text())["problem"]
    except (OSError, ValueError, KeyError):
        pass
    vm = Vm(guest, accel="kvm")
    try:
        vm.boot(timeout=KVM_PROBE_TIMEOUT)
        problem = ""
    except GuestDown as e:
        err = vm.qemu_error or e.how
        problem = f"a KVM boot failed: {err.splitlines()[0] if err else e.how}"
    finally:
        vm.close()
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"problem": problem}))
    os.replace(tmp, cache)
    return problem


class Vm:
    def __init__(self, guest: Guest, *, memory: str = MEMORY, accel: str = "tcg"):
        self.guest = guest
        self.arch: Arch = arch(guest.arch)
        self.memory = memory
        #: "tcg", or "kvm" where kvm_problem found none
        self.accel = accel
        #: qemu's own stderr when a boot failed (a KVM error says why)
        self.qemu_error = ""
        self.hello: protocol.Hello | None = None
        self.boot_seconds = 0.0
        self.boots = 0
        self._t0 = 0.0
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._dir: str | None = None

    @property
    def console_path(self) -> Path:
        assert self._dir is not None
        return Path(self._dir) / "console.log"

    def command(self, sock: str) -> list[str]:
        a, g = self.arch, self.guest
        append = (
            # every kernel bug ends the guest: oops, WARN, and a CPU stuck in
            # the kernel for 10 s (a runaway tail-call loop) all panic, and a
            # panic ends qemu at once (panic=-1 with -no-reboot)
            f"console={a.console} loglevel=5 panic=-1 oops=panic panic_on_warn=1 "
            "softlockup_panic=1 watchdog_thresh=5 rdinit=/init nokaslr"
        )
        machine = a.machine
        if self.accel == "kvm":
            machine = _with_kvm(machine)
        return [
            a.qemu, *machine, "-m", self.memory, "-smp", "1",
            "-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
            "-serial", f"file:{self.console_path}",
            "-kernel", g.vmlinuz, "-initrd", g.initrd, "-append", append,
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=jd,path={sock},server=on,wait=off",
            "-device", "virtserialport,chardev=jd,name=jitdiff",
        ]  # fmt: skip

    def boot(self, *, timeout: float = BOOT_TIMEOUT) -> protocol.Hello:
        self.start()
        return self.ready(timeout=timeout)

    def start(self) -> None:
        """Start qemu and return at once (``ready`` waits for the agent): a
        spare guest boots in the background this way."""
        self.close()
        self._dir = tempfile.mkdtemp(prefix=f"jitdiff-{self.guest.arch}-")
        self._t0 = time.monotonic()
        self._proc = subprocess.Popen(
            self.command(os.path.join(self._dir, "port")),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self._dir, "qemu.err"), "wb"),  # noqa: SIM115
        )
        self.boots += 1

    def ready(self, *, timeout: float = BOOT_TIMEOUT) -> protocol.Hello:
        """Connect to the started guest's port and wait for the agent's hello."""
        assert self._proc is not None and self._dir is not None
        t0 = self._t0
        sock = os.path.join(self._dir, "port")
        deadline = t0 + timeout
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                s.connect(sock)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    s.close()
                    raise self._down("qemu did not start") from None
                time.sleep(0.05)
        self._sock = s
        try:
            hello = protocol.parse_hello(self._recv(deadline - time.monotonic(), "boot"))
        except ValueError as e:
            raise self._down(f"bad hello from the agent: {e}") from None
        self.boot_seconds = time.monotonic() - t0
        self.hello = hello
        return hello

    def call(self, payload: bytes, timeout: float) -> bytes:
        if self._sock is None:
            raise GuestDown("not booted", "")
        try:
            self._sock.sendall(struct.pack("<I", len(payload)) + payload)
        except OSError:
            raise self._down("the port closed") from None
        return self._recv(timeout, "request")

    def _recv(self, timeout: float, what: str) -> bytes:
        assert self._sock is not None
        deadline = time.monotonic() + max(timeout, 0.1)
        buf = bytearray()
        need = 4
        length = None
        while len(buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._down(f"hung (no answer to the {what} in {timeout:.0f} s)")
            self._sock.settimeout(min(left, 1.0))
            try:
                chunk = self._sock.recv(max(need - len(buf), 1 << 16))
            except TimeoutError:
                if self._proc is not None and self._proc.poll() is not None:
                    raise self._down(f"qemu exited during the {what}") from None
                continue
            except OSError:
                raise self._down(f"the port failed during the {what}") from None
            if not chunk:
                time.sleep(0.3)  # let qemu finish writing the console
                raise self._down(f"the guest went down during the {what}")
            buf += chunk
            if length is None and len(buf) >= 4:
                (length,) = struct.unpack_from("<I", buf, 0)
                need = 4 + length
        return bytes(buf[4:need])

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def _down(self, how: str) -> GuestDown:
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout=3.0)  # a panicking guest exits by itself (-no-reboot)
            except subprocess.TimeoutExpired:
                pass
            if proc.returncode is not None and "exited" not in how:
                how += f" (qemu exited {proc.returncode})"
        text = self.console()
        try:
            self.qemu_error = (Path(self._dir) / "qemu.err").read_text(errors="replace").strip()
        except (OSError, TypeError):
            self.qemu_error = ""
        self.close()
        return GuestDown(how, excerpt(text))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _with_kvm(machine: tuple[str, ...]) -> tuple[str, ...]:
    """The arch's qemu machine arguments with KVM and the host's CPU."""
    out = list(machine)
    for flag, value in (("-accel", "kvm"), ("-cpu", "host")):
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return tuple(out)


def excerpt(console: str) -> str:
    """From the first kernel bug line on, or the console's last lines."""
    lines = console.splitlines()
    bad = next((i for i, ln in enumerate(lines) if CRASH_LINE.search(ln)), None)
    if bad is None:
        return "\n".join(lines[-20:])
    return "\n".join(lines[max(bad - 2, 0) : bad + EXCERPT_LINES])
