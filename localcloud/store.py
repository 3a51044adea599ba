"""The durable store every service shares: one data dir, SQLite (WAL) for metadata, files for blobs.

Layout of the data dir:
    localcloud.db      SQLite in WAL mode: the `documents` table plus any tables a service creates
    blobs/ab/<id>      immutable blobs (S3 object bodies, parts, archives) named by random ids
    tmp/               blobs being written; emptied on open, so a crash leaves nothing half-visible
    <service>/         free-form per-service directories (job dirs, extracted code), see service_dir()
    localcloud.lock    held while a localcloud uses the dir, so two servers never share one

Metadata lives in documents: JSON objects addressed by (kind, key), e.g. ("s3/bucket", "my-bucket").
Writes that must happen together go in `with store.transaction():`.

Durability rules, which together mean that nothing acknowledged is lost and nothing listed is unreadable
after a crash (kill -9 included) or a full disk:
- A blob is written completely (fsync, rename) before the document naming it is committed.
- A blob is unlinked only after the change that stops naming it is committed: delete_blob() inside a
  transaction waits for the outermost COMMIT (and is dropped if it rolls back).
- A failed COMMIT (a full disk, an I/O error) rolls back and raises; the connection is never left
  inside a transaction that later writes would join and lose.
- What a crash can leave behind is garbage, never damage: blobs no document names (written but not yet
  referenced, or no longer referenced but not yet unlinked) are removed by sweep_unreferenced_blobs()
  at start, and half-written temp files by opening the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from localcloud.wire import CHUNK_BYTES

_BLOB_ID = re.compile(r"[0-9a-f]{32}")

logger = logging.getLogger("localcloud")


class DataDirInUse(RuntimeError):
    pass


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_data_dir(self.data_dir)
        self._blobs = self.data_dir / "blobs"
        self._tmp = self.data_dir / "tmp"
        shutil.rmtree(self._tmp, ignore_errors=True)  # leftovers of writes a crash interrupted
        self._tmp.mkdir()
        self._blobs.mkdir(exist_ok=True)
        self._db = self._connect()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS documents (kind TEXT NOT NULL, key TEXT NOT NULL, "
            "doc TEXT NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID"
        )
        # One connection shared by all request threads, serialised by this lock; SQLite calls take
        # microseconds here, and a single writer is all SQLite allows anyway.
        self._mutex = threading.RLock()
        self._depth = 0
        self._after_commit: list[Callable[[], None]] = []

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.data_dir / "localcloud.db", isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process; only a power cut may lose the last commits.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def close(self) -> None:
        with self._mutex:
            self._db.close()
        self._lock_file.close()

    # --- transactions and SQL --------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """All store calls inside happen atomically; a nested transaction joins the outer one.

        If the block raises, or the COMMIT itself fails (a full disk, an I/O error), everything is rolled
        back and the error raised. Actions given to after_commit() run once the outermost COMMIT succeeded.
        """
        with self._mutex:
            outer = self._depth == 0
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
                if outer:
                    self._db.execute("COMMIT")
            except BaseException:
                if outer:
                    self._roll_back()
                raise
            finally:
                self._depth -= 1
            if outer:
                self._run_after_commit()

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once the current transaction has committed (at once outside one); never if it
        rolls back. For what must not happen before the change is durable, such as unlinking a blob."""
        with self._mutex:
            if self._depth:
                self._after_commit.append(action)
                return
        action()

    def _roll_back(self) -> None:
        self._after_commit.clear()
        try:
            if self._db.in_transaction:  # SQLite may have rolled back by itself (e.g. SQLITE_FULL)
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            # A connection stuck inside a transaction would swallow every later write: start afresh.
            logger.exception("ROLLBACK failed; reopening %s", self.data_dir / "localcloud.db")
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = self._connect()

    def _run_after_commit(self) -> None:
        actions, self._after_commit = self._after_commit, []
        for action in actions:
            try:
                action()
            except Exception:  # the change is committed; at worst a blob waits for the start-up sweep
                logger.exception("an action after COMMIT failed")

    def create_tables(self, schema: str) -> None:
        """Run a service's `CREATE TABLE IF NOT EXISTS ...` script once at start-up."""
        with self._mutex:
            self._db.executescript(schema)

    def execute(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        """One write statement; read `.rowcount` / `.lastrowid` from the result, fetch rows with query()."""
        with self._mutex:
            return self._db.execute(sql, params)

    def execute_many(self, sql: str, rows: list[tuple]) -> None:
        with self._mutex:
            self._db.executemany(sql, rows)

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._mutex:
            return self._db.execute(sql, params).fetchall()

    # --- documents -------------------------------------------------------------------------------

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        rows = self.query("SELECT doc FROM documents WHERE kind = ? AND key = ?", (kind, key))
        return json.loads(rows[0]["doc"]) if rows else None

    def put(self, kind: str, key: str, doc: dict[str, Any]) -> None:
        self.execute("INSERT OR REPLACE INTO documents VALUES (?, ?, ?)", (kind, key, _dump(doc)))

    def insert(self, kind: str, key: str, doc: dict[str, Any]) -> bool:
        """Create the document unless it exists; False (and nothing written) if it did."""
        cursor = self.execute("INSERT OR IGNORE INTO documents VALUES (?, ?, ?)", (kind, key, _dump(doc)))
        return cursor.rowcount == 1

    def delete(self, kind: str, key: str) -> bool:
        return self.execute("DELETE FROM documents WHERE kind = ? AND key = ?", (kind, key)).rowcount == 1

    def scan(
        self, kind: str, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """(key, doc) pairs of `kind` whose key starts with `prefix` and sorts after `after`, in key order.

        Keys sort by Unicode code point, which is the UTF-8 byte order S3 listings use.
        """
        sql, params = "SELECT key, doc FROM documents WHERE kind = ? AND key >= ?", [kind, prefix]
        end = _prefix_end(prefix)
        if end is not None:
            sql += " AND key < ?"
            params.append(end)
        if after is not None:
            sql += " AND key > ?"
            params.append(after)
        sql += " ORDER BY key"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [(row["key"], json.loads(row["doc"])) for row in self.query(sql, tuple(params))]

    def count(self, kind: str, prefix: str = "") -> int:
        sql, params = "SELECT count(*) AS n FROM documents WHERE kind = ? AND key >= ?", [kind, prefix]
        end = _prefix_end(prefix)
        if end is not None:
            sql += " AND key < ?"
            params.append(end)
        return self.query(sql, tuple(params))[0]["n"]

    # --- blobs -----------------------------------------------------------------------------------

    def blob_writer(self) -> BlobWriter:
        """A temp file that becomes an immutable blob on commit(); never visible half-written."""
        return BlobWriter(self._tmp / uuid.uuid4().hex, self)

    def write_blob(self, data: bytes) -> str:
        with self.blob_writer() as writer:
            writer.write(data)
            return writer.commit()

    def blob_path(self, blob_id: str) -> Path:
        if not _BLOB_ID.fullmatch(blob_id):
            raise ValueError(f"not a blob id: {blob_id!r}")
        return self._blobs / blob_id[:2] / blob_id

    def open_blob(self, blob_id: str) -> BinaryIO:
        return open(self.blob_path(blob_id), "rb")

    def delete_blob(self, blob_id: str) -> None:
        """Unlink a blob once the current transaction has committed (at once outside one).

        Call it in the same transaction as the change that stops naming the blob: until that change is
        durable, a document may still point at it, and after a crash a reader would find it gone.
        """
        path = self.blob_path(blob_id)
        self.after_commit(lambda: path.unlink(missing_ok=True))

    def sweep_unreferenced_blobs(self) -> int:
        """Delete the blobs no document names in its "blob" field; returns how many.

        A crash leaves such blobs between writing a blob and committing its document, and between
        committing a delete and unlinking. Only call it while nothing writes: a concurrent writer's new
        blob is unreferenced until its COMMIT. LocalCloud.start() runs it before any service starts.
        """
        referenced = {
            row[0]
            for row in self.query(
                "SELECT json_extract(doc, '$.blob') FROM documents WHERE json_extract(doc, '$.blob') IS NOT NULL"
            )
        }
        swept = 0
        for path in self._blobs.glob("*/*"):
            if _BLOB_ID.fullmatch(path.name) and path.name not in referenced:
                path.unlink(missing_ok=True)
                swept += 1
        return swept

    def copy_blob(self, blob_id: str) -> str:
        """A new blob with the same bytes: a hard link, since blobs never change once written."""
        new_id = uuid.uuid4().hex
        target = self.blob_path(new_id)
        target.parent.mkdir(exist_ok=True)
        try:
            os.link(self.blob_path(blob_id), target)
        except OSError:
            with self.blob_writer() as writer, self.open_blob(blob_id) as source:
                shutil.copyfileobj(source, writer.file, CHUNK_BYTES)
                return writer.commit()
        return new_id

    # --- per-service directories -----------------------------------------------------------------

    def service_dir(self, name: str) -> Path:
        """A directory of the data dir a service owns (e.g. "sagemaker" for job dirs)."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise ValueError(f"not a service directory name: {name!r}")
        path = self.data_dir / name
        path.mkdir(exist_ok=True)
        return path


class BlobWriter:
    """Write with .write() (or into .file), then commit(): fsync, then rename into blobs/ atomically."""

    def __init__(self, temp_path: Path, store: Store) -> None:
        self._temp_path = temp_path
        self._store = store
        self.file = open(temp_path, "wb")  # noqa: SIM115 - closed by commit() or __exit__
        self.size = 0
        self._committed = False

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def commit(self) -> str:
        """Make the blob durable and visible under a new id; on failure (ENOSPC, EIO) nothing is left."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        blob_id = uuid.uuid4().hex
        target = self._store.blob_path(blob_id)
        target.parent.mkdir(exist_ok=True)
        os.replace(self._temp_path, target)
        try:
            _fsync_dir(target.parent)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        self._committed = True
        return blob_id

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._committed:
            # On a full disk close() fails to flush the buffer again, but closes the file all the same.
            with contextlib.suppress(OSError):
                self.file.close()
            self._temp_path.unlink(missing_ok=True)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            following = 0xE000 if 0xD800 <= last + 1 <= 0xDFFF else last + 1  # skip surrogates
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


def _lock_data_dir(data_dir: Path) -> Any:
    lock_file = open(data_dir / "localcloud.lock", "a+")  # noqa: SIM115 - held for the Store's lifetime
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        raise DataDirInUse(
            f"{data_dir} is in use by another localcloud (pid {holder}); stop it first"
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file
