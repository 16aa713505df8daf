"""Held-out phantoms through the shipped ONNX on the CPU: the rows calibration and the
thick-slice check are computed from (issue 12; no retraining).

    python training/calibrate_run.py --per-pattern 25 --seed0 300000 --thickness 2.34 --out rows_thin.json
    python training/calibrate_run.py --per-pattern 25 --seed0 300000 --thickness 5 --out rows_thick.json

Seeds 300000+ are disjoint from training (0-199 and the cache ranges), from the model
card's evaluation (100000+) and from the tests (900000+).  Each volume is generated at
scanner resolution (512 x 512) and goes through the node's own preprocessing and ONNX
Runtime session.  Per row: the raw model output (probabilities), and the two image-level
domain statistics the engine computes (median lung HU, lung volume), so the domain gate's
ranges can be checked on the same studies.  numpy only (plus the node's own packages).
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

import data

_model = None


def _init() -> None:
    global _model
    from aenode.infer.engine import Model

    _model = Model(data.PACKAGE, providers=["cpu"])


def _one(job: tuple[str, int, float]) -> dict:
    from aenode.infer.domain import check_domain
    from aenode.infer.manifest import DomainSpec
    from aenode.infer.preprocess import preprocess
    from aenode.phantom import generate_volume
    from aenode.phantom.anatomy import fov_for, sample_patient
    from aenode.phantom.extra_series import thick_volume
    from aenode.phantom.volume import make_grid

    pattern, seed, thickness = job
    assert _model is not None
    t0 = time.perf_counter()
    fov = fov_for(sample_patient(seed))
    if thickness >= 4.0:
        # The generator's own thick series: 2 sub-slices averaged, smooth kernel (what
        # generate_study writes as "AXIAL 5mm STANDARD").
        n = int(round(300.0 / thickness))
        p = sample_patient(seed)
        spacing = (thickness, fov / 512, fov / 512)
        g, _ = make_grid(p, (n, 512, 512), spacing)
        hu = thick_volume(pattern, seed, n, (512, 512), spacing[1:], p.z_center, thickness)
        origin = g.origin_xyz
        variant = "thick"
    else:
        n = int(round(300.0 / thickness))
        pv = generate_volume(pattern, seed, shape_zyx=(n, 512, 512), spacing_zyx=(thickness, fov / 512, fov / 512),
                             kernel="sharp", threads=1)
        hu, spacing, origin, variant = pv.hu, pv.spacing_zyx, pv.origin, pv.pattern_variant
    img = data.phantom_to_sitk(hu, spacing, origin)
    x, grid = preprocess(img, _model.manifest.preprocessing, _model.manifest.input.size_zyx)
    out = _model.run(x)
    pred = _model.interpret(out, grid, timings={}, x=x)
    m = _model.manifest
    lesion = out[m.outputs.lesion_map.name][0, 0] >= m.outputs.lesion_map.threshold
    lung = (out[m.outputs.lung_map.name][0, 0] >= m.outputs.lung_map.threshold) | lesion
    # The gate's statistics with no limits (the ranges are chosen from these rows).
    stats = check_domain(DomainSpec(lung_median_hu=[-5000.0, 5000.0], lung_volume_ml=[0.0, 1e9]), x, lung,
                         grid.voxel_volume_ml, m.preprocessing).as_dict()
    return {"pattern": pattern, "seed": seed, "thickness_mm": thickness, "variant": variant,
            "probabilities": [pred.probabilities[p] for p in data.PATTERNS],
            "raw": [pred.detail.get("raw_scores", {}).get(p, pred.probabilities[p]) for p in data.PATTERNS],
            "predicted": pred.category, "lung_volume_ml": pred.lung_volume_ml,
            "domain": stats, "gated": pred.domain.as_dict() if pred.domain else None, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-pattern", type=int, default=25)
    ap.add_argument("--seed0", type=int, default=300_000)
    ap.add_argument("--thickness", type=float, default=2.34)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    jobs = [(p, args.seed0 + i, args.thickness) for i in range(args.per_pattern) for p in data.PATTERNS]
    out = Path(args.out)
    rows: list[dict] = []
    with Pool(args.processes, initializer=_init) as pool:
        for r in pool.imap(_one, jobs):
            rows.append(r)
            out.write_text(json.dumps(rows))  # partial results survive an interruption
    print(f"{len(rows)} studies written to {out}")


if __name__ == "__main__":
    main()
