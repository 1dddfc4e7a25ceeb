"""Healthy-organ check: big enough, and not named as diseased in the report impression.

Impression matching (deliberately simple, see :func:`impression_mentions`):

* each organ has a list of synonyms (regular expressions matched at word boundaries,
  case-insensitive), e.g. kidney: kidney, renal, nephr-, hydronephrosis, pyelo-;
* the impression is split into sentences at ``. ; ! ?`` and new lines, and each sentence
  into clauses at commas and at "but", "however", "although", "except", "whereas";
* a mention does NOT count (negated) when
  - a negation cue ("no", "not", "without", "negative for", "free of", "absence of",
    "rule out") occurs before it in the same sentence, after the last "but/however/..."
    (so "No focal liver, pancreatic or renal lesion" negates all three), or
  - its clause says the organ is normal: "unremarkable", "normal", "within normal limits",
    "intact", "not seen", "not identified", "not present", "excluded", "ruled out";
* for a paired organ checked on one side, a mention whose clause names only the other
  side ("left renal cyst" when checking the right kidney) does not count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PASTALib.anatomy.organs import OrganMasks
from PASTALib.anatomy.totalseg_classes import ORGAN_STRUCTURES, Side
from PASTALib.errors import AnatomyError
from PASTALib.labels import Organ
from PASTALib.report.wording import location_text

#: PASTA-Gen only synthesises lesions in organs larger than this (docs/labels-and-reports.md).
MIN_HEALTHY_VOLUME_MM3 = 4000.0

#: Synonyms per organ (regex fragments, matched with word boundaries, case-insensitive).
ORGAN_SYNONYMS: dict[Organ, tuple[str, ...]] = {
    Organ.LUNG: (r"lungs?", r"pulmonary", r"(?:upper|middle|lower)[\s-]+lobes?", r"lingula\w*",
                 r"lobectomy", r"bronch\w*", r"pneumonia", r"pneumonectomy"),
    Organ.LIVER: (r"liver", r"hepat\w*", r"hcc"),
    Organ.GALLBLADDER: (r"gall[\s-]?bladder", r"cholecyst\w*", r"cholelith\w*", r"gallstones?"),
    Organ.PANCREAS: (r"pancrea\w*", r"ipmn"),
    Organ.ESOPHAGUS: (r"\w*o?esophag\w*",),
    Organ.STOMACH: (r"stomach", r"gastric", r"gastr(?:ectomy|itis|o[\s-]?\w*)", r"pylor\w*", r"antral?", r"antrum"),
    Organ.COLON: (r"colon", r"colonic", r"colorectal", r"colitis", r"rectum", r"rectal", r"recto\w*",
                  r"rectosigmoid", r"sigmoid", r"c(?:a)?ecum", r"c(?:a)?ecal", r"large[\s-]+bowel",
                  r"diverticul\w*", r"colectomy"),
    Organ.KIDNEY: (r"kidneys?", r"renal", r"nephr\w*", r"hydronephro\w*", r"pyelo\w*"),
    # "bladder" but not "gall bladder"
    Organ.BLADDER: (r"(?<!gall\s)(?<!gall-)bladder", r"vesical", r"cystitis", r"cystectomy"),
    Organ.BONE: (r"bones?", r"bony", r"osseous", r"osteo\w*", r"vertebra\w*", r"spine", r"spinal",
                 r"skelet\w*", r"ribs?", r"sternum", r"sternal", r"sacrum", r"sacral", r"femur",
                 r"humerus", r"scapula", r"clavicle", r"ilium", r"acetabul\w*", r"marrow",
                 r"(?:osteo)?lytic", r"(?:osteo)?blastic", r"fractures?"),
}

_NEGATION_CUES = re.compile(
    r"\b(?:no|not|without|negative\s+for|free\s+of|absence\s+of|absent|rule\s+out|ruled\s+out)\b", re.I
)
_NORMAL_CUES = re.compile(
    r"\b(?:unremarkable|normal(?:\s+in\s+\w+)?|within\s+normal\s+limits|intact|not\s+(?:seen|identified|present|"
    r"demonstrated|visuali[sz]ed)|excluded|ruled\s+out)\b",
    re.I,
)
_CONTRAST = re.compile(r"\b(?:but|however|although|except|whereas)\b", re.I)
_SENTENCE = re.compile(r"[.;!?\n]+")
_SIDE_WORDS = {"left": re.compile(r"\bleft\b", re.I), "right": re.compile(r"\bright\b", re.I)}


def _pattern(organ: Organ) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(ORGAN_SYNONYMS[organ]) + r")\b", re.I)


def impression_mentions(impression: str | None, organ: Organ, side: Side | None = None) -> list[str]:
    """Phrases of the impression that name ``organ`` as (possibly) diseased; [] if none.

    Each phrase is the clause that holds the mention. See the module docstring for the
    negation rule.
    """
    if not impression:
        return []
    pattern = _pattern(Organ(organ))
    found: list[str] = []
    for sentence in _SENTENCE.split(impression):
        for match in pattern.finditer(sentence):
            start = match.start()
            # the part of the sentence after the last "but/however" before the mention
            scope_start = max((m.end() for m in _CONTRAST.finditer(sentence, 0, start)), default=0)
            if _NEGATION_CUES.search(sentence, scope_start, start):
                continue
            clause_start = max(scope_start, sentence.rfind(",", 0, start) + 1)
            ends = [i for i in (sentence.find(",", match.end()),) if i >= 0]
            ends += [m.start() for m in _CONTRAST.finditer(sentence, match.end())][:1]
            clause = sentence[clause_start: min(ends, default=len(sentence))]
            if _NORMAL_CUES.search(clause):
                continue
            if side is not None:
                other = "left" if side == "right" else "right"
                if _SIDE_WORDS[other].search(clause) and not _SIDE_WORDS[side].search(clause):
                    continue
            if clause.strip() not in found:
                found.append(clause.strip())
    return found


def _impression_reason(impression: str | None, organ: Organ, side: Side | None = None) -> str:
    """Why the impression rules ``organ`` out for a lesion; "" when it does not name it as diseased."""
    mentions = impression_mentions(impression, organ, side)
    if not mentions:
        return ""
    return (f"the report impression mentions the {location_text(Organ(organ), side).lower()}: \"{mentions[0]}\"; "
            "PASTA synthesises lesions only in organs the report calls healthy")


def check_impression(impression: str | None, organ: Organ, side: Side | None = None) -> None:
    """Raise AnatomyError when the impression names ``organ`` as (possibly) diseased (negations allowed).

    The check for callers without organ masks; :func:`check_healthy_organ` runs it with the others.
    """
    _raise_unless_healthy(_impression_reason(impression, organ, side))


def _raise_unless_healthy(reason: str) -> None:
    if reason:
        raise AnatomyError(reason[0].upper() + reason[1:] + ".")


@dataclass(frozen=True)
class OrganHealth:
    organ: Organ
    side: Side | None
    volume_mm3: float
    healthy: bool
    reason: str  # why not healthy; "" when healthy


def assess_organ(
    masks: OrganMasks,
    organ: Organ,
    side: Side | None = None,
    impression: str | None = None,
    *,
    min_volume_mm3: float = MIN_HEALTHY_VOLUME_MM3,
) -> OrganHealth:
    """Health status of one organ (never raises for an unhealthy organ; see :func:`check_healthy_organ`)."""
    organ = Organ(organ)
    where = masks.location_name(organ, side=side)
    volume = masks.organ_volume_mm3(organ, side)
    if volume == 0:
        structures = " / ".join(ORGAN_STRUCTURES[organ][:5]) + (" ..." if len(ORGAN_STRUCTURES[organ]) > 5 else "")
        reason = (
            f"organ {where} not found in the organ segmentation ({masks.source}); run TotalSegmentator "
            f"(pasta anatomy organs --totalsegmentator) or provide a label map containing {structures}"
        )
        return OrganHealth(organ, side, 0.0, False, reason)
    if volume <= min_volume_mm3:
        reason = (
            f"{where} is too small for a lesion: {volume:.0f} mm³ segmented, more than "
            f"{min_volume_mm3:.0f} mm³ needed (organ cut off by the scan range, resected or atrophic)"
        )
        return OrganHealth(organ, side, volume, False, reason)
    lesions = masks.lesion_voxels(organ, side)
    if lesions:
        listed = ", ".join(f"{name.split(':', 1)[1]} ({n} voxels)" for name, n in lesions.items())
        return OrganHealth(organ, side, volume, False, f"{where} already contains a lesion in the label map: {listed}")
    reason = _impression_reason(impression, organ, side)
    return OrganHealth(organ, side, volume, not reason, reason)


def check_healthy_organ(
    masks: OrganMasks,
    organ: Organ,
    side: Side | None = None,
    impression: str | None = None,
    *,
    min_volume_mm3: float = MIN_HEALTHY_VOLUME_MM3,
) -> float:
    """Return the organ volume (mm³) if it is healthy, else raise AnatomyError saying why.

    Healthy = segmented, volume > ``min_volume_mm3`` (4000 mm³), no PASTA lesion label inside,
    and the impression does not name it (negations allowed, see :func:`impression_mentions`).
    """
    result = assess_organ(masks, organ, side, impression, min_volume_mm3=min_volume_mm3)
    _raise_unless_healthy(result.reason)
    return result.volume_mm3


def assess_all_organs(masks: OrganMasks, impression: str | None = None) -> list[OrganHealth]:
    """Health of every PASTA organ (paired organs per side), present or not."""
    out: list[OrganHealth] = []
    for organ in Organ:
        for side in (("right", "left") if organ.is_paired else (None,)):
            out.append(assess_organ(masks, organ, side, impression))
    return out
