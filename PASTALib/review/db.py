"""The study's answer database: one SQLite file per study, WAL mode, one short transaction per answer.

Why SQLite: several readers (processes) may answer at once on a shared folder; WAL lets them
read while one writes, ``busy_timeout`` makes writers queue instead of failing, and every
answer is committed before :func:`record_answer` returns, so a crash (even SIGKILL) loses
nothing that was confirmed to the reader.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PASTALib.limits import SEED, Bound
from PASTALib.report.attributes import ATTRIBUTES as REPORT_ATTRIBUTES
from PASTALib.review.errors import AnswerLockedError, RatingRangeError, ReviewError, UnknownReaderError

#: Version of the schema written by :func:`init_db`; bump it and add a migration when it changes.
SCHEMA_VERSION = 1
#: The five report attributes readers rate for accuracy (paper Fig. 2c).
ATTRIBUTES: tuple[str, ...] = tuple(REPORT_ATTRIBUTES)
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

#: Tables (and their columns) a study database must have: the quick schema check of :func:`check_schema`.
SCHEMA_TABLES: dict[str, tuple[str, ...]] = {
    "schema_version": ("version",),
    "settings": ("key", "value"),
    "readers": ("reader", "seed", "created_at"),
    "answers": ("reader", "case_id", "realism", *ATTRIBUTES, "reason", "seconds", "answered_at", "revision"),
    "answer_log": ("id", "reader", "case_id", "realism", "attributes", "reason", "seconds", "answered_at"),
}
#: Longest reader name accepted (it is shown in tables and file names of exports).
MAX_READER_NAME = 64
#: Text starting with one of these is run as a formula by spreadsheet programs opening an exported CSV.
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
_SQLITE_MAGIC = b"SQLite format 3\x00"

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


class _Connection(sqlite3.Connection):
    """A connection that remembers its file, so a failing query can name it."""

    path: Path


def database_error(path: Path, exc: sqlite3.Error) -> ReviewError:
    """The user-facing error for an SQLite failure on the study database ``path``."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    lowered = detail.lower()
    if "locked" in lowered or "busy" in lowered:
        return ReviewError(f"{path} is busy: another reader's process held it for over {BUSY_TIMEOUT_MS // 1000} s "
                           f"(sqlite: {detail}). Try again; if it persists, close other `pasta review` sessions.")
    if "full" in lowered:
        return ReviewError(f"the disk holding {path} is full (sqlite: {detail}); the last answer was not saved and "
                           "none before it is lost. Free some space and run the command again.")
    if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
        return ReviewError(f"cannot write the study database {path} (sqlite: {detail}). Give yourself write "
                           "permission on the file and its folder (SQLite writes -wal/-shm files beside it), "
                           "or copy the study folder somewhere writable.")
    if "no such table" in lowered or "no such column" in lowered:
        return ReviewError(f"{path} is not a PASTA study database (sqlite: {detail}). Put back the "
                           f"{path.name} that `pasta review create` made (from a backup of the study folder).")
    return ReviewError(f"the study database {path} is damaged (sqlite: {detail}). Restore {path.name} from a "
                       "backup of the study folder (answers are only in this file); `pasta review verify STUDY` "
                       "checks it.")


F = TypeVar("F", bound=Callable)


def _reported(function: F) -> F:
    """Turn an SQLite error inside ``function(conn, ...)`` into a ReviewError naming the file."""

    @functools.wraps(function)
    def wrapper(conn: sqlite3.Connection, *args, **kwargs):
        try:
            return function(conn, *args, **kwargs)
        except sqlite3.Error as exc:
            raise database_error(getattr(conn, "path", Path("responses.sqlite")), exc) from None

    return wrapper  # type: ignore[return-value]


