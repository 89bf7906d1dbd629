"""One parser for engine specs (``harness.engines.parse_spec``), shared by
every verb, with registries a new engine family plugs into."""

from __future__ import annotations

import re

import pytest

from harness import engines
from harness.errors import JitdiffError
from harness.reference.profile import PROFILES


@pytest.mark.parametrize(
    "spec, words",
    [
        ("nonexistent", "unknown engine"),
        ("x86_64+nonexistent", "unknown fault"),
        ("x86_64@bogus", "unknown profile 'bogus'"),
        ("x86_64+", "empty +modifier"),
        ("interp+missing-pop", "takes no +modifiers"),
        ("x86_64+linux-5.10+linux-6.18", "more than one design"),
        ("", "unknown engine"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(spec, words):
    with pytest.raises(JitdiffError, match=re.escape(words)):
        engines.parse_spec(spec)


def test_good_specs():
    s = engines.parse_spec("interp@linux-interp")
    assert (s.engine, s.profile, s.options) == ("interp", PROFILES["linux-interp"], {})
    s = engines.parse_spec("x86_64+linux-5.10+missing-pop")
    assert s.engine == "x86_64" and s.options["variant"].design == "linux-5.10"
    assert s.options["variant"].faults == {"missing-pop"}


def test_a_new_family_plugs_in(monkeypatch):
    seen = []

    def parse(text: str) -> engines.Spec:
        seen.append(text)
        arch = text.partition(":")[2]
        if arch not in ("riscv64", "arm64"):
            raise JitdiffError(f"{text}: unknown guest arch {arch!r}")
        return engines.Spec(text, "interp", None, {})

    monkeypatch.setitem(engines.FAMILIES, "guest:", parse)
    assert engines.parse_spec("guest:riscv64").engine == "interp"
    with pytest.raises(JitdiffError, match="unknown guest arch"):
        engines.parse_spec("guest:sparc")
    assert seen == ["guest:riscv64", "guest:sparc"]
    # and the CLI refuses it the same way, before any work
    from harness.cli import main

    assert main(["bench", "--engine", "guest:sparc"]) == 2


def test_a_new_modifier_family_plugs_in(monkeypatch):
    monkeypatch.setitem(engines.MODIFIERS, "interp", lambda words: {"words": words})
    assert engines.parse_spec("interp+a+b").options == {"words": ["a", "b"]}
