"""The study's answer database: one SQLite file per study, WAL mode, one short transaction per answer.

Why SQLite: several readers (processes) may answer at once on a shared folder; WAL lets them
read while one writes, ``busy_timeout`` makes writers queue instead of failing, and every
answer is committed before :func:`record_answer` returns, so a crash (even SIGKILL) loses
nothing that was confirmed to the reader.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PASTALib.review.errors import AnswerLockedError, RatingRangeError, ReviewError, UnknownReaderError

#: Version of the schema written by :func:`init_db`; bump it and add a migration when it changes.
SCHEMA_VERSION = 1
#: The five report attributes readers rate for accuracy (paper Fig. 2c).
ATTRIBUTES = ("shape", "density", "heterogeneity", "surface", "invasion")
#: How long a writer waits for another reader's transaction before giving up (ms).
BUSY_TIMEOUT_MS = 30_000

_SCHEMA_V1 = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE readers (
    reader TEXT PRIMARY KEY,
    seed INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE answers (
    reader TEXT NOT NULL REFERENCES readers(reader),
    case_id TEXT NOT NULL,
    realism INTEGER NOT NULL CHECK (realism BETWEEN 1 AND 5),
    {", ".join(f"{a} INTEGER CHECK ({a} BETWEEN 1 AND 5)" for a in ATTRIBUTES)},
    reason TEXT,
    seconds REAL,
    answered_at TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (reader, case_id)
);
-- Every submission, including changed answers: the audit trail of a reader's session.
CREATE TABLE answer_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reader TEXT NOT NULL,
    case_id TEXT NOT NULL,
    realism INTEGER NOT NULL,
    attributes TEXT,
    reason TEXT,
    seconds REAL,
    answered_at TEXT NOT NULL
);
"""

#: Migrations: MIGRATIONS[v] upgrades a database at version v to v + 1 (run in one transaction).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}


@dataclass(frozen=True)
class Answer:
    """One reader's current answer for one case."""

    reader: str
    case_id: str
    realism: int
    attributes: dict[str, int]
    reason: str | None
    seconds: float | None
    answered_at: str
    revision: int


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


def connect(path: str | Path) -> sqlite3.Connection:
    """Open the database (autocommit; transactions are explicit and short), WAL + busy timeout."""
    path = Path(path)
    if not path.exists():
        raise ReviewError(f"No study database at {path}. Create the study first (pasta review create).")
    conn = _open(path)
    _migrate(conn)
    return conn


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: an answer survives a power cut too, not only a killed process; costs one fsync per answer.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.row_factory = sqlite3.Row
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so check-then-write is atomic."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def init_db(path: str | Path, settings: dict[str, object]) -> None:
    """Create a new study database with ``settings`` (JSON-encoded values)."""
    path = Path(path)
    if path.exists():
        raise ReviewError(f"{path} already exists; a study database is created once.")
    conn = _open(path)
    try:
        with transaction(conn):
            # One statement at a time: executescript() would COMMIT behind the transaction's back.
            for statement in _SCHEMA_V1.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            conn.executemany(
                "INSERT INTO settings VALUES (?, ?)", [(k, json.dumps(v)) for k, v in settings.items()]
            )
    finally:
        conn.close()


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an older database up to :data:`SCHEMA_VERSION` (refuse a newer one)."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise ReviewError(
            f"The study database has schema version {version}, newer than this PASTALib "
            f"(version {SCHEMA_VERSION}). Update PASTALib to open it."
        )
    while version < SCHEMA_VERSION:
        with transaction(conn):
            if schema_version(conn) != version:  # another process migrated meanwhile
                version = schema_version(conn)
                continue
            MIGRATIONS[version](conn)
            conn.execute("UPDATE schema_version SET version = ?", (version + 1,))
        version += 1


def settings(conn: sqlite3.Connection) -> dict[str, object]:
    return {row["key"]: json.loads(row["value"]) for row in conn.execute("SELECT key, value FROM settings")}


def add_reader(conn: sqlite3.Connection, reader: str, seed: int) -> None:
    name = reader.strip()
    if not name or any(c in name for c in "\n\r\t,"):
        raise ReviewError(f"Invalid reader name {reader!r}: use a non-empty name without commas, tabs or newlines.")
    with transaction(conn):
        if conn.execute("SELECT 1 FROM readers WHERE reader = ?", (name,)).fetchone():
            raise ReviewError(f"Reader {name!r} is already registered in this study.")
        conn.execute("INSERT INTO readers VALUES (?, ?, ?)", (name, int(seed), _now()))


