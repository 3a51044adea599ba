"""localcloud's durability: nothing acknowledged is ever lost, nothing listed is unreadable.

Unit checks of the store (a failed COMMIT, blob unlinks only after COMMIT, the start-up sweep), a full
disk on a small tmpfs, and 20 rounds of `kill -9` of a real `python -m localcloud serve` while eight
writers put and delete objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from localcloud.app import make_client
from localcloud.config import Config
from localcloud.s3 import S3Backend
from localcloud.s3.bodies import Upload
from localcloud.store import Store
from tests.fixtures.localcloud import LocalCloudHandle

REPO = Path(__file__).resolve().parents[2]
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


@pytest.mark.slow
def test_start_sweeps_blobs_that_no_document_references(tmp_path):
    data_dir = tmp_path / "data"
    handle = LocalCloudHandle(data_dir)
    s3 = handle.client("s3")
    s3.create_bucket(Bucket="lake")
    s3.put_object(Bucket="lake", Key="kept", Body=b"acknowledged")
    upload = s3.create_multipart_upload(Bucket="lake", Key="pending")["UploadId"]
    s3.upload_part(Bucket="lake", Key="pending", UploadId=upload, PartNumber=1, Body=b"a part")
    from tests.localcloud.test_awslambda import create_function  # noqa: PLC0415 - one helper, not a copy

    create_function(handle.client("lambda"), "kept")  # its zip is a blob too ("lambda/code")
    # A crash between a blob's rename into blobs/ and the COMMIT of its document leaves this behind.
    orphan = handle.cloud.store.write_blob(b"nobody points at me")
    handle.restart()
    try:
        assert not handle.cloud.store.blob_path(orphan).exists()
        assert blob_files(data_dir) == referenced_blobs(data_dir)
        s3 = handle.client("s3")
        assert s3.get_object(Bucket="lake", Key="kept")["Body"].read() == b"acknowledged"
        assert len(blob_files(data_dir)) == 3  # the object, the pending part, the Lambda zip
        code = handle.client("lambda").get_function(FunctionName="kept")["Code"]["Location"]
        with urllib.request.urlopen(code) as response:  # noqa: S310 - localcloud's own loopback URL
            assert response.read().startswith(b"PK")
    finally:
        handle.stop()


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


@pytest.mark.slow
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


# --- kill -9 during concurrent writes ----------------------------------------------------------------

WRITERS = 8
ROUNDS = 20
SERVER_ENV = {
    **{name: value for name, value in os.environ.items() if not name.startswith("LOCALCLOUD_")},
    "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]),
}


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=REPO,
        env=SERVER_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = server.stdout.readline()
    assert "listening on" in line, f"localcloud did not start: {line!r}"
    return server


def random_size(rng: random.Random) -> int:
    """1 KB to 8 MB, mostly small: the rounds stay quick and a few big bodies are in flight."""
    roll = rng.random()
    if roll < 0.8:
        return rng.randint(1024, 64 * 1024)
    if roll < 0.98:
        return rng.randint(64 * 1024, 1 * MiB)
    return rng.randint(1 * MiB, 8 * MiB)


@dataclass
class KeyState:
    """What a client may find under a key: the acknowledged digest (None: absent), and the outcome of
    the one request on it still in flight when the server died (absent if none)."""

    acknowledged: str | None = None
    in_flight: list[str | None] = field(default_factory=list)

    def allowed(self) -> list[str | None]:
        return [self.acknowledged, *self.in_flight]


class Writer(threading.Thread):
    """Puts (single and multipart) and DeleteObjects on keys of its own (`states`), recording each
    request as in flight until its 200 arrives; acknowledged requests are counted in `acknowledged`."""

    def __init__(self, index: int, s3, states: dict[str, KeyState], seed: int) -> None:
        super().__init__(name=f"writer-{index}", daemon=True)
        self.prefix = f"w{index}/"
        self.states = states
        self.rng = random.Random(seed)
        self.s3 = s3
        self.acknowledged = 0
        self.touched: set[str] = set()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                self.step()
                self.acknowledged += 1
        except (BotoCoreError, ClientError, ConnectionError):
            return  # the server died mid-request: that request stays in flight
        except BaseException as error:  # anything else fails the test
            self.failure = error

    def step(self) -> None:
        live = [key for key, state in self.states.items() if state.acknowledged is not None]
        roll = self.rng.random()
        if roll < 0.15 and live:
            keys = self.rng.sample(live, min(len(live), self.rng.randint(1, 4)))
            for key in keys:
                self.states[key].in_flight = [None]
                self.touched.add(key)
            self.s3.delete_objects(Bucket="lake", Delete={"Objects": [{"Key": key} for key in keys]})
            for key in keys:
                self.states[key] = KeyState(None)
            return
        overwrite = roll < 0.3 and live
        key = self.rng.choice(live) if overwrite else f"{self.prefix}{len(self.states):05d}"
        body = self.rng.randbytes(random_size(self.rng))
        digest = hashlib.sha256(body).hexdigest()
        self.states.setdefault(key, KeyState(None)).in_flight = [digest]
        self.touched.add(key)
        if roll > 0.95:
            upload = self.s3.create_multipart_upload(Bucket="lake", Key=key)["UploadId"]
            part = self.s3.upload_part(Bucket="lake", Key=key, UploadId=upload, PartNumber=1, Body=body)
            self.s3.complete_multipart_upload(
                Bucket="lake",
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
            )
        else:
            self.s3.put_object(Bucket="lake", Key=key, Body=body)
        self.states[key] = KeyState(digest)


def check_after_restart(
    s3, data_dir: Path, states: dict[str, KeyState], touched: set[str], rng: random.Random
) -> dict[str, str | None]:
    """Check the keys against what was acknowledged; returns what each key holds now (its digest).

    Every key touched in the last round is read back, and a sample of the others (blobs never change, and
    the blob check below finds any that went missing); the listing must be exactly the keys that exist.
    """
    listed: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lake"):
        listed |= {item["Key"] for item in page.get("Contents", [])}
    holds = {key: state.acknowledged for key, state in states.items()}
    untouched = sorted(set(states) - touched)
    for key in sorted(touched) + rng.sample(untouched, min(16, len(untouched))):
        try:
            found = hashlib.sha256(s3.get_object(Bucket="lake", Key=key)["Body"].read()).hexdigest()
        except ClientError as error:
            status = error.response["ResponseMetadata"]["HTTPStatusCode"]
            assert status == 404, f"{key} answers {status} {error.response['Error']}"
            found = None
        assert found in states[key].allowed(), (
            f"{key}: found {found}, acknowledged {states[key].acknowledged}"
        )
        holds[key] = found
    present = {key for key, digest in holds.items() if digest is not None}
    assert listed == present, (
        f"listed but not acknowledged: {sorted(listed - present)[:5]}; "
        f"acknowledged but not listed: {sorted(present - listed)[:5]}"
    )
    # The start-up sweep leaves exactly the blobs documents point at (objects and pending parts), so
    # no listed key lacks its blob.
    assert blob_files(data_dir) == referenced_blobs(data_dir)
    return holds


@pytest.mark.slow
def test_kill_9_during_concurrent_writes_and_deletes_loses_nothing_acknowledged(tmp_path):
    from tests.localcloud.test_sagemaker import free_port  # noqa: PLC0415 - one helper, not a copy

    rng = random.Random(20261125)
    data_dir, port = tmp_path / "data", free_port()
    endpoint = f"http://127.0.0.1:{port}"
    per_writer: list[dict[str, KeyState]] = [{} for _ in range(WRITERS)]
    # One client per writer for all rounds (a client's first request after a restart reconnects).
    config = BotoConfig(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=20)
    clients = [make_client(endpoint, "s3", config=config) for _ in range(WRITERS + 1)]
    server = start_server(data_dir, port)
    clients[-1].create_bucket(Bucket="lake")
    started, acknowledged = time.perf_counter(), 0
    try:
        for _ in range(ROUNDS):
            writers = [Writer(i, clients[i], per_writer[i], rng.getrandbits(32)) for i in range(WRITERS)]
            for writer in writers:
                writer.start()
            time.sleep(rng.uniform(0.2, 1.0))
            server.kill()  # SIGKILL, with requests in flight
            server.wait(timeout=10)
            for writer in writers:
                writer.join(timeout=30)
                assert not writer.is_alive(), f"{writer.name} hangs after the server died"
                assert writer.failure is None, repr(writer.failure)
                acknowledged += writer.acknowledged
            server = start_server(data_dir, port)
            states = {key: state for states in per_writer for key, state in states.items()}
            touched = {key for writer in writers for key in writer.touched}
            holds = check_after_restart(clients[-1], data_dir, states, touched, rng)
            for states in per_writer:  # what survived is the next round's acknowledged state
                states.update((key, KeyState(holds[key])) for key in states)
    finally:
        server.kill()
        server.wait(timeout=10)
    print(
        f"{ROUNDS} kill -9 rounds in {time.perf_counter() - started:.1f} s: {acknowledged} acknowledged "
        f"requests on {sum(map(len, per_writer))} keys"
    )
    assert acknowledged > ROUNDS * WRITERS, "the writers should have had many requests acknowledged"
