"""What can go wrong with the session log file, said in one line: a locked, read-only, missing or
foreign database, a folder that is a file, a file name SQLite cannot store. Used by session.py;
every fault becomes a SessionFileError, which capture turns into `error: DB: reason` (exit 2 at
the start; mid-run the session is closed with the reason and capture exits 1).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

# Defined beside the capture loop, which catches it and may not import the lab (capture/sink.py).
from ..capture.sink import SessionFileError


def busy_timeout_s() -> float:
    """Seconds a writer waits for another's lock before a retry. EDGE_BLOODCLS_DB_BUSY_S sets it
    (tests use ~1 s); read at each connect so that a test can change it."""
    try:
        return max(0.05, float(os.environ.get("EDGE_BLOODCLS_DB_BUSY_S", "10")))
    except ValueError:
        return 10.0


# After the busy timeout, the lock is asked for again after these fractions of it: a review page
# or a `sqlite3` shell may hold it for a while, a stuck process for ever, which is then reported.
LOCK_RETRY_BACKOFF = (0.25, 0.5)


def lock_wait_s() -> float:
    """How long a writer waits for the lock in all, retries included (for the error message)."""
    b = busy_timeout_s()
    return b * (1 + len(LOCK_RETRY_BACKOFF)) + b * sum(LOCK_RETRY_BACKOFF)


def _locked(e: sqlite3.Error) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


def db_reason(e: sqlite3.Error) -> str:
    """One line for the technologist, from SQLite's message."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    low = msg.lower()
    if _locked(e):
        return (
            f"database is locked: another program held its write lock for more than {lock_wait_s():g} s "
            "(a crashed capture or an open `sqlite3` shell?)"
        )
    if "readonly" in low or "read-only" in low:
        return "read-only (no permission to write the file, or its -wal/-shm files in its folder)"
    if "unable to open" in low:
        return "cannot open or create the file (no permission to its folder?)"
    if "disk is full" in low or "database or disk is full" in low:
        return "disk full"
    if "not a database" in low or "malformed" in low:
        return f"not a usable session log ({msg})"
    return f"SQLite error ({msg})"


def text(value):
    """A str SQLite can store: a non-UTF-8 file name (legal on Linux, held by Python as lone
    surrogates) becomes backslash escapes such as \\xff; sqlite3 refuses lone surrogates."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape" if _escaped_only(value) else "backslashreplace").decode(
            "utf-8", "backslashreplace"
        )


def _escaped_only(s: str) -> bool:
    # surrogateescape only takes U+DC80..U+DCFF (the bytes it stands for); other lone surrogates
    # are escaped as code points
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in s)


def _check_writable(path: Path) -> None:
    """What SQLite would report as 'unable to open database file', said plainly (a user other
    than root: root writes anyway)."""
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise SessionFileError(f"{_p(path)}: {_p(anc)} is a file, not a folder")
    if path.is_dir():
        raise SessionFileError(f"{_p(path)}: is a folder, not a session log file")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise SessionFileError(f"{_p(path)}: read-only (no permission to write the session log)")
        if not os.access(path.parent, os.W_OK | os.X_OK) and not Path(f"{path}-wal").exists():
            raise SessionFileError(
                f"{_p(path)}: its folder {_p(path.parent)} is read-only (SQLite writes "
                f"{path.name}-wal and -shm beside the log)"
            )
    elif anc.exists() and not os.access(anc, os.W_OK | os.X_OK):
        raise SessionFileError(f"{_p(path)}: cannot create the session log: folder {_p(anc)} is read-only")


def _p(path) -> str:
    return text(os.fsdecode(os.fspath(path)))
