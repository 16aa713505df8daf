"""`generate_study`: a complete synthetic chest-CT study on disk, ground truth beside it."""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .acquisition import VENDORS, Acquisition
from .anatomy import fov_for, sample_patient
from .dicom_writer import TRANSFER_SYNTAXES, StudyContext, ct_series_header, resolve_transfer_syntax, write_ct_series
from .extra_series import thick_volume, write_dose_sr, write_localizer
from .identity import make_identity, uid
from .lesions import LABELS, PATTERNS
from .noise import KERNELS
from .volume import PhantomVolume, generate_volume

DEFAULT_COVERAGE_MM = 320.0


@dataclass
class StudyResult:
    study_instance_uid: str
    series: list = field(default_factory=list)  # (series_instance_uid, description, n_files, folder)
    ct_files: list = field(default_factory=list)  # primary axial series, instance order
    truth_dir: Path | None = None
    category: str = ""
    pattern_variant: str = ""
    seconds: float = 0.0
    volume: PhantomVolume | None = field(default=None, repr=False)


def lesion_stats(v: PhantomVolume) -> dict:
    """Per-label voxel counts and mL, lung volumes and involvement, for truth.json."""
    vox_ml = float(np.prod(v.spacing_zyx)) / 1000.0
    counts = np.bincount(v.lesion_mask.ravel(), minlength=len(LABELS))
    lungc = np.bincount(v.lung_mask.ravel(), minlength=3)
    # joint histogram of (lung label, lesion label) in one pass
    joint = np.bincount((v.lung_mask.ravel().astype(np.int32) * 16 + v.lesion_mask.ravel()), minlength=48)
    inv = {}
    for lab, name in ((1, "right"), (2, "left")):
        row = joint[lab * 16:(lab + 1) * 16]
        les = int(row[1:].sum() - row[7])
        inv[name] = round(100.0 * les / max(int(row.sum()), 1), 3)
    return {
        "labels": {str(k): {"name": LABELS[k], "voxels": int(counts[k]), "ml": round(counts[k] * vox_ml, 3)}
                   for k in LABELS if k},
        "lung_ml": {"right": round(lungc[1] * vox_ml, 1), "left": round(lungc[2] * vox_ml, 1)},
        "involvement_percent": inv,
    }


def _spacing(p, thick: float, acq: Acquisition) -> tuple[float, float, float]:
    fov = float(np.clip(fov_for(p) * acq.fov_scale, 300.0, 500.0))
    return (thick, fov / 512, fov / 512)


def _check_inputs(pattern: str, slice_thickness: float, slices: int | None) -> None:
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    if not 0.5 <= float(slice_thickness) <= 5.0:
        raise ValueError(f"slice thickness {slice_thickness} mm out of range 0.5-5.0")
    if slices is not None and not 1 <= int(slices) <= 2000:
        raise ValueError(f"slices must be 1-2000, got {slices}")


