"""Realism targets for the phantom, taken from published measurements of real chest CT, and the
code that measures the same statistics on generated studies (see docs/PHANTOM_REALISM.md).

Why this module exists: the reference model is trained only on phantoms, so every way in which a
phantom differs from a real chest CT is a shortcut the model can learn and a failure on real
scans. Each `Target` is a range a real-CT statistic falls in (with the source that reports it);
`measure_*` computes that statistic on a `PhantomVolume` from its ground-truth masks
(`tissue`, `lung_mask`, `lesion_mask`, `lobe_mask`, `tree`, `acquisition`), and `aggregate`
turns a list of per-study measurements into one value per target. tests/phantom/test_realism.py
fails when a value leaves its range; scripts/phantom_realism.py prints and documents the table.

No real CT image is used here: targets are numbers read from the cited publications.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Codes of PhantomVolume.tissue (anatomy.TISSUE); repeated here so this module reads without the
# generator, and checked against anatomy.TISSUE by the test.
TISSUE = {"outside": 0, "lung": 1, "fat": 2, "muscle": 3, "blood": 4, "cortical_bone": 5,
          "trabecular_bone": 6, "airway_lumen": 7, "lung_vessel": 8, "airway_wall": 9,
          "soft_other": 10, "table": 11, "lesion": 12, "effusion": 13, "fissure": 14}
PNEUMONIA_LABELS = (1, 2, 3, 4, 5, 8)  # lesion_mask labels that are pneumonia (not effusion, atelectasis)
LOWER_LOBES = (3, 5)                   # lobe_mask: RLL, LLL


@dataclass(frozen=True)
class Target:
    """A published range for one statistic. low/high are inclusive; math.inf means 'no upper bound'."""

    name: str
    low: float
    high: float
    unit: str
    source_key: str
    description: str

    def contains(self, value: float) -> bool:
        return bool(np.isfinite(value)) and self.low <= value <= self.high

    def range_text(self) -> str:
        if math.isinf(self.high):
            return f">= {_fmt(self.low)}"
        return f"{_fmt(self.low)} to {_fmt(self.high)}"


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.4g}"


# Full references; the keys are used in TARGETS and in the document. Every entry was looked up
# (abstract or full text) when the range was set; see docs/PHANTOM_REALISM.md for what each gives.
SOURCES: dict[str, str] = {
    "textbook_hu": "Textbook range, as tabulated by radclass.mudr.org ('Hounsfield units - scale of HU', citing "
                   "three CT textbooks) and radgray.com ('Hounsfield scale'); the textbooks themselves were not "
                   "checked, so none is named here",
    "kim2017": "Kim, Jin, Li, Lee, Shin. CT quantification of lungs and airways in normal Korean subjects. "
               "Korean J Radiol 2017;18(4) (initials not checked)",
    "zach2012": "Zach JA, Newell JD Jr, Schroeder J, et al. Quantitative CT of the lungs and airways in healthy "
                "non-smoking adults. Invest Radiol 2012;47(10):596-602",
    "ccnormal2013": "Limits of normality of quantitative thoracic CT analysis. Crit Care 2013 "
                    "(doi 10.1186/cc12738; Gattinoni's group, authors not checked)",
    "gattinoni2001": "Gattinoni L, Caironi P, Pelosi P, Goodman LR. What has computed tomography taught us about "
                     "the acute respiratory distress syndrome? Am J Respir Crit Care Med 2001;164(9):1701-11 "
                     "(lung compartments by HU)",
    "cheng2019": "Cheng T, Li Y, Pang S, et al. Normal lung attenuation distribution and lung volume on computed "
                 "tomography in a Chinese population. Int J Chron Obstruct Pulmon Dis 2019;14:1657-68",
    "pop2023": "Pop M, Marusteri M. Reference interval of fat Hounsfield units by an indirect method from 4000 "
               "abdominal CT samples. Diagnostics (Basel) 2023;13(11):1913 (title not checked)",
    "goodpaster2000": "Goodpaster BH, Kelley DE, Thaete FL, He J, Ross R. Skeletal muscle attenuation determined "
                      "by computed tomography is associated with skeletal muscle lipid content. "
                      "J Appl Physiol 2000;89(1):104-10",
    "zopfs2021": "Zopfs D, Rinneburger M, Pinto dos Santos D, et al. Evaluating anemia using contrast-enhanced "
                 "spectral detector CT of the chest in a large cohort of 522 patients. Eur Radiol (published "
                 "online 2020, doi 10.1007/s00330-020-07497-y)",
    "biphasic2021": "A practical biphasic contrast media injection protocol strongly enhances the aorta and "
                    "pulmonary artery simultaneously using a single CT angiography scan. BMC Med Imaging 2021 "
                    "(doi 10.1186/s12880-021-00691-4; authors not checked)",
    "jang2019": "Jang S, Graffy PM, Ziemlewicz TJ, Lee SJ, Summers RM, Pickhardt PJ. Opportunistic osteoporosis "
                "screening at routine abdominal and thoracic CT: normative L1 trabecular attenuation values in "
                "more than 20 000 adults. Radiology 2019;291(2):360-7",
    "sun2015": "Sun XG, Mao SS, Budoff MJ, Stringer WW, Cheng XS. Preliminary reports of noninvasive accurate "
               "method to measure pulmonary vascular capacity in normal volunteers. Chinese Journal of Applied "
               "Physiology 2015;31(4):326-9",
    "schoepf_ar": "Schoepf UJ. Review of pulmonary CT angiography, Applied Radiology (appliedradiology.com print "
                  "id 17617; title and year not checked): 16-row CT depicts every pulmonary vessel down to "
                  "sixth-order branches",
    "mdct_sota": "State of the Art. A structural and functional assessment of the lung via multidetector-row "
                 "computed tomography: phenotyping chronic obstructive pulmonary disease (authors, journal and "
                 "year not checked): airway tree extracted to the 5th-7th generation bronchi",
    "nakamura2008": "Nakamura M, Wada S, Miki T, Shimada Y, Suda Y, Tamura G. Automated segmentation and "
                    "morphometric analysis of the human airway tree from multidetector CT images. "
                    "J Physiol Sci 2008;58(7):493-8 (airways up to the 14th generation)",
    "denharder2018": "den Harder AM, de Boer E, Lagerweij SJ, et al. Emphysema quantification using chest CT: "
                     "influence of radiation dose reduction and reconstruction technique. Eur Radiol Exp "
                     "2018;2:30",
    "solomon2012": "Solomon JB, Christianson O, Samei E. Quantitative comparison of noise texture across CT "
                   "scanners from different manufacturers. Med Phys 2012 (doi 10.1118/1.4752209)",
    "cjar2020": "Lung involvement in patients with coronavirus disease-19 (COVID-19): a retrospective study based "
                "on quantitative CT findings. Chinese Journal of Academic Radiology 2020 "
                "(doi 10.1007/s42058-020-00034-2; authors not checked)",
    "cullu2014": "Cullu N, Kalemci S, Karakas O, et al. Efficacy of CT in diagnosis of transudates and exudates "
                 "in patients with pleural effusion. Diagn Interv Radiol 2014;20:116-20",
    "gumus2024": "Gumus A, Ozcelik N, Yilmaz Kara B, et al. Computed tomography attenuation in differential "
                 "diagnosis of transudative and exudative pleural effusions. Clinics 2024;79",
    "karimian2021": "Karimian M, Azami M. Chest computed tomography scan findings of coronavirus disease 2019 "
                    "(COVID-19) patients: a comprehensive systematic review and meta-analysis. "
                    "Pol J Radiol 2021;86:e31-e49",
    "simpson2020": "Simpson S, Kay FU, Abbara S, et al. Radiological Society of North America expert consensus "
                   "statement on reporting chest CT findings related to COVID-19. Radiol Cardiothorac Imaging "
                   "2020;2(2):e200152",
    "hansell2008": "Hansell DM, Bankier AA, MacMahon H, McLoud TC, Muller NL, Remy J. Fleischner Society: "
                   "glossary of terms for thoracic imaging. Radiology 2008;246(3):697-722",
}

TARGETS: tuple[Target, ...] = (
    Target("lung_parenchyma_median_hu", -910, -850, "HU", "textbook_hu",
           "median HU of inflated lung parenchyma (tissue 'lung', vessels/airways excluded), negative studies"),
    Target("lung_laa950_percent", 0.0, 8.0, "%", "kim2017",
           "% of lung volume below -950 HU at full inspiration in healthy subjects (<1% to ~8% across studies; "
           "zach2012: 2.0 +- 2.7 %), negative studies"),
    Target("lung_normally_aerated_mass_fraction", 0.57, 0.73, "fraction", "ccnormal2013",
           "share of lung weight in the normally aerated compartment (-900 to -500 HU), 65 +- 8 % in normal "
           "lungs; compartments as in Gattinoni 2001; whole lung incl. vessels, negative studies"),
    Target("lung_volume_ml", 1700, 7050, "ml", "cheng2019",
           "total lung volume on inspiratory CT: mean +- 2 SD of 4066 +- 1190 ml (ccnormal2013, supine) and "
           "4468 +- 1271 / 4668 +- 1192 ml (Cheng 2019)"),
    Target("fat_median_hu", -123, -89, "HU", "pop2023",
           "median HU of adipose tissue; 95 % reference interval -123 to -89 HU"),
    Target("muscle_median_hu", 29.8, 52.0, "HU", "goodpaster2000",
           "median HU of skeletal muscle; group means +- SD from obese type-2 diabetic (33.9 +- 4.1) to lean "
           "(49.2 +- 2.8) subjects (thigh)"),
    Target("blood_unenhanced_median_hu", 30, 65, "HU", "zopfs2021",
           "median HU of blood without contrast; anaemia cut-offs 32.7-39.2 HU (Zopfs 2021), textbook "
           "tabulations 30-45 and 45-65 HU"),
    Target("blood_contrast_median_hu", 104, 359, "HU", "biphasic2021",
           "median HU of blood with iodinated contrast: aortic enhancement mean +- SD across four injection "
           "protocols, 173.6 +- 69.7 to 294.8 +- 64.5 HU"),
    Target("cortical_bone_median_hu", 250, 3000, "HU", "textbook_hu",
           "median HU of cortical bone (tabulations: compact bone 250-1000, bone 700-3000 HU)"),
    Target("trabecular_bone_median_hu", 51, 270, "HU", "jang2019",
           "median HU of trabecular (vertebral) bone: L1 mean +- SD from 89 +- 38 (age >= 90) to 226 +- 44 "
           "(age < 30)"),
    Target("vessel_volume_percent", 2.0, 5.5, "%", "sun2015",
           "pulmonary vessel volume as % of lung volume: 125 +- 32 ml of 3705 +- 857 ml (bounds from mean +- SD)"),
    Target("vessel_generations", 6, math.inf, "generations", "schoepf_ar",
           "branching generations of the pulmonary vessel tree drawn (CT shows sixth-order branches)"),
    Target("airway_generations", 5, 14, "generations", "nakamura2008",
           "branching generations of the airway tree drawn: up to the 14th on 64-row CT (Nakamura 2008), "
           "5th-7th in routine MDCT segmentation (mdct_sota)"),
    Target("noise_sd_smooth_hu", 9.5, 42.8, "HU", "denharder2018",
           "image noise SD in uniform tissue at routine dose: IQR bounds over FBP (28.1-42.8), hybrid IR "
           "(15.0-22.2) and model-based IR (9.5-12.5) in the aorta; phantom: smooth kernel, dose 1.0, "
           "1 mm slices, 0.75 mm pixels"),
    Target("noise_ratio_quarter_dose", 1.44, 2.13, "ratio", "denharder2018",
           "noise SD at 25 % of the routine dose / noise SD at routine dose: 80.0 / 37.5 = 2.13 with FBP, "
           "32.6 / 18.4 = 1.77 hybrid IR, 16.4 / 11.4 = 1.44 model-based IR (medians, aorta); quantum noise "
           "alone gives 2.0; phantom: smooth kernel, 1 mm slices"),
    Target("nps_peak_shift_sharp_minus_smooth_per_mm", 0.041, 0.74, "cycles/mm", "solomon2012",
           "NPS peak frequency of the sharp (lung) kernel minus that of the smooth (soft-tissue) kernel: "
           "positive (at least one bin of our NPS, 1/(32 x 0.75 mm) = 0.042 mm^-1) and no larger than the "
           "largest peak-frequency difference between clinical FBP kernels, 0.74 mm^-1"),
    Target("ggo_median_hu", -700, -350, "HU", "cjar2020",
           "median HU of ground-glass opacity: COVID-19 lesion histogram peak -700 to -500 HU, lesion mean "
           "-462 +- 99 / -430 +- 80 HU"),
    Target("consolidation_median_hu", -100, 100, "HU", "gattinoni2001",
           "median HU of consolidation: the non-aerated compartment, -100 to +100 HU"),
    Target("effusion_median_hu", 2, 33, "HU", "cullu2014",
           "median HU of pleural effusion: transudates 2-15 (median 5), exudates 4-33 (median 12.5) HU; "
           "gumus2024: 5.0 +- 3.4 and 15.1 +- 5.1 HU"),
    Target("typical_bilateral_study_fraction", 0.708, 1.0, "fraction", "karimian2021",
           "share of Typical studies with lesions in both lungs: COVID-19 meta-analysis 79.1 % "
           "(95 % CI 70.8-85.5); RSNA Typical reads 'peripheral, bilateral'"),
    Target("typical_peripheral_study_fraction", 0.578, 1.0, "fraction", "karimian2021",
           "share of Typical studies with more than half the lesion volume in the outer third of the lung: "
           "peripheral distribution 70.0 % (95 % CI 57.8-79.9)"),
    Target("typical_lower_lobe_study_fraction", 0.577, 1.0, "fraction", "karimian2021",
           "share of Typical studies with lower-lobe involvement: right lower lobe 86.5 % (95 % CI 57.7-96.8)"),
    Target("atypical_ggo_lesion_fraction", 0.0, 0.0, "fraction", "simpson2020",
           "share of Atypical lesion volume that is GGO or crazy paving: RSNA Atypical (lobar/segmental "
           "consolidation without GGO, small nodules, cavitation, septal thickening with effusion) has none"),
    Target("negative_pneumonia_lesion_fraction", 0.0, 0.0, "fraction", "simpson2020",
           "share of lung volume with pneumonia findings in Negative studies (RSNA: no features of pneumonia)"),
)
TARGETS_BY_NAME = {t.name: t for t in TARGETS}

# Measured and shown in the table, but no verified published range was found for them.
REPORTED: dict[str, tuple[str, str]] = {
    "whole_lung_median_hu": ("HU", "median HU over the whole lung mask (vessels, airways, fissures included)"),
    "lung_fraction_of_thorax": ("fraction", "lung volume / body volume between lung apex and base"),
    "noise_sd_sharp_hu": ("HU", "noise SD, sharp kernel, dose 1.0, 1 mm slices, 0.75 mm pixels"),
    "noise_sd_smooth_5mm_hu": ("HU", "noise SD, smooth kernel, dose 1.0, 5 mm slices"),
    "nps_peak_smooth_per_mm": ("cycles/mm", "radially averaged 2-D NPS peak, smooth kernel"),
    "nps_peak_sharp_per_mm": ("cycles/mm", "radially averaged 2-D NPS peak, sharp kernel"),
    "crazy_paving_median_hu": ("HU", "median HU of crazy-paving lesions"),
    "typical_peripheral_fraction": ("fraction", "lesion volume in the outer third of the lung, Typical (mean)"),
    "typical_lower_lobe_fraction": ("fraction", "lesion volume in the lower lobes, Typical (mean)"),
    "indeterminate_bilateral_study_fraction": ("fraction", "Indeterminate studies with lesions in both lungs"),
    "indeterminate_peripheral_fraction": ("fraction", "lesion volume in the outer third, Indeterminate (mean)"),
    "indeterminate_lower_lobe_fraction": ("fraction", "lesion volume in the lower lobes, Indeterminate (mean)"),
    "atypical_bilateral_study_fraction": ("fraction", "Atypical studies with lesions in both lungs"),
    "atypical_peripheral_fraction": ("fraction", "lesion volume in the outer third, Atypical (mean)"),
    "atypical_lower_lobe_fraction": ("fraction", "lesion volume in the lower lobes, Atypical (mean)"),
}

MIN_SHARE = 0.01  # a lung 'is involved' when it holds >= 1 % of the lesion volume (ignores stray voxels)


# ----------------------------------------------------------------------------------------------
# per-study measurements


def _median(a: np.ndarray) -> float:
    return float(np.median(a)) if a.size else math.nan


def _interior(mask: np.ndarray, min_voxels: int = 50) -> np.ndarray:
    """The mask shrunk by one voxel in-plane, like an ROI kept off a tissue's border, so partial
    volume with the neighbour does not bias the median; thin tissues (cortex) keep their mask."""
    er = ndimage.binary_erosion(mask, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))
    return er if int(er.sum()) >= min_voxels else mask


def voxel_ml(vol) -> float:
    return float(np.prod(vol.spacing_zyx)) / 1000.0


def measure_tissues(vol) -> dict[str, float]:
    """Median HU per tissue, lung density statistics, volumes and tree depth of one study."""
    t = vol.tissue
    hu = vol.hu
    out: dict[str, float] = {}
    for name, key in (("fat_median_hu", "fat"), ("muscle_median_hu", "muscle"),
                      ("cortical_bone_median_hu", "cortical_bone"),
                      ("trabecular_bone_median_hu", "trabecular_bone")):
        out[name] = _median(hu[_interior(t == TISSUE[key])])
    blood = _median(hu[_interior(t == TISSUE["blood"])])
    out["blood_contrast_median_hu" if vol.acquisition.contrast else "blood_unenhanced_median_hu"] = blood
    out["lung_parenchyma_median_hu"] = _median(hu[t == TISSUE["lung"]])
    lung = vol.lung_mask > 0
    lh = hu[lung].astype(np.float32)
    out["whole_lung_median_hu"] = _median(lh)
    out["lung_laa950_percent"] = 100.0 * float(np.mean(lh < -950)) if lh.size else math.nan
    # Gattinoni compartments: tissue mass of a voxel is proportional to (HU + 1000) / 1000.
    inc = lh[(lh >= -1000) & (lh <= 100)]
    mass = (inc + 1000.0) / 1000.0
    normal = mass[(inc > -900) & (inc <= -500)].sum()
    out["lung_normally_aerated_mass_fraction"] = float(normal / mass.sum()) if mass.sum() > 0 else math.nan
    out["lung_volume_ml"] = float(lung.sum()) * voxel_ml(vol)
    zl = np.nonzero(lung.any(axis=(1, 2)))[0]
    if zl.size:
        sl = slice(int(zl[0]), int(zl[-1]) + 1)
        body = (t[sl] != TISSUE["outside"]) & (t[sl] != TISSUE["table"])
        out["lung_fraction_of_thorax"] = float(lung[sl].sum()) / max(int(body.sum()), 1)
    else:
        out["lung_fraction_of_thorax"] = math.nan
    vessel = (t == TISSUE["lung_vessel"]) & lung
    out["vessel_volume_percent"] = 100.0 * float(vessel.sum()) / max(int(lung.sum()), 1)
    out["vessel_generations"] = float(vol.tree["vessel_generations"])
    out["airway_generations"] = float(vol.tree["airway_generations"])
    return out


def normalized_depth(lung_mask: np.ndarray, spacing_yx) -> np.ndarray:
    """Per slice and per lung: distance to the lung border / the largest such distance (0 at the
    pleura, 1 at the lung's core); NaN outside the lungs. 'Outer third' is depth < 1/3."""
    out = np.full(lung_mask.shape, np.nan, np.float32)
    for k in range(lung_mask.shape[0]):
        for lab in (1, 2):
            m = lung_mask[k] == lab
            if m.sum() < 20:
                continue
            d = ndimage.distance_transform_edt(m, sampling=spacing_yx)
            out[k][m] = d[m] / d.max()
    return out


def measure_lesions(vol) -> dict[str, float]:
    """Lesion attenuation and distribution of one study (from lesion_mask, lung_mask, lobe_mask)."""
    out: dict[str, float] = {}
    lm = vol.lesion_mask
    hu = vol.hu
    not_vessel = vol.tissue != TISSUE["lung_vessel"]
    for name, lab in (("ggo_median_hu", 1), ("crazy_paving_median_hu", 2), ("consolidation_median_hu", 3)):
        m = (lm == lab) & not_vessel
        if m.any():
            out[name] = _median(hu[m])
    eff = lm == 6
    if eff.any():
        out["effusion_median_hu"] = _median(hu[_interior(eff, min_voxels=20)])
    pn = np.isin(lm, PNEUMONIA_LABELS) & (vol.lung_mask > 0)
    n = int(pn.sum())
    lung = vol.lung_mask > 0
    out["pneumonia_lesion_fraction"] = n / max(int(lung.sum()), 1)
    if n == 0:
        return out
    out["ggo_lesion_fraction"] = float(np.isin(lm[pn], (1, 2)).mean())
    per = [int((pn & (vol.lung_mask == k)).sum()) for k in (1, 2)]
    out["bilateral"] = float(min(per) >= MIN_SHARE * n)
    depth = normalized_depth(vol.lung_mask, vol.spacing_zyx[1:])[pn]
    out["peripheral_fraction"] = float(np.mean(depth < 1 / 3))
    out["peripheral_predominant"] = float(out["peripheral_fraction"] > 0.5)
    lower = np.isin(vol.lobe_mask[pn], LOWER_LOBES)
    out["lower_lobe_fraction"] = float(lower.mean())
    out["lower_lobe_involved"] = float(lower.sum() >= MIN_SHARE * n)
    return out


def noise_field(noisy, noiseless) -> np.ndarray:
    return noisy.hu.astype(np.float32) - noiseless.hu.astype(np.float32)


def _noise_patches(noisy, noiseless, size: int) -> list[np.ndarray]:
    """Square patches of (noisy - noiseless) that lie wholly inside uniform soft tissue (fat,
    muscle, blood, other soft tissue; eroded) where the noiseless image is flat, so the difference
    is noise and not kernel-sharpened structure."""
    t = noisy.tissue
    soft = np.isin(t, [TISSUE[k] for k in ("fat", "muscle", "blood", "soft_other")])
    soft = ndimage.binary_erosion(soft, structure=np.ones((1, 5, 5), bool))
    diff = noise_field(noisy, noiseless)
    ref = noiseless.hu.astype(np.float32)
    patches = []
    nz, ny, nx = t.shape
    step = size // 2
    for k in range(nz):
        for y in range(0, ny - size + 1, step):
            for x in range(0, nx - size + 1, step):
                if not soft[k, y:y + size, x:x + size].all():
                    continue
                r = ref[k, y:y + size, x:x + size]
                same = (t[k, y:y + size, x:x + size] == t[k, y, x]).all()
                if same and float(r.std()) < 2.0:
                    patches.append(diff[k, y:y + size, x:x + size])
    return patches


def noise_sd(noisy, noiseless, size: int = 32) -> float:
    """Noise SD (HU) in uniform soft tissue."""
    p = _noise_patches(noisy, noiseless, size)
    if not p:
        return math.nan
    return float(np.sqrt(np.mean([np.var(x) for x in p])))


def nps_peak(noisy, noiseless, size: int = 32) -> float:
    """Peak frequency (cycles/mm) of the radially averaged 2-D noise power spectrum, from
    mean-subtracted patches of the noise field (the usual ROI method, e.g. AAPM TG-233)."""
    p = _noise_patches(noisy, noiseless, size)
    if not p:
        return math.nan
    dy, dx = noisy.spacing_zyx[1:]
    ps = np.mean([np.abs(np.fft.fft2(x - x.mean())) ** 2 for x in p], axis=0) * (dx * dy) / (size * size)
    fy = np.fft.fftfreq(size, d=dy)
    fx = np.fft.fftfreq(size, d=dx)
    fr = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
    width = 1.0 / (size * max(dx, dy))
    bins = np.rint(fr / width).astype(int)
    radial = np.bincount(bins.ravel(), ps.ravel()) / np.maximum(np.bincount(bins.ravel()), 1)
    nyq = int(0.5 / max(dx, dy) / width)
    radial = radial[: nyq + 1]
    k = 1 + int(np.argmax(radial[1:]))  # skip the DC bin
    return float(k * width)


# ----------------------------------------------------------------------------------------------
# aggregation over a set of studies


def _mean(vals: Iterable[float]) -> float:
    v = [x for x in vals if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def aggregate(records: Sequence[tuple[str, Mapping[str, float]]],
              noise: Mapping[str, float] | None = None) -> dict[str, float]:
    """One value per target (and per REPORTED statistic) from per-study measurements.

    records: (pattern, measure_tissues | measure_lesions merged) per study; pattern CLINICAL marks
    Negative studies on a clinical grid. Lung density statistics come from those (else from the
    Negative studies: lesions would change them); tissue HU from all studies; pattern statistics
    from studies of that pattern. noise: the noise/NPS values measured separately.
    """
    out: dict[str, float] = {}

    def med(key: str, patterns: tuple[str, ...] | None = None) -> float:
        v = [r[key] for p, r in records if key in r and (patterns is None or p in patterns)
             and np.isfinite(r[key])]
        return float(np.median(v)) if v else math.nan

    # Lung density and vessel statistics are published for thin-slice clinical reconstructions:
    # take them from the clinical-grid Negative studies when there are any.
    lung_src = (CLINICAL,) if any(p == CLINICAL for p, _ in records) else ("negative",)
    for key in ("lung_parenchyma_median_hu", "lung_laa950_percent", "lung_normally_aerated_mass_fraction",
                "lung_volume_ml", "whole_lung_median_hu", "lung_fraction_of_thorax", "vessel_volume_percent"):
        out[key] = med(key, lung_src)
    for key in ("fat_median_hu", "muscle_median_hu", "blood_unenhanced_median_hu", "blood_contrast_median_hu",
                "cortical_bone_median_hu", "trabecular_bone_median_hu", "ggo_median_hu",
                "crazy_paving_median_hu", "consolidation_median_hu", "effusion_median_hu"):
        out[key] = med(key)
    for key in ("vessel_generations", "airway_generations"):
        v = [r[key] for _, r in records if key in r]
        out[key] = float(min(v)) if v else math.nan  # every study must reach the depth
    for pat in ("typical", "indeterminate", "atypical"):
        rs = [r for p, r in records if p == pat and r.get("pneumonia_lesion_fraction", 0) > 0]
        out[f"{pat}_bilateral_study_fraction"] = _mean(r["bilateral"] for r in rs)
        out[f"{pat}_peripheral_fraction"] = _mean(r["peripheral_fraction"] for r in rs)
        out[f"{pat}_lower_lobe_fraction"] = _mean(r["lower_lobe_fraction"] for r in rs)
        if pat == "typical":  # shares of all Typical studies: one without lesions counts as a miss
            every = [r for p, r in records if p == pat]
            out["typical_bilateral_study_fraction"] = _mean(r.get("bilateral", 0.0) for r in every)
            out["typical_peripheral_study_fraction"] = _mean(r.get("peripheral_predominant", 0.0) for r in every)
            out["typical_lower_lobe_study_fraction"] = _mean(r.get("lower_lobe_involved", 0.0) for r in every)
    atyp = [r for p, r in records if p == "atypical" and r.get("pneumonia_lesion_fraction", 0) > 0]
    out["atypical_ggo_lesion_fraction"] = _mean(r["ggo_lesion_fraction"] for r in atyp)
    negs = [r["pneumonia_lesion_fraction"] for p, r in records if p == "negative" and "pneumonia_lesion_fraction" in r]
    out["negative_pneumonia_lesion_fraction"] = float(max(negs)) if negs else math.nan
    if noise:
        out.update(noise)
        if {"nps_peak_sharp_per_mm", "nps_peak_smooth_per_mm"} <= noise.keys():
            out["nps_peak_shift_sharp_minus_smooth_per_mm"] = (
                noise["nps_peak_sharp_per_mm"] - noise["nps_peak_smooth_per_mm"])
    return out


def check(measured: Mapping[str, float]) -> dict[str, bool]:
    """{target name: within its published range} (a missing or NaN value fails)."""
    return {t.name: t.contains(measured.get(t.name, math.nan)) for t in TARGETS}


def table_markdown(measured: Mapping[str, float], note: str = "") -> str:
    """The 'target vs measured' table of docs/PHANTOM_REALISM.md."""
    rows = ["| Statistic | Published range | Unit | Source | Measured on the generator | In range |",
            "|---|---|---|---|---|---|"]
    for t in TARGETS:
        v = measured.get(t.name, math.nan)
        ok = t.contains(v)
        rows.append(f"| `{t.name}` | {t.range_text()} | {t.unit} | [{t.source_key}](#{t.source_key}) | "
                    f"{_fmt(v) if np.isfinite(v) else 'not measured'} | {'yes' if ok else '**no**'} |")
    for name, (unit, _desc) in REPORTED.items():
        v = measured.get(name, math.nan)
        rows.append(f"| `{name}` | no verified published value | {unit} | - | "
                    f"{_fmt(v) if np.isfinite(v) else 'not measured'} | - |")
    if note:
        rows.append("")
        rows.append(note)
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# the standard set of studies (script and test)

ATYPICAL_VARIANTS = ("lobar-consolidation", "septal-effusion", "tree-in-bud", "cavitation")
CLINICAL_PIXEL_MM = 0.75  # in-plane pixel of the clinical grid: a 384 mm FOV on 512 x 512
CLINICAL_SLICE_MM = 1.25  # thin-slice reconstruction of the clinical-grid Negative studies
CLINICAL_COVERAGE_MM = 340.0  # z coverage: apex to costophrenic recesses with margin (300 mm clips some bases)
CLINICAL = "negative-clinical"


def study_acquisition(index: int, pattern: str):
    """Alternate kernel class and contrast over the suite so both kernels and both blood states
    are measured; dose 1.0 (the noise targets are measured separately on clinical slabs)."""
    from .acquisition import Acquisition
    return Acquisition(kernel=("smooth", "sharp")[index % 2], dose=1.0,
                       contrast=bool((index + len(pattern)) % 2))


def collect_studies(seeds: Iterable[int], shape_zyx=(100, 192, 192)) -> list[tuple[str, dict[str, float]]]:
    """Generate every pattern for every seed on a modest grid and measure each study."""
    from .lesions import PATTERNS
    from .volume import generate_volume
    records = []
    for i, seed in enumerate(seeds):
        for pattern in PATTERNS:
            variant = ATYPICAL_VARIANTS[i % len(ATYPICAL_VARIANTS)] if pattern == "atypical" else None
            vol = generate_volume(pattern, seed, shape_zyx=shape_zyx, variant=variant,
                                  acquisition=study_acquisition(i, pattern))
            rec = measure_tissues(vol)
            rec.update(measure_lesions(vol))
            records.append((pattern, rec))
    return records


def collect_clinical(seeds: Iterable[int]) -> list[tuple[str, dict[str, float]]]:
    """Negative studies on a clinical grid (1.25 mm slices, 0.75 mm pixels, 340 mm, smooth kernel,
    dose 1.0), where the lung density, volume and vessel statistics are published: on a coarse
    grid small vessels blur into the parenchyma and shift its histogram."""
    from .acquisition import Acquisition
    from .volume import generate_volume
    px, dz = CLINICAL_PIXEL_MM, CLINICAL_SLICE_MM
    acq = Acquisition(kernel="smooth", dose=1.0, slice_thickness_mm=dz)
    out = []
    for seed in seeds:
        vol = generate_volume("negative", seed, shape_zyx=(int(round(CLINICAL_COVERAGE_MM / dz)), 512, 512),
                              spacing_zyx=(dz, px, px), acquisition=acq)
        out.append((CLINICAL, measure_tissues(vol)))
    return out


def collect_noise(seed: int = 1) -> dict[str, float]:
    """Noise SD and NPS peak per kernel class on a few slices at a clinical grid (0.75 mm pixels),
    from the noisy study minus its noiseless twin (same seed and grid, noise=False)."""
    from .acquisition import Acquisition
    from .volume import generate_volume
    out: dict[str, float] = {}
    px = CLINICAL_PIXEL_MM
    for kernel, thick, dose, nz, key in (("smooth", 1.0, 1.0, 4, "smooth"), ("sharp", 1.0, 1.0, 4, "sharp"),
                                         ("smooth", 5.0, 1.0, 2, "smooth_5mm"),
                                         ("smooth", 1.0, 0.25, 4, "smooth_quarter_dose")):
        acq = Acquisition(kernel=kernel, dose=dose, slice_thickness_mm=thick)
        noisy, clean = (generate_volume("negative", seed, shape_zyx=(nz, 512, 512), spacing_zyx=(thick, px, px),
                                        acquisition=acq, noise=n) for n in (True, False))
        out[f"noise_sd_{key}_hu"] = noise_sd(noisy, clean)
        if key in ("smooth", "sharp"):
            out[f"nps_peak_{key}_per_mm"] = nps_peak(noisy, clean)
    out["noise_ratio_quarter_dose"] = out.pop("noise_sd_smooth_quarter_dose_hu") / out["noise_sd_smooth_hu"]
    return out


def measure_all(seeds: Iterable[int] = (1, 2), shape_zyx=(100, 192, 192)) -> dict[str, float]:
    """Every target and reported statistic: the pattern suite on a modest grid, Negative studies
    on a clinical grid, and the noise slabs."""
    seeds = list(seeds)
    return aggregate(collect_studies(seeds, shape_zyx) + collect_clinical(seeds), collect_noise(seeds[0]))
