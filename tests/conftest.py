"""Hypothesis profiles by role, chosen with HYPOTHESIS_PROFILE (dev by default).

The example database is a git-ignored cache; corpus/ is the source of truth.
"""

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

_slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=_slow)
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    suppress_health_check=_slow,
    derandomize=True,
    database=None,
    print_blob=True,
)
settings.register_profile("nightly", max_examples=5000, deadline=None, suppress_health_check=_slow)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

#: the repository's sibling shared/ folder (conformance data lives there)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
