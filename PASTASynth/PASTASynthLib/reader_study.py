"""ReaderStudyLogic: the MRML side of a blinded realism reader study (the "Reader study" panel).

Wraps :class:`PASTALib.review.ReaderSession` (which owns the reader's seeded order, resume
and the answer database) and shows one case at a time in the scene:

* the case image and lesion mask become a volume node and a segmentation node named only
  by the position in the reader's order ("Case 7 of 40", "Case 7 of 40 lesion"). No node
  gets a description, attribute, storage node or file name, so nothing in the scene (or a
  scene saved from it) names the case file, its origin, the study folder or the key;
* the previous case's nodes are removed before the next case is added (the node count does
  not grow while a reader moves through the study);
* :attr:`ShownCase.centre_ras` is the lesion centre in Slicer RAS (``x_ras = -x_lps``,
  ``y_ras = -y_lps``) so the widget can centre the slice views on the lesion;
* :meth:`ReaderStudyLogic.rate` commits the answer at once through ``ReaderSession.rate``
  (nothing is buffered here) with the seconds since the case was shown.

PASTALib review errors (``UnknownReaderError``, ``StudyTamperedError``, ``AnswerLockedError``,
``RatingRangeError``; all ``ReviewError``) propagate unchanged with their messages; a failed
``open`` or ``rate`` leaves the scene exactly as it was. Plain Python + MRML: no Qt, no
``slicer.app``; the scene comes in through an :class:`~PASTASlicerLib.mrml.MRMLContext`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from PASTASlicerLib import mrml
from PASTASlicerLib.mrml import LPS_TO_RAS, MRMLContext

#: Segment name of the rated lesion (neutral: no lesion origin, no case id).
LESION_SEGMENT_NAME = "Lesion"
#: (window, level) HU per lesion family; readers may change it, every case starts the same way.
WINDOWS = {"lung": (1500.0, -600.0), "bone": (1800.0, 400.0), "default": (400.0, 40.0)}

#: Likert anchors shown on the realism buttons (1..5).
REALISM_ANCHORS = (
    "Completely unrealistic",
    "Mostly unrealistic",
    "Uncertain",
    "Mostly realistic",
    "Indistinguishable from real",
)
#: Likert anchors of the attribute-accuracy ratings (1..5).
ACCURACY_ANCHORS = (
    "Completely wrong",
    "Mostly wrong",
    "Partly right",
    "Mostly right",
    "Exactly right",
)


@dataclass
class ShownCase:
    """What the panel shows for the current case (no origin, no file names)."""

    case_id: str  # the study's anonymous id (what the answer is stored under); not shown in node names
    position: int  # 1-based position in this reader's order
    total: int
    title: str  # "Case 7 of 40": the node name
    lesion_type: str  # display name ("Lung tumor"), part of the question
    report: dict[str, str] | None  # attribute -> wording whose accuracy is rated (None: no report)
    answer: Any  # the reader's saved PASTALib.review.Answer for this case, or None
    locked: bool  # answered and the study does not allow changes
    volume_node: Any
    segmentation_node: Any
    centre_ras: tuple[float, float, float]
    window_level: tuple[float, float] = field(default=WINDOWS["default"])

    @property
    def attributes(self) -> list[str]:
        """The report attributes to rate for accuracy, in PASTALib's order."""
        from PASTALib.review import ATTRIBUTES

        return [a for a in ATTRIBUTES if self.report and self.report.get(a)]


