"""Untrusted names and archives (files.py): safe_join and extract_archive refuse escapes and bombs."""

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from localcloud.files import UnsafePath, extract_archive, safe_join


def test_safe_join_refuses_escapes(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    assert safe_join(tmp_path / "root", "a/b.txt") == tmp_path / "root" / "a" / "b.txt"
    for bad in ["../x", "/etc/passwd", "a/../../x", "", "out/escape", "a\\..\\..\\x"]:
        with pytest.raises(UnsafePath):
            safe_join(tmp_path / "root", bad)


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100755 if name.endswith(".sh") else 0o100644) << 16
            zf.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, build) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        build(tf)
    return path


def add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_extract_archive_unpacks_zip_and_tar(tmp_path):
    archive = make_zip(
        tmp_path / "code.zip", {"handler.py": b"print(1)", "bin/run.sh": b"#!/bin/sh"}, {"link": "handler.py"}
    )
    assert sorted(extract_archive(archive, tmp_path / "zip")) == ["bin/run.sh", "handler.py", "link"]
    assert (tmp_path / "zip" / "link").read_bytes() == b"print(1)"
    assert os.access(tmp_path / "zip" / "bin" / "run.sh", os.X_OK)

    tarball = make_tar(tmp_path / "model.tar.gz", lambda tf: add_file(tf, "model.onnx", b"onnx"))
    extract_archive(tarball, tmp_path / "tar")
    assert (tmp_path / "tar" / "model.onnx").read_bytes() == b"onnx"


@pytest.mark.parametrize(
    "build",
    [
        lambda p: make_zip(p / "a.zip", {"../escape.py": b"x"}),
        lambda p: make_zip(p / "a.zip", {"/abs.py": b"x"}),
        lambda p: make_zip(p / "a.zip", {}, {"evil": "../../outside"}),
        lambda p: make_tar(p / "a.tgz", lambda tf: add_file(tf, "../escape", b"x")),
        lambda p: make_tar(p / "a.tgz", lambda tf: tf.addfile(_symlink("evil", "/etc"))),
        lambda p: make_zip(p / "a.zip", {"big.bin": b"0" * 2048}),
        lambda p: (p / "not-an-archive").write_bytes(b"plain text") and p / "not-an-archive",
    ],
    ids=[
        "zip-dotdot",
        "zip-absolute",
        "zip-symlink-out",
        "tar-dotdot",
        "tar-symlink-out",
        "too-big",
        "not-archive",
    ],
)
def test_extract_archive_refuses_unsafe_archives(tmp_path, build):
    archive = build(tmp_path)
    with pytest.raises(UnsafePath):
        extract_archive(archive, tmp_path / "dest", max_bytes=1024)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "escape.py").exists()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info