def generate_study(out_dir: str | Path, pattern: str, seed: int = 0, *, slices: int | None = None,
                   slice_thickness: float = 1.25, transfer_syntax: str = TRANSFER_SYNTAXES["explicit"],
                   extra_series: bool = True, patient_name: str | None = None, patient_id: str | None = None,
                   study_instance_uid: str | None = None, kernel: str = "sharp",
                   variant: str | None = None, acquisition: Acquisition | None = None) -> StudyResult:
    """Write a synthetic chest CT study to out_dir.

    `acquisition` (acquisition.sample_acquisition) sets the primary series' slice thickness (it
    overrides `slice_thickness`; slices are contiguous), kernel class and vendor name (it overrides
    `kernel`), dose (tube current), contrast, field of view and the Manufacturer tags; None keeps
    `slice_thickness`, `kernel`, standard dose, no contrast and the generator's own tags.

    Layout: out_dir/<NNN_description>/<n>.dcm per series and out_dir/ground_truth/ with
    masks.npz (lesion_mask, lung_mask; (z,y,x), z index = InstanceNumber-1 of the primary
    series) and truth.json. Nothing about the truth is written into the DICOM files.
    """
    t0 = time.perf_counter()
    acq = acquisition if acquisition is not None else Acquisition(slice_thickness_mm=float(slice_thickness), kernel=kernel)
    if acq.slice_thickness_mm:
        slice_thickness = acq.slice_thickness_mm
    kernel = acq.kernel
    _check_inputs(pattern, slice_thickness, slices)
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
    ts = resolve_transfer_syntax(transfer_syntax)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"output directory {out} is not writable")
    seed = int(seed)
    thick = float(slice_thickness)
    n = int(slices) if slices else int(round(DEFAULT_COVERAGE_MM / thick))
    p = sample_patient(seed)
    ident = make_identity(pattern, seed, patient_name, patient_id, p.a)
    study_uid = study_instance_uid or uid("study", pattern, seed)
    # Tube current follows patient size (automatic exposure control).
    ma = float(np.clip((120 + (p.a - 140) * 4.0) * acq.dose, 20, 500))
    desc = "CT CHEST WITH CONTRAST (SYNTHETIC)" if acq.contrast else "CT CHEST WITHOUT CONTRAST (SYNTHETIC)"
    ctx = StudyContext(ident=ident, study_uid=study_uid, frame_of_reference_uid=uid(study_uid, "for"),
                       study_id=f"{seed % 100000}", description=desc,
                       ma=ma, ctdivol=round(ma / 25.0, 2), table_height=round(260.0 - p.table_y, 1),
                       manufacturer=acq.manufacturer, model_name=acq.model_name)
    acq = replace(acq, slice_thickness_mm=thick)
    vol = generate_volume(pattern, seed, shape_zyx=(n, 512, 512), variant=variant, acquisition=acq,
                          spacing_zyx=_spacing(p, thick, acq))
    res = StudyResult(study_instance_uid=study_uid, category=vol.category, pattern_variant=vol.pattern_variant,
                      volume=vol)
    truth = out / "ground_truth"
    truth.mkdir(exist_ok=True)
    # Masks compress in the background while DICOM is written (zlib releases the GIL).
    saver = threading.Thread(target=np.savez_compressed, args=(truth / "masks.npz",),
                             kwargs={"lesion_mask": vol.lesion_mask, "lung_mask": vol.lung_mask})
    saver.start()
    zc = p.z_center
    series_uids: dict[str, str] = {}
    if extra_series:
        su = uid(study_uid, "series", "localizer")
        files = write_localizer(ctx, pattern, seed, zc, out / "001_localizer", su, variant, acquisition=acq)
        res.series.append((su, "LOCALIZER AP", len(files), str(out / "001_localizer")))
        series_uids["localizer"] = su
    su = uid(study_uid, "series", "axial", thick, kernel)
    kname = acq.kernel_name or KERNELS[kernel][2]
    desc = f"AXIAL {thick:g}mm {kname}"
    base = ct_series_header(ctx, su, 2, desc, 20, 512, 512)
    folder = out / "002_axial_thin"
    res.ct_files = write_ct_series(vol.hu, vol.z_positions, vol.origin[:2], vol.spacing_zyx, thick, base, su,
                                   folder, ts, kernel_name=kname)
    res.series.append((su, desc, len(res.ct_files), str(folder)))
    series_uids["axial"] = su
    if extra_series:
        nt = max(1, int(round(n * thick / 5.0)))
        h5 = thick_volume(pattern, seed, nt, (512, 512), vol.spacing_zyx[1:], vol.origin[2] - (n - 1) * thick / 2,
                          variant=vol.pattern_variant, acquisition=acq)
        su5 = uid(study_uid, "series", "axial5")
        k5 = VENDORS[acq.manufacturer][1]["smooth"][0] if acq.manufacturer in VENDORS else "STANDARD"
        base5 = ct_series_header(ctx, su5, 3, f"AXIAL 5mm {k5}", 25, 512, 512)
        top5 = vol.origin[2] - (n - 1) * thick / 2 + (nt - 1) * 5.0 / 2
        files = write_ct_series(h5, top5 - np.arange(nt) * 5.0, vol.origin[:2], (5.0,) + tuple(vol.spacing_zyx[1:]),
                                5.0, base5, su5, out / "003_axial_thick", ts, kernel_name=k5)
        res.series.append((su5, f"AXIAL 5mm {k5}", len(files), str(out / "003_axial_thick")))
        series_uids["axial_thick"] = su5
        sud = uid(study_uid, "series", "dose")
        files = write_dose_sr(ctx, sud, out / "997_dose_report", n * thick, n * thick / 78.7)
        res.series.append((sud, "Dose Report", len(files), str(out / "997_dose_report")))
        series_uids["dose_sr"] = sud
    saver.join()
    info = {
        "generator": "aenode.phantom",
        "pattern": pattern, "category": vol.category, "pattern_variant": vol.pattern_variant,
        "features": vol.features, "seed": seed, "kernel": kernel, "confounders": vol.confounders,
        "acquisition": acq.asdict(), "tree": vol.tree,
        "study_instance_uid": study_uid, "series_instance_uids": series_uids,
        "primary_series": {"sop_instance_uids_in_mask_order": [uid(su, k + 1) for k in range(n)],
                           "folder": folder.name},
        "mask_files": {"masks.npz": ["lesion_mask", "lung_mask"]},
        "mask_axes": "z,y,x; z index k = InstanceNumber k+1 (superior first); y = rows, x = columns",
        "lung_mask_labels": {"0": "outside", "1": "right lung", "2": "left lung"},
        "lesion_labels": {str(k): v for k, v in LABELS.items()},
        "spacing_zyx_mm": list(vol.spacing_zyx), "origin_xyz_mm": list(vol.origin),
        "shape_zyx": list(vol.hu.shape), "transfer_syntax": ts,
        "patient": {"name": ident.patient_name, "id": ident.patient_id, **vol.patient},
        "lesion_stats": lesion_stats(vol),
    }
    (truth / "truth.json").write_text(json.dumps(info, indent=1, sort_keys=True))
    res.truth_dir = truth
    res.seconds = time.perf_counter() - t0
    return res
