"""``jitdiff``: the command line. Glue only; the work is in the libraries.

Exit codes: 0 success, 1 a divergence or failed expectation, 2 bad input or
an unusable engine (one line on stderr, never a traceback), 130 interrupted
(the summary so far printed first). Streams and files: docs/cli.md. Every
engine spec, the profile and every number are checked before any work starts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from harness import engines, formats
from harness.errors import JitdiffError
from harness.process import Interrupted
from harness.reference.profile import PROFILES

__all__ = ["main"]


def _engines(args) -> list[str]:
    """The engine specs asked for (checked in ``main`` before any verb runs)."""
    return args.engine or list(engines.DEFAULT_ENGINES)


def _available(names: list[str], *, skip: bool = False) -> list[str]:
    """The engines that can run here; an unusable one is an error (exit 2), or
    with ``skip`` a printed note and left out."""
    usable = []
    for n in names:
        why = engines.available(n)
        if why and not skip:
            raise JitdiffError(f"engine {n} is unavailable: {why}")
        if why:
            print(f"skipping engine {n}: {why}", file=sys.stderr)
        else:
            usable.append(n)
    return usable


def _number(kind, *, minimum=None, above=None):
    """An argparse type: a finite number, at least ``minimum`` or above
    ``above`` (zero workers or rounds would report nothing as if it were a
    result; nan and inf seconds are no duration)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        if above is not None and value <= above:
            bound = "zero" if above == 0 else above
            raise argparse.ArgumentTypeError(f"must be above {bound}, not {text}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _shards(text: str) -> range:
    from harness.campaign.shards import parse_shards

    return parse_shards(text)


def _shard_size() -> int:
    from harness.campaign.shards import SHARD_SIZE

    return SHARD_SIZE


def _cluster_address(text: str) -> str:
    """``auto``, ``ray://HOST:PORT`` or ``HOST:PORT`` (argparse type)."""
    host, sep, port = text.removeprefix("ray://").rpartition(":")
    if text != "auto" and not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(
            f"expected ray://HOST:PORT, HOST:PORT or auto, not {text!r}"
        )
    return text


def _positive(kind):
    return _number(kind, above=0)


def _options(args) -> dict:
    """Engine options from the command line (only what was asked for)."""
    return {"allow_known_crashes": True} if getattr(args, "allow_known_crashes", False) else {}


def _profile(args):
    try:
        return PROFILES[args.profile]
    except KeyError:
        raise JitdiffError(
            f"unknown profile {args.profile!r} (known: {', '.join(PROFILES)})"
        ) from None


def _print_runs(path, out, fails: list[str]) -> None:
    shown = ""
    for i, r in enumerate(out.runs):
        where = f" at {r.where}" if r.where and not r.ok else ""
        head, _, more = r.detail.partition("\n") if not r.ok else ("", "", "")
        detail = f" ({head})" if head else ""
        print(
            f"{path} [{out.engine}] run {i}: {r.status.value} retval={r.retval} "
            f"tail_calls={r.tail_calls}{where}{detail}"
        )
        if more and more != shown:  # a verifier log is the same for every run: once
            print("\n".join("    " + ln for ln in more.splitlines()))
            shown = more
    for f in fails:
        print(f"{path} [{out.engine}] FAIL {f}")


def cmd_run(args) -> int:
    from harness import report
    from harness.campaign.runner import Runner, expectation_failures
    from harness.report import document

    names = _engines(args) if args.engine else ["interp"]
    runner = Runner(names, _profile(args), **_options(args))
    status = 0
    payload: list[dict] = []
    done = 0
    try:
        for path in args.cases:
            case = formats.load_any(path)
            res = runner.check(case)
            outs = [res.reference] + [o for _, _, o in res.candidates.values()]
            entry: dict = {
                "case": str(path),
                "verdicts": {n: v.value for n, (v, _, _) in res.candidates.items()},
                "outcomes": [],
                "divergences": [],
            }
            for out in outs:
                if out.engine != "interp" and out.engine not in names:
                    continue
                fails = expectation_failures(case, out.runs)
                status |= bool(fails)
                if args.json:
                    entry["outcomes"].append(document.outcome(out, fails))
                else:
                    _print_runs(path, out, fails)
            for name, d in res.divergences:
                status = 1
                eng = next(e for e in runner.engines if e.name == name)
                step = runner.pinpoint(case, name, d.run) if d.oracle != "rejected" else None
                if args.json:
                    entry["divergences"].append(document.divergence(name, d, step))
                    continue
                print(
                    report.render_divergence(
                        case,
                        name,
                        d,
                        res.reference_for(name).runs,
                        cand_listing=eng.listing(case),
                        step=step,
                    )
                )
            payload.append(entry)
            done += 1
            sys.stdout.flush()  # a case's lines as soon as it is judged
    except KeyboardInterrupt:
        if args.json:  # stdout stays one JSON document: its status says 130
            _print_json(payload, status, interrupted=True)
            raise Interrupted() from None
        raise Interrupted(f"interrupted after {done} of {len(args.cases)} case files") from None
    finally:
        runner.close()
    if args.json:
        _print_json(payload, status)
    return status


def _print_json(cases: list[dict], status: int, *, interrupted: bool = False) -> None:
    from harness.report import document

    print(json.dumps(document.document(cases, 130 if interrupted else status), indent=1))


def cmd_conformance(args) -> int:
    from harness.campaign.conformance import run_directory

    passed, failed, skipped = run_directory(
        Path(args.dir),
        _engines(args) if args.engine else ["interp"],
        profile=_profile(args),
        verbose=args.verbose,
    )
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


def cmd_show(args) -> int:
    case = formats.load_any(args.case)
    names = _engines(args)
    if sorted(names) == ["kernel", "x86_64"] and not args.sequential:
        # model and kernel side by side, differences marked (harness.report.fidelity)
        from harness.jit import compile_system
        from harness.report.fidelity import compare, kernel_system, side_by_side

        kern = engines.get("kernel", _profile(args))
        try:
            native, dead, why = kernel_system(kern, case)
        finally:
            kern.close()
        if native is None:
            raise JitdiffError(f"no kernel listing: {why}")
        model = compile_system(case, _profile(args))
        print(side_by_side(compare(case, model, native, dead=dead), width=args.width), end="")
        return 0
    for name in names:
        eng = engines.get_spec(name, _profile(args), **_options(args))
        print(f"==== {name}")
        print(eng.listing(case))
        eng.close()
    return 0


def cmd_guest(args) -> int:
    from harness.guest import setup as gs
    from harness.guest.arches import ARCHES

    if args.action == "setup":
        if not args.arch:
            raise JitdiffError(f"guest setup needs an arch (known: {', '.join(ARCHES)})")
        for name in args.arch:
            from harness.engines.guest import verify

            g = gs.setup(name, args.suite, refresh=args.refresh, log=lambda m: print(m, flush=True))
            print(f"guest:{name}@{g.suite}: Linux {g.kernel} ({g.package} {g.version}) set up")
            print(verify(f"guest:{name}@{g.suite}"), flush=True)
        return 0
    for name in args.arch or list(ARCHES):
        for suite in ARCHES[name].suites if name in ARCHES else ():
            g = gs.installed(name, suite)
            if g is not None:
                state = f"no JIT: {g.no_jit}" if g.no_jit else "ready"
                print(f"guest:{name}@{suite}\tLinux {g.kernel}\t{state}")
    return 0


def cmd_fuzz(args) -> int:
    from harness.campaign.fuzz import Campaign, default_workers, run_campaign

    if args.cluster is not None or args.shard is not None:
        return _fuzz_shards(args)
    # an engine that cannot run here is skipped with its reason; the others run
    names = tuple(_available(_engines(args), skip=True))
    if not names:
        raise JitdiffError("no usable engine (see the reasons above)")
    if args.time is None and args.examples is None:
        args.time = 60.0
    camp = Campaign(
        engines=names,
        seed=args.seed,
        examples=args.examples,
        seconds=args.time,
        workers=args.workers or default_workers(),
        profile=_profile(args),
        corpus=None if args.no_save else Path(args.corpus),
        shrink=not args.no_shrink,
        shrink_tries=_shrink_tries(args, names),
        stop_on_first=args.stop_on_first,
        progress=True,
        report_known=args.report_known,
        options=_options(args),
    )
    summary = run_campaign(camp, out=sys.stdout)
    print(summary.render())
    if summary.interrupted:
        print("jitdiff: interrupted", file=sys.stderr)
        return 130
    return 1 if summary.findings else 0


def _shrink_tries(args, names) -> int | None:
    from harness import engines

    return args.shrink_tries if args.shrink_tries is not None else engines.shrink_tries(names)


def _fuzz_shards(args) -> int:
    """``--shard`` (here) and ``--cluster`` (on Ray): budgets are counts."""
    from harness.campaign.fuzz import Campaign, default_workers, run_campaign
    from harness.campaign.shards import shard_campaign

    if args.time is not None or args.examples is not None:
        raise JitdiffError("--shard and --cluster take no --time or --examples: a shard is a count")
    if args.stop_on_first:
        raise JitdiffError("--stop-on-first would make a shard's findings depend on timing")
    if args.cluster is not None and args.shard is None:
        raise JitdiffError("--cluster needs --shard A-B/N: which shards of the seed to run")
    if args.cluster is not None:
        # the driver need not run the engines (a guest, the kernel): the nodes
        # that advertise them do; only the names are checked here
        names = tuple(_engines(args))
    else:
        names = tuple(_available(_engines(args)))
    camp = Campaign(
        engines=names,
        seed=args.seed,
        workers=args.workers or default_workers(),
        profile=_profile(args),
        corpus=None if args.no_save else Path(args.corpus),
        shrink=not args.no_shrink,
        shrink_tries=_shrink_tries(args, names),
        progress=True,
        report_known=args.report_known,
        options=_options(args),
    )
    print(
        f"seed {args.seed}, shards {args.shard.start}-{args.shard.stop - 1} "
        f"({args.shard_size} systems each: cases {args.shard.start * args.shard_size}"
        f"-{args.shard.stop * args.shard_size - 1})",
        file=sys.stderr,
    )
    if args.cluster is None:
        summary = run_campaign(shard_campaign(camp, args.shard, args.shard_size), out=sys.stdout)
        print(summary.render())
        failed: list[str] = []
    else:
        from harness.campaign.cluster import ledger_path, run_cluster

        ledger = None if camp.corpus is None else ledger_path(camp, args.shard_size)
        summary, failed = run_cluster(
            camp, args.shard, address=args.cluster, size=args.shard_size, ledger=ledger,
            out=sys.stdout,
        )  # fmt: skip
        print(summary.render())
        if ledger is not None:
            again = "the same command resumes from it" if summary.interrupted else "finished shards"
            print(f"ledger: {ledger} ({again})")
        for line in failed:
            print(f"FAILED {line} (not in the ledger: the next run retries it)")
    if summary.interrupted:
        print("jitdiff: interrupted", file=sys.stderr)
        return 130
    if summary.findings:
        return 1
    return 2 if failed else 0


def cmd_replay(args) -> int:
    from harness.campaign.runner import Runner, expectation_failures

    paths = [Path(p) for p in (args.paths or [args.corpus])]
    files = formats.inputs_under(*paths)
    if not files:
        raise JitdiffError(f"no case files under {', '.join(map(str, paths))}")
    names = args.engine or [n for n in engines.ENGINES if n != "interp"]
    usable = _available(names, skip=True)
    opts = _options(args)
    if any(engines.base_name(n).startswith("kernel") for n in usable):
        # a kernel crash reproducer goes with the corpus being replayed
        opts["crash_dir"] = Path(args.corpus) / "crashes"
    runner = Runner(usable, _profile(args), **opts)
    bad = done = 0
    try:
        for f in files:
            case = formats.load_any(f)
            res = runner.check(case)
            problems = [f"interp: {x}" for x in expectation_failures(case, res.reference.runs)]
            problems += [f"{n}: {d}" for n, d in res.divergences]
            status = "FAIL" if problems else "ok"
            print(f"{status:4s} {f}" + "".join(f"\n     {p}" for p in problems), flush=True)
            bad += bool(problems)
            done += 1
    except KeyboardInterrupt:
        raise Interrupted(
            f"{done - bad} passed, {bad} failed, interrupted after {done} of {len(files)}"
        ) from None
    finally:
        runner.close()
    print(f"{len(files) - bad} passed, {bad} failed")
    return 1 if bad else 0


def cmd_export(args) -> int:
    import re

    from harness.report import selftest

    case = formats.load_any(args.case)
    name = args.name or selftest.default_name(args.case)
    test = selftest.export(case, name, source=str(args.case), profile=_profile(args))
    for path in selftest.write(test, args.selftest, force=args.force):
        print(f"wrote {path}")
    why = "--no-check" if args.no_check else selftest.toolchain()
    if why:
        print(f"not checked: {why}")
        return 0
    names = _available(_engines(args) if args.engine else ["x86_64"], skip=True)
    problems = selftest.check(test, case, tuple(names), profile=_profile(args))
    for p in problems:
        print(f"ROUND TRIP FAIL {p}")
    if not problems:
        print(
            f"checked: progs/{name}.c compiles (clang -target bpf -O2 -g) and its object "
            f"runs as the case on {', '.join(['interp', *names])}"
        )
    return 1 if problems else 0


def cmd_bench(args) -> int:
    from harness.campaign.bench import bench

    names = _available(_engines(args))
    profile = "" if args.profile == "linux-6.18" else f" --profile {args.profile}"
    print(
        f"$ jitdiff bench {' '.join('--engine ' + n for n in names)} --cases {args.cases} "
        f"--seed {args.seed} --rounds {args.rounds}{profile}"
    )
    print(
        bench(
            names,
            cases=args.cases,
            seed=args.seed,
            rounds=args.rounds,
            profile=_profile(args),
            options=_options(args),
        )
    )
    return 0


def cmd_mutants(args) -> int:
    from harness.campaign.mutants import MUTANTS, render, scoreboard

    specs = args.only or list(MUTANTS)
    for spec in specs:
        if spec not in MUTANTS:
            raise JitdiffError(f"unknown mutant {spec!r} (known: {', '.join(MUTANTS)})")
    print(f"$ jitdiff mutants --time {args.time:g} --workers {args.workers} --seed {args.seed}")
    scores = scoreboard(
        specs,
        seconds=args.time,
        workers=args.workers,
        seed=args.seed,
        shrink=not args.no_shrink,
        stream=sys.stdout if args.verbose else None,
    )
    print(render(scores))
    return 0 if all(s.found for s in scores) else 1


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line on stderr, exit 2, like every other bad input
    (argparse would print the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(
        prog="jitdiff",
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 clean, 1 a divergence or failed expectation, 2 bad input or an "
        "unusable engine, 130 interrupted (after the summary so far). stdout carries the "
        "results, including every saved file's path; stderr carries errors, notes and the "
        "progress line. Each verb's streams, the files written and run --json's schema: "
        "docs/cli.md.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument(
            "--engine",
            action="append",
            metavar="SPEC",
            help="engine (repeatable): NAME, NAME@PROFILE or x86_64+FAULT[+FAULT] (a named "
            "fault or historical design of the model); every spec is checked before any "
            f"work starts; interp is always the reference; known: {', '.join(engines.ENGINES)}",
        )
        sp.add_argument(
            "--profile", default="linux-6.18", help="semantic profile: " + ", ".join(PROFILES)
        )
        sp.add_argument(
            "--allow-known-crashes",
            action="store_true",
            help="kernel engines: load and run shapes known to crash this kernel "
            "(harness/kernel/crashes.py); may take the machine down",
        )

    sp = sub.add_parser("run", help="run case files through the engines")
    sp.add_argument("cases", nargs="+")
    sp.add_argument(
        "--json",
        action="store_true",
        help="one JSON document on stdout: every verdict, divergence and failed expectation; "
        "same exit status as text (schema: docs/cli.md)",
    )
    common(sp)
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("conformance", help="run a bpf_conformance tests directory")
    sp.add_argument("dir")
    sp.add_argument("-v", "--verbose", action="store_true")
    common(sp)
    sp.set_defaults(fn=cmd_conformance)

    sp = sub.add_parser("show", help="print an engine's listing with BPF interleaved")
    sp.add_argument("case")
    sp.add_argument(
        "--width",
        type=_number(int, minimum=40),
        default=160,
        help="side-by-side listing width in columns (at least 40)",
    )
    sp.add_argument(
        "--sequential",
        action="store_true",
        help="with --engine x86_64 --engine kernel: one listing after the other",
    )
    common(sp)
    sp.set_defaults(fn=cmd_show)

    sp = sub.add_parser(
        "guest", help="set up Debian kernels of other architectures as qemu guests (guest:ARCH)"
    )
    sp.add_argument("action", choices=("setup", "list"))
    sp.add_argument("arch", nargs="*", help="Debian architecture (amd64, arm64, riscv64, ...)")
    sp.add_argument("--suite", default="trixie", help="Debian suite: bookworm, trixie or sid")
    sp.add_argument("--refresh", action="store_true", help="fetch the suite's kernel again")
    sp.set_defaults(fn=cmd_guest)

    sp = sub.add_parser(
        "fuzz",
        help="a fuzzing campaign against the reference",
        epilog="stdout: each finding as a case file, then 'saved PATH', and the summary listing "
        "every saved file; stderr: the progress line and notes. Kernel crash reproducers go "
        "under CORPUS/crashes. Ctrl-C: the summary so far, exit 130 (docs/cli.md).",
    )
    sp.add_argument(
        "--time",
        type=_positive(float),
        help="wall-clock limit in seconds (default 60 unless --examples); a shrink in "
        "progress stops at it with the smallest reproducer so far (overshoot: the case in "
        "flight and one finding's report)",
    )
    sp.add_argument("--examples", type=_positive(int), help="number of systems")
    sp.add_argument("--workers", type=_positive(int), help="worker processes (default: all cores)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--corpus", help="where shrunk divergences are saved (default: corpus)")
    sp.add_argument(
        "--no-save",
        action="store_true",
        help="print divergences only (refused together with --corpus)",
    )
    sp.add_argument("--no-shrink", action="store_true")
    sp.add_argument(
        "--shrink-tries",
        type=_positive(int),
        help="attempts per shrinking phase (default 3000 choice edits, 2000 case edits; "
        "200 each with a guest engine)",
    )
    sp.add_argument("--stop-on-first", action="store_true")
    sp.add_argument(
        "--shard",
        type=_shards,
        metavar="K/N|A-B/N",
        help="run shard K (or shards A to B) of N, counted from 0: case indices "
        "[K*size, (K+1)*size) of the seed; the same findings, byte for byte, wherever it runs",
    )
    sp.add_argument(
        "--shard-size",
        type=_positive(int),
        default=_shard_size(),
        help="systems per shard (default %(default)s)",
    )
    sp.add_argument(
        "--cluster",
        metavar="ray://HOST:PORT|HOST:PORT|auto",
        type=_cluster_address,
        help="run the --shard range as Ray tasks on this cluster (pip install "
        "'jitdiff[cluster]'; see docs/cluster.md); auto: the cluster of `ray job submit`",
    )
    sp.add_argument(
        "--report-known",
        action="store_true",
        help="report documented kernel behaviour (harness/campaign/known.py) as divergences",
    )
    common(sp)
    sp.set_defaults(fn=cmd_fuzz)

    sp = sub.add_parser("replay", help="re-run corpus cases on every available engine")
    sp.add_argument("paths", nargs="*")
    sp.add_argument("--corpus", default="corpus")
    common(sp)
    sp.set_defaults(fn=cmd_replay)

    sp = sub.add_parser(
        "export", help="write a case (or object) as a kernel selftest: progs/ and prog_tests/"
    )
    sp.add_argument("case")
    sp.add_argument("--selftest", required=True, metavar="DIR", help="where progs/, prog_tests/ go")
    sp.add_argument("--name", help="test and skeleton name (default: from the file name)")
    sp.add_argument("--force", action="store_true", help="replace files that exist")
    sp.add_argument(
        "--no-check", action="store_true", help="skip the clang round trip (case -> C -> object)"
    )
    common(sp)
    sp.set_defaults(fn=cmd_export)

    sp = sub.add_parser("bench", help="differential cases per second, with a breakdown")
    sp.add_argument("--cases", type=_positive(int), default=300)
    sp.add_argument("--seed", type=int, default=1)
    sp.add_argument(
        "--rounds", type=_positive(int), default=3, help="report each phase's best round"
    )
    common(sp)
    sp.set_defaults(fn=cmd_bench)

    sp = sub.add_parser(
        "mutants",
        help="fuzz every historical design and named fault from scratch and print the scoreboard",
    )
    sp.add_argument(
        "--time", type=_positive(float), default=60.0, help="seconds per mutant at most"
    )
    sp.add_argument("--workers", type=_positive(int), default=2)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--only", action="append", help="one mutant spec (repeatable)")
    sp.add_argument("--no-shrink", action="store_true")
    sp.add_argument("-v", "--verbose", action="store_true", help="print each row as it lands")
    sp.set_defaults(fn=cmd_mutants)

    args = p.parse_args(argv)
    try:
        if hasattr(args, "no_save"):
            if args.no_save and args.corpus is not None:
                raise JitdiffError("--corpus and --no-save contradict each other: save or not")
            args.corpus = args.corpus or "corpus"
        # every engine spec and the profile, checked the same way for every
        # verb before any work starts (and before any worker is spawned)
        for spec in getattr(args, "engine", None) or ():
            engines.parse_spec(spec)
        if hasattr(args, "profile"):
            _profile(args)
        return args.fn(args)
    except JitdiffError as e:
        print(f"jitdiff: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        sys.stderr.close()
        return 0
    except OSError as e:
        print(f"jitdiff: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: what was done so far, then 130
        summary = getattr(e, "summary", "")
        try:
            if summary:
                print(summary, flush=True)
            print("jitdiff: interrupted", file=sys.stderr)
        except (BrokenPipeError, KeyboardInterrupt):
            pass
        return 130


if __name__ == "__main__":
    sys.exit(main())
