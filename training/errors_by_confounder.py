"""Accuracy of the atypical and negative held-out studies by variant and confounder.

    python training/errors_by_confounder.py [training/eval_results.json training/calibration_rows.json]

The rows (``evaluate.py``) name each study's pattern, seed and variant; the confounders
(``aenode.phantom.lesions.add_confounders``) follow from the seed and are planned again here
(the coarse lung model only, nothing is rendered: a second for 300 studies). Used for
MODEL_CARD.md "Failure modes seen".
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aenode.phantom.anatomy import sample_patient  # noqa: E402
from aenode.phantom.lesions import plan_lesions  # noqa: E402
from aenode.phantom.lungmodel import CoarseLung  # noqa: E402


def main(files: list[str]) -> None:
    stats: dict[tuple[str, str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    for name in files:
        data = json.loads(Path(name).read_text())
        for row in data["rows"] if isinstance(data, dict) else data:
            if row["pattern"] not in ("negative", "atypical"):
                continue
            plan = plan_lesions(CoarseLung(sample_patient(row["seed"])), row["pattern"], row["seed"], row["variant"])
            found = set(plan.confounders)
            if row["variant"] == "atelectasis":
                found.discard("dependent-atelectasis")  # the finding itself
            right = int(row["predicted"] == row["pattern"])
            for key in [*(sorted(found) or ["(none)"]), "all"]:
                s = stats[(row["pattern"], row["variant"], key)]
                s[0] += right
                s[1] += 1
    print("| pattern | variant | confounder | right | accuracy |\n| --- | --- | --- | --- | --- |")
    for (pattern, variant, key), (right, n) in sorted(stats.items()):
        print(f"| {pattern} | {variant} | {key} | {right}/{n} | {right / n:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or [str(ROOT / "training" / "eval_results.json"), str(ROOT / "training" / "calibration_rows.json")])
