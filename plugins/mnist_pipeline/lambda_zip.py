"""Build the Lambda deployment zip deterministically: the same files give the same bytes.

Lambda identifies code by ``CodeSha256`` (base64 of the zip's sha256), and the pipeline publishes
a version only when that changes. So nothing but file names and contents may reach the zip:
entries are sorted, every timestamp is 1980-01-01 00:00 (the earliest a zip can hold), every file
is a regular file with mode 0644 (Lambda runs as a user other than the owner, so files must be
world-readable), and there are no directory entries, comments or extra fields.

Entries are stored, not deflated: deflate output depends on the zlib build (zlib-ng, which some
distributions and Python builds ship, compresses differently), so two Airflow workers could build
different bytes from the same files. model.onnx is float weights, which deflate shrinks by only
about a tenth, so storing costs little.

Zip layout, matching the Lambda handler setting ``HANDLER``::

    handler.py  model.onnx  model_card.json  [extra files]
"""

import base64
import hashlib
import io
import os
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

HANDLER = "handler.handler"  # the Lambda "Handler" setting: handler.py, function handler()
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
FILE_MODE = stat.S_IFREG | 0o644
REQUIRED_ENTRIES = ("handler.py", "model.onnx", "model_card.json")


def build_lambda_zip(
    handler_file: str | os.PathLike | bytes,
    model_file: str | os.PathLike | bytes,
    model_card_file: str | os.PathLike | bytes,
    extra_files: Mapping[str, str | os.PathLike | bytes] | None = None,
) -> bytes:
    """The deployment zip's bytes: the handler, the model and its card at the zip's root.

    Each entry is a file path or the bytes to store: the zip is the same either way.

    :param handler_file: the handler source, stored as ``handler.py`` whatever its own name.
    :param model_file: the ONNX model, stored as ``model.onnx``.
    :param model_card_file: the model card, stored as ``model_card.json``.
    :param extra_files: more entries, zip path (relative, ``/``-separated) to a file path or to the
        bytes to store.
    """
    sources: dict[str, str | os.PathLike | bytes] = dict(
        zip(REQUIRED_ENTRIES, (handler_file, model_file, model_card_file), strict=True)
    )
    for name, source in (extra_files or {}).items():
        _check_entry_name(name)
        if name in sources:
            raise ValueError(f"extra file {name!r} would replace an entry the package already has")
        sources[name] = source
    return deterministic_zip(sources)


def deterministic_zip(sources: Mapping[str, str | os.PathLike | bytes]) -> bytes:
    """A zip of ``sources`` (zip path to a file path or to bytes) whose bytes depend only on the
    names and contents: sorted entries, the 1980 timestamp, mode 0644, stored (see above)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(sources):
            entry = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            entry.create_system = 3  # Unix, so that extractors apply the mode below
            entry.external_attr = FILE_MODE << 16
            archive.writestr(entry, _read(name, sources[name]), compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def write_lambda_zip(
    path: str | os.PathLike,
    handler_file: str | os.PathLike,
    model_file: str | os.PathLike,
    model_card_file: str | os.PathLike,
    extra_files: Mapping[str, str | os.PathLike | bytes] | None = None,
) -> str:
    """Build the zip (see :func:`build_lambda_zip`) into ``path`` atomically; return its CodeSha256."""
    data = build_lambda_zip(handler_file, model_file, model_card_file, extra_files)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp file and rename in the same directory: a reader never sees half a zip.
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as temp:
        temp.write(data)
    Path(temp.name).replace(path)
    return code_sha256(data)


def code_sha256(zip_bytes: bytes) -> str:
    """The zip's sha256 the way Lambda reports ``CodeSha256``: base64 of the raw digest, not hex."""
    return base64.b64encode(hashlib.sha256(zip_bytes).digest()).decode("ascii")


def _check_entry_name(name: str) -> None:
    parts = PurePosixPath(name).parts
    if not name or "\\" in name or name.startswith("/") or ".." in parts or name.endswith("/"):
        raise ValueError(f"extra file name {name!r} must be a relative path to a file inside the zip")


def _read(name: str, source: str | os.PathLike | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (for {name} in the Lambda zip)")
    return path.read_bytes()
