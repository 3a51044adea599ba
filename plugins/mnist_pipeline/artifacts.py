"""Model artifacts and source packages: fetch a job's ``model.tar.gz`` and unpack it safely.

The archive comes from a training job's output and is not trusted: :func:`safe_extract_tar`
refuses absolute paths, ``..``, links, devices, and more entries or bytes than a model needs,
checking every entry before anything is written.

A run fetches and unpacks its job's archive once, in the evaluate step, which keeps the files the
Lambda zip takes from it (:data:`SERVED_FILES`) beside its report (:func:`keep_served_files`);
the deploy step builds the zip from those, not from the archive.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from mnist_pipeline import s3io

MAX_ARCHIVE_BYTES = 256 << 20  # compressed model.tar.gz, held in memory
MAX_EXTRACTED_BYTES = 1 << 30
MAX_MEMBERS = 1000
# What the Lambda zip takes from a model artifact, beside the handler (lambda_zip.REQUIRED_ENTRIES).
SERVED_FILES = ("model.onnx", "model_card.json")


def source_package_dir(package: str) -> Path:
    """The directory of an installed source package (``model_code``, ``lambda_package``), found
    without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {package} package is not importable; install the project (make install)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class UnsafeArchiveError(ValueError):
    """A model archive holds something that must not be extracted; the message names the member."""


def safe_extract_tar(
    data: bytes,
    destination: str | Path,
    *,
    max_bytes: int = MAX_EXTRACTED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> list[str]:
    """Extract a (gzipped) tar held in memory into ``destination``; return the file names.

    Everything is checked before anything is written: only regular files and directories, no
    absolute paths or ``..``, at most ``max_members`` entries and ``max_bytes`` in all.
    """
    destination = Path(destination)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            members, files = _checked_members(archive, max_bytes, max_members)
            destination.mkdir(parents=True, exist_ok=True)
            # The "data" filter re-checks paths and drops permissions and owners (defence in depth).
            archive.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise UnsafeArchiveError(f"model archive is unreadable or unsafe: {error}") from error
    return sorted(files)


def _checked_members(archive: tarfile.TarFile, max_bytes: int, max_members: int):
    members, files, total = [], [], 0
    for member in archive:  # lazily, so a bomb is stopped at the first entry over a limit
        members.append(member)
        if len(members) > max_members:
            raise UnsafeArchiveError(f"archive has more than the limit of {max_members} entries")
        path = PurePosixPath(member.name)
        if not member.name or path.is_absolute() or ".." in path.parts or "\\" in member.name:
            raise UnsafeArchiveError(
                f"archive entry {member.name!r} is not a relative path inside the archive"
            )
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"archive entry {member.name!r} is a link or special file; only files allowed"
            )
        total += member.size
        if total > max_bytes:
            raise UnsafeArchiveError(f"archive content exceeds the limit of {max_bytes} bytes")
        if member.isfile():
            files.append(path.as_posix())
    return members, files


def download_model(s3, model_uri: str, destination: str | Path) -> Path:
    """Download a job's ``model.tar.gz`` and extract it safely; return the directory with model.onnx."""
    bucket, key = s3io.split_s3_uri(model_uri)
    meta = s3io.head(s3, bucket, key)
    if meta is None:
        raise FileNotFoundError(f"model artifact {model_uri} does not exist")
    if meta["ContentLength"] > MAX_ARCHIVE_BYTES:
        raise UnsafeArchiveError(
            f"{model_uri} is {meta['ContentLength']} bytes, more than {MAX_ARCHIVE_BYTES}"
        )
    destination = Path(destination)
    names = safe_extract_tar(s3io.get_bytes(s3, bucket, key), destination)
    if "model.onnx" not in names:
        raise FileNotFoundError(f"{model_uri} has no model.onnx at its top level; it holds {names}")
    return destination


def keep_served_files(s3, bucket: str, prefix: str, model_dir: str | Path) -> dict:
    """Store the :data:`SERVED_FILES` a model directory has under ``prefix``; return
    ``{name: {"key", "sha256"}}`` for each one stored (a missing model card is the zip's to refuse).
    """
    kept = {}
    for name in SERVED_FILES:
        path = Path(model_dir, name)
        if not path.is_file():
            continue
        data = path.read_bytes()
        key = prefix + name
        s3io.put_bytes(
            s3,
            bucket,
            key,
            data,
            "application/json" if name.endswith(".json") else "application/octet-stream",
        )
        kept[name] = {"key": key, "sha256": hashlib.sha256(data).hexdigest()}
    return kept