def check_header(path: Path) -> None:
    """Refuse a file that is not an SQLite database or is shorter than its header says (truncated),
    before SQLite opens it: opening in WAL mode could otherwise write to a foreign file."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        header = stream.read(100)
    if size == 0 or header[:16] != _SQLITE_MAGIC or len(header) < 100:
        what = "empty" if size == 0 else ("truncated" if header[:16] == _SQLITE_MAGIC else "not an SQLite database")
        raise ReviewError(f"the study database {path} is damaged ({what}). Restore {path.name} from a backup of the "
                          "study folder (answers are only in this file); `pasta review verify STUDY` checks it.")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The in-header page count is valid when the change counter equals "version-valid-for" (SQLite >= 3.7).
    if header[24:28] == header[92:96] and pages and size < pages * page_size:
        raise ReviewError(f"the study database {path} is damaged (truncated: {size} bytes, its header says "
                          f"{pages} pages of {page_size} bytes). Restore {path.name} from a backup of the study "
                          "folder (answers are only in this file); `pasta review verify STUDY` checks it.")


@_reported
def check_schema(conn: sqlite3.Connection) -> None:
    """Refuse a database without the study tables and columns (read-only; no migration here)."""
    found: dict[str, set[str]] = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        found[table] = {row[1] for row in conn.execute(f"PRAGMA table_info({json.dumps(table)})")}
    problems = [f"table {t} missing" if t not in found else f"{t} lacks {', '.join(sorted(set(c) - found[t]))}"
                for t, c in SCHEMA_TABLES.items() if t not in found or set(c) - found[t]]
    if problems:
        path = getattr(conn, "path", Path("responses.sqlite"))
        raise ReviewError(f"{path} is not a PASTA study database ({'; '.join(problems)}). Put back the "
                          f"{path.name} that `pasta review create` made (from a backup of the study folder).")


def connect(path: str | Path) -> sqlite3.Connection:
    """Open the database (autocommit; transactions are explicit and short), WAL + busy timeout.

    A damaged or foreign file raises ReviewError naming it (nothing is written to it)."""
    path = Path(path)
    if not path.is_file():
        raise ReviewError(_missing(path))
    problems = integrity_problems(path, quick=True)
    for _ in range(2):
        with open(path, "rb") as stream:
            if not problems or stream.read(16) != _SQLITE_MAGIC:
                break
        # The immutable check can catch another reader's closing checkpoint half-way: ask again
        # before calling an SQLite file damaged (real damage persists).
        time.sleep(0.1)
        problems = integrity_problems(path, quick=True)
    if problems:
        raise ReviewError(" ".join(problems))
    conn = _open(path, check=True)
    try:
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _open(path: Path, check: bool = False) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, factory=_Connection)
    except sqlite3.Error as exc:
        raise database_error(path, exc) from None
    conn.path = path
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if check:  # before the WAL switch below, which writes to the file
            check_schema(conn)
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: an answer survives a power cut too, not only a killed process; costs one fsync per answer.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        conn.close()
        raise database_error(path, exc) from None
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn


def _missing(path: Path) -> str:
    return (f"the study database {path} is missing (every study is created with one). Restore {path.name} from "
            "a backup of the study folder; without one the answers are lost and the study must be created again "
            "(pasta review create).")


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot change anything on disk. Without a -wal file (no session open, none
    crashed) the database file is the whole truth and is opened immutable: SQLite then creates no
    -wal/-shm files either, so refusing a damaged file leaves the folder exactly as it was."""
    uri = path.resolve().as_uri() + ("?mode=ro" if Path(f"{path}-wal").exists() else "?immutable=1")
    conn = sqlite3.connect(uri, uri=True, factory=_Connection)
    conn.path = path
    return conn


def integrity_problems(path: str | Path, quick: bool = False) -> list[str]:
    """Everything wrong with the database file: header, schema and SQLite's integrity check (``quick``:
    ``PRAGMA quick_check``, no index cross-check), read-only. Empty when it is sound."""
    path = Path(path)
    if not path.is_file():
        return [_missing(path)]
    try:
        check_header(path)
    except ReviewError as exc:
        return [str(exc)]
    try:
        conn = _read_only(path)
    except sqlite3.Error as exc:
        return [str(database_error(path, exc))]
    try:
        check_schema(conn)
        pragma = "quick_check" if quick else "integrity_check"  # quick: no index-vs-table cross-check
        rows = [" ".join(str(r[0]).split()) for r in conn.execute(f"PRAGMA {pragma}(20)")]
    except ReviewError as exc:
        return [str(exc)]
    except sqlite3.Error as exc:
        return [str(database_error(path, exc))]
    finally:
        conn.close()
    if rows == ["ok"]:
        return []
    return [f"the study database {path} is damaged (integrity check: {'; '.join(rows)}). Restore {path.name} "
            "from a backup of the study folder (answers are only in this file)."]


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
    except sqlite3.Error as exc:
        raise database_error(path, exc) from None
    finally:
        conn.close()


