"""Engines: one small interface, one module per engine, built by name.

An engine runs a whole case (its script of runs and map updates) and returns
one ``RunOutcome`` per run. ``interp`` is the reference; every other engine is
a candidate compared against it. An engine that cannot run here says why in
``unavailable()`` and is skipped with that reason, never silently.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

from harness.errors import EngineUnavailable, JitdiffError
from harness.outcome import CaseOutcome
from harness.reference.profile import LINUX, Profile
from harness.system import Case

__all__ = [
    "Engine", "ENGINES", "get", "get_spec", "base_name", "available", "narrow", "DEFAULT_ENGINES",
]  # fmt: skip


class Engine(ABC):
    name: str = ""

    def __init__(self, profile: Profile = LINUX, **options):
        self.profile = profile
        self.options = options

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this engine cannot run on this machine, or None."""
        return None

    @classmethod
    def unavailable_spec(cls, spec: str) -> str | None:
        """The same for one spec (a family such as ``guest:ARCH`` needs it)."""
        return cls.unavailable()

    @abstractmethod
    def run(self, case: Case, *, budget: int, lockstep: bool = False) -> CaseOutcome:
        """Play the case's script; ``budget`` is in the engine's own steps."""

    def listing(self, case: Case) -> str:
        return ""

    def reference_profile(self, profile: Profile) -> Profile:
        """The semantics this engine is judged by: ``profile`` itself, or a
        variant of it when the engine found its kernel does otherwise (a
        guest's JIT that counts failed tail calls, ``harness.guest.probes``)."""
        return profile

    @classmethod
    def narrow_spec(cls, spec: str, config):
        """The generator config (``generators.Config``) without the shapes
        this engine cannot run (the guests' kernels differ)."""
        return config

    def close(self) -> None:
        pass


#: name -> "module:Class", imported on first use so a missing dependency of one
#: engine never breaks the others.
ENGINES: dict[str, str] = {
    "interp": "harness.engines.interp:InterpEngine",
    "x86_64": "harness.engines.x86_64:X86Engine",
    "kernel": "harness.engines.kernel:KernelEngine",
    "kernel-native": "harness.engines.kernel_native:KernelNativeEngine",
    # a family: guest:ARCH[@SUITE] (harness.engines.guest)
    "guest": "harness.engines.guest:GuestEngine",
}

DEFAULT_ENGINES = ("x86_64",)


def _class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise JitdiffError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
    mod, cls = ENGINES[name].split(":")
    try:
        return getattr(importlib.import_module(mod), cls)
    except ImportError as e:
        raise EngineUnavailable(f"engine {name}: {e}") from None


def available(name: str) -> str | None:
    """None when the engine (a name or a spec) can run here, else the reason
    it cannot."""
    try:
        return _class(base_name(name)).unavailable_spec(name)
    except EngineUnavailable as e:
        return str(e)


def narrow(specs, config):
    """``config`` narrowed by every engine of ``specs`` (generation then never
    draws a shape one of them cannot run)."""
    for spec in specs:
        try:
            config = _class(base_name(spec)).narrow_spec(spec, config)
        except JitdiffError:
            pass
    return config


def get(name: str, profile: Profile = LINUX, **options) -> Engine:
    cls = _class(name)
    why = cls.unavailable()
    if why:
        raise EngineUnavailable(f"engine {name} is unavailable: {why}")
    return cls(profile, **options)


def base_name(spec: str) -> str:
    """The engine a spec names: ``x86_64+missing-pop`` -> ``x86_64``,
    ``guest:arm64@bookworm`` -> ``guest``."""
    if spec.startswith("guest:"):
        return "guest"
    return spec.partition("@")[0].split("+")[0]


def get_spec(spec: str, profile: Profile = LINUX, **options) -> Engine:
    """An engine from a command-line spec: ``NAME``, ``NAME@PROFILE`` (another
    semantic profile, e.g. ``interp@linux-interp``) or ``NAME+FAULT[+FAULT]``
    (the x86-64 model with named faults or a historical design, e.g.
    ``x86_64+linux-5.10``). The engine's
    ``name`` becomes the spec, so reports say exactly what ran."""
    from harness.reference.profile import PROFILES

    if base_name(spec) == "guest":  # its @ names a Debian suite, not a profile
        cls = _class("guest")
        why = cls.unavailable_spec(spec)
        if why:
            raise EngineUnavailable(f"engine {spec} is unavailable: {why}")
        return cls(profile, spec=spec, **options)
    name, _, prof = spec.partition("@")
    name, *faults = name.split("+")
    if prof:
        if prof not in PROFILES:
            raise JitdiffError(f"unknown profile {prof!r} (known: {', '.join(PROFILES)})")
        profile = PROFILES[prof]
    if faults:
        if name != "x86_64":
            raise JitdiffError(f"faults and designs are the x86_64 model's, not {name}'s")
        from harness.jit import Variant

        try:
            options["variant"] = Variant.from_names(faults)
        except ValueError as e:
            raise JitdiffError(str(e)) from None
    eng = get(name, profile, **options)
    eng.name = spec
    return eng
