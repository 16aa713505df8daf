"""Held-out generated studies (seeds disjoint from training: training uses 0-199,
the model card's evaluation 100000+, these tests 900000+)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PATTERNS = ("typical", "indeterminate", "atypical", "negative")
PER_PATTERN = int(os.environ.get("AENODE_TEST_PER_PATTERN", "5"))  # CI default 5
PER_PATTERN_SLOW = 15    # -m slow
SEED0 = 900_000


def _generate(root: Path, n: int) -> list[tuple[str, int, Path]]:
    from aenode.phantom import generate_study

    out = []
    for i in range(n):
        for pattern in PATTERNS:
            seed = SEED0 + i
            d = root / f"{pattern}_{seed}"
            # The first study of each pattern carries the extra series (localizer, 5 mm, dose SR).
            generate_study(d, pattern, seed=seed, slice_thickness=2.5, extra_series=(i == 0))
            out.append((pattern, seed, d))
    return out


@pytest.fixture(scope="session")
def heldout_studies(tmp_path_factory) -> list[tuple[str, int, Path]]:
    return _generate(tmp_path_factory.mktemp("heldout"), PER_PATTERN)


@pytest.fixture(scope="session")
def models():
    from aenode.infer.registry import ModelRegistry

    reg = ModelRegistry.load(Path(__file__).resolve().parents[2] / "models")
    assert len(reg) >= 2, reg.failed
    return reg


@pytest.fixture(autouse=True)
def _logging_to_real_stderr():
    """``aenode.cli.main`` points logging at the (captured) stderr of the moment; put it back
    so that later tests do not log into a closed capture."""
    yield
    import sys

    from aenode.logs import configure_logging

    configure_logging("INFO", stream=sys.__stderr__)