class ReaderStudyLogic:
    """One reader's session shown in an MRML scene. Use :meth:`open`, then :meth:`show_current`."""

    def __init__(self, context: MRMLContext) -> None:
        self.context = context
        self.session = None  # PASTALib.review.ReaderSession
        self._nodes: list = []  # this logic's case nodes (tracked by object, not by node attributes)
        self._shown: ShownCase | None = None
        self._shown_at: float | None = None

    # ------------------------------------------------------------------ lifetime

    @property
    def is_open(self) -> bool:
        return self.session is not None

    @property
    def shown(self) -> ShownCase | None:
        return self._shown

    def open(self, study_dir: str | os.PathLike, reader: str):
        """Open ``study_dir`` as ``reader``; the cursor is at the first unanswered case.

        Raises the PASTALib review error (unknown reader, tampered study, not a study) and then
        changes nothing: a study already open stays open and its case stays shown.
        Returns the ``CaseView`` to resume at (None when every case is answered).
        """
        from PASTALib.review import ReaderSession, ReviewError

        reader = (reader or "").strip()
        if not reader:
            raise ReviewError("Enter your reader name (as registered by the study coordinator).")
        if not study_dir or not os.path.isdir(os.fspath(study_dir)):
            raise ReviewError(f"Study folder {os.fspath(study_dir or '')!r} does not exist; choose the folder "
                              "that holds study.json (the one the study coordinator gave you).")
        session = ReaderSession(study_dir, reader)  # raises before anything changes
        self.close()
        self.session = session
        return session.resume()

    def close(self) -> None:
        """Remove this logic's case nodes and close the session (answers are already saved)."""
        self._remove_case_nodes()
        if self.session is not None:
            self.session.close()
            self.session = None

    def _require_session(self):
        if self.session is None:
            from PASTALib.review import ReviewError

            raise ReviewError("No reader study is open: enter your reader name, choose the study folder, Open.")
        return self.session

    # ------------------------------------------------------------------ showing cases

    def show_current(self) -> ShownCase | None:
        """Load the case at the cursor as anonymised nodes (replacing the previous case's).

        Returns None (and removes the case nodes) when the reader is past the last case.
        A case whose files changed raises ``StudyTamperedError``; its predecessor's nodes are
        removed too, so a reader can never rate a case other than the one on screen.
        """
        session = self._require_session()
        view = session.current()
        if view is None:
            self._remove_case_nodes()
            return None
        try:
            paths = session.case_paths(view.case_id)  # checks the case files against the manifest
        except Exception:
            self._remove_case_nodes()
            raise
        title = f"Case {view.position} of {view.total}"
        volume, segmentation = self._load_case_nodes(paths.image, paths.mask, title, view.lesion_type)
        self._remove_case_nodes()
        self._nodes = [volume, segmentation]
        centre_lps = np.asarray(paths.centre_lps_mm, float)
        centre_ras = tuple(float(v) for v in LPS_TO_RAS @ centre_lps)
        answer = view.answer
        self._shown = ShownCase(
            case_id=view.case_id, position=view.position, total=view.total, title=title,
            lesion_type=view.lesion_type, report=dict(view.report) if view.report else None, answer=answer,
            locked=answer is not None and not session.allow_changes, volume_node=volume,
            segmentation_node=segmentation, centre_ras=centre_ras,
            window_level=self.window_level_for(view.lesion_type))
        self._shown_at = time.monotonic()  # the reading clock starts when the case is on screen
        return self._shown

    def _load_case_nodes(self, image_path, mask_path, title: str, lesion_type: str):
        """Volume + segmentation nodes from in-memory images: no storage node keeps a file name."""
        import SimpleITK as sitk

        image = sitk.ReadImage(os.fspath(image_path))
        mask = sitk.ReadImage(os.fspath(mask_path))
        added = []
        try:
            volume = mrml.sitk_to_volume(self.context, image, title)
            added.append(volume)
            window, level = self.window_level_for(lesion_type)
            display = volume.GetDisplayNode()
            if display is not None:
                display.AutoWindowLevelOff()
                display.SetWindowLevel(window, level)
            binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
            segmentation = mrml.segmentation_from_label_map(
                self.context, binary, volume, {1: LESION_SEGMENT_NAME}, name=f"{title} lesion")
            added.append(segmentation)
            seg_display = segmentation.GetDisplayNode()
            if seg_display is not None:  # outline only: the reader judges the voxels inside
                seg_display.SetOpacity2DFill(0.0)
                seg_display.SetOpacity2DOutline(1.0)
            for node in added:  # nothing but the neutral name may describe a case node
                self._strip(node)
            return volume, segmentation
        except BaseException:
            for node in added:
                self.context.remove_node(node)
            raise

    @staticmethod
    def _strip(node) -> None:
        node.SetDescription(None)
        for name in list(node.GetAttributeNames() or ()):
            node.RemoveAttribute(name)
        if hasattr(node, "GetNumberOfStorageNodes") and node.GetNumberOfStorageNodes():
            raise AssertionError(f"{node.GetName()} has a storage node; study case nodes must not keep file names")

    @staticmethod
    def window_level_for(lesion_type: str) -> tuple[float, float]:
        text = (lesion_type or "").lower()
        for key in ("lung", "bone"):
            if key in text:
                return WINDOWS[key]
        return WINDOWS["default"]

    def _remove_case_nodes(self) -> None:
        for node in self._nodes:
            self.context.remove_node(node)
        self._nodes = []
        self._shown = None
        self._shown_at = None

    def case_nodes(self) -> list:
        """The nodes this logic added for the shown case (volume, segmentation)."""
        return list(self._nodes)

    # ------------------------------------------------------------------ answering and moving

    def rate(self, realism: int, attributes: dict[str, int | None] | None = None, reason: str | None = None):
        """Commit an answer for the case on screen (``ReaderSession.rate``) and return it.

        ``attributes`` maps report attributes to 1-5 (None / missing = not rated); ``seconds`` is
        the time since :meth:`show_current` showed the case. Errors (locked answer, rating out
        of range) propagate and nothing is saved or changed in the scene.
        """
        session = self._require_session()
        if self._shown is None:
            from PASTALib.review import ReviewError

            raise ReviewError("No case is shown: open the study (or go back to a case) before rating.")
        attrs = {k: v for k, v in (attributes or {}).items() if v is not None} or None
        seconds = round(time.monotonic() - self._shown_at, 3) if self._shown_at is not None else None
        answer = session.rate(self._shown.case_id, realism, attrs, reason, seconds)
        self._shown.answer = answer
        self._shown.locked = not session.allow_changes
        return answer

    def next(self) -> ShownCase | None:
        """Move to the next case in the reader's order and show it (None past the last case)."""
        self._require_session().next()
        return self.show_current()

    def previous(self) -> ShownCase | None:
        """Move to the previous case and show it (stays on the first case)."""
        self._require_session().previous()
        return self.show_current()

    def resume(self) -> ShownCase | None:
        """Show the first unanswered case (None when every case is answered)."""
        self._require_session().resume()
        return self.show_current()

    def progress(self) -> tuple[int, int]:
        """(answered, total) for this reader, read from the database."""
        return self._require_session().progress()

    @property
    def finished(self) -> bool:
        return self._require_session().finished

    @property
    def allow_changes(self) -> bool:
        return self._require_session().allow_changes
