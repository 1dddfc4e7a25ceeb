"""PASTA-Gen lesion synthesis: spec -> local signed-distance shape -> HU model -> paste back -> report.

No Slicer, Qt or torch import here: the engine runs anywhere numpy/scipy/SimpleITK do.
"""

from PASTALib.synth.attributes import Density, Heterogeneity, Invasion, Shape, Surface
from PASTALib.synth.pipeline import Refiner, SynthesisResult, estimate_phase, lesion_shape, synthesize_lesion
from PASTALib.synth.profiles import PROFILES, TypeProfile, profile
from PASTALib.synth.report import StructuredReport, measure_lesion, report_schema, validate_report
from PASTALib.synth.spec import LesionSpec, allowed_values

__all__ = [
    "PROFILES",
    "Density",
    "Heterogeneity",
    "Invasion",
    "LesionSpec",
    "Refiner",
    "Shape",
    "StructuredReport",
    "Surface",
    "SynthesisResult",
    "TypeProfile",
    "allowed_values",
    "estimate_phase",
    "measure_lesion",
    "profile",
    "report_schema",
    "lesion_shape",
    "synthesize_lesion",
    "validate_report",
]
