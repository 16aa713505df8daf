"""Time synthetic chest-CT generation: `python benchmarks/bench_phantom.py [--slices 300]`.

Reports generate_volume alone, the full study in Explicit VR (thin series only, and with the
extra series), optionally the other transfer syntaxes, and the small training-size volume.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from machine import describe

from aenode.phantom import TRANSFER_SYNTAXES, generate_study, generate_volume


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pattern", default="typical")
    ap.add_argument("--all-syntaxes", action="store_true", help="also time implicit, JPEG, J2K, RLE")
    a = ap.parse_args()
    print(f"machine: {describe()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_phantom_"))
    rows = []

    def report(name, ts):
        ts = sorted(ts)
        rows.append((name, ts[len(ts) // 2], ts[0], ts[-1]))
        print(f"{name:<48} median {ts[len(ts) // 2]:6.2f} s  min {ts[0]:6.2f}  max {ts[-1]:6.2f}", flush=True)

    try:
        generate_volume(a.pattern, 1, shape_zyx=(8, 64, 64))  # imports, warm caches of other seeds only
        report(f"generate_volume {a.slices}x512x512",
               timed(lambda: generate_volume(a.pattern, 1, shape_zyx=(a.slices, 512, 512)), a.runs))
        report("generate_volume 64x128x128 (training size)",
               timed(lambda: generate_volume(a.pattern, 2, shape_zyx=(64, 128, 128)), max(a.runs, 5)))
        syntaxes = TRANSFER_SYNTAXES.items() if a.all_syntaxes else [("explicit", TRANSFER_SYNTAXES["explicit"])]
        for name, ts in syntaxes:
            def study(extra: bool, ts=ts):
                d = tmp / "s"
                shutil.rmtree(d, ignore_errors=True)
                generate_study(d, a.pattern, 3, slices=a.slices, transfer_syntax=ts, extra_series=extra)
            report(f"study {a.slices} slices {name}, thin series only", timed(lambda: study(False), a.runs))
            if name == "explicit":
                report(f"study {a.slices} slices {name}, + localizer/5mm/dose SR", timed(lambda: study(True), a.runs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| what | median s | min s | max s |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
