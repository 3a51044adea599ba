"""localcloud's durability: nothing acknowledged is ever lost, nothing listed is unreadable.

Unit checks of the store (a failed COMMIT, blob unlinks only after COMMIT, the start-up sweep), a full
disk on a small tmpfs, and 20 rounds of `kill -9` of a real `python -m localcloud serve` while eight
writers put and delete objects.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from localcloud.config import Config
from localcloud.s3 import S3Backend, Upload
from localcloud.store import Store
from tests.fixtures.localcloud import LocalCloudHandle

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


def test_actions_after_commit_run_only_once_the_outermost_transaction_commits(tmp_path):
    store = Store(tmp_path)
    try:
        ran: list[str] = []
        store.after_commit(lambda: ran.append("outside"))  # no transaction: at once
        assert ran == ["outside"]
        with store.transaction():
            with store.transaction():
                store.after_commit(lambda: ran.append("inner"))
            assert ran == ["outside"]
        assert ran == ["outside", "inner"]
        with pytest.raises(RuntimeError), store.transaction():
            store.after_commit(lambda: ran.append("rolled back"))
            raise RuntimeError("abort")
        assert ran == ["outside", "inner"]
    finally:
        store.close()


@pytest.fixture
def s3_backend(tmp_path) -> Iterator[S3Backend]:
    store = Store(tmp_path / "data")
    backend = S3Backend(store, Config(data_dir=tmp_path / "data", port=0))
    backend.create_bucket("lake", "us-east-1")
    yield backend
    store.close()


def _overwrite_by_put(s3: S3Backend) -> None:
    s3.put_bytes("lake", "kept", b"new")


def _overwrite_by_copy(s3: S3Backend) -> None:
    s3.put_bytes("lake", "other", b"new")
    s3.copy_object("lake", "other", "lake", "kept", None)


def _overwrite_by_multipart(s3: S3Backend) -> None:
    upload = s3.create_multipart_upload("lake", "kept", {}, None)

    part = s3.upload_part("lake", "kept", upload, 1, Upload(io.BytesIO(b"new"), 3))
    s3.complete_multipart_upload("lake", "kept", upload, [(1, part["etag"])])


@pytest.mark.parametrize(
    "change",
    [
        lambda s3: s3.delete_object("lake", "kept"),
        _overwrite_by_put,
        _overwrite_by_copy,
        _overwrite_by_multipart,
    ],
    ids=["DeleteObject", "PutObject", "CopyObject", "CompleteMultipartUpload"],
)
def test_an_object_stays_readable_until_its_replacement_commits(s3_backend, change):
    """S3 calls inside an enclosing transaction: their unlinks wait for its COMMIT, and its rollback
    leaves the old object whole (before: the blob was unlinked when the inner block ended)."""
    s3 = s3_backend
    s3.put_bytes("lake", "kept", b"acknowledged")
    with pytest.raises(RuntimeError), s3.store.transaction():
        change(s3)
        raise RuntimeError("the enclosing work failed")
    assert s3.get_bytes("lake", "kept") == b"acknowledged"
    change(s3)  # and outside a transaction the change is whole too
    if s3.store.get("s3/object", "lake/kept") is not None:
        assert s3.get_bytes("lake", "kept") == b"new"


def test_parts_stay_readable_until_an_abort_or_bucket_delete_commits(s3_backend):

    s3 = s3_backend
    upload = s3.create_multipart_upload("lake", "big", {}, None)
    part = s3.upload_part("lake", "big", upload, 1, Upload(io.BytesIO(b"part one"), 8))
    for undone in (
        lambda: s3.abort_multipart_upload("lake", "big", upload),
        lambda: s3.delete_bucket("lake"),
    ):
        with pytest.raises(RuntimeError), s3.store.transaction():
            undone()
            raise RuntimeError("the enclosing work failed")
    s3.complete_multipart_upload("lake", "big", upload, [(1, part["etag"])])
    assert s3.get_bytes("lake", "big") == b"part one"


# --- a full disk -----------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a {size} tmpfs here (needs root and mount rights): {mounted.stderr.strip()}"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (b"\xff" * (256 * 1024), b"\xff" * 4096):
            with contextlib.suppress(OSError):
                while os.write(fd, chunk):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_fails_writes_cleanly_and_they_work_again_once_space_is_freed(tmp_path):
    with small_tmpfs(tmp_path / "small", "24m") as disk:
        data_dir = disk / "data"
        handle = LocalCloudHandle(data_dir)
        try:
            s3 = handle.client("s3")
            s3.create_bucket(Bucket="lake")
            acknowledged: dict[str, bytes] = {}
            for index in range(4):
                body = os.urandom(256 * 1024)
                s3.put_object(Bucket="lake", Key=f"before/{index}", Body=body)
                acknowledged[f"before/{index}"] = body
            filler = fill(disk)

            refused = 0
            for index, size in enumerate([1024, 64 * 1024, 1 * MiB, 3 * MiB, 100, 512 * 1024]):
                key, body = f"while-full/{index}", os.urandom(size)
                try:
                    s3.put_object(Bucket="lake", Key=key, Body=body)
                except ClientError as error:
                    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 500
                    assert error.response["Error"]["Code"] == "InternalError"
                    assert "No space left on device" in error.response["Error"]["Message"]
                    refused += 1
                except BotoCoreError:  # the server refused the body mid-upload and closed the connection
                    refused += 1
                else:
                    acknowledged[key] = body  # a small one may still fit: then it must read back
            assert refused >= 4, "a full disk should refuse most writes"
            # A delete on a full disk either commits (the object is gone) or fails leaving it whole.
            try:
                s3.delete_objects(Bucket="lake", Delete={"Objects": [{"Key": "before/0"}]})
                acknowledged.pop("before/0")
            except ClientError as error:
                assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 500
            assert_store_consistent(s3, data_dir, acknowledged)
            assert list((data_dir / "tmp").iterdir()) == [], "a failed write left a partial blob behind"

            filler.unlink()  # space is back
            for index in range(3):
                body = os.urandom(1 * MiB)
                s3.put_object(Bucket="lake", Key=f"after/{index}", Body=body)
                acknowledged[f"after/{index}"] = body
            s3.delete_object(Bucket="lake", Key="before/1")
            acknowledged.pop("before/1")
            assert_store_consistent(s3, data_dir, acknowledged)

            handle.restart()
            assert_store_consistent(handle.client("s3"), data_dir, acknowledged)
            assert blob_files(data_dir) == referenced_blobs(data_dir)
        finally:
            handle.stop()


def assert_store_consistent(s3, data_dir: Path, acknowledged: dict[str, bytes]) -> None:
    listed = [item["Key"] for item in s3.list_objects_v2(Bucket="lake").get("Contents", [])]
    assert sorted(listed) == sorted(acknowledged), "the listing differs from what was acknowledged"
    for key in listed:
        assert s3.get_object(Bucket="lake", Key=key)["Body"].read() == acknowledged[key], key
