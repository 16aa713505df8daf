"""Research export and local validation: rates on this machine, each with an anchor.

    python benchmarks/bench_export.py [--studies 4] [--slices 120] [--json]

Builds a node data directory (phantom studies, 2.5 mm, analysed by the real worker with
SR/SC written), then measures in the same run:
  export      aenode export (de-identify every instance of the analysed series + the SR,
              write, fsync, rename; labels.csv, dataset.json)
  anchor      plain pydicom: dcmread + save_as of the same source files (no de-identification,
              no fsync) into another folder
  evaluate    aenode evaluate on the export (selection, loading, preprocessing, ONNX)
  anchor      plain pydicom read of the same exported files with pixel data (dcmread +
              pixel_array), the I/O floor of any evaluation
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402

from aenode.config import parse_config  # noqa: E402
from aenode.deliver.outbox import Outbox  # noqa: E402
from aenode.deliver.publish import OutboxPublisher  # noqa: E402
from aenode.evaluate.run import evaluate_folder, read_labels  # noqa: E402
from aenode.export.dataset import Exporter, Selection  # noqa: E402
from aenode.infer.registry import ModelRegistry  # noqa: E402
from aenode.infer.worker import AnalysisWorker  # noqa: E402
from aenode.phantom import generate_study  # noqa: E402
from aenode.store.index import Index  # noqa: E402
from aenode.store.meta import read_meta  # noqa: E402

PATTERNS = ("typical", "indeterminate", "atypical", "negative")


class Labels:
    """Every study confirmed as its generated pattern (the benchmark's radiologist)."""

    def __init__(self, truth: dict[str, str]):
        self.truth = truth

    def confirmations(self, study_uid: str | None = None) -> list:
        from types import SimpleNamespace

        return [SimpleNamespace(model="covid-typicality", category=c, infection_status="unknown", at=0.0)
                for uid, c in self.truth.items() if study_uid in (None, uid)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--studies", type=int, default=4)
    p.add_argument("--slices", type=int, default=120)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        data_dir = work / "data"
        config = parse_config({"node": {"data_dir": str(data_dir)}, "model": {"path": str(ROOT / "models")}})
        index = Index.for_data_dir(data_dir)
        truth: dict[str, str] = {}
        for i in range(args.studies):
            pattern = PATTERNS[i % 4]
            gen = work / "gen" / f"s{i}"
            generate_study(gen, pattern, seed=940_000 + i, slices=args.slices, slice_thickness=2.5, extra_series=False)
            dest = data_dir / "spool" / f"s{i}"
            shutil.copytree(gen, dest, ignore=shutil.ignore_patterns("ground_truth"))
            uid = ""
            for f in sorted(dest.rglob("*.dcm")):
                meta = read_meta(f)
                uid = meta.study_uid
                index.record_instance(meta, f, f.stat().st_size, "CT1", received_at=1.7e9)
            index.mark_complete(uid, 1.7e9)
            truth[uid] = pattern
        outbox = Outbox.for_config(config)
        worker = AnalysisWorker(config, index, ModelRegistry.from_config(config), OutboxPublisher(config, outbox))
        while (claim := index.claim_next_complete("bench")) is not None:
            worker.process(claim.study_uid, claim.revision)
        outbox.close()
        sources = [h.path for uid in truth for h in index.instances(uid) if h.path is not None]
        index.close()

        t = time.perf_counter()
        summary = Exporter(config, work / "export", confirmations=Labels(truth)).run(Selection())
        t_export = time.perf_counter() - t
        anchor_dir = work / "anchor"
        anchor_dir.mkdir()
        t = time.perf_counter()
        size = 0
        for n, f in enumerate(sources):
            ds = pydicom.dcmread(f)
            out = anchor_dir / f"{n}.dcm"
            ds.save_as(out, enforce_file_format=True)
            size += out.stat().st_size
        t_anchor = time.perf_counter() - t

        registry = ModelRegistry.from_config(config)
        model = registry.get("covid-typicality")
        labels = read_labels(work / "export" / "labels.csv", [c.name for c in model.manifest.outputs.classes])
        t = time.perf_counter()
        ev = evaluate_folder(work / "export", labels, model)
        t_eval = time.perf_counter() - t
        exported = sorted((work / "export").rglob("*.dcm"))
        t = time.perf_counter()
        for f in exported:
            ds = pydicom.dcmread(f)
            if "PixelData" in ds:
                _ = ds.pixel_array
        t_read = time.perf_counter() - t

        n = summary.studies
        doc = {
            "machine": describe(), "studies": n, "slices": args.slices,
            "export": {"seconds": round(t_export, 2), "studies_per_min": round(60 * n / t_export, 1),
                       "mb_per_s": round(summary.bytes / 1e6 / t_export, 1), "files": summary.instances,
                       "mb": round(summary.bytes / 1e6, 1)},
            "export_anchor_pydicom_copy": {"seconds": round(t_anchor, 2), "files": len(sources),
                                           "mb_per_s": round(size / 1e6 / t_anchor, 1)},
            "export_over_anchor": round(t_export / t_anchor, 2),
            "evaluate": {"seconds": round(t_eval, 2), "seconds_per_study": round(t_eval / max(len(ev.cases), 1), 2),
                         "studies": len(ev.cases)},
            "evaluate_anchor_pydicom_read": {"seconds": round(t_read, 2),
                                             "seconds_per_study": round(t_read / max(n, 1), 2)},
            "evaluate_over_anchor": round(t_eval / t_read, 2),
        }
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(f"machine: {doc['machine']}")
            for k, v in doc.items():
                if k != "machine":
                    print(f"{k}: {v}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