def readers(conn: sqlite3.Connection) -> dict[str, int]:
    """Registered readers and their shuffle seeds."""
    return {row["reader"]: int(row["seed"]) for row in conn.execute("SELECT reader, seed FROM readers ORDER BY reader")}


def reader_seed(conn: sqlite3.Connection, reader: str) -> int:
    known = readers(conn)
    if reader not in known:
        listed = ", ".join(repr(r) for r in known) or "none yet"
        raise UnknownReaderError(
            f"Unknown reader {reader!r}. Registered readers: {listed}. "
            f"Add one with `pasta review add-reader STUDY_DIR {reader}` (or PASTALib.review.add_reader)."
        )
    return known[reader]


def check_rating(value: object, what: str) -> int:
    """An integer 1-5 (accepts 3, "3", 3.0); anything else raises RatingRangeError."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number) or number != int(number) or not 1 <= number <= 5:
        raise RatingRangeError(f"{what} rating {value!r} is out of range: give a whole number from 1 to 5.")
    return int(number)


def record_answer(
    conn: sqlite3.Connection,
    reader: str,
    case_id: str,
    realism: int,
    attributes: dict[str, int] | None,
    reason: str | None,
    seconds: float | None,
    allow_changes: bool,
) -> Answer:
    """Validate and commit one answer; refuse a second answer when changes are not allowed."""
    realism = check_rating(realism, "Realism")
    attrs = {}
    for key, value in (attributes or {}).items():
        if key not in ATTRIBUTES:
            raise RatingRangeError(f"Unknown report attribute {key!r}; rate one of {', '.join(ATTRIBUTES)}.")
        if value is not None:
            attrs[key] = check_rating(value, f"{key.capitalize()} accuracy")
    now = _now()
    with transaction(conn):
        row = conn.execute(
            "SELECT revision FROM answers WHERE reader = ? AND case_id = ?", (reader, case_id)
        ).fetchone()
        if row is not None and not allow_changes:
            raise AnswerLockedError(
                f"Case {case_id} was already answered by {reader!r} and this study does not allow "
                "changing answers (setting allow_changes=false). Move on to the next case."
            )
        revision = 1 if row is None else int(row["revision"]) + 1
        values = (realism, *(attrs.get(a) for a in ATTRIBUTES), reason, seconds, now, revision)
        conn.execute(
            f"INSERT INTO answers (reader, case_id, realism, {', '.join(ATTRIBUTES)}, reason, seconds, answered_at, revision) "
            f"VALUES (?, ?, {', '.join('?' * (len(ATTRIBUTES) + 5))}) "
            f"ON CONFLICT (reader, case_id) DO UPDATE SET realism = excluded.realism, "
            + ", ".join(f"{a} = excluded.{a}" for a in ATTRIBUTES)
            + ", reason = excluded.reason, seconds = excluded.seconds, answered_at = excluded.answered_at, "
            "revision = excluded.revision",
            (reader, case_id, *values),
        )
        conn.execute(
            "INSERT INTO answer_log (reader, case_id, realism, attributes, reason, seconds, answered_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (reader, case_id, realism, json.dumps(attrs) if attrs else None, reason, seconds, now),
        )
    return Answer(reader, case_id, realism, attrs, reason, seconds, now, revision)


def _row_to_answer(row: sqlite3.Row) -> Answer:
    attrs = {a: int(row[a]) for a in ATTRIBUTES if row[a] is not None}
    return Answer(row["reader"], row["case_id"], int(row["realism"]), attrs, row["reason"],
                  row["seconds"], row["answered_at"], int(row["revision"]))


def answers(conn: sqlite3.Connection, reader: str | None = None) -> list[Answer]:
    """Current answers (one per reader and case), optionally of one reader."""
    if reader is None:
        rows = conn.execute("SELECT * FROM answers ORDER BY reader, answered_at")
    else:
        rows = conn.execute("SELECT * FROM answers WHERE reader = ? ORDER BY answered_at", (reader,))
    return [_row_to_answer(r) for r in rows]
