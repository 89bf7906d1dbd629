"""``jitdiff guest setup ARCH``: a bootable guest from Debian's archive.

What it does, each step skipped when its result is already cached:

1. host tools: the arch's qemu-system, its firmware, the cross compiler and
   cpio, installed with apt when run as root and missing (otherwise a one-line
   error naming the packages);
2. a private apt (``APT_CONFIG`` with its own state, cache and sources.list
   built from the host's archive URI), so foreign-arch packages are fetched
   without ``dpkg --add-architecture`` or any change to the host's apt state;
3. the suite's current kernel for the arch (image and config, from the
   ``linux-image-<flavour>`` metapackage's dependencies) and ``busybox-static``,
   unpacked with ``dpkg-deb -x``;
4. the kernel config is read: a kernel without an eBPF JIT (Debian's s390x)
   is refused with that reason, never booted to test the interpreter;
5. the static agent (``agent/agent.c``) cross-compiled, and an initramfs
   (busybox, ``/init`` enabling the JIT, the agent) built with cpio and gzip.

Layout under ``${XDG_CACHE_HOME:-~/.cache}/jitdiff/guests``::

    apt/<suite>-<arch>/            private apt state and downloaded .debs
    <arch>/<suite>/current.json    the guest to boot (a ``Guest`` as JSON)
    <arch>/<suite>/<kernel>/       vmlinuz, config, initrd.gz, agent
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import JitdiffError
from harness.guest.arches import DEFAULT_SUITE, SUITES, Arch, arch

__all__ = ["Guest", "SetupError", "NoJit", "cache_root", "setup", "installed", "host_arch"]

AGENT_DIR = Path(__file__).resolve().parent / "agent"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class SetupError(JitdiffError):
    """Something the set-up needs is missing; the message says how to get it."""


class NoJit(SetupError):
    """The arch's kernel has no eBPF JIT: a guest would test the interpreter."""


@dataclass(frozen=True)
class Guest:
    """A set-up guest: what ``harness.guest.vm`` boots."""

    arch: str
    suite: str
    #: kernel release (``uname -r``), e.g. ``6.12.57+deb13-arm64``
    kernel: str
    #: Debian package and version the kernel came from
    package: str
    version: str
    vmlinuz: str
    config: str
    initrd: str
    #: sha256 of the agent source the initramfs was built from
    agent: str
    #: "" when the kernel has an eBPF JIT, else why not
    no_jit: str = ""

    @classmethod
    def load(cls, path: Path) -> Guest:
        return cls(**json.loads(path.read_text()))


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jitdiff" / "guests"


def host_arch() -> str:
    try:
        return subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def installed(name: str, suite: str = DEFAULT_SUITE) -> Guest | None:
    """The set-up guest of ``name`` for ``suite``, or None."""
    p = cache_root() / name / suite / "current.json"
    if not p.is_file():
        return None
    try:
        g = Guest.load(p)
    except (OSError, ValueError, TypeError):
        return None
    if g.no_jit:
        return g
    if not all(Path(f).is_file() for f in (g.vmlinuz, g.initrd)):
        return None
    return g


# --- host packages ------------------------------------------------------------


def _compiler(a: Arch) -> tuple[str, tuple[str, ...]]:
    if host_arch() == a.name:
        return "gcc", ("gcc", "libc6-dev")
    return a.compiler, a.compiler_packages


def host_missing(a: Arch) -> list[str]:
    """Debian packages the host lacks to set up and boot ``a``."""
    cc, cc_pkgs = _compiler(a)
    need = []
    if not shutil.which(a.qemu):
        need.append(a.qemu_package)
    need += [pkg for f, pkg in a.firmware if not os.path.exists(f)]
    if not shutil.which(cc):
        need += list(cc_pkgs)
    for tool, pkg in (("cpio", "cpio"), ("dpkg-deb", "dpkg"), ("apt-get", "apt")):
        if not shutil.which(tool):
            need.append(pkg)
    if not os.path.exists(KEYRING):
        need.append("debian-archive-keyring")
    return list(dict.fromkeys(need))


def _apt_install(pkgs: list[str], log) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *pkgs]
    for attempt in range(60):  # another apt may hold the lock for a while
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode == 0:
            return
        if "Could not get lock" in r.stderr or "Unable to acquire" in r.stderr:
            if attempt == 0:
                log("apt is locked by another process; waiting")
            time.sleep(5)
            continue
        if "Unable to locate package" in r.stderr and attempt == 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            continue
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise SetupError(f"apt-get install {' '.join(pkgs)} failed: {last}")
    raise SetupError(f"apt-get install {' '.join(pkgs)}: apt stayed locked for 5 minutes")


