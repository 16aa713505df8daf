"""What the scanner and its operator vary between chest CTs, drawn per seed (domain randomisation).

A model trained on one slice thickness, one kernel and one dose learns that scanner, not the lung.
`sample_acquisition(seed)` draws slice thickness (0.6-5 mm), a reconstruction kernel class and a
vendor's name for it, relative dose, contrast on/off and a field-of-view factor; the generator
renders the same patient accordingly (slice profile, kernel resolution and noise power spectrum,
noise magnitude ~ 1/sqrt(dose), enhanced blood) and writes the vendor's tags into the DICOM files.

Kernel classes (see noise.KERNELS): smooth (soft tissue), standard, sharp (lung), very_sharp
(high-resolution lung / bone). Vendor names are the usual product names for those classes; their
exact frequency responses are not modelled, only the class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# manufacturer -> (model names, {kernel class: vendor kernel names})
VENDORS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "SIEMENS": (("SOMATOM Definition AS+", "SOMATOM Force", "SOMATOM go.Top"),
                {"smooth": ("B30f", "Br36"), "standard": ("Br40", "B41f"), "sharp": ("Bl57", "B60f", "Br60"),
                 "very_sharp": ("B70f", "Br64")}),
    "GE MEDICAL SYSTEMS": (("LightSpeed VCT", "Revolution CT", "Optima CT660"),
                           {"smooth": ("STANDARD", "SOFT"), "standard": ("DETAIL",), "sharp": ("LUNG",),
                            "very_sharp": ("BONE", "BONEPLUS")}),
    "CANON_MEC": (("Aquilion ONE", "Aquilion Prime SP"),
                  {"smooth": ("FC08", "FC03"), "standard": ("FC18",), "sharp": ("FC51", "FC52"),
                   "very_sharp": ("FC86",)}),
    "Philips": (("Brilliance 64", "IQon - Spectral CT", "Ingenuity CT"),
                {"smooth": ("B",), "standard": ("C",), "sharp": ("L", "YC"), "very_sharp": ("YD",)}),
}
KERNEL_CLASSES = ("smooth", "standard", "sharp", "very_sharp")
THICKNESSES = (0.625, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)


@dataclass(frozen=True)
class Acquisition:
    """One reconstruction of one scan. dose is relative to a standard-dose adult chest protocol (1.0)."""

    slice_thickness_mm: float | None = None  # None: the z spacing of the grid (contiguous slices)
    kernel: str = "sharp"                    # kernel class, a key of noise.KERNELS
    dose: float = 1.0
    contrast: bool = False
    fov_scale: float = 1.0                   # reconstruction FOV relative to the tech's default (fov_for)
    manufacturer: str = "AENODE Synthetic"  # defaults: dicom_writer.MANUFACTURER / MODEL
    model_name: str = "PhantomScan 64"
    kernel_name: str = ""                    # vendor's ConvolutionKernel; "" = the class's generic name

    def asdict(self) -> dict:
        return asdict(self)


def sample_acquisition(seed: int) -> Acquisition:
    """Draw a plausible clinical chest-CT acquisition from the seed (independent of the patient draw)."""
    rng = np.random.default_rng([int(seed), 97])
    man = str(rng.choice(sorted(VENDORS)))
    models, names = VENDORS[man]
    # Lung kernels dominate chest CT; thin slices more common than thick, 5 mm still frequent.
    kern = str(rng.choice(KERNEL_CLASSES, p=[0.25, 0.15, 0.45, 0.15]))
    thick = float(rng.choice(THICKNESSES, p=[0.08, 0.07, 0.25, 0.15, 0.08, 0.07, 0.07, 0.08, 0.15]))
    return Acquisition(
        slice_thickness_mm=thick, kernel=kern, dose=float(np.exp(rng.uniform(np.log(0.25), np.log(1.6)))),
        contrast=bool(rng.random() < 0.4), fov_scale=float(rng.uniform(0.92, 1.12)), manufacturer=man,
        model_name=str(rng.choice(models)), kernel_name=str(rng.choice(names[kern])))
