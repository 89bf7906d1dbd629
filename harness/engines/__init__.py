"""Engines: one small interface, one module per engine, built by name.

An engine runs a whole case (its script of runs and map updates) and returns
one ``RunOutcome`` per run. ``interp`` is the reference; every other engine is
a candidate compared against it. An engine that cannot run here says why in
``unavailable()`` and is skipped with that reason, never silently.
"""

from __future__ import annotations

import functools
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.errors import CaseError, EngineUnavailable, JitdiffError
from harness.outcome import CaseOutcome, RunOutcome, Status
from harness.reference.profile import LINUX, Profile
from harness.system import Case

__all__ = [
    "Engine",
    "ENGINES",
    "FAMILIES",
    "MODIFIERS",
    "Spec",
    "parse_spec",
    "get",
    "get_spec",
    "base_name",
    "available",
    "narrow",
    "DEFAULT_ENGINES",
]


class Engine(ABC):
    """Every engine's ``run`` first checks the case (``Case.check``): a case
    no kernel would load (a jump into another function, a map of terabytes)
    comes back as INVALID runs, never as an engine's exception or exhaustion,
    whoever built it (a file, a generator, a reducer)."""

    name: str = ""
    #: whether to run a case the reference could not finish (its verdict is
    #: poisoned whatever the engine does); False where a runaway costs a
    #: watchdog and a reboot (guests)
    runs_runaways: bool = True
    #: shrinking attempts per phase a campaign with this engine takes by
    #: default (None: the shrinker's own); fewer where an attempt is dear
    shrink_tries: int | None = None

    def __init__(self, profile: Profile = LINUX, **options):
        self.profile = profile
        self.options = options

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "run" in cls.__dict__:
            cls.run = _checked(cls.__dict__["run"])

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


def _checked(run):
    @functools.wraps(run)
    def checked(self, case: Case, *args, **kw) -> CaseOutcome:
        try:
            case.check()
        except CaseError as e:
            n = sum(1 for s in case.script() if s.kind == "run")
            return CaseOutcome(self.name, [RunOutcome(Status.INVALID, detail=str(e))] * n)
        return run(self, case, *args, **kw)

    return checked


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


def shrink_tries(specs) -> int | None:
    """The fewest default shrinking attempts any engine of ``specs`` asks for
    (``Engine.shrink_tries``), or None."""
    tries = []
    for spec in specs:
        try:
            tries.append(_class(base_name(spec)).shrink_tries)
        except JitdiffError:
            pass
    return min((t for t in tries if t is not None), default=None)


def get(name: str, profile: Profile = LINUX, **options) -> Engine:
    cls = _class(name)
    why = cls.unavailable()
    if why:
        raise EngineUnavailable(f"engine {name} is unavailable: {why}")
    return cls(profile, **options)


@dataclass(frozen=True)
class Spec:
    """A parsed engine spec: what ``get_spec`` will build."""

    #: the spec as written; the engine's ``name`` in reports
    text: str
    #: the key in ENGINES
    engine: str
    #: another semantic profile (``@PROFILE``), or None for the caller's
    profile: Profile | None = None
    #: constructor options the spec adds (the x86_64 model's variant, say)
    options: dict = field(default_factory=dict)


def _x86_modifiers(words: list[str]) -> dict:
    from harness.jit import Variant

    try:
        return {"variant": Variant.from_names(words)}
    except ValueError as e:
        raise JitdiffError(f"x86_64+{'+'.join(words)}: {e}") from None


#: engine name -> parser of its ``+WORD`` modifiers into constructor options;
#: an engine without an entry takes none
MODIFIERS: dict[str, Callable[[list[str]], dict]] = {"x86_64": _x86_modifiers}

#: spec prefix (``family:``) -> the parser of the whole spec, for engine
#: families whose specs are not ``NAME[+MOD...][@PROFILE]``
FAMILIES: dict[str, Callable[[str], Spec]] = {}


def _guest_spec(text: str) -> Spec:
    """``guest:ARCH[@SUITE]``: its ``@`` names a Debian suite, not a profile."""
    from harness.engines.guest import parse_spec as guest_spec

    guest_spec(text)
    return Spec(text, "guest", None, {"spec": text})


FAMILIES["guest:"] = _guest_spec


def parse_spec(text: str) -> Spec:
    """The one check of an engine spec, before any work starts: ``NAME``,
    ``NAME@PROFILE`` (another semantic profile, e.g. ``interp@linux-interp``)
    or ``NAME+MOD[+MOD]`` (the x86-64 model with named faults or a historical
    design, e.g. ``x86_64+linux-5.10``), or a registered family's own form.
    Raises ``JitdiffError`` naming what is wrong; imports no engine."""
    family, colon, _ = text.partition(":")
    if colon and family + ":" in FAMILIES:
        return FAMILIES[family + ":"](text)
    head, at, prof = text.partition("@")
    name, *mods = head.split("+")
    if name not in ENGINES:
        known = ", ".join([*ENGINES, *(f + "ARCH" for f in FAMILIES)])
        raise JitdiffError(f"unknown engine {name!r} in {text!r} (known: {known})")
    profile = None
    if at:
        from harness.reference.profile import PROFILES

        if prof not in PROFILES:
            raise JitdiffError(f"{text}: unknown profile {prof!r} (known: {', '.join(PROFILES)})")
        profile = PROFILES[prof]
    options: dict = {}
    if mods:
        if name not in MODIFIERS:
            raise JitdiffError(f"{text}: engine {name} takes no +modifiers")
        if not all(mods):
            raise JitdiffError(f"{text}: an empty +modifier")
        options = MODIFIERS[name](mods)
    return Spec(text, name, profile, options)


def base_name(spec: str) -> str:
    """The engine a spec names, read without checking the rest (``parse_spec``
    is the check): ``x86_64+missing-pop`` -> ``x86_64``, ``guest:arm64@bookworm``
    -> ``guest``."""
    family, colon, _ = spec.partition(":")
    if colon and family + ":" in FAMILIES:
        return family
    return spec.partition("@")[0].split("+")[0]


def get_spec(spec: str, profile: Profile = LINUX, **options) -> Engine:
    """An engine from a command-line spec (``parse_spec``). The engine's
    ``name`` becomes the spec, so reports say exactly what ran."""
    s = parse_spec(spec)
    cls = _class(s.engine)
    why = cls.unavailable_spec(spec)
    if why:
        raise EngineUnavailable(f"engine {spec} is unavailable: {why}")
    eng = cls(s.profile or profile, **{**options, **s.options})
    eng.name = spec
    return eng
