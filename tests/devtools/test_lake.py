"""The data lake seeded from MNIST, and its shard format."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from devtools.lake import LakePlan, seed_lake
from model_code.shards import ShardError, read_shard, sha256_file, write_shard


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
