"""localcloud's durability: nothing acknowledged is ever lost, nothing listed is unreadable.

Unit checks of the store (a failed COMMIT, blob unlinks only after COMMIT, the start-up sweep), a full
disk on a small tmpfs, and 20 rounds of `kill -9` of a real `python -m localcloud serve` while eight
writers put and delete objects.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from localcloud.store import Store

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def referenced_blobs(data_dir: Path) -> set[str]:
    """The blob ids documents point at, read straight from the database."""
    with contextlib.closing(sqlite3.connect(data_dir / "localcloud.db")) as db:
        rows = db.execute("SELECT doc FROM documents").fetchall()
    return {doc["blob"] for (text,) in rows if isinstance(doc := json.loads(text), dict) and "blob" in doc}


def blob_files(data_dir: Path) -> set[str]:
    return {path.name for path in (data_dir / "blobs").glob("*/*")}


# --- the store -------------------------------------------------------------------------------------


class FailingCommit:
    """A connection whose next COMMIT fails as on a full disk; everything else goes to the real one."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.failed = False

    def execute(self, sql: str, *args):
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        return self.connection.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.connection, name)


def test_a_failed_commit_rolls_back_and_later_writes_are_durable(tmp_path):
    store = Store(tmp_path)
    try:
        store.put("things", "before", {"n": 1})
        real, store._db = store._db, FailingCommit(store._db)
        with pytest.raises(sqlite3.OperationalError, match="disk is full"), store.transaction():
            store.put("things", "not-acknowledged", {"n": 2})
        store._db = real
        assert not real.in_transaction, "a failed COMMIT must not leave the connection inside a transaction"
        assert store.get("things", "not-acknowledged") is None
        store.put("things", "after", {"n": 3})  # acknowledged: it must be committed, not swallowed
        with store.transaction():
            store.put("things", "in-a-transaction", {"n": 4})
    finally:
        store.close()
    reopened = Store(tmp_path)
    try:
        assert [key for key, _ in reopened.scan("things")] == ["after", "before", "in-a-transaction"]
    finally:
        reopened.close()
