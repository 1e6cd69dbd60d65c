"""Migrations: a new database gets them all; an old one the rest, its data carried along."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service.models import request_digest
from service.store.sqlite.schema import MIGRATIONS, _statements, migrate, open_writer


def version(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT version FROM schema_version").fetchone()[0])


def test_a_new_database_gets_every_migration_and_the_writer_s_pragmas(tmp_path: Path) -> None:
    db = open_writer(str(tmp_path / "v.db"), "FULL", 1234)
    try:
        assert version(db) == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        migrate(db)  # a second time changes nothing
        assert version(db) == len(MIGRATIONS)
    finally:
        db.close()


def test_a_version_1_database_moves_its_idempotency_keys_to_their_table(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    first = MIGRATIONS[0]
    assert isinstance(first, str)
    for statement in _statements(first):
        db.execute(statement)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute(
        "INSERT INTO verifications (id, phone, reference, status, salt, attempts_left, attempts,"
        " created_at, expires_at, idempotency_key) VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("VEold", "+14155550100", "r", "pending", b"s", 3, 0, 10.0, 100.0, "key-1"),
    )

    migrate(db)

    assert version(db) == len(MIGRATIONS)
    assert db.execute("SELECT * FROM idempotency_keys").fetchall() == [
        ("key-1", "VEold", request_digest("+14155550100", "r"), 10.0)
    ]
    assert db.execute("SELECT idempotency_key, owner FROM verifications").fetchall() == [
        (None, "-")
    ]
    db.close()


def test_comments_are_not_statements() -> None:
    script = "-- a; comment\nCREATE TABLE a (x);\n  -- another\nCREATE TABLE b (y);\n"
    assert _statements(script) == ["CREATE TABLE a (x)", "CREATE TABLE b (y)"]
