"""Blinded realism reader studies ("Turing test") of real vs synthetic lesions.

create a study (:func:`create_study`), register readers (:func:`add_reader`), answer with
:class:`ReaderSession` (terminal prompt or Slicer panel), then :func:`analyze` with the key.
Heavy statistics modules (pandas, sklearn, pingouin) load only inside :mod:`.analysis`.
"""

from PASTALib.review.cases import SourceCase, find_synthetic_cases, read_real_cases_csv, real_case, synthetic_case
from PASTALib.review.db import ATTRIBUTES, SCHEMA_VERSION, Answer
from PASTALib.review.errors import (
    AnswerLockedError,
    RatingRangeError,
    ReviewError,
    StudyTamperedError,
    UnknownReaderError,
)
from PASTALib.review.session import CasePaths, CaseView, ReaderSession, reader_order
from PASTALib.review.study import (
    CreatedStudy,
    Study,
    StudySettings,
    add_reader,
    create_study,
    load_key,
    verify_study,
)


def analyze(*args, **kwargs):  # noqa: D103 - thin lazy wrapper, see analysis.analyze
    from PASTALib.review.analysis import analyze as _analyze

    return _analyze(*args, **kwargs)


analyze.__doc__ = "Analyse a study with its key; see :func:`PASTALib.review.analysis.analyze`."

__all__ = [
    "ATTRIBUTES", "SCHEMA_VERSION", "Answer", "AnswerLockedError", "CasePaths", "CaseView",
    "CreatedStudy", "RatingRangeError", "ReaderSession", "ReviewError", "SourceCase", "Study",
    "StudySettings", "StudyTamperedError", "UnknownReaderError", "add_reader", "analyze",
    "create_study", "find_synthetic_cases", "load_key", "read_real_cases_csv", "reader_order",
    "real_case", "synthetic_case", "verify_study",
]
