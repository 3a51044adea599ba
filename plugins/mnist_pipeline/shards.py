"""The data-lake shard format: one ``.npz`` per shard, exact, compact and readable without pickle.

A shard holds ``images`` (uint8, [N, 28, 28]) and ``labels`` (uint8, [N]); nothing else. Its
identity is the sha256 of the file's bytes, recorded in manifests beside it, so a training snapshot
names exactly the bytes it trained on. Writes are deterministic: the same arrays give the same
file and so the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (28, 28)
SHARD_SUFFIX = ".npz"
# Fixed zip timestamp: np.savez would stamp "now" into every member and break byte-for-byte
# reproducibility (and with it sha256-based idempotency).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class ShardError(ValueError):
    """A shard is malformed, or its bytes do not match the sha256 it is known by."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_arrays(images: np.ndarray, labels: np.ndarray, *, where: str = "shard") -> None:
    """Raise ShardError naming what is wrong unless the arrays are a valid shard."""
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ShardError(f"{where}: images and labels must be uint8, got {images.dtype} and {labels.dtype}")
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ShardError(f"{where}: images must have shape [N, 28, 28], got {list(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ShardError(
            f"{where}: labels must have shape [{images.shape[0]}] to match the images, got {list(labels.shape)}"
        )
    if labels.size and int(labels.max()) > 9:
        raise ShardError(f"{where}: labels must be digits 0..9, found {int(labels.max())}")


def shard_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Serialise a shard deterministically (same arrays → same bytes)."""
    check_arrays(images, labels)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in (("images", images), ("labels", labels)):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compresslevel=6)
    return buffer.getvalue()


def write_shard(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> str:
    """Write a shard atomically (temp file + rename) and return its sha256."""
    data = shard_bytes(images, labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return sha256_bytes(data)


def load_shard_bytes(data: bytes, *, where: str = "shard", expected_sha256: str | None = None):
    """Parse shard bytes (never unpickling) and verify them; returns (images, labels)."""
    if expected_sha256 is not None:
        actual = sha256_bytes(data)
        if actual != expected_sha256:
            raise ShardError(
                f"{where}: sha256 is {actual}, expected {expected_sha256}; the file changed or is corrupt"
            )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = {"images", "labels"} - set(npz.files)
            if missing:
                raise ShardError(f"{where}: missing array(s) {sorted(missing)}; found {sorted(npz.files)}")
            images, labels = npz["images"], npz["labels"]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        if isinstance(exc, ShardError):
            raise
        raise ShardError(f"{where}: not a readable .npz shard ({exc})") from exc
    check_arrays(images, labels, where=where)
    return images, labels


def read_shard(path: str | os.PathLike, expected_sha256: str | None = None):
    """Read and verify a shard file; returns (images, labels)."""
    return load_shard_bytes(Path(path).read_bytes(), where=str(path), expected_sha256=expected_sha256)
