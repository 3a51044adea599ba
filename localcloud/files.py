"""Putting user-supplied names and archives on disk without letting them escape their directory.

Lambda code zips and SageMaker source/model tarballs come from users; so do S3 keys (which localcloud
never turns into paths at all: blobs have random ids). Use these helpers for everything else.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from localcloud.wire import CHUNK_BYTES

GiB = 1024**3


class UnsafePath(ValueError):
    """A name or archive member that would land outside its directory, or an archive over its limits."""


def safe_join(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths, `..` and symlinks that lead outside `root`."""
    if not relative or "\x00" in relative:
        raise UnsafePath(f"empty or NUL-containing path {relative!r}")
    parts = PurePosixPath(relative.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts:
        raise UnsafePath(f"path {relative!r} must be relative and must not contain '..'")
    candidate = Path(root) / parts
    if not candidate.resolve().is_relative_to(Path(root).resolve()):
        raise UnsafePath(f"path {relative!r} leaves {root} through a symlink")
    return candidate


def extract_archive(
    archive: Path, dest: Path, *, max_bytes: int = 2 * GiB, max_members: int = 100_000
) -> list[str]:
    """Unpack a zip or tar (any compression) into `dest`; returns the member names.

    Refuses absolute names, `..`, links pointing outside `dest`, device files, more than `max_members`
    entries and more than `max_bytes` uncompressed. Executable bits are kept (Lambda needs them).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        return _extract_zip(Path(archive), dest, max_bytes, max_members)
    if tarfile.is_tarfile(archive):
        return _extract_tar(Path(archive), dest, max_bytes, max_members)
    raise UnsafePath(f"{Path(archive).name} is neither a zip nor a tar archive")


def _check_totals(name: str, sizes: list[int], max_bytes: int, max_members: int) -> None:
    if len(sizes) > max_members:
        raise UnsafePath(f"{name} has {len(sizes)} entries; the limit is {max_members}")
    if sum(sizes) > max_bytes:
        raise UnsafePath(f"{name} unpacks to {sum(sizes)} bytes; the limit is {max_bytes}")


def _extract_zip(archive: Path, dest: Path, max_bytes: int, max_members: int) -> list[str]:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        _check_totals(archive.name, [m.file_size for m in members], max_bytes, max_members)
        written = 0
        for member in members:
            target = safe_join(dest, member.filename)
            mode = member.external_attr >> 16
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(mode):
                link = zf.read(member).decode()
                if os.path.isabs(link) or not (target.parent / link).resolve().is_relative_to(dest.resolve()):
                    raise UnsafePath(
                        f"link {member.filename} -> {link} points outside the extraction directory"
                    )
                os.symlink(link, target)
                continue
            with zf.open(member) as source, open(target, "wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    written += len(chunk)
                    if written > max_bytes:  # zipfile stops at the declared size; this guards the total
                        raise UnsafePath(f"{archive.name} unpacks to more than {max_bytes} bytes")
                    out.write(chunk)
            if mode & 0o111:
                target.chmod(0o755)
        return [m.filename for m in members]


def _extract_tar(archive: Path, dest: Path, max_bytes: int, max_members: int) -> list[str]:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        _check_totals(archive.name, [m.size for m in members if m.isfile()], max_bytes, max_members)
        try:
            # The "data" filter refuses absolute names, "..", links leaving dest and device files.
            tf.extractall(dest, filter="data")
        except tarfile.FilterError as error:
            raise UnsafePath(f"{archive.name}: {error}") from None
        return [m.name for m in members]
