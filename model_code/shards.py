"""The data-lake shard format: one ``.npz`` per shard, exact, compact and readable without pickle.

It lives once, here in the training job's source directory, because the job can import nothing
outside it: ``train.py`` imports it as a sibling (``import shards``), and everything else (the
pipeline's plugins, the lake seeder, the tests) as ``model_code.shards``. numpy and the standard
library only.

A shard holds ``images`` (uint8, [N, 28, 28]) and ``labels`` (uint8, [N]); nothing else. Its
identity is the sha256 of the file's bytes, recorded in manifests beside it, so a training snapshot
names exactly the bytes it trained on. Writes are deterministic: the same arrays give the same
file and so the same sha256.

Reading never trusts the file: anyone who can write to ``incoming/`` can drop one there. A shard
is refused with :class:`ShardError` (and so quarantined, not crashed on) when it is over
:data:`MAX_SHARD_BYTES`, holds other members, or declares more than :data:`MAX_SHARD_ROWS`
images; each array's header is read and checked before its data is unpacked, so a header
claiming 10^9 images or a deflate bomb costs nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (28, 28)
SHARD_SUFFIX = ".npz"
# A lake shard holds up to 10,000 images (7.8 MB unpacked); a nightly batch 2,000. These bounds are
# ten times that and more, and keep one read under ~80 MB of memory whatever the file claims.
MAX_SHARD_ROWS = 100_000
MAX_SHARD_BYTES = 64 * 1024 * 1024
_MEMBERS = {"images.npy": "images", "labels.npy": "labels"}
_RANKS = {"images.npy": 3, "labels.npy": 1}
_MAX_HEADER_BYTES = 4096
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
    """Parse shard bytes (never unpickling, never unpacking more than the limits) and verify them.

    :return: (images, labels), writable arrays.
    :raises ShardError: naming ``where`` and what is wrong.
    """
    if len(data) > MAX_SHARD_BYTES:
        raise ShardError(f"{where}: {len(data)} bytes; a shard is at most {MAX_SHARD_BYTES} bytes")
    if expected_sha256 is not None:
        actual = sha256_bytes(data)
        if actual != expected_sha256:
            raise ShardError(
                f"{where}: sha256 is {actual}, expected {expected_sha256}; the file changed or is corrupt"
            )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = {info.filename: info for info in archive.infolist()}
            unexpected = sorted(set(members) - set(_MEMBERS))
            if unexpected:
                raise ShardError(
                    f"{where}: unexpected member(s) {unexpected[:5]}; a shard holds images and labels"
                )
            missing = sorted(name for member, name in _MEMBERS.items() if member not in members)
            if missing:
                raise ShardError(f"{where}: missing array(s) {missing}; found {sorted(members)}")
            headers = {
                member: _read_header(archive, members[member], where, rank) for member, rank in _RANKS.items()
            }
            dtypes = [dtype for _, _, dtype in headers.values()]
            if any(dtype.hasobject for dtype in dtypes):
                raise ShardError(
                    f"{where}: not a readable .npz shard (it holds Python objects, which need pickle)"
                )
            if any(dtype != np.uint8 for dtype in dtypes):
                raise ShardError(f"{where}: images and labels must be uint8, got {dtypes[0]} and {dtypes[1]}")
            images, labels = (
                _read_data(archive, members[member], where, *headers[member][:2]) for member in _RANKS
            )
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
        if isinstance(exc, ShardError):
            raise
        raise ShardError(f"{where}: not a readable .npz shard ({exc})") from exc
    check_arrays(images, labels, where=where)
    return images, labels


def _read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, rank: int):
    """One ``.npy`` member's (shape, fortran_order, dtype), checked against the limits before any
    data is unpacked."""
    name = info.filename
    if info.file_size > MAX_SHARD_ROWS * 28 * 28 + _MAX_HEADER_BYTES:
        raise ShardError(
            f"{where}: {name} unpacks to {info.file_size} bytes; a shard holds at most {MAX_SHARD_ROWS} images"
        )
    with archive.open(info) as member:
        shape, fortran_order, dtype = _header(member, where, name)
    if dtype.hasobject or dtype != np.uint8:
        return shape, fortran_order, dtype  # refused by the caller, naming both arrays' types
    if len(shape) != rank:
        expected = "[N, 28, 28]" if rank == 3 else "[N]"
        raise ShardError(f"{where}: {name} must have shape {expected}, got {list(shape)}")
    if shape[0] > MAX_SHARD_ROWS:
        raise ShardError(
            f"{where}: {name} declares {shape[0]} images; a shard holds at most {MAX_SHARD_ROWS} images"
        )
    if int(np.prod(shape, dtype=np.int64)) > MAX_SHARD_ROWS * 28 * 28:
        raise ShardError(f"{where}: {name} declares shape {list(shape)}, more than a shard may hold")
    return shape, fortran_order, dtype


def _header(member, where: str, name: str):
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise ShardError(f"{where}: {name} has .npy format version {version}, expected 1.0 or 2.0")


def _read_data(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, shape: tuple, fortran_order: bool
) -> np.ndarray:
    """One uint8 ``.npy`` member's data, exactly as many bytes as its (checked) header declares."""
    name, declared = info.filename, int(np.prod(shape, dtype=np.int64))
    with archive.open(info) as member:
        _header(member, where, name)
        payload = member.read(declared + 1)
        if len(payload) != declared:
            size = len(payload) if len(payload) <= declared else len(payload) + len(member.read())
            raise ShardError(f"{where}: {name} holds {size} bytes of data; its header declares {declared}")
    array = np.frombuffer(bytearray(payload), dtype=np.uint8)
    return array.reshape(shape, order="F" if fortran_order else "C")


def read_shard(path: str | os.PathLike, expected_sha256: str | None = None):
    """Read and verify a shard file; returns (images, labels)."""
    return load_shard_bytes(Path(path).read_bytes(), where=str(path), expected_sha256=expected_sha256)