def ensure_host(a: Arch, log) -> None:
    need = host_missing(a)
    if not need:
        return
    if os.geteuid() != 0:
        raise SetupError(
            f"guest {a.name} needs host packages: apt-get install {' '.join(need)} (as root)"
        )
    log(f"installing host packages: {' '.join(need)}")
    _apt_install(need, log)
    still = host_missing(a)
    if still:
        raise SetupError(f"still missing after apt-get install: {' '.join(still)}")


# --- the private apt ------------------------------------------------------------


def _host_uris() -> tuple[str, str | None]:
    """The host's Debian archive URI and its security archive URI (if any),
    from its apt sources (deb822 or one-line format)."""
    main = security = None
    texts = []
    for d in ("/etc/apt/sources.list.d",):
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                if f.endswith((".sources", ".list")):
                    texts.append(Path(d, f).read_text(errors="replace"))
    if os.path.exists("/etc/apt/sources.list"):
        texts.append(Path("/etc/apt/sources.list").read_text(errors="replace"))
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.findall(r"^URIs:\s*(.+)$", stanza, re.M)
            suites = re.findall(r"^Suites:\s*(.+)$", stanza, re.M)
            pairs = [(u, s) for u in " ".join(uris).split() for s in " ".join(suites).split()]
            for line in stanza.splitlines():
                m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    pairs.append((m.group(1), m.group(2)))
            for uri, suite in pairs:
                if suite.endswith("-security") or "security" in uri:
                    security = security or uri
                elif "debian" in uri:
                    main = main or uri
    if not main:
        raise SetupError(
            "no Debian archive in the host's apt sources (/etc/apt/sources.list.d): "
            "guests are fetched from the archive the host uses"
        )
    return main, security


class PrivateApt:
    """apt-get with its own state, one per suite and arch (one arch's lists
    keep every apt-cache call short): nothing of the host's apt changes."""

    def __init__(self, suite: str, arch_name: str, root: Path):
        self.suite, self.arch = suite, arch_name
        self.dir = root / "apt" / f"{suite}-{arch_name}"
        self.debs = self.dir / "debs"
        self.config = self.dir / "apt.conf"

    def _write(self) -> None:
        main, security = _host_uris()
        archs = self.arch
        opts = f"[arch={self.arch} signed-by={KEYRING}]"
        lines = [f"deb {opts} {main} {self.suite} main"]
        if self.suite != "sid":
            lines.append(f"deb {opts} {main} {self.suite}-updates main")
            if security:
                lines.append(f"deb {opts} {security} {self.suite}-security main")
        for d in ("state/lists/partial", "cache/archives/partial", "parts", "prefs"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        self.debs.mkdir(parents=True, exist_ok=True)
        (self.dir / "state" / "status").touch()
        (self.dir / "sources.list").write_text("\n".join(lines) + "\n")
        arch_list = "".join(f'"{a}"; ' for a in archs.split())
        conf = f"""
Dir::State "{self.dir}/state";
Dir::State::status "{self.dir}/state/status";
Dir::Cache "{self.dir}/cache";
Dir::Etc::SourceList "{self.dir}/sources.list";
Dir::Etc::SourceParts "{self.dir}/parts";
Dir::Etc::Preferences "{self.dir}/prefs/none";
Dir::Etc::PreferencesParts "{self.dir}/prefs";
APT::Architecture "{self.arch}";
APT::Architectures {{ {arch_list}}};
Acquire::Check-Valid-Until "false";
Acquire::Languages "none";
APT::Sandbox::User "root";
"""
        self.config.write_text(conf)

    def run(self, *args: str, cwd: Path | None = None) -> str:
        env = dict(os.environ, APT_CONFIG=str(self.config), LC_ALL="C")
        r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd)
        if r.returncode != 0:
            err = [ln for ln in r.stderr.splitlines() if ln.startswith(("E:", "W:"))]
            raise SetupError(f"{' '.join(args[:2])} ({self.suite}): {(err or ['failed'])[0]}")
        return r.stdout

    def update(self, refresh: bool = False) -> None:
        self._write()
        lists = self.dir / "state" / "lists"
        if refresh or not any(lists.glob("*Packages*")):
            self.run("apt-get", "update", "-q")

    def depends(self, pkg: str) -> list[str]:
        out = self.run("apt-cache", "depends", "--no-recommends", "--no-suggests", pkg)
        return [
            m.group(1)
            for m in re.finditer(r"^\s*(?:\|)?(?:Pre)?Depends:\s*<?([^\s<>]+)>?", out, re.M)
        ]

    def version(self, pkg: str) -> str:
        out = self.run("apt-cache", "show", "--no-all-versions", pkg)
        m = re.search(r"^Version:\s*(\S+)", out, re.M)
        if not m:
            raise SetupError(f"{pkg}: no version in the {self.suite} archive")
        return m.group(1)

    def download(self, pkg: str) -> Path:
        """The .deb of ``pkg`` (``name:arch``), downloaded once."""
        name, _, arch_ = pkg.partition(":")
        ver = self.version(pkg)
        # apt-get download writes an epoch as %3a in the file name
        pattern = f"{name}_{ver.replace(':', '%3a')}_{arch_ or '*'}.deb"
        have = list(self.debs.glob(pattern))
        if not have:
            self.run("apt-get", "download", "-q", pkg, cwd=self.debs)
            have = list(self.debs.glob(pattern))
        if not have:
            raise SetupError(f"apt-get download {pkg}: no {pattern} appeared in {self.debs}")
        return have[0]


