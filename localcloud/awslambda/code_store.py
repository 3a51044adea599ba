"""Deployment packages: each distinct zip kept once as a blob, unpacked once, checked before it may run.

    lambda/code  <sha256 hex>   {"blob": id, "size": n, "stored": epoch s}

A config names its code by "_code", the zip's sha256 in hex, which also names the extracted code
directory (<data dir>/lambda/code/<hex>/), shared by every version with that zip.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from localcloud.awslambda.exceptions import invalid_parameter, not_found
from localcloud.files import UnsafePath, extract_archive, safe_join
from localcloud.store import Store
from localcloud.wire import CHUNK_BYTES, ServiceError

if TYPE_CHECKING:
    from localcloud.s3 import S3Backend

CODE_KIND = "lambda/code"
MAX_UNZIPPED_BYTES = 262_144_000
UNUSED_CODE_GRACE_S = 60


@dataclass(frozen=True)
class CodeSource:
    """Where new code comes from: the zip's bytes, or an S3 object."""

    zip_file: bytes | None = None
    s3_bucket: str | None = None
    s3_key: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CodeSource:
        if params.get("ImageUri"):
            raise invalid_parameter("localcloud runs zip packages only; ImageUri is not supported")
        if params.get("ZipFile") is not None:
            if params.get("S3Bucket") or params.get("S3Key"):
                raise invalid_parameter("Please provide either ZipFile or S3Bucket and S3Key, not both.")
            return cls(zip_file=params["ZipFile"])
        if params.get("S3Bucket") and params.get("S3Key"):
            return cls(s3_bucket=params["S3Bucket"], s3_key=params["S3Key"])
        raise invalid_parameter("Please provide a source for function code: ZipFile, or S3Bucket and S3Key.")


class CodeStore:
    """The zips in the store and their code directories under `root`."""

    def __init__(self, store: Store, s3: S3Backend, root: Path) -> None:
        self.store = store
        self.s3 = s3
        self.root = root
        self.root.mkdir(exist_ok=True)

    def code_dir(self, code_id: str) -> Path:
        return self.root / code_id

    def put(self, source: CodeSource) -> dict[str, Any]:
        """Keep the zip as a blob (once per distinct zip); returns {"hex", "sha256", "size"}."""
        digest = hashlib.sha256()
        with self.store.blob_writer() as writer:
            if source.zip_file is not None:
                reader: BinaryIO = io.BytesIO(source.zip_file)
            else:
                try:
                    _, reader = self.s3.open_object(source.s3_bucket, source.s3_key)
                except ServiceError as error:
                    raise invalid_parameter(
                        f"Error occurred while GetObject. S3 Error Code: {error.code}. S3 Error Message: {error.message}"
                    ) from None
            with reader:
                head = b""
                while chunk := reader.read(CHUNK_BYTES):
                    head = head or chunk[:4]
                    digest.update(chunk)
                    writer.write(chunk)
            if not head.startswith(b"PK"):
                raise invalid_parameter(
                    "Could not unzip uploaded file. Please check your file, then try to upload again."
                )
            code_id = digest.hexdigest()
            size = writer.size
            with self.store.transaction():
                if self.store.get(CODE_KIND, code_id) is None:
                    self.store.put(
                        CODE_KIND, code_id, {"blob": writer.commit(), "size": size, "stored": time.time()}
                    )
        return {"hex": code_id, "sha256": base64.b64encode(digest.digest()).decode(), "size": size}

    def open(self, code_id: str) -> BinaryIO:
        """The zip as uploaded (GetFunction's Code.Location)."""
        doc = self.store.get(CODE_KIND, code_id) if re.fullmatch(r"[0-9a-f]{64}", code_id) else None
        if doc is None:
            raise not_found(f"No function code {code_id}")
        return self.store.open_blob(doc["blob"])

    def unpack(self, code_id: str) -> Path:
        """The code's directory, unpacked once; raises UnsafePath for a zip Lambda would refuse."""
        target = self.code_dir(code_id)
        if target.is_dir():
            return target
        doc = self.store.get(CODE_KIND, code_id)
        if doc is None:
            raise UnsafePath(f"the deployment package {code_id} is missing from the store")
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            archive = self.store.blob_path(doc["blob"])
            if not zipfile.is_zipfile(archive):
                raise UnsafePath(
                    "Could not unzip uploaded file. Please check your file, then try to upload again."
                )
            extract_archive(archive, staging, max_bytes=MAX_UNZIPPED_BYTES)
            staging.rename(target)  # readers see no directory or a complete one
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def check(self, config: dict[str, Any]) -> tuple[str, str] | None:
        """(reason code, reason) when the code cannot run, as a failed deployment; None when it can."""
        try:
            code_dir = self.unpack(config["_code"])
        except (UnsafePath, zipfile.BadZipFile, OSError) as error:
            return "InvalidZipFileException", str(error)
        problem = entry_point_problem(code_dir, config["Handler"])
        return ("FunctionError.InvalidEntryPoint", problem) if problem else None

    def collect_unused(self, used: set[str | None]) -> None:
        """Delete the zips and code directories not in `used` (stored over a grace period ago)."""
        for code_id, doc in self.store.scan(CODE_KIND):
            # A zip stored a moment ago may belong to a create or update that has not committed yet.
            if code_id not in used and time.time() - doc["stored"] > UNUSED_CODE_GRACE_S:
                with self.store.transaction():
                    self.store.delete(CODE_KIND, code_id)
                self.store.delete_blob(doc["blob"])
                shutil.rmtree(self.code_dir(code_id), ignore_errors=True)
        for leftover in self.root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def entry_point_problem(code_dir: Path, handler: str) -> str | None:
    """Why the runtime client could not import the handler's module from `code_dir`; None if it can."""
    module, _, function = handler.rpartition(".")
    if not module or not function:
        return f"Bad handler '{handler}': expected <module>.<function>, e.g. handler.handler"
    path = module.replace(".", "/")
    try:
        candidates = [safe_join(code_dir, f"{path}.py"), safe_join(code_dir, f"{path}/__init__.py")]
        parent = safe_join(code_dir, path).parent
    except UnsafePath as error:
        return f"Bad handler '{handler}': {error}"
    stem = Path(path).name
    compiled = parent.is_dir() and any(
        entry.name.startswith(f"{stem}.") and entry.suffix in (".so", ".pyc") for entry in parent.iterdir()
    )
    if any(candidate.is_file() for candidate in candidates) or compiled:
        return None
    return (
        f"Unable to import module '{module}': the deployment package has no {path}.py "
        f"(Handler is {handler!r}; its module must be in the zip)"
    )
