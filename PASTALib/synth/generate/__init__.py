"""Batch generation of a PASTA-Gen-30K style synthetic lesion dataset (``pasta synth generate``).

Templates
---------
Either a folder with one sub-folder per template CT::

    templates/<name>/ct.nii.gz            CT (any of .nii.gz .nii .nrrd .mha .mhd)
    templates/<name>/organs.nii.gz        TotalSegmentator ``total`` label map on (or overlapping) the CT
      or templates/<name>/organs_pasta.nii.gz   PASTA organ labels 1-10 instead
    templates/<name>/impression.txt       optional report impression (organs it calls diseased are skipped)

or a CSV with columns ``ct, organs`` and optional ``name, labels_kind (totalsegmentator | pasta),
impression``; relative paths are relative to the CSV's folder. Templates are identified by name
(folder name / ``name`` column / CT file stem), sorted by name.

Output (PASTA-Gen-30K layout, one folder per case)::

    <out>/<Organ>/<Kind>/<index>/img.nii.gz    1 mm LPS CT crop (crop_mm³) centred on the lesion, int16
                                 label.nii.gz  organs 1-10 + the lesion 11-25 (docs/labels-and-reports.md), same grid
                                 total.nii.gz  the template's organ segmentation (TotalSegmentator ids or PASTA 1-10)
                                 type.json     the 8 report attributes (PASTA-Gen style)
                                 report.json   our StructuredReport JSON (schema: report.schema.json)
                                 case.json     seed, template, attempt, resolved spec, crop grid, timings
    <out>/manifest.csv                          one row per finished case (ok or failed); per shard:
                                                manifest.shard-<i>-of-<n>.csv
    <out>/templates.index.json                  cached template phase + healthy organs

Determinism: case ``(type, index)`` uses ``np.random.SeedSequence([seed, label_value, index, attempt])``
for both the template choice and the synthesis seed, so any shard, worker count or resume produces
the same case bit-identically (same templates, same code). A case that fails (lesion does not fit,
organ too small, ...) is retried with attempt + 1 up to ``max_attempts`` times, then recorded as
failed with the last error.

Crash safety: each case is written into ``<out>/.partial/<case_id>.<pid>.<token>`` and renamed
into place in one step, so a case folder either is complete or does not exist. On restart finished
cases (folder present or manifest row) are skipped, leftovers of the same cases in ``.partial`` are
removed and manifest rows missing for finished folders are restored from their case.json.

Modules: ``layout`` (case files, manifest row of a case, completeness), ``templates`` (discovery, loading,
phase/health index), ``config`` (:class:`GenerateConfig`, the one settings object, workers included),
``schedule`` (case list, seeds, eligible templates), ``worker`` (one case,
:class:`WorkerContext`), ``pool`` (worker processes, signals), ``run`` (:func:`generate`: lock, resume, run).
"""

from PASTALib.synth.generate.config import DEFAULT_CROP_MM, DEFAULT_MAX_ATTEMPTS, GenerateConfig, parse_shard
from PASTALib.synth.generate.layout import (
    PARTIAL_DIR, CaseJob, case_complete, verify_case,
)
from PASTALib.synth.generate.run import GenerateSummary, GenerationError, generate
from PASTALib.synth.generate.schedule import case_list, case_seeds, eligible_templates
from PASTALib.synth.generate.templates import (
    LoadedTemplate, Template, build_index, discover_templates, index_template, load_template,
)
from PASTALib.synth.generate.worker import WorkerContext, run_case, synthesize_case, type_json

__all__ = [
    "DEFAULT_CROP_MM", "DEFAULT_MAX_ATTEMPTS", "PARTIAL_DIR", "CaseJob",
    "GenerateConfig", "GenerateSummary", "GenerationError", "LoadedTemplate", "Template", "WorkerContext",
    "build_index", "case_complete", "case_list", "case_seeds", "discover_templates", "eligible_templates",
    "generate", "index_template", "load_template", "parse_shard", "run_case", "synthesize_case", "type_json",
    "verify_case",
]