def _unpack(deb: Path, into: Path, wanted=None) -> None:
    """``dpkg-deb -x``; or, with ``wanted(path) -> bool``, only those files,
    stopping as soon as ``wanted`` says all are there (``wanted(None)``): a
    kernel package is mostly modules a guest never loads, and reading past
    ./boot would decompress them all."""
    into.mkdir(parents=True, exist_ok=True)
    if wanted is None:
        r = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
        if r.returncode != 0:
            raise SetupError(f"dpkg-deb -x {deb.name}: {r.stderr.strip()}")
        return
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                name = m.name.removeprefix("./")
                if m.isfile() and wanted(name):
                    f = tar.extractfile(m)
                    dest = into / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(f.read() if f else b"")
                    if wanted(None):
                        break
    except tarfile.TarError as e:
        raise SetupError(f"dpkg-deb --fsys-tarfile {deb.name}: {e}") from None
    finally:
        proc.kill()
        proc.wait()


# --- kernel ------------------------------------------------------------------------

_KERNEL_PKG = re.compile(r"^linux-(image|binary|base)-\d[^:]*")


_IMAGE = re.compile(r"^(?:boot/vmlinu[xz]-(.+)|usr/lib/modules/([^/]+)/vmlinu[xz])$")
_CONFIG = re.compile(r"^(?:boot/config-(.+)|usr/lib/modules/([^/]+)/config)$")


def _kernel_packages(apt: PrivateApt, a: Arch) -> list[str]:
    """The packages that hold the suite's current kernel image and config:
    the metapackage's dependency chain (bookworm/trixie: one
    ``linux-image-<release>``; sid: an empty ``linux-image-*`` that depends on
    ``linux-binary-*`` and ``linux-base-*``)."""
    seen, todo, out = set(), [f"linux-image-{a.flavour}:{a.name}"], []
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        for dep in apt.depends(pkg):
            name = dep.split(":")[0]
            if _KERNEL_PKG.match(name) and name not in (d.split(":")[0] for d in seen):
                full = f"{name}:{a.name}"
                out.append(full)
                todo.append(full)
    if not out:
        raise SetupError(f"linux-image-{a.flavour}:{a.name} in {apt.suite} names no kernel package")
    return out


