"""Which cases a run (shard) makes, their seeds, and the templates each case may use."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from PASTALib.labels import LesionType
from PASTALib.synth.generate.layout import CaseJob


def case_list(types: Iterable[LesionType], per_type: int, shard: tuple[int, int] = (0, 1)) -> list[CaseJob]:
    """All cases (index-major, so every type progresses together), then this shard's share (every n-th)."""
    types = sorted({LesionType.parse(t) for t in types})
    jobs = [CaseJob(t, i) for i in range(per_type) for t in types]
    i, n = shard
    return jobs[i::n]


def case_seeds(seed: int, lesion_type: LesionType, index: int, attempt: int) -> tuple[int, np.random.Generator]:
    """(synthesis seed, generator for the template/side choice) of one attempt of one case."""
    state = np.random.SeedSequence([int(seed), int(lesion_type), int(index), int(attempt)]).generate_state(4, np.uint32)
    synth_seed = ((int(state[0]) << 32) | int(state[1])) >> 1  # non-negative 63-bit
    return synth_seed, np.random.default_rng([int(state[2]), int(state[3])])


def eligible_templates(lesion_type: LesionType, index: dict[str, dict], any_phase: bool) -> list[tuple[str, list[str | None]]]:
    """Sorted (template name, healthy sides) where the organ is healthy and the phase fits the type."""
    organ = lesion_type.organ.name.lower()
    phases = {p.value for p in lesion_type.template_phases}
    out = []
    for name in sorted(index):
        info = index[name]
        sides = info["healthy"].get(organ)
        if not sides:
            continue
        if not any_phase and info["phase"] not in phases:
            continue
        out.append((name, sides))
    return out
