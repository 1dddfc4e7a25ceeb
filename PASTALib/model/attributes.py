"""The five classified report attributes: logit groups [5, 3, 2, 2, 2] and the grouped loss.

The head's 14 logits are, in order: Shape (5 = the four report wordings plus an empty 5th
option, "no shape reported"), Density (3), Heterogeneity (2), Surface (2), Invasion (2).
The wording of each option is the structured report's exact wording (PASTALib.report.attributes).

Option order inside a group is this module's convention (enum declaration order). The public
PASTA code one-hot encodes the attributes from its own tables, which are not published; if a
checkpoint turns out to use a different order, change ATTRIBUTE_GROUPS only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from PASTALib.report.attributes import ATTRIBUTES, TITLES, wordings
from PASTALib.report.parsing import strip_mass

#: Wording of the Shape group's 5th option (the checkpoint has it; no report uses it).
SHAPE_NONE = "None"


@dataclass(frozen=True)
class AttributeGroup:
    name: str  # report key ("shape", "density", ...)
    title: str  # report panel title ("Shape", ...)
    options: tuple[str, ...]  # exact report wordings, in logit order


#: One group per report attribute, in report order; the options are the report vocabulary itself.
ATTRIBUTE_GROUPS: tuple[AttributeGroup, ...] = tuple(
    AttributeGroup(key, TITLES[key], wordings(key) + ((SHAPE_NONE,) if key == "shape" else ()))
    for key in ATTRIBUTES
)
GROUP_SIZES: tuple[int, ...] = tuple(len(g.options) for g in ATTRIBUTE_GROUPS)  # (5, 3, 2, 2, 2)
NUM_ATTRIBUTE_LOGITS: int = sum(GROUP_SIZES)  # 14
IGNORE_INDEX = -100


def _slices() -> list[slice]:
    out, start = [], 0
    for size in GROUP_SIZES:
        out.append(slice(start, start + size))
        start += size
    return out


def split_logits(logits: torch.Tensor) -> list[torch.Tensor]:
    """(B, 14) → five (B, k) tensors."""
    if logits.ndim != 2 or logits.shape[1] != NUM_ATTRIBUTE_LOGITS:
        raise ValueError(f"expected (B, {NUM_ATTRIBUTE_LOGITS}) attribute logits, got {tuple(logits.shape)}")
    return [logits[:, s] for s in _slices()]


def grouped_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Cross-entropy per group, averaged over the groups (as the public PASTA loss).

    ``targets``: (B, 5) integer option index per group; IGNORE_INDEX (-100) marks an unknown
    attribute. A group with no known target in the batch is left out of the average.
    """
    if targets.ndim != 2 or targets.shape[1] != len(GROUP_SIZES):
        raise ValueError(f"expected (B, {len(GROUP_SIZES)}) targets, got {tuple(targets.shape)}")
    losses = []
    for i, group_logits in enumerate(split_logits(logits)):
        t = targets[:, i].long()
        if not bool((t != IGNORE_INDEX).any()):
            continue
        loss = F.cross_entropy(group_logits.float(), t, ignore_index=IGNORE_INDEX)
        losses.append(loss * (1.0 if weights is None else float(weights[i])))
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()


def encode_attributes(report: Mapping[str, Any]) -> list[int]:
    """Report dict (keys shape/density/... with exact wording) → 5 option indices (-100 if absent)."""
    out = []
    for group in ATTRIBUTE_GROUPS:
        value = report.get(group.name, report.get(group.title))
        if value is None or value == "":
            out.append(IGNORE_INDEX)
            continue
        text = str(value).strip()
        if group.name == "shape":
            text = strip_mass(text)
        lowered = [o.lower() for o in group.options]
        if text.lower() not in lowered:
            raise ValueError(f"unknown {group.title} {value!r}; allowed: {', '.join(group.options)}")
        out.append(lowered.index(text.lower()))
    return out


@dataclass(frozen=True)
class AttributePrediction:
    """Decoded head output of one lesion: wording and probability per attribute."""

    values: dict[str, str]  # group name → exact report wording
    probabilities: dict[str, dict[str, float]]  # group name → {wording: probability}

    def confidence(self, name: str) -> float:
        return self.probabilities[name][self.values[name]]


def decode_attributes(logits: torch.Tensor) -> list[AttributePrediction]:
    """Grouped softmax + argmax of (B, 14) logits → one AttributePrediction per row.

    The Shape group's empty 5th option is never returned when another option is possible:
    argmax is taken over the four report wordings (its probability is still listed).
    """
    groups = split_logits(logits.detach().float().cpu())
    results = []
    for b in range(logits.shape[0]):
        values, probs = {}, {}
        for group, g in zip(ATTRIBUTE_GROUPS, groups):
            p = torch.softmax(g[b], dim=0)
            probs[group.name] = {o: float(v) for o, v in zip(group.options, p)}
            candidates = p[:-1] if group.name == "shape" else p
            values[group.name] = group.options[int(torch.argmax(candidates))]
        results.append(AttributePrediction(values, probs))
    return results
