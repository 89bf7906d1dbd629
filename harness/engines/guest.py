"""Another architecture's real JIT: a Debian kernel in a qemu guest
(``guest:ARCH`` or ``guest:ARCH@SUITE``, e.g. ``guest:riscv64``,
``guest:arm64@bookworm``).

The guest boots once per engine instance (so once per campaign worker) and
serves every case through its agent (``harness.guest``): the case is loaded
as the host's ``kernel-native`` loads it, its script played with
``BPF_PROG_TEST_RUN``, and the answer judged by the same code, so the same
oracles compare it with ``interp`` (counts through maps, the 32-bit retval,
``unobserved``).

Crashes are findings: a guest whose kernel panics, oopses or WARNs (the
kernel command line makes all three end the guest) or whose agent does not
answer within ``timeout`` seconds gives ``CRASHED`` runs; the case is saved
as a reproducer with the console excerpt, kernel release and arch, and the
next case boots a fresh guest. The host's list of known-crashing shapes
(``harness.kernel.crashes``) does not apply: the host is never at stake.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from harness.campaign.runner import expectation_failures
from harness.engines import Engine
from harness.engines.kernel_native import native_outcomes
from harness.errors import EngineUnavailable, JitdiffError, Unsupported
from harness.guest import protocol
from harness.guest.arches import ARCHES, DEFAULT_SUITE, SUITES
from harness.guest.probes import PROBES, case_needs, narrow_switches, probe_cases
from harness.guest.setup import Guest, agent_hash, host_missing, installed
from harness.guest.vm import GuestDown, Vm, excerpt, kvm_problem
from harness.kernel.btf import Btf, BtfError
from harness.kernel.crashes import STACK_OVERFLOW, kernel_report, signature
from harness.kernel.worker import DEFAULT_CRASH_DIR, Answer, Crash, KernelCrash, save_reproducer
from harness.outcome import CaseOutcome
from harness.reference.helpers import HELPER_IDS
from harness.reference.profile import LINUX, Profile
from harness.system import Case

__all__ = ["GuestEngine", "parse_spec", "verify"]

#: seconds a request may take before the guest counts as hung
REQUEST_TIMEOUT = 60.0


def parse_spec(spec: str) -> tuple[str, str]:
    """``guest:ARCH[@SUITE]`` -> (arch, suite); a clear error otherwise."""
    m = re.fullmatch(r"guest:([\w-]+)(?:@(\w+))?", spec)
    if not m:
        raise JitdiffError(f"bad guest engine {spec!r}: write guest:ARCH or guest:ARCH@SUITE")
    name, suite = m.group(1), m.group(2) or DEFAULT_SUITE
    if name not in ARCHES:
        raise JitdiffError(f"unknown guest arch {name!r} in {spec} (known: {', '.join(ARCHES)})")
    if suite not in SUITES:
        raise JitdiffError(f"unknown suite {suite!r} in {spec} (known: {', '.join(SUITES)})")
    return name, suite


class GuestEngine(Engine):
    """Options: ``spec`` (``guest:ARCH[@SUITE]``), ``timeout`` (seconds per
    request), ``crash_dir``, ``stop_on_crash``."""

    name = "guest"
    #: what the reference (with this guest's probed semantics) cannot finish,
    #: the kernel runs until its soft-lockup watchdog fires (10 s, then a
    #: reboot): the 6.1 hierarchy explosions, about 5% of a 6.1 campaign
    runs_runaways = False
    #: each shrinking attempt is a request, and one that still crashes the
    #: guest a reboot: the shrinker's default 3,000 would take hours a crash
    shrink_tries = 200

    def __init__(self, profile: Profile = LINUX, **options):
        super().__init__(profile, **options)
        spec = options.get("spec", "guest:arm64")
        self.arch, self.suite = parse_spec(spec)
        self.name = spec
        g = installed(self.arch, self.suite)
        if g is None or g.no_jit:
            raise EngineUnavailable(self.unavailable_spec(spec) or "no guest")
        self.guest: Guest = g
        self.vm = Vm(g)
        self.timeout = options.get("timeout", REQUEST_TIMEOUT)
        self.crash_dir = Path(options.get("crash_dir") or DEFAULT_CRASH_DIR)
        self.crashes: list[Crash] = []
        self._btf: Btf | None = None
        self._btf_raw = b""
        #: guests booted so far (the first, and one after each crash)
        self.boots = 0
        #: booted in the background after a first crash, to replace the next
        #: crashed guest at once
        self._spare: Vm | None = None
        self._console_seen = 0
        #: why this guest runs under TCG ("" under KVM), probed at first boot
        self.kvm_problem = ""

    @classmethod
    def unavailable(cls) -> str | None:
        return "name an architecture: guest:ARCH or guest:ARCH@SUITE"

    @classmethod
    def unavailable_spec(cls, spec: str) -> str | None:
        try:
            name, suite = parse_spec(spec)
        except JitdiffError as e:
            return str(e)
        if suite not in ARCHES[name].suites:
            return f"Debian {suite} has no {name} kernel (suites: {', '.join(ARCHES[name].suites)})"
        g = installed(name, suite)
        if g is None:
            return f"no {name} guest for {suite}: run `jitdiff guest setup {name} --suite {suite}`"
        if g.no_jit:
            return g.no_jit
        if g.agent != agent_hash():
            return (
                f"the {name} guest's agent is older than this jitdiff: "
                f"run `jitdiff guest setup {name} --suite {suite}`"
            )
        need = host_missing(ARCHES[name])
        if need:
            return f"the host lacks {', '.join(need)} (apt-get install them, or run guest setup)"
        return None

    # -- the guest ------------------------------------------------------------

    def _ensure(self) -> protocol.Hello:
        if self.vm.hello is not None:
            return self.vm.hello
        if self.vm.boots == 0:
            self.kvm_problem = kvm_problem(self.guest)
            self.vm.accel = "tcg" if self.kvm_problem else "kvm"
        hello = self._from_spare()
        if hello is None:
            try:
                hello = self.vm.boot()
            except GuestDown as e:
                raise EngineUnavailable(
                    f"{self.name}: the guest did not boot ({e.how})\n{e.console}".rstrip()
                ) from None
        self.boots += 1
        if self.crashes and self._spare is None:
            # a kernel that crashed once will again (section 0's shape, say):
            # the next guest boots now, behind the work, not after the crash
            self._spare = Vm(self.guest, accel=self.vm.accel)
            self._spare.start()
        if hello.jit_enable not in ("1", "2"):
            self.vm.close()
            raise EngineUnavailable(
                f"{self.name}: net.core.bpf_jit_enable is {hello.jit_enable!r} in the guest "
                "(the interpreter would run, not the JIT)"
            )
        # one kernel, one BTF: parsed when a kfunc first needs it (0.5 s),
        # then kept across reboots (a crash's reboot is the same kernel)
        self._btf_raw = hello.btf
        # what the console holds now is the boot's, not a case's
        self._console_seen = len(self.vm.console())
        return hello

    def _from_spare(self):
        """The spare guest's hello, now that it replaces the dead one (None:
        no spare, or it did not come up either: boot as usual)."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        try:
            hello = spare.ready()
        except GuestDown:
            spare.close()
            return None
        self.vm.close()
        self.vm = spare
        return hello

    def _kfunc_id(self, name: str) -> int:
        if self._btf is None and self._btf_raw:
            try:
                self._btf = Btf(self._btf_raw)
            except BtfError:
                self._btf_raw = b""
        if self._btf is None:
            raise Unsupported(f"{self.name}: the guest kernel has no BTF, so no kfunc {name}")
        try:
            return self._btf.func_id(name)
        except BtfError:
            raise Unsupported(f"{self.name}: the guest kernel has no kfunc {name}") from None

    @property
    def release(self) -> str:
        return self.vm.hello.release if self.vm.hello else self.guest.kernel

    def answer(self, case: Case, *, images: bool = False):
        """Play ``case`` in the guest: (``Answer``, program infos)."""
        self._ensure()
        try:
            req = protocol.build(case, self._kfunc_id, images=images)
        except Unsupported as e:
            return Answer("unsupported", str(e)), {}
        except JitdiffError as e:
            return Answer("error", str(e)), {}
        try:
            data = self.vm.call(req.payload, self.timeout)
        except GuestDown as e:
            return self._crashed(case, e.how, e.console), {}
        # a kernel bug the kernel survived (a BUG: line without a panic)
        text = self.vm.console()
        new, self._console_seen = text[self._console_seen :], len(text)
        if kernel_report(new.splitlines()):
            self.vm.close()
            self.vm.hello = None
            return self._crashed(case, "logged a kernel bug", excerpt(new)), {}
        try:
            return protocol.parse_reply(req, data)
        except (ValueError, IndexError) as e:
            return Answer("error", f"{self.name}: malformed reply: {e}"), {}

    def _crashed(self, case: Case, how: str, console: str) -> Answer:
        self.vm.hello = None  # the next case boots a fresh guest
        sig = f"guest-{self.arch}-" + signature(console, fallback=how)
        head = (
            f"kernel crash reproducer ({sig}): {self.name}, Linux {self.release} "
            f"({self.guest.package} {self.guest.version}) {how} while loading/running this case"
        )
        note = [head] + [f"  {ln}" for ln in console.splitlines()]
        # a probe's crash needs no reproducer: the probe is one (probes.py)
        rep = save_reproducer(self.crash_dir, case, sig, note) if self.crash_dir else "a probe"
        crash = Crash(sig, how, console, 0, rep)
        self.crashes.append(crash)
        if self.options.get("stop_on_crash"):
            raise KernelCrash(crash)
        # the kind first: it is the divergence's signature, and a stack
        # overrun is the known finding whatever the system (kernel-findings §0)
        kind = "kernel stack overflow: " if STACK_OVERFLOW.search(console) else ""
        return Answer(
            "crashed",
            f"{kind}guest kernel crash {sig}: {self.name} {self.release}, {how}; reproducer {rep}",
            console,
            crash=crash,
        )

    # -- capabilities (harness.guest.probes) ------------------------------------------

    def capabilities(self) -> dict[str, str]:
        """Probed capability -> "" when the guest's kernel has it, else why
        not; probed once per kernel and agent, then read from the cache."""
        path = Path(self.guest.initrd).parent / "capabilities.json"
        try:
            cached = json.loads(path.read_text())
            # a probe added since the cache was written is run then
            if cached.get("agent") == self.guest.agent and cached["found"].keys() == PROBES.keys():
                return cached["found"]
        except (OSError, ValueError, KeyError):
            pass
        crash_dir, self.crash_dir = self.crash_dir, None
        try:
            found, crashed = self._probe()
        finally:
            self.crash_dir = crash_dir
        if not crashed:  # a probe that crashed the guest once says nothing of the kernel
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"agent": self.guest.agent, "found": found}, indent=1))
            os.replace(tmp, path)
        return found

    def _probe(self) -> tuple[dict[str, str], bool]:
        found: dict[str, str] = {}
        crashed = False
        for name, case in probe_cases().items():
            ans, _ = self.answer(case)
            if ans.status == "crashed":
                # again on a fresh guest: twice is the kernel's answer, cached
                # (a crash that does not repeat says nothing: nothing cached)
                again, _ = self.answer(case)
                if again.status != "crashed":
                    crashed, ans = True, again
                else:
                    found[name] = f"crashed the guest: {ans.detail.split(':', 1)[0]}"
                    continue
            runs = native_outcomes(case, ans)
            failed = expectation_failures(case, runs) if ans.status == "ok" else []
            if ans.status == "ok" and not failed and all(not r.error for r in ans.runs):
                found[name] = ""
            else:
                found[name] = (failed[0] if failed else ans.detail or ans.status).splitlines()[0]
        return found, crashed

    @classmethod
    def narrow_spec(cls, spec: str, config):
        """``config`` without the shapes the guest's kernel cannot load (from
        the capabilities probed at set-up; unchanged when never probed)."""
        try:
            name, suite = parse_spec(spec)
        except JitdiffError:
            return config
        g = installed(name, suite)
        if g is None or g.no_jit:
            return config
        try:
            cached = json.loads((Path(g.initrd).parent / "capabilities.json").read_text())
        except (OSError, ValueError):
            return config
        found = cached.get("found", {})
        if found.keys() != PROBES.keys():
            # probes added since set-up: run them now (one boot, then cached),
            # or the campaign draws shapes the engine can only call UNSUPPORTED
            eng = cls(spec=spec)
            try:
                found = eng.capabilities()
            except JitdiffError:
                pass
            finally:
                eng.close()
        return config.but(**narrow_switches(found))

    def reference_profile(self, profile: Profile) -> Profile:
        """``profile`` with the semantics the probes found in this JIT."""
        caps = self.capabilities()
        if caps.get("empty_slot_keeps_budget", ""):
            if caps.get("empty_slot_keeps_budget_after_call", "x"):
                profile = profile.but(
                    name=f"{profile.name}+empty-slot-counts", empty_slot_consumes_budget=True
                )
            else:  # riscv64: only in a function without calls
                inlined = {
                    HELPER_IDS[helper]
                    for probe, helper in (
                        ("_after_smp_id", "bpf_get_smp_processor_id"),
                        ("_after_lookup", "bpf_map_lookup_elem"),
                    )
                    if caps.get("empty_slot_keeps_budget" + probe, "")
                }
                profile = profile.but(
                    name=f"{profile.name}+empty-slot-counts-without-calls",
                    empty_slot_consumes_budget=True,
                    empty_slot_free_in_calling_functions=True,
                    inlined_helpers=frozenset(inlined),
                )
        if caps.get("tail_call_counter_shared", "").startswith("run "):
            # it loaded and counted otherwise (a refusal says nothing)
            profile = profile.but(
                name=f"{profile.name}+counter-per-frame", tail_call_counter_per_frame=True
            )
        if caps.get("map_op_errors_64bit", "").startswith("run "):
            profile = profile.but(
                name=f"{profile.name}+32-bit-map-errors", map_op_errors_32bit=True
            )
        if caps.get("register_shifts_masked", ""):
            profile = profile.but(
                name=f"{profile.name}+unmasked-shifts", shift_amount_masked=False
            )
        return profile

    # -- the engine interface ---------------------------------------------------

    def run(self, case: Case, *, budget: int = 0, lockstep: bool = False) -> CaseOutcome:
        # budget and lockstep mean nothing here: the verifier bounds every run
        missing = self._missing(case)
        if missing:
            return CaseOutcome(self.name, native_outcomes(case, Answer("unsupported", missing)))
        ans, _ = self.answer(case)
        return CaseOutcome(self.name, native_outcomes(case, ans))

    def _missing(self, case: Case) -> str:
        need = case_needs(case)
        if not need:
            return ""
        caps = self.capabilities()
        for cap in sorted(need):
            if caps.get(cap):
                return f"{self.name} (Linux {self.release}) has no {cap}: {caps[cap]}"
        return ""

    def listing(self, case: Case) -> str:
        from harness.guest.listing import render

        ans, infos = self.answer(case, images=True)
        if not infos:
            raise JitdiffError(f"no {self.name} listing: {ans.detail or ans.status}")
        machine = self.vm.hello.machine if self.vm.hello else "?"
        head = f"{self.name}: Linux {self.release} ({machine})"
        return head + "\n" + render(case, infos, ARCHES[self.arch])

    def close(self) -> None:
        self.vm.close()
        if self._spare is not None:
            self._spare.close()
            self._spare = None


def verify(spec: str) -> str:
    """Boot a set-up guest once and probe it: one line saying how long the
    boot took and what its kernel loads (``jitdiff guest setup`` ends so)."""
    eng = GuestEngine(spec=spec)
    try:
        hello = eng._ensure()
        caps = eng.capabilities()
    finally:
        eng.close()
    has = [c for c, why in caps.items() if not why]
    lacks = [f"{c} ({why})" for c, why in caps.items() if why]
    line = (
        f"{spec}: booted in {eng.vm.boot_seconds:.1f} s ({eng.vm.accel.upper()}"
        f"{'' if eng.vm.accel == 'kvm' else ': ' + eng.kvm_problem}), Linux {hello.release} "
        f"{hello.machine}, bpf_jit_enable={hello.jit_enable}, "
        f"BTF {'yes' if hello.btf else 'none'}; loads: {', '.join(has) or 'none of the probes'}"
    )
    return line + (f"; not: {'; '.join(lacks)}" if lacks else "")
