"""Measure the phantom against the published realism targets (aenode/phantom/realism.py).

Generates every pattern for a few seeds on a modest grid plus a few noise slabs on a clinical
grid, prints the 'target vs measured' table, and optionally rewrites it in
docs/PHANTOM_REALISM.md (between the realism-table markers) and draws the pattern montage.

Usage: python scripts/phantom_realism.py [--seeds 1 2 3] [--write-doc] [--montage docs/phantom_montage.png]
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from aenode.phantom import acquisition as acq
from aenode.phantom import generate_volume, realism
from aenode.phantom.lesions import PATTERNS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PHANTOM_REALISM.md"
START, END = "<!-- realism-table:start -->", "<!-- realism-table:end -->"
MONTAGE_SEEDS = {"typical": 3, "indeterminate": 4, "atypical": 8, "negative": 11}


def generator_rev() -> str:
    """The commit of the checkout the generator was imported from (+ 'modified' when its phantom
    code differs from that commit), so the table says what it measured."""
    import aenode
    repo = Path(aenode.__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "aenode/phantom"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{rev} + uncommitted changes" if dirty else rev


def write_doc(table: str) -> None:
    text = DOC.read_text()
    pat = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pat.search(text):
        raise SystemExit(f"{DOC}: markers {START} / {END} not found")
    DOC.write_text(pat.sub(lambda _: f"{START}\n{table}\n{END}", text))
    print(f"rewrote the table in {DOC.relative_to(ROOT)}")


def lung_window(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu.astype(np.float32) + 1350.0) / 1500.0, 0.0, 1.0)  # W 1500, L -600


def lower_lobe_slice(vol) -> int:
    """Axial slice through the lower lobes: among slices whose lower-lobe area is at least half
    the largest, the one with the most lesion (or the most lower lobe when there is none)."""
    lower = np.isin(vol.lobe_mask, realism.LOWER_LOBES).sum(axis=(1, 2))
    cand = np.nonzero(lower >= 0.5 * lower.max())[0]
    les = np.isin(vol.lesion_mask, realism.PNEUMONIA_LABELS + (6,)).sum(axis=(1, 2))[cand]
    return int(cand[np.argmax(les)] if les.max() > 0 else cand[np.argmax(lower[cand])])


def montage(path: Path, size: int = 256) -> None:
    """Four patterns x (thin axial, 5 mm axial, coronal reformat of the thin series), lung window."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PATTERNS), 3, figsize=(10.5, 3.6 * len(PATTERNS)), dpi=90)
    for row, pattern in enumerate(PATTERNS):
        seed = MONTAGE_SEEDS[pattern]
        thin = generate_volume(pattern, seed, shape_zyx=(240, size, size),
                               acquisition=acq.Acquisition(kernel="sharp", slice_thickness_mm=1.25))
        thick = generate_volume(pattern, seed, shape_zyx=(60, size, size),
                                acquisition=acq.Acquisition(kernel="sharp", slice_thickness_mm=5.0))
        k = lower_lobe_slice(thin)
        zmm = thin.z_positions[k]
        k5 = int(np.argmin(np.abs(thick.z_positions - zmm)))
        dz, dy, dx = thin.spacing_zyx
        yc = int(np.argmax((thin.lung_mask > 0).sum(axis=(0, 2))))
        panels = (
            (thin.hu[k], dy / dx, f"{thin.acquisition.slice_thickness_mm:g} mm axial, z {zmm:.0f} mm"),
            (thick.hu[k5], dy / dx, f"5 mm axial, z {thick.z_positions[k5]:.0f} mm"),
            (thin.hu[:, yc, :], dz / dx, "coronal reformat (thin series)"),
        )
        for col, (img, aspect, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(lung_window(img), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"{thin.category}\n{thin.pattern_variant} (seed {seed})", fontsize=9)
    fig.suptitle("aenode phantom: the four RSNA categories, lung window (W 1500 / L -600)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--shape", type=int, nargs=3, default=[100, 192, 192], metavar=("Z", "Y", "X"))
    ap.add_argument("--write-doc", action="store_true", help="rewrite the table in docs/PHANTOM_REALISM.md")
    ap.add_argument("--montage", type=Path, help="write the pattern montage (PNG) here")
    ap.add_argument("--generator", help="how to name the generator version in the table (default: its git commit)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    measured = realism.measure_all(a.seeds, tuple(a.shape))
    took = time.perf_counter() - t0
    ok = realism.check(measured)
    label = a.generator or generator_rev()
    note = (f"Measured by `scripts/phantom_realism.py --seeds {' '.join(map(str, a.seeds))}` on the generator at "
            f"{label}: {len(a.seeds) * len(PATTERNS)} pattern studies on a {'x'.join(map(str, a.shape))} grid, "
            f"{len(a.seeds)} Negative studies on the clinical grid (1.25 mm slices, 0.75 mm pixels, 340 mm) and noise "
            f"slabs at 0.75 mm pixels; {sum(ok.values())}/{len(ok)} targets in range "
            f"({took:.0f} s, {platform.machine()}, {os.cpu_count()} cores).")
    table = realism.table_markdown(measured, note)
    print(table)
    if a.write_doc:
        write_doc(table)
    if a.montage:
        montage(a.montage)
    missed = [n for n, good in ok.items() if not good]
    if missed:
        print("out of range: " + ", ".join(missed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
