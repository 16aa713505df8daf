"""TEMPORARY, delete when main's ``Index.results_after`` is merged into this branch.

The alert worker reads results only through ``Index.results_after(after_id, limit)`` (rows
with ``id``), which the lead adds to :mod:`aenode.store.index`.  Until that lands here,
the tests install an equivalent method on ``Index`` so they exercise the worker as it
will run.  It is never installed over a real method.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aenode.store.index import Index


@dataclass(frozen=True)
class ShimResult:
    id: int
    study_uid: str
    revision: int
    model: str
    category: str | None
    probabilities: dict[str, float] | None
    selected_series: str | None
    detail: dict[str, Any] | None


def _results_after(self: Index, after_id: int, limit: int) -> list[ShimResult]:
    rows = self._query("SELECT id, study_uid, revision, model, category, probabilities_json, selected_series,"
                       " detail_json FROM results WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
    return [ShimResult(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None, r[6],
                       json.loads(r[7]) if r[7] else None) for r in rows]


def install() -> None:
    if "results_after" not in vars(Index):
        Index.results_after = _results_after  # type: ignore[attr-defined]
