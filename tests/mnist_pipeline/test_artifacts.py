"""Model archives come from a job's output and are not trusted: only plain files inside are extracted."""

import io
import tarfile

import pytest

from mnist_pipeline import artifacts


def tar_with(*entries) -> bytes:
    """A tar.gz of (TarInfo, bytes | None) entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_entry(name, data=b"x"):
    return tarfile.TarInfo(name), data


def link_entry(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_a_model_archive_is_extracted(tmp_path):
    data = tar_with(
        file_entry("model.onnx", b"onnx"), file_entry("./model_card.json", b"{}"), file_entry("code/x.py")
    )
    assert artifacts.safe_extract_tar(data, tmp_path) == ["code/x.py", "model.onnx", "model_card.json"]
    assert (tmp_path / "model.onnx").read_bytes() == b"onnx"


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        (file_entry("/etc/cron.d/evil"), "'/etc/cron.d/evil' is not a relative path"),
        (file_entry("../outside.txt"), "'../outside.txt' is not a relative path"),
        (file_entry("a/../../outside.txt"), "is not a relative path"),
        (link_entry("model.onnx", "/etc/passwd", tarfile.SYMTYPE), "'model.onnx' is a link or special file"),
        (link_entry("hard", "model_card.json", tarfile.LNKTYPE), "'hard' is a link or special file"),
        (link_entry("fifo", "", tarfile.FIFOTYPE), "'fifo' is a link or special file"),
    ],
)
def test_unsafe_entries_are_refused_before_anything_is_written(tmp_path, entry, complaint):
    data = tar_with(file_entry("model_card.json", b"{}"), entry)
    with pytest.raises(artifacts.UnsafeArchiveError, match=complaint):
        artifacts.safe_extract_tar(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_size_and_entry_limits_are_enforced(tmp_path):
    data = tar_with(file_entry("a", b"1" * 600), file_entry("b", b"2" * 600))
    with pytest.raises(artifacts.UnsafeArchiveError, match="exceeds the limit of 1000 bytes"):
        artifacts.safe_extract_tar(data, tmp_path, max_bytes=1000)
    with pytest.raises(artifacts.UnsafeArchiveError, match="more than the limit of 1 entries"):
        artifacts.safe_extract_tar(data, tmp_path, max_members=1)


def test_a_corrupt_archive_is_named_as_such(tmp_path):
    data = tar_with(file_entry("model.onnx", b"x" * 10_000))
    with pytest.raises(artifacts.UnsafeArchiveError, match="unreadable or unsafe"):
        artifacts.safe_extract_tar(data[: len(data) // 2], tmp_path)
