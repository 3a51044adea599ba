"""The Lambda zip is byte-for-byte reproducible, and it is a working Lambda package."""

import importlib.util
import io
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from mnist_pipeline.lambda_zip import HANDLER, build_lambda_zip, code_sha256, write_lambda_zip

REPO = Path(__file__).resolve().parents[2]
HANDLER_FILE = REPO / "lambda_package" / "handler.py"


def package_files(
    directory: Path, model: bytes = b"onnx weights \x00\x01", card: bytes = b'{"training_job": "j"}'
):
    """A handler, model and card in directory, as the repo and the training job leave them."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(HANDLER_FILE, directory / "handler.py")
    (directory / "model.onnx").write_bytes(model)
    (directory / "model_card.json").write_bytes(card)
    return directory / "handler.py", directory / "model.onnx", directory / "model_card.json"


def test_same_files_give_the_same_bytes_whatever_their_paths_times_and_modes(tmp_path):
    first = build_lambda_zip(*package_files(tmp_path / "a"))
    elsewhere = package_files(tmp_path / "somewhere" / "else")
    for path in elsewhere:
        os.utime(path, (2_000_000_000, 2_000_000_000))
        path.chmod(0o600)
    second = build_lambda_zip(*elsewhere)
    assert second == first
    assert code_sha256(second) == code_sha256(first)


def test_a_changed_model_card_or_handler_changes_the_code_sha256(tmp_path):
    base = code_sha256(build_lambda_zip(*package_files(tmp_path / "base")))
    new_model = code_sha256(
        build_lambda_zip(*package_files(tmp_path / "model", model=b"onnx weights \x00\x02"))
    )
    new_card = code_sha256(build_lambda_zip(*package_files(tmp_path / "card", card=b'{"training_job": "k"}')))
    handler, model, card = package_files(tmp_path / "handler")
    handler.write_text(handler.read_text() + "\n# changed\n")
    new_handler = code_sha256(build_lambda_zip(handler, model, card))
    assert len({base, new_model, new_card, new_handler}) == 4


def test_entries_are_sorted_world_readable_files_dated_1980(tmp_path):
    handler, model, card = package_files(tmp_path)
    data = build_lambda_zip(handler, model, card, extra_files={"VERSION": b"42\n", "a/notes.txt": card})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = archive.infolist()
        names = [entry.filename for entry in entries]
        assert names == ["VERSION", "a/notes.txt", "handler.py", "model.onnx", "model_card.json"]
        for entry in entries:
            assert entry.date_time == (1980, 1, 1, 0, 0, 0)
            assert stat.S_ISREG(entry.external_attr >> 16)
            assert stat.S_IMODE(entry.external_attr >> 16) == 0o644
        assert archive.read("handler.py") == handler.read_bytes()
        assert archive.read("model.onnx") == model.read_bytes()
        assert archive.read("a/notes.txt") == card.read_bytes()
        assert archive.read("VERSION") == b"42\n"
        assert archive.testzip() is None


def test_code_sha256_is_base64_of_the_digest_as_lambda_reports_it():
    # Lambda's CodeSha256 for an empty payload; hex would be e3b0c442...
    assert code_sha256(b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_write_lambda_zip_writes_the_built_bytes_and_returns_their_code_sha256(tmp_path):
    files = package_files(tmp_path / "src")
    target = tmp_path / "out" / "function.zip"
    assert write_lambda_zip(target, *files) == code_sha256(build_lambda_zip(*files))
    assert target.read_bytes() == build_lambda_zip(*files)
    assert sorted(path.name for path in target.parent.iterdir()) == ["function.zip"]  # no temp file left


@pytest.mark.parametrize(
    "name, message",
    [
        ("../escape.py", "relative path"),
        ("/etc/passwd", "relative path"),
        ("dir\\file", "relative path"),
        ("dir/", "relative path"),
        ("", "relative path"),
        ("model.onnx", "would replace"),
    ],
)
def test_extra_files_cannot_escape_the_package_or_replace_its_entries(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        build_lambda_zip(*package_files(tmp_path), extra_files={name: b"x"})


def test_a_missing_source_file_is_named(tmp_path):
    handler, model, card = package_files(tmp_path)
    model.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.onnx not found \(for model\.onnx"):
        build_lambda_zip(handler, model, card)


def test_the_unzipped_package_is_a_working_lambda_function(trained_model_dir, tmp_path, mnist, monkeypatch):
    data = build_lambda_zip(
        HANDLER_FILE, trained_model_dir / "model.onnx", trained_model_dir / "model_card.json"
    )
    code_dir = tmp_path / "var-task"  # what Lambda does: unzip into a directory, import the handler
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(code_dir)
    monkeypatch.delenv("MODEL_DIR", raising=False)
    module_name, function_name = HANDLER.split(".")
    spec = importlib.util.spec_from_file_location(module_name, code_dir / f"{module_name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    request = {"inputs": [image.reshape(784).tolist() for image in mnist.test_images[:20]]}
    response = getattr(module, function_name)(request, SimpleNamespace(aws_request_id="r"))
    assert response["statusCode"] == 200
    predictions = json.loads(response["body"])["predictions"]
    assert sum(p == label for p, label in zip(predictions, mnist.test_labels[:20], strict=True)) >= 18
