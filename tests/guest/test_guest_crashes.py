"""Crashes and hangs in a guest are findings, and the guest comes back."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from harness import engines
from harness.formats import casefile
from tests.guest.conftest import guest_specs

ROOT = Path(__file__).resolve().parents[2] / "corpus"


def _engine(spec: str, tmp_path: Path, **options):
    why = engines.available(spec)
    if why:
        pytest.skip(f"engine {spec}: {why}")
    return engines.get_spec(spec, crash_dir=tmp_path, **options)


def _first(*archs: str) -> str:
    for spec in guest_specs():
        if spec.split(":")[1].split("@")[0] in archs:
            return spec
    return f"guest:{archs[0]}"


def test_a_hung_guest_is_killed_saved_and_rebooted(tmp_path):
    eng = _engine(_first("arm64", "riscv64", "ppc64el", "amd64"), tmp_path, timeout=5.0)
    try:
        loop = casefile.load(ROOT / "tail_calls" / "self_loop_33.case")
        assert eng.run(loop).runs[0].status.value == "ok"  # booted and serving
        os.kill(eng.vm._proc.pid, signal.SIGSTOP)  # the guest stops answering
        out = eng.run(loop)
        assert [r.status.value for r in out.runs] == ["crashed"]
        assert "hung" in out.runs[0].detail
        (saved,) = tmp_path.glob("guest-*.case")
        assert casefile.load(saved).programs.keys() == loop.programs.keys()
        again = eng.run(loop)  # a fresh guest
        assert again.runs[0].status.value == "ok" and eng.vm.boots == 2
        assert again.runs[0].maps["counts"][:1] == bytes([34])  # 1 + 33 tail calls
    finally:
        eng.close()


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_tail_call_chains_overflow_the_guest_kernel_stack(arch, tmp_path):
    """docs/kernel-findings.md section 0, natively: the guest kernel dies of
    a kernel stack overflow inside the BPF programs (arm64: "kernel stack
    overflow" panic; x86-64: "BUG: TASK stack guard page was hit")."""
    spec = f"guest:{arch}@trixie"  # 6.1 rejects the shape (docs/kernel-findings.md)
    eng = _engine(spec, tmp_path)
    try:
        case = casefile.load(ROOT / "kernel-findings" / "stack_overflow_tail_call_chain.case")
        out = eng.run(case)
        run = out.runs[0]
        assert run.status.value == "crashed"
        overflow = ("kernel stack overflow", "stack guard page was hit")
        # one signature for every system that overruns the stack in BPF code,
        # and it is the known finding's (a campaign neither shrinks nor fails on it)
        assert run.detail.startswith("kernel stack overflow: guest kernel crash")
        assert f"guest-{arch}-bpf-prog-" in run.detail
        (saved,) = tmp_path.glob(f"guest-{arch}-bpf-prog-*.case")
        comment = casefile.load(saved).comment
        assert any(t in comment for t in overflow) and "bpf_prog_" in comment
    finally:
        eng.close()
