"""Run the public bpf_conformance suite on any engine.

Each ``.data`` test becomes a one-program case of type ``test`` (r1 = the
test's memory, r2 = its length, the suite's convention); the expected r0 is
the suite's. Tests outside Linux semantics (``callx``, ubpf's own helpers) are
skipped with the reason; tests in ``negative/`` must fail to assemble.
"""

from __future__ import annotations

from pathlib import Path

from harness import engines
from harness.errors import JitdiffError
from harness.formats import ubpf
from harness.outcome import Status
from harness.process import Interrupted
from harness.reference.interp import check_structure
from harness.reference.profile import LINUX, Profile
from harness.system import Case, Program

__all__ = ["to_case", "run_directory", "check_test"]


def to_case(test: ubpf.ConformanceTest) -> Case:
    prog = Program("conformance", "test", list(test.insns), labels={0: "main"})
    return Case({"conformance": prog}, ctx=bytes(test.mem))


def check_test(path: Path, engine_objs) -> tuple[str, str]:
    """('pass' | 'fail' | 'skip', message) for one file on every engine; a
    file that cannot be read (a directory, a symlink loop) fails alone."""
    try:
        test = ubpf.load(str(path))
    except JitdiffError as e:
        return ("pass", f"rejected: {e}") if path.parent.name == "negative" else ("fail", str(e))
    except OSError as e:
        return "fail", f"cannot read: {e.strerror}"
    negative = path.parent.name == "negative"
    if test.skip:
        return "skip", test.skip
    if test.error is not None or test.result is None:
        return "skip", f"expects an error ({test.error})"
    case = to_case(test)
    bad = check_structure(case.programs["conformance"])
    if bad:  # uBPF masks an out-of-range shift immediate; Linux refuses to load it
        return "skip", f"the Linux verifier rejects it at {bad[0]}: {bad[1]}"
    want = test.result & ((1 << 64) - 1)
    for eng in engine_objs:
        out = eng.run(case, budget=1_000_000).runs[0]
        if out.status is Status.INVALID and not negative:
            return "skip", f"[{eng.name}] outside Linux semantics at {out.where}: {out.detail}"
        if out.status is not Status.OK:
            return "fail", f"[{eng.name}] {out.status.value} at {out.where}: {out.detail}"
        if out.retval != want:
            if negative:  # a negative test whose expectation is wrong must be caught
                continue
            return "fail", f"[{eng.name}] r0 = {out.retval:#x}, expected {want:#x}"
        if negative:
            return "fail", f"[{eng.name}] negative test's wrong result was accepted"
    return "pass", ""


def run_directory(
    root: Path, names: list[str], *, profile: Profile = LINUX, verbose: bool = False
) -> tuple[int, int, int]:
    """Run every ``*.data`` file of ``root`` (and of ``../negative`` next to
    a ``tests`` directory) on the reference and the engines ``names``, all
    under ``profile`` (an engine spec's own ``@PROFILE`` wins). A directory
    with no ``.data`` file is an error, never an empty pass."""
    if not root.is_dir():
        raise JitdiffError(f"{root}: no such directory")
    files = sorted(root.glob("*.data"))
    if root.name != "negative" and (root / ".." / "negative").is_dir() and root.name == "tests":
        files += sorted((root / ".." / "negative").resolve().glob("*.data"))
    if not files:
        hint = f" (the suite's are in {root / 'tests'})" if (root / "tests").is_dir() else ""
        raise JitdiffError(f"{root}: no .data files{hint}")
    engine_objs = [engines.get_spec(n, profile) for n in dict.fromkeys(["interp", *names])]
    counts = {"pass": 0, "fail": 0, "skip": 0}
    try:
        for path in files:
            verdict, msg = check_test(path, engine_objs)
            counts[verdict] += 1
            if verdict == "fail" or (verbose and msg):
                print(f"{path}: {verdict.upper()} {msg}")
    except KeyboardInterrupt:
        raise Interrupted(
            f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped, "
            f"interrupted after {sum(counts.values())} of {len(files)}"
        ) from None
    finally:
        for e in engine_objs:
            e.close()
    return counts["pass"], counts["fail"], counts["skip"]
