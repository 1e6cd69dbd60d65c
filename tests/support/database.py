"""The service's SQLite file, opened by a test to look at its rows or to change them behind it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def database(path: str | Path, **options: Any) -> Iterator[sqlite3.Connection]:
    """A connection, committed at the end (rolled back on an error), then closed.

    Not `with sqlite3.connect(...)`: that commits but does not close, and Python 3.13 warns of a
    connection left to the garbage collector, which the suite's warning filter makes an error.
    """
    db = sqlite3.connect(path, **options)
    try:
        with db:
            yield db
    finally:
        db.close()
