"""Reader-study errors: each message names the problem and what to do about it."""

from __future__ import annotations

from PASTALib.errors import PastaError


class ReviewError(PastaError):
    """A reader study cannot be created, opened, answered or analysed as asked."""


class UnknownReaderError(ReviewError):
    """The reader is not registered in the study database."""


class StudyTamperedError(ReviewError):
    """A study file changed (or vanished) after the study was created."""


class AnswerLockedError(ReviewError):
    """The case was already answered and the study does not allow changing answers."""


class RatingRangeError(ReviewError):
    """A realism or attribute rating is not an integer from 1 to 5."""
