"""PASTA-Gen lesion synthesis: spec -> local signed-distance shape -> HU model -> paste back -> report.

The report vocabulary, wording and schema live in PASTALib.report (imported from there).

No Slicer, Qt or torch import here: the engine runs anywhere numpy/scipy/SimpleITK do.
"""

from PASTALib.synth.body import lesion_shape
from PASTALib.synth.pipeline import Refiner, SynthesisResult, synthesize_lesion
from PASTALib.synth.profiles import PROFILES, TypeProfile, profile
from PASTALib.synth.spec import LesionSpec, allowed_values

__all__ = [
    "PROFILES",
    "LesionSpec",
    "Refiner",
    "SynthesisResult",
    "TypeProfile",
    "allowed_values",
    "profile",
    "lesion_shape",
    "synthesize_lesion",
]
