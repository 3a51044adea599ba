"""The MNIST fetcher: download, verify, convert, bring your own IDX files."""

import gzip
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from devtools import mnist as fetcher
from devtools.mnist import IDX_FILES, DatasetError, read_idx_dir

# Published class counts of the classic MNIST split; any conversion or split error changes them.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_is_the_classic_split(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10000, 28, 28) and mnist.test_labels.dtype == np.uint8
    assert np.bincount(mnist.train_labels).tolist() == TRAIN_COUNTS
    assert np.bincount(mnist.test_labels).tolist() == TEST_COUNTS
    # original order: the famous first training digits, and valid (50k..60k) follows train
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.train_images.max() == 255 and mnist.train_images.min() == 0


def test_the_unpickler_refuses_anything_but_numpy(tmp_path):
    marker = tmp_path / "pwned"
    payload = tmp_path / "evil.pkl.gz"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with gzip.open(payload, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        fetcher._load_pickle_arrays(payload)
    assert not marker.exists()


def test_a_tampered_source_is_rejected_and_removed(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist.pkl.gz").write_bytes(b"not the classic file")
    with pytest.raises(DatasetError, match="sha256"):
        fetcher.fetch_mnist(cache)
    assert not (cache / "mnist.pkl.gz").exists()


def test_offline_without_a_cache_says_what_to_do(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.mnist",
            "--cache-dir",
            str(tmp_path / "empty"),
            "fetch",
            "--offline",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "--idx-dir" in result.stderr and "make data" in result.stderr


def test_idx_files_round_trip_and_bring_your_own(mnist, tmp_path):
    written = fetcher.write_idx_files(mnist, tmp_path / "idx")
    # canonical gzip is deterministic: written again, the bytes are the same
    first = {name: path.read_bytes() for name, path in written.items()}
    fetcher.write_idx_files(mnist, tmp_path / "idx")
    assert {name: path.read_bytes() for name, path in written.items()} == first
    # a user's own (uncompressed) official files are accepted through --idx-dir
    own = tmp_path / "own"
    own.mkdir()
    for filename in IDX_FILES.values():
        (own / filename.removesuffix(".gz")).write_bytes(
            gzip.decompress((tmp_path / "idx" / filename).read_bytes())
        )
    cache = tmp_path / "cache"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.mnist",
            "--cache-dir",
            str(cache),
            "fetch",
            "--idx-dir",
            str(own),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    again = fetcher.load_mnist(cache, offline=True)
    assert np.array_equal(again.test_images, mnist.test_images)
    assert np.array_equal(again.train_labels, mnist.train_labels)


def test_a_modified_idx_file_is_named(mnist, tmp_path):
    fetcher.write_idx_files(mnist, tmp_path)
    labels = bytearray(gzip.decompress((tmp_path / IDX_FILES["test_labels"]).read_bytes()))
    labels[100] = (labels[100] + 1) % 10
    (tmp_path / IDX_FILES["test_labels"]).write_bytes(gzip.compress(bytes(labels)))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz.*sha256"):
        read_idx_dir(tmp_path)