@_reported
def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])


@_reported
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


@_reported
def settings(conn: sqlite3.Connection) -> dict[str, object]:
    return {row["key"]: json.loads(row["value"]) for row in conn.execute("SELECT key, value FROM settings")}


def shown(text: str) -> str:
    """``text`` safe to print on a terminal: control and format characters (escape sequences, bidi
    overrides) are written as Python escapes, never raw."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def reader_name(reader: str) -> str:
    """A valid reader name (NFC-normalised, trimmed) or ReviewError saying what to change.

    Names are shown in terminals, HTML reports and CSV exports: no control characters (terminal
    escapes), no invisible format characters, no path separators, no commas, at most
    MAX_READER_NAME characters."""
    name = unicodedata.normalize("NFC", str(reader)).strip()
    rule = (f"use 1 to {MAX_READER_NAME} printable characters without path separators (/ \\) or commas, "
            "e.g. initials such as 'AB' or 'reader1'")
    if not name:
        raise ReviewError(f"The reader name is empty: {rule}.")
    if len(name) > MAX_READER_NAME:
        raise ReviewError(f"The reader name '{shown(name[:20])}...' has {len(name)} characters: {rule}.")
    bad = sorted({c for c in name if not c.isprintable() or unicodedata.category(c).startswith("C")
                  or c in "/\\," or (c.isspace() and c != " ")})
    if bad:
        listed = ", ".join(repr(c) for c in bad)
        raise ReviewError(f"The reader name '{shown(name)}' contains {listed}: {rule}.")
    if name.startswith(FORMULA_LEADS):  # a spreadsheet opening the exported CSV would run it as a formula
        raise ReviewError(f"The reader name '{shown(name)}' starts with {name[0]!r}: {rule}, not starting with = + - @.")
    return name


@_reported
def add_reader(conn: sqlite3.Connection, reader: str, seed: int) -> None:
    name = reader_name(reader)
    seed = check_number(seed, "The reader's shuffle seed (--seed)", SEED)
    with transaction(conn):
        if conn.execute("SELECT 1 FROM readers WHERE reader = ?", (name,)).fetchone():
            raise ReviewError(f"Reader {name!r} is already registered in this study.")
        conn.execute("INSERT INTO readers VALUES (?, ?, ?)", (name, int(seed), _now()))


@_reported
def readers(conn: sqlite3.Connection) -> dict[str, int]:
    """Registered readers and their shuffle seeds."""
    return {row["reader"]: int(row["seed"]) for row in conn.execute("SELECT reader, seed FROM readers ORDER BY reader")}


@_reported
def reader_seed(conn: sqlite3.Connection, reader: str) -> int:
    known = readers(conn)
    if reader not in known:
        listed = ", ".join(repr(r) for r in known) or "none yet"
        raise UnknownReaderError(
            f"Unknown reader {reader!r}. Registered readers: {listed}. "
            f"Add one with `pasta review add-reader STUDY_DIR {shown(reader)}` (or PASTALib.review.add_reader)."
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


def check_number(value: object, option: str, bound: Bound) -> float | int:
    """``value`` if it is a finite number (a whole one when ``bound.integer``) in ``bound``; otherwise
    ReviewError stating the option's allowed range (never a silent fallback to a default)."""
    low, high, integer = bound.low, bound.high, bound.integer
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    whole = math.isfinite(number) and number == int(number)
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high or (integer and not whole):
        kind = "a whole number" if integer else "a number"
        bounds = f"{int(low)} to {int(high)}" if integer else f"{low:g} to {high:g}"
        raise ReviewError(f"{option} {value!r} is out of range: give {kind} from {bounds}.")
    return int(number) if integer else number


@_reported
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


@_reported
def answers(conn: sqlite3.Connection, reader: str | None = None) -> list[Answer]:
    """Current answers (one per reader and case), optionally of one reader."""
    if reader is None:
        rows = conn.execute("SELECT * FROM answers ORDER BY reader, answered_at")
    else:
        rows = conn.execute("SELECT * FROM answers WHERE reader = ? ORDER BY answered_at", (reader,))
    return [_row_to_answer(r) for r in rows]