def _older_kernel(apt: PrivateApt, a: Arch, failed: str, log) -> str:
    """The newest other kernel image of the flavour in the suite whose .deb
    the archive serves (set-up says which it took instead)."""
    pat = re.compile(rf"^linux-image-(\d[\w.+~]*)-{re.escape(a.flavour)}(-unsigned)?$")
    names = [n for n in apt.run("apt-cache", "pkgnames", "linux-image-").split() if pat.match(n)]

    def key(n: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", pat.match(n).group(1)))

    for name in sorted(set(names), key=key, reverse=True):
        pkg = f"{name}:{a.name}"
        if name == failed.split(":")[0]:
            continue
        try:
            apt.download(pkg)
        except SetupError:
            continue
        log(f"using {pkg} instead of {failed} (the archive does not serve the latter)")
        return pkg
    raise SetupError(f"no {a.flavour} kernel of {apt.suite} downloads from the archive")


# the virtio drivers a guest needs; bookworm builds them as modules
_MODULE = re.compile(r"^(?:usr/)?lib/modules/[^/]+/kernel/drivers/(?:virtio|char)/(virtio\w*)\.ko$")


def _module_roots(config: str) -> list[str]:
    """The modules a guest must load for its virtio-serial port (none when
    the drivers are built in)."""
    f = _config_flags(config)
    return [m for opt, m in (("VIRTIO_PCI", "virtio_pci"), ("VIRTIO_CONSOLE", "virtio_console"))
            if f.get(opt) == "m"]  # fmt: skip


def _keep_modules(tree: Path, config: str, dest: Path) -> None:
    """Copy the modules the roots need to ``dest`` with ``order`` (one name a
    line, dependencies first), read from each module's ``depends=``."""
    roots = _module_roots(config)
    shutil.rmtree(dest, ignore_errors=True)
    if not roots:
        return
    found = {}
    for p in tree.rglob("*.ko"):
        m = _MODULE.match(p.relative_to(tree).as_posix())
        if m:
            found[m.group(1)] = p
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in found:
            raise SetupError(f"module {name} is not in the kernel package")
        m = re.search(rb"depends=([\w,-]*)\0", found[name].read_bytes())
        for dep in m.group(1).decode().split(",") if m else []:
            if dep:
                visit(dep.replace("-", "_"))
        order.append(name)

    for r in roots:
        visit(r)
    dest.mkdir(parents=True)
    for name in order:
        shutil.copyfile(found[name], dest / f"{name}.ko")
    (dest / "order").write_text("\n".join(order) + "\n")


def _config_flags(text: str) -> dict[str, str]:
    flags = {}
    for line in text.splitlines():
        m = re.match(r"^CONFIG_(\w+)=(.*)$", line)
        if m:
            flags[m.group(1)] = m.group(2)
    return flags


def no_jit_reason(config: str, a: Arch) -> str:
    """Why a kernel with this config cannot test a JIT ("" when it can)."""
    f = _config_flags(config)
    missing = [k for k in ("BPF_SYSCALL", "BPF_JIT", "HAVE_EBPF_JIT") if f.get(k) != "y"]
    if missing:
        why = f"its config has no {', '.join('CONFIG_' + k for k in missing)}"
        if a.note:
            why += f" ({a.note})"
        return f"the {a.name} kernel has no eBPF JIT: {why}"
    if f.get("VIRTIO_CONSOLE") not in ("y", "m"):
        return f"the {a.name} kernel has no virtio console (CONFIG_VIRTIO_CONSOLE)"
    return ""


def _fetch_kernel(apt: PrivateApt, a: Arch, log) -> tuple[str, str, str, Path, Path]:
    pkgs = _kernel_packages(apt, a)
    tmp = Path(tempfile.mkdtemp(prefix="kernel-", dir=apt.dir))
    try:
        image = config = None
        release = ""

        def wanted(name: str | None) -> bool:
            nonlocal image, config, release
            if name is None:
                # stop at the image and config, unless the config says the
                # virtio modules are modules: then read on for them
                if image is None or config is None:
                    return False
                return not _module_roots(config.read_text(errors="replace"))
            m = _IMAGE.match(name)
            if m:
                image, release = tmp / name, m.group(1) or m.group(2)
                return True
            if _CONFIG.match(name):
                config = tmp / name
                return True
            return bool(_MODULE.match(name))

        for pkg in pkgs:
            log(f"fetching {pkg} ({apt.suite})")
            try:
                deb = apt.download(pkg)
            except SetupError as e:
                # the archive snapshot lacks some foreign-arch .debs (404)
                log(f"{e}")
                pkg = _older_kernel(apt, a, pkg, log)
                pkgs = [pkg]
                deb = apt.download(pkg)
            _unpack(deb, tmp, wanted)
            if wanted(None):
                break
        if image is None or config is None:
            raise SetupError(
                f"{', '.join(pkgs)} ({apt.suite}): no kernel image and config in the packages"
            )
        pkg_name = next(
            (p for p in pkgs if p.startswith(("linux-image-", "linux-binary-"))), pkgs[0]
        )
        version = apt.version(pkg_name)
        dest = cache_root() / a.name / apt.suite / release
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, dest / "vmlinuz")
        shutil.copyfile(config, dest / "config")
        _keep_modules(tmp, config.read_text(errors="replace"), dest / "modules")
        return release, pkg_name, version, dest / "vmlinuz", dest / "config"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- agent and initramfs ---------------------------------------------------------------

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
# the JIT, on every arch (riscv64, armhf and i386 kernels leave it off);
# constant blinding off so the images are the JIT's own code
echo 1 > /proc/sys/net/core/bpf_jit_enable
echo 0 > /proc/sys/net/core/bpf_jit_harden
echo 0 > /proc/sys/kernel/kptr_restrict
# drivers the kernel has as modules (bookworm's virtio), dependencies first
if [ -f /lib/modules/order ]; then
    for m in $(/bin/busybox cat /lib/modules/order); do /bin/busybox insmod /lib/modules/$m.ko; done
