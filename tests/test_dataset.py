"""The MNIST fetch/verify/convert tool and the data-lake shard format."""

import gzip
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mnist_pipeline import dataset
from mnist_pipeline.dataset import IDX_FILES, DatasetError, LakePlan, read_idx_dir, seed_lake
from mnist_pipeline.shards import ShardError, read_shard, sha256_file, write_shard

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
        dataset._load_pickle_arrays(payload)
    assert not marker.exists()


def test_a_tampered_source_is_rejected_and_removed(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist.pkl.gz").write_bytes(b"not the classic file")
    with pytest.raises(DatasetError, match="sha256"):
        dataset.fetch_mnist(cache)
    assert not (cache / "mnist.pkl.gz").exists()


def test_offline_without_a_cache_says_what_to_do(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_pipeline.dataset",
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
    written = dataset.write_idx_files(mnist, tmp_path / "idx")
    # canonical gzip is deterministic: written again, the bytes are the same
    first = {name: path.read_bytes() for name, path in written.items()}
    dataset.write_idx_files(mnist, tmp_path / "idx")
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
            "mnist_pipeline.dataset",
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
    again = dataset.load_mnist(cache, offline=True)
    assert np.array_equal(again.test_images, mnist.test_images)
    assert np.array_equal(again.train_labels, mnist.train_labels)


def test_a_modified_idx_file_is_named(mnist, tmp_path):
    dataset.write_idx_files(mnist, tmp_path)
    labels = bytearray(gzip.decompress((tmp_path / IDX_FILES["test_labels"]).read_bytes()))
    labels[100] = (labels[100] + 1) % 10
    (tmp_path / IDX_FILES["test_labels"]).write_bytes(gzip.compress(bytes(labels)))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz.*sha256"):
        read_idx_dir(tmp_path)


def test_seed_lake_lays_out_base_holdout_and_nightly_batches(mnist, tmp_path):
    plan = LakePlan(base_size=3000, shard_size=1000, batches=2, batch_size=500)
    manifest = seed_lake(tmp_path / "lake", mnist, plan)
    roles = [shard["role"] for shard in manifest["shards"]]
    assert roles == ["base"] * 3 + ["holdout"] + ["incoming"] * 2
    for shard in manifest["shards"]:
        assert sha256_file(tmp_path / "lake" / shard["key"]) == shard["sha256"]
    holdout_images, holdout_labels = read_shard(tmp_path / "lake/holdout/holdout-00000.npz")
    assert np.array_equal(holdout_images, mnist.test_images) and np.array_equal(
        holdout_labels, mnist.test_labels
    )
    # nightly batches come from training data after the base set: never overlapping it
    batch2, _ = read_shard(tmp_path / "lake/incoming/batch-0002.npz")
    assert np.array_equal(batch2, mnist.train_images[3500:4000])
    on_disk = json.loads((tmp_path / "lake/lake-manifest.json").read_text())
    assert on_disk == manifest
    # same inputs, same bytes: snapshots built on sha256s stay valid after re-seeding
    again = seed_lake(tmp_path / "lake2", mnist, plan)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]


def test_seed_lake_refuses_a_plan_larger_than_the_data(mnist, tmp_path):
    with pytest.raises(ValueError, match="exceeds the 60000 training images"):
        seed_lake(tmp_path, mnist, LakePlan(base_size=59000, batches=2, batch_size=1000))


def test_shards_are_exact_and_verified(mnist, tmp_path):
    images, labels = mnist.test_images[:50], mnist.test_labels[:50]
    sha = write_shard(tmp_path / "a.npz", images, labels)
    assert sha == hashlib.sha256((tmp_path / "a.npz").read_bytes()).hexdigest()
    back_images, back_labels = read_shard(tmp_path / "a.npz", expected_sha256=sha)
    assert np.array_equal(back_images, images) and np.array_equal(back_labels, labels)
    with pytest.raises(ShardError, match="expected"):
        read_shard(tmp_path / "a.npz", expected_sha256="0" * 64)
    with pytest.raises(ShardError, match=r"shape \[N, 28, 28\], got \[50, 784\]"):
        write_shard(tmp_path / "b.npz", images.reshape(50, 784), labels)
    with pytest.raises(ShardError, match="uint8"):
        write_shard(tmp_path / "b.npz", images.astype(np.float32), labels)
    shutil.copy(tmp_path / "a.npz", tmp_path / "c.npz")
    (tmp_path / "c.npz").write_bytes((tmp_path / "c.npz").read_bytes()[:100])
    with pytest.raises(ShardError, match="not a readable .npz shard"):
        read_shard(tmp_path / "c.npz")
    # a pickled object array is never loaded
    np.savez(tmp_path / "d.npz", images=np.array([object()]), labels=labels)
    with pytest.raises(ShardError):
        read_shard(tmp_path / "d.npz")
