"""Per-lesion-type profiles: every number the synthesizer samples from lives here.

Sources (abbreviated in comments):
  [Fleischner] MacMahon et al., Radiology 2017 (nodule sizes, solid nodule attenuation).
  [LI-RADS] ACR LI-RADS v2018 (HCC arterial hyperenhancement, washout).
  [Liver mets] Sica et al., Radiographics 2000; typical portal-venous hypoattenuation 20-60 HU.
  [Bosniak] Silverman et al., Radiology 2019 (simple cyst -9..20 HU, well-defined, homogeneous).
  [PDAC] Prokesch et al., Radiology 2002 (hypoattenuating in 75-90% of pancreatic phase scans).
  [RCC] Kim et al., AJR 2002; clear-cell RCC avid corticomedullary enhancement, nephrographic
        phase lower than cortex by 30-100 HU.
  [Stones] Primak et al., Acad Radiol 2007: uric acid <500 HU, calcium oxalate/phosphate >900 HU.
  [Gallstones] Baron, Radiology 1987; cholesterol -90..+30 HU, calcified up to >150 HU.
  [Wall] Normal GI wall 3-5 mm distended; tumour wall thickening 5-20 mm (Ba-Ssalamah,
         Eur J Radiol 2003; Horton, Radiographics 2000; Kim, Radiographics 2006 for bladder).
  [Bone mets] Lytic lesions replace trabecular bone with soft tissue (20-60 HU); blastic
              lesions 300-1000+ HU (O'Sullivan, World J Radiol 2015).
  [KiTS/LiTS/MSD] Median lesion diameters of public datasets (liver tumour ~30 mm, kidney
                  tumour ~40 mm, pancreas tumour ~25-30 mm, lung tumour ~25 mm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from PASTALib.labels import LesionType, Phase
from PASTALib.report.attributes import Density, Heterogeneity, Shape, Surface

PLAIN, ENHANCED = Phase.PLAIN, Phase.ENHANCED
HYPO, ISO, HYPER = Density.HYPO, Density.ISO, Density.HYPER
ROUND, IRREG, WALL, PUNCT = Shape.ROUND, Shape.IRREGULAR, Shape.WALL_THICKENING, Shape.PUNCTATE
HOMO, HETERO = Heterogeneity.HOMOGENEOUS, Heterogeneity.HETEROGENEOUS
WELL, ILL = Surface.WELL_DEFINED, Surface.ILL_DEFINED

#: Smallest |lesion - parenchyma| in HU for Hypodense/Hyperdense, largest for Isodense. A reader
#: calls a 10-15 HU difference visible on a soft-tissue window (CT noise ~10 HU at 1 mm).
MIN_CONTRAST_HU = 15.0
MAX_ISO_CONTRAST_HU = 8.0

#: Margin transition width (mm): the soft mask goes 0.08 -> 0.92 over about +-1 width (erf).
#: Well-defined: a sharp but not aliased edge (~ a 1 mm voxel); ill-defined: 2-4 mm blur.
MARGIN_WIDTH_MM: Mapping[Surface, tuple[float, float]] = MappingProxyType({WELL: (0.5, 1.0), ILL: (2.0, 4.0)})

#: Radial displacement amplitude as a fraction of the mean radius; spicule count range.
#: Round-like masses are gently lobulated; irregular ones lobulated with spicules (LIDC spiculation).
LOBULATION: Mapping[Shape, tuple[float, float]] = MappingProxyType({ROUND: (0.02, 0.05), IRREG: (0.12, 0.22), PUNCT: (0.03, 0.08), WALL: (0.05, 0.12)})
SPICULES: Mapping[Shape, tuple[int, int]] = MappingProxyType({ROUND: (0, 0), IRREG: (3, 8), PUNCT: (0, 0), WALL: (0, 0)})


@dataclass(frozen=True)
class Irregularity:
    """Continuous mass irregularity ``u`` in [0, 1] instead of a two-cluster switch (lung tumours).

    ``u ~ Beta(a, b)`` per shape attribute, shifted by ``ill_margin_shift`` for an ill-defined margin
    and by ``size_slope`` per doubling of the mean diameter above ``size_ref_mm`` (large real nodules
    are less round and less solid), clipped to [0, 1]. ``u`` sets the lobulation amplitude (linear
    between ``lobulation``), the spicule count (``round(spicules_max * ((u - onset) / (1 - onset))+)``)
    and the anisotropy (exponent of the principal radii's ratios, linear between ``anisotropy``:
    irregular real nodules are also more elongated and flatter; LIDC flatness-solidity correlation
    0.58). An ill-defined margin also uses ``ill_orders`` (a more ragged contour). Fitted on the
    LIDC-IDRI even-numbered patients' contours (``LUNG_IRREGULARITY``, benchmarks/realism_lidc.py).
    """

    beta: Mapping[Shape, tuple[float, float]]
    ill_margin_shift: float
    size_slope: float
    size_ref_mm: float
    lobulation: tuple[float, float]
    spicules_max: int
    spicule_onset: float
    anisotropy: tuple[float, float]
    orders: tuple[int, int] = (2, 4)  # angular orders of the lobulation (low: lobes, not surface roughness)
    ill_orders: tuple[int, int] | None = None  # an ill-defined margin's orders (higher: a ragged contour)
    # added to an ill-defined margin's anisotropy exponent: LIDC's ill-defined nodules are flatter than well-defined
    # ones (flatness -0.055 at >= 10 mm), more than their irregularity alone makes ours
    ill_anisotropy: float = 0.0

    def level(self, rng: np.random.Generator, shape: Shape, ill_defined: bool, diameter_mm: float) -> float:
        """Draw ``u`` for one lesion (one Beta draw from ``rng``)."""
        a, b = self.beta[shape]
        u = rng.beta(a, b) + self.ill_margin_shift * ill_defined + self.size_slope * np.log2(diameter_mm / self.size_ref_mm)
        return float(np.clip(u, 0.0, 1.0))

    def lobe_orders(self, ill_defined: bool) -> tuple[int, int]:
        return self.ill_orders if ill_defined and self.ill_orders is not None else self.orders

    def anisotropy_at(self, u: float, ill_defined: bool = False) -> float:
        return self.anisotropy[0] + (self.anisotropy[1] - self.anisotropy[0]) * u + self.ill_anisotropy * ill_defined

    def lobulation_amp(self, u: float) -> float:
        return self.lobulation[0] + (self.lobulation[1] - self.lobulation[0]) * u

    def spicule_count(self, u: float) -> int:
        return int(round(self.spicules_max * max(0.0, u - self.spicule_onset) / (1.0 - self.spicule_onset)))


#: LIDC-calibrated lung-nodule irregularity (even-numbered LIDC-IDRI patients only; ratings mapped as in
#: PASTALib.eval.lidc.rating_groups). Fitted by size-matched comparison of sphericity, solidity,
#: convexity and flatness at the LIDC scans' own spacings (benchmarks/realism_lidc.py).
LUNG_IRREGULARITY = Irregularity(
    beta=MappingProxyType({ROUND: (1.3, 3.7), IRREG: (2.0, 3.0)}), ill_margin_shift=0.05, size_slope=0.1,
    size_ref_mm=15.0, lobulation=(0.0, 0.5), spicules_max=3, spicule_onset=0.7, anisotropy=(0.5, 1.5), orders=(1, 2),
    ill_orders=(1, 3), ill_anisotropy=0.2,
)


@dataclass(frozen=True)
class HURange:
    """Uniform HU range; ``relative`` to the local parenchyma mean or absolute; ``weight`` among alternatives."""

    lo: float
    hi: float
    relative: bool = True
    weight: float = 1.0


@dataclass(frozen=True)
class TypeProfile:
    """Everything sampled for one lesion type (probabilities need not sum to 1; they are normalised)."""

    lesion_type: LesionType
    size_median_mm: float  # log-normal prior of the largest diameter
    size_sigma: float  # log-normal sigma (natural log)
    size_range_mm: tuple[float, float]  # clip of each axis
    shapes: Mapping[Shape, float]
    densities: Mapping[Phase, Mapping[Density, float]]
    hu: Mapping[Phase, Mapping[Density, tuple[HURange, ...]]]
    heterogeneity: Mapping[Heterogeneity, float]
    surfaces: Mapping[Surface, float]
    invasion_probability: float = 0.0
    aspect_sigma: float = 0.15  # per-axis log-normal spread of the extents around the diameter
    # Heterogeneous: correlated noise std (a reader calls texture heterogeneous when it clearly
    # exceeds the ~10-20 HU scanner noise) and correlation length.
    texture_std_hu: tuple[float, float] = (20.0, 35.0)
    texture_corr_mm: tuple[float, float] = (2.0, 5.0)
    necrosis: bool = False  # large heterogeneous masses get a hypodense centre
    wall_thickness_mm: tuple[float, float] = (5.0, 20.0)  # tumour wall thickness (serosa to mucosa) [Wall]
    circumferential: float = 0.5  # wall thickening: P(annular, whole circumference) vs an eccentric arc
    # Smallest |lesion - reference| for Hypodense/Hyperdense (cysts: clearly visible on plain CT too).
    min_contrast_hu: float = MIN_CONTRAST_HU
    hu_limits: tuple[float, float] | None = None  # cited absolute band of the lesion HU (cysts)
    stones: tuple[int, int] = (1, 1)  # punctate cluster size
    # HU window of organ voxels that count as "parenchyma" for the reference mean
    # (excludes gas, fat partial volume, contrast-filled vessels or cortical bone).
    parenchyma_window: tuple[float, float] = (-50.0, 300.0)
    nominal_parenchyma_hu: Mapping[Phase, float] = field(default_factory=lambda: {PLAIN: 40.0, ENHANCED: 90.0})
    # Hollow GI organs: the mask holds the lumen (gas, fluid, faeces), so the measured reference
    # is clamped to the range of a normal bowel/gastric wall (plain 25-60 HU, enhanced 50-120 HU).
    reference_clamp: Mapping[Phase, tuple[float, float]] | None = None
    # Masses: continuous irregularity model (None: LOBULATION/SPICULES ranges per shape attribute).
    irregularity: "Irregularity | None" = None

    def allowed(self, attribute: str) -> tuple:
        """Allowed values of ``shape``/``density``/``heterogeneity``/``surface`` (non-zero probability)."""
        if attribute == "density":
            values = {d for table in self.densities.values() for d, p in table.items() if p > 0}
            return tuple(d for d in Density if d in values)
        table = {"shape": self.shapes, "heterogeneity": self.heterogeneity, "surface": self.surfaces}[attribute]
        return tuple(v for v, p in table.items() if p > 0)


def _p(**kw: float) -> Mapping:
    return MappingProxyType(kw)


def _both(table: Mapping) -> Mapping:
    return MappingProxyType({PLAIN: table, ENHANCED: table})


# Absolute water-like cyst HU [Bosniak]: simple cysts -9..20 HU, most near water; drawn from -5..15 in
# both phases (cysts do not enhance). Contrast >= 25 HU to the parenchyma (plain kidney 30-40 HU) so a
# plain-CT cyst is as obvious as a real one; the floor of the range is -10 HU (CYST_HU_RANGE).
_CYST_HU = _both({HYPO: (HURange(-5.0, 15.0, relative=False),)})
CYST_HU_RANGE = (-10.0, 20.0)
_CYST_CONTRAST_HU = 25.0
_CYST_DENSITY = _both({HYPO: 1.0})
_GI_WALL = MappingProxyType({PLAIN: (25.0, 60.0), ENHANCED: (50.0, 120.0)})  # [Wall]
# Wall tumours: a heterogeneous wall is mottled at the scale of its layers, not speckled.
_WALL_TEXTURE_STD, _WALL_TEXTURE_CORR = (12.0, 22.0), (3.0, 6.0)

PROFILES: Mapping[LesionType, TypeProfile] = MappingProxyType({
    LesionType.LUNG_TUMOR: TypeProfile(
        LesionType.LUNG_TUMOR, 25.0, 0.45, (5.0, 80.0),  # [Fleischner], [MSD lung]
        # Attribute mix of LIDC-IDRI's 10-25 mm contours (even-numbered patients, PASTALib.eval.lidc.rating_groups:
        # Round/Irregular x Well/Ill 283/109/166/148 of 706): Round-like 0.56, well-defined 0.64. At 0.5 / 0.4 the
        # generated population was more irregular than LIDC's even where each cell's shapes matched its own
        # (benchmarks/realism_lidc.py: size-matched C2ST 0.66 -> ~0.56 with the synthetic set reweighted to this mix).
        shapes={ROUND: 0.56, IRREG: 0.44},
        # Solid tumour in aerated lung is always denser than lung: soft tissue 10-60 HU [Fleischner].
        densities=_both({HYPER: 1.0}),
        hu=_both({HYPER: (HURange(10.0, 60.0, relative=False),)}),
        heterogeneity={HOMO: 0.6, HETERO: 0.4}, surfaces={WELL: 0.64, ILL: 0.36},
        invasion_probability=0.15, texture_std_hu=(20.0, 40.0), necrosis=True,
        parenchyma_window=(-1000.0, -400.0), nominal_parenchyma_hu={PLAIN: -850.0, ENHANCED: -850.0},
        # Lung tumours are elongated/flattened, not spheres. Shape calibrated on LIDC-IDRI contours
        # (even-numbered patients, LUNG_IRREGULARITY): the per-axis aspect spread (sigma 0.15) is
        # widened or narrowed per lesion by the irregularity's anisotropy exponent (0.5-1.5), which
        # gives LIDC's flatness/elongation medians (0.63 / 0.80 at 10-40 mm) and their correlation with
        # solidity. (It was 0.3 from the two NSCLC tumours lung1/lung2 alone, benchmarks/realism_lung.py:
        # flatness 0.50-0.53 vs LIDC's 0.61.)
        aspect_sigma=0.15, irregularity=LUNG_IRREGULARITY,
    ),
    LesionType.LIVER_TUMOR: TypeProfile(
        LesionType.LIVER_TUMOR, 30.0, 0.5, (8.0, 120.0),  # [LiTS]
        shapes={ROUND: 0.6, IRREG: 0.4},
        densities={ENHANCED: {HYPO: 0.7, ISO: 0.1, HYPER: 0.2}, PLAIN: {HYPO: 0.85, ISO: 0.15}},
        # Portal-venous metastases 20-60 HU below liver [Liver mets]; hypervascular HCC +15..+50 [LI-RADS];
        # on plain CT most liver tumours are mildly hypoattenuating (-10..-35).
        hu={ENHANCED: {HYPO: (HURange(-60.0, -20.0),), ISO: (HURange(-8.0, 8.0),), HYPER: (HURange(15.0, 50.0),)},
            PLAIN: {HYPO: (HURange(-35.0, -15.0),), ISO: (HURange(-8.0, 8.0),), HYPER: (HURange(15.0, 25.0),)}},
        heterogeneity={HOMO: 0.5, HETERO: 0.5}, surfaces={WELL: 0.5, ILL: 0.5},
        invasion_probability=0.1, necrosis=True, parenchyma_window=(-20.0, 250.0),
        nominal_parenchyma_hu={PLAIN: 55.0, ENHANCED: 110.0},
    ),
    LesionType.GALLBLADDER_CANCER: TypeProfile(
        LesionType.GALLBLADDER_CANCER, 30.0, 0.4, (8.0, 90.0),
        shapes={WALL: 0.5, ROUND: 0.25, IRREG: 0.25},
        # Enhancing soft tissue (40-100 HU) against bile (0-20 HU): hyperdense to the lumen content.
        densities=_both({HYPER: 1.0}),
        hu={ENHANCED: {HYPER: (HURange(50.0, 100.0, relative=False),)}, PLAIN: {HYPER: (HURange(30.0, 50.0, relative=False),)}},
        heterogeneity={HOMO: 0.5, HETERO: 0.5}, surfaces={WELL: 0.4, ILL: 0.6},
        invasion_probability=0.3, wall_thickness_mm=(5.0, 15.0), circumferential=0.3, parenchyma_window=(-30.0, 60.0),
        nominal_parenchyma_hu={PLAIN: 10.0, ENHANCED: 10.0},
    ),
    LesionType.PANCREAS_TUMOR: TypeProfile(
        LesionType.PANCREAS_TUMOR, 28.0, 0.35, (8.0, 70.0),  # [MSD pancreas]
        shapes={ROUND: 0.5, IRREG: 0.5},
        densities={ENHANCED: {HYPO: 0.75, ISO: 0.1, HYPER: 0.15}, PLAIN: {HYPO: 0.6, ISO: 0.4}},
        # PDAC hypoattenuating by 15-50 HU [PDAC]; neuroendocrine tumours hyperenhancing.
        hu={ENHANCED: {HYPO: (HURange(-50.0, -15.0),), ISO: (HURange(-8.0, 8.0),), HYPER: (HURange(15.0, 50.0),)},
            PLAIN: {HYPO: (HURange(-25.0, -15.0),), ISO: (HURange(-8.0, 8.0),)}},
        heterogeneity={HOMO: 0.5, HETERO: 0.5}, surfaces={WELL: 0.3, ILL: 0.7},
        invasion_probability=0.3, parenchyma_window=(-20.0, 250.0),
        nominal_parenchyma_hu={PLAIN: 40.0, ENHANCED: 100.0},
    ),
    LesionType.ESOPHAGEAL_CANCER: TypeProfile(
        LesionType.ESOPHAGEAL_CANCER, 40.0, 0.35, (10.0, 100.0),  # length along the oesophagus
        shapes={WALL: 0.8, IRREG: 0.2},
        densities={ENHANCED: {ISO: 0.5, HYPER: 0.3, HYPO: 0.2}, PLAIN: {ISO: 0.7, HYPO: 0.3}},
        hu={ENHANCED: {HYPO: (HURange(-35.0, -15.0),), ISO: (HURange(-8.0, 8.0),), HYPER: (HURange(15.0, 40.0),)},
            PLAIN: {HYPO: (HURange(-25.0, -15.0),), ISO: (HURange(-8.0, 8.0),)}},
        heterogeneity={HOMO: 0.6, HETERO: 0.4}, surfaces={WELL: 0.5, ILL: 0.5},
        invasion_probability=0.25, wall_thickness_mm=(5.0, 20.0), circumferential=0.6, parenchyma_window=(-30.0, 200.0),
        reference_clamp=_GI_WALL, texture_std_hu=_WALL_TEXTURE_STD, texture_corr_mm=_WALL_TEXTURE_CORR,
    ),
    LesionType.GASTRIC_CANCER: TypeProfile(
        LesionType.GASTRIC_CANCER, 45.0, 0.35, (10.0, 120.0),
        shapes={WALL: 0.6, IRREG: 0.3, ROUND: 0.1},
        densities={ENHANCED: {HYPER: 0.5, ISO: 0.3, HYPO: 0.2}, PLAIN: {ISO: 0.7, HYPO: 0.3}},
        # Enhancing gastric cancer 15-40 HU above normal wall (Ba-Ssalamah) [Wall].
        hu={ENHANCED: {HYPO: (HURange(-35.0, -15.0),), ISO: (HURange(-8.0, 8.0),), HYPER: (HURange(15.0, 40.0),)},
            PLAIN: {HYPO: (HURange(-25.0, -15.0),), ISO: (HURange(-8.0, 8.0),)}},
        heterogeneity={HOMO: 0.5, HETERO: 0.5}, surfaces={WELL: 0.4, ILL: 0.6},
        invasion_probability=0.25, wall_thickness_mm=(8.0, 20.0), circumferential=0.4, parenchyma_window=(-30.0, 200.0),
        reference_clamp=_GI_WALL, texture_std_hu=_WALL_TEXTURE_STD, texture_corr_mm=_WALL_TEXTURE_CORR,
    ),
    LesionType.COLORECTAL_CANCER: TypeProfile(
        LesionType.COLORECTAL_CANCER, 40.0, 0.35, (10.0, 100.0),
        shapes={WALL: 0.7, IRREG: 0.2, ROUND: 0.1},
        densities={ENHANCED: {ISO: 0.4, HYPER: 0.4, HYPO: 0.2}, PLAIN: {ISO: 0.7, HYPO: 0.3}},
        hu={ENHANCED: {HYPO: (HURange(-35.0, -15.0),), ISO: (HURange(-8.0, 8.0),), HYPER: (HURange(15.0, 40.0),)},
            PLAIN: {HYPO: (HURange(-25.0, -15.0),), ISO: (HURange(-8.0, 8.0),)}},
        heterogeneity={HOMO: 0.5, HETERO: 0.5}, surfaces={WELL: 0.4, ILL: 0.6},
        invasion_probability=0.25, wall_thickness_mm=(6.0, 20.0), circumferential=0.6, parenchyma_window=(-30.0, 200.0),
        reference_clamp=_GI_WALL, texture_std_hu=_WALL_TEXTURE_STD, texture_corr_mm=_WALL_TEXTURE_CORR,
    ),
    LesionType.KIDNEY_TUMOR: TypeProfile(
        LesionType.KIDNEY_TUMOR, 40.0, 0.45, (10.0, 120.0),  # [KiTS]
        shapes={ROUND: 0.6, IRREG: 0.4},
        densities={ENHANCED: {HYPO: 0.8, ISO: 0.1, HYPER: 0.1}, PLAIN: {HYPO: 0.5, ISO: 0.4, HYPER: 0.1}},
        # Nephrographic phase: RCC 30-100 HU below enhancing parenchyma [RCC].
        hu={ENHANCED: {HYPO: (HURange(-100.0, -30.0),), ISO: (HURange(-8.0, 8.0),), HYPER: (HURange(15.0, 60.0),)},
            PLAIN: {HYPO: (HURange(-25.0, -15.0),), ISO: (HURange(-8.0, 8.0),), HYPER: (HURange(15.0, 30.0),)}},
        heterogeneity={HOMO: 0.4, HETERO: 0.6}, surfaces={WELL: 0.6, ILL: 0.4},
        invasion_probability=0.15, necrosis=True, parenchyma_window=(-10.0, 350.0),
        nominal_parenchyma_hu={PLAIN: 35.0, ENHANCED: 170.0},
    ),
    LesionType.BLADDER_CANCER: TypeProfile(
        LesionType.BLADDER_CANCER, 25.0, 0.45, (6.0, 80.0),
        shapes={WALL: 0.4, ROUND: 0.3, IRREG: 0.3},
        # Soft-tissue tumour against urine (0-15 HU) [Wall, Kim 2006].
        densities=_both({HYPER: 1.0}),
        hu={ENHANCED: {HYPER: (HURange(50.0, 100.0, relative=False),)}, PLAIN: {HYPER: (HURange(30.0, 50.0, relative=False),)}},
        heterogeneity={HOMO: 0.6, HETERO: 0.4}, surfaces={WELL: 0.5, ILL: 0.5},
        invasion_probability=0.2, wall_thickness_mm=(5.0, 20.0), circumferential=0.1, parenchyma_window=(-30.0, 60.0),
        nominal_parenchyma_hu={PLAIN: 10.0, ENHANCED: 10.0},
    ),
    LesionType.BONE_METASTASIS: TypeProfile(
        LesionType.BONE_METASTASIS, 20.0, 0.4, (5.0, 60.0),
        shapes={ROUND: 0.4, IRREG: 0.6},
        densities=_both({HYPO: 0.6, HYPER: 0.4}),
        # Lytic: soft tissue replacing trabecular bone; blastic: +300..+700 HU [Bone mets].
        hu=_both({HYPO: (HURange(20.0, 60.0, relative=False),), HYPER: (HURange(300.0, 700.0),)}),
        heterogeneity={HOMO: 0.4, HETERO: 0.6}, surfaces={WELL: 0.5, ILL: 0.5},
        invasion_probability=0.2, parenchyma_window=(50.0, 600.0),  # trabecular, not cortical, bone
        nominal_parenchyma_hu={PLAIN: 200.0, ENHANCED: 200.0},
    ),
    LesionType.LIVER_CYST: TypeProfile(
        LesionType.LIVER_CYST, 15.0, 0.6, (4.0, 100.0),
        shapes={ROUND: 1.0}, densities=_CYST_DENSITY, hu=_CYST_HU, min_contrast_hu=_CYST_CONTRAST_HU, hu_limits=CYST_HU_RANGE,
        heterogeneity={HOMO: 1.0}, surfaces={WELL: 1.0}, parenchyma_window=(-20.0, 250.0),
        nominal_parenchyma_hu={PLAIN: 55.0, ENHANCED: 110.0},
    ),
    LesionType.GALLSTONE: TypeProfile(
        LesionType.GALLSTONE, 10.0, 0.5, (3.0, 35.0),
        shapes={PUNCT: 1.0},
        densities=_both({HYPER: 0.6, ISO: 0.15, HYPO: 0.25}),
        # Cholesterol stones -90..-10 HU, calcified 60..160 HU [Gallstones]; iso to bile relative.
        hu=_both({HYPO: (HURange(-90.0, -10.0, relative=False),), ISO: (HURange(-8.0, 8.0),),
                  HYPER: (HURange(60.0, 160.0, relative=False),)}),
        heterogeneity={HOMO: 0.6, HETERO: 0.4}, surfaces={WELL: 1.0}, stones=(1, 4),
        texture_std_hu=(15.0, 30.0), texture_corr_mm=(1.0, 2.0), parenchyma_window=(-30.0, 60.0),
        nominal_parenchyma_hu={PLAIN: 10.0, ENHANCED: 10.0},
    ),
    LesionType.PANCREAS_CYST: TypeProfile(
        LesionType.PANCREAS_CYST, 15.0, 0.5, (4.0, 60.0),
        shapes={ROUND: 0.85, IRREG: 0.15},  # IPMN can be lobulated
        densities=_CYST_DENSITY, hu=_CYST_HU, min_contrast_hu=_CYST_CONTRAST_HU, hu_limits=CYST_HU_RANGE,
        heterogeneity={HOMO: 1.0}, surfaces={WELL: 1.0}, parenchyma_window=(-20.0, 250.0),
        nominal_parenchyma_hu={PLAIN: 40.0, ENHANCED: 100.0},
    ),
    LesionType.KIDNEY_CYST: TypeProfile(
        LesionType.KIDNEY_CYST, 20.0, 0.6, (4.0, 100.0),
        shapes={ROUND: 1.0}, densities=_CYST_DENSITY, hu=_CYST_HU, min_contrast_hu=_CYST_CONTRAST_HU, hu_limits=CYST_HU_RANGE,
        heterogeneity={HOMO: 1.0}, surfaces={WELL: 1.0}, parenchyma_window=(-10.0, 350.0),
        nominal_parenchyma_hu={PLAIN: 35.0, ENHANCED: 170.0},
    ),
    LesionType.KIDNEY_STONE: TypeProfile(
        LesionType.KIDNEY_STONE, 6.0, 0.5, (2.0, 25.0),
        shapes={PUNCT: 1.0},
        densities=_both({HYPER: 1.0}),
        # Uric acid 200-500 HU (~10%), calcium stones 900-1500 HU [Stones].
        hu=_both({HYPER: (HURange(200.0, 500.0, relative=False, weight=0.15),
                          HURange(900.0, 1500.0, relative=False, weight=0.85))}),
        heterogeneity={HOMO: 1.0}, surfaces={WELL: 1.0}, stones=(1, 3), parenchyma_window=(-10.0, 350.0),
        nominal_parenchyma_hu={PLAIN: 35.0, ENHANCED: 170.0},
    ),
})


def profile(lesion_type: LesionType) -> TypeProfile:
    """The profile of a lesion type."""
    return PROFILES[LesionType.parse(lesion_type)]