fi
exec /agent
"""


def agent_hash() -> str:
    h = hashlib.sha256()
    for f in sorted(AGENT_DIR.glob("*.[ch]")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(INIT.encode())
    return h.hexdigest()[:16]


def build_agent(a: Arch, out: Path) -> None:
    cc, pkgs = _compiler(a)
    if not shutil.which(cc):
        raise SetupError(f"no {cc}: apt-get install {' '.join(pkgs)}")
    srcs = [str(p) for p in sorted(AGENT_DIR.glob("*.c"))]
    r = subprocess.run(
        [cc, "-static", "-O2", "-Wall", "-o", str(out), *srcs], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SetupError(f"{cc} agent.c failed: {r.stderr.strip().splitlines()[-1:]}")


def build_initrd(busybox: Path, agent: Path, out: Path, modules: Path | None = None) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "bin").mkdir()
        if modules is not None and modules.is_dir():
            shutil.copytree(modules, root / "lib" / "modules")
        shutil.copyfile(busybox, root / "bin" / "busybox")
        shutil.copyfile(agent, root / "agent")
        (root / "init").write_text(INIT)
        for f in ("bin/busybox", "agent", "init"):
            os.chmod(root / f, 0o755)
        names = "\n".join(sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))).encode()
        r = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
            input=names + b"\n",
            capture_output=True,
            cwd=root,
        )
        if r.returncode != 0:
            raise SetupError(f"cpio: {r.stderr.decode(errors='replace').strip()}")
        tmp = out.with_suffix(".tmp")
        with gzip.open(tmp, "wb", compresslevel=6) as f:
            f.write(r.stdout)
        os.replace(tmp, out)


# --- the whole set-up ---------------------------------------------------------------------


def setup(name: str, suite: str = DEFAULT_SUITE, *, refresh: bool = False, log=print) -> Guest:
    """Set up (or find cached) the guest ``name`` of ``suite``; raises
    ``SetupError`` (``NoJit`` for a kernel without a JIT) with the fix."""
    a = arch(name)
    if suite not in SUITES:
        raise SetupError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    if suite not in a.suites:
        raise SetupError(f"Debian {suite} has no {name} kernel (suites: {', '.join(a.suites)})")
    ensure_host(a, log)
    root = cache_root()
    apt = PrivateApt(suite, name, root)
    apt.update(refresh)
    release, pkg, version, vmlinuz, config = _cached_kernel(apt, a, refresh, log)
    dest = vmlinuz.parent
    why = no_jit_reason(config.read_text(errors="replace"), a)
    ahash = agent_hash()
    initrd = dest / "initrd.gz"
    if not why:
        stamp = dest / "initrd.agent"
        if not initrd.is_file() or not stamp.is_file() or stamp.read_text() != ahash:
            bb_deb = apt.download(f"busybox-static:{a.name}")
            with tempfile.TemporaryDirectory() as d:
                _unpack(bb_deb, Path(d))
                found = [Path(d, "bin/busybox"), Path(d, "usr/bin/busybox")]
                busybox = next((p for p in found if p.is_file()), None)
                if busybox is None:
                    raise SetupError(f"{bb_deb.name}: no busybox binary in the package")
                log(f"building the {name} agent and initramfs")
                build_agent(a, dest / "agent")
                build_initrd(busybox, dest / "agent", initrd, dest / "modules")
            stamp.write_text(ahash)
    g = Guest(
        name, suite, release, pkg.split(":")[0], version, str(vmlinuz), str(config), str(initrd),
        ahash, why,
    )  # fmt: skip
    cur = root / name / suite / "current.json"
    tmp = cur.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(g), indent=1) + "\n")
    os.replace(tmp, cur)
    if why:
        raise NoJit(why)
    return g


def _cached_kernel(apt: PrivateApt, a: Arch, refresh: bool, log):
    """The kernel named by current.json when it is still there (no archive
    round trip beyond the first set-up), else fetched."""
    cur = cache_root() / a.name / apt.suite / "current.json"
    if not refresh and cur.is_file():
        try:
            g = Guest.load(cur)
            kernel_dir = Path(g.vmlinuz).parent
            needs = _module_roots(Path(g.config).read_text(errors="replace"))
            if (kernel_dir / "vmlinuz").is_file() and (
                not needs or (kernel_dir / "modules" / "order").is_file()
            ):
                return g.kernel, g.package, g.version, Path(g.vmlinuz), Path(g.config)
        except (OSError, ValueError, TypeError):
            pass
    return _fetch_kernel(apt, a, log)
