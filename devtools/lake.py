"""The data lake the pipeline reads, seeded from real MNIST: ``base/`` shards, the ``holdout/``
test set and the ``incoming/`` nightly batches, with a manifest of every shard's sha256.

    python -m devtools.mnist seed-lake --out DIR
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devtools.mnist import SOURCE_PACKAGE, SOURCE_SHA256, Mnist, progress
from model_code.shards import SHARD_SUFFIX, write_shard


@dataclass(frozen=True)
class LakePlan:
    base_size: int = 50_000
    shard_size: int = 10_000
    batches: int = 5
    batch_size: int = 2_000

    def check(self, available: int) -> None:
        for name in ("base_size", "shard_size", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batches < 0:
            raise ValueError(f"batches must be >= 0, got {self.batches}")
        needed = self.base_size + self.batches * self.batch_size
        if needed > available:
            raise ValueError(
                f"base_size + batches * batch_size = {needed} exceeds the {available} training images"
            )


def seed_lake(out_dir: Path, mnist: Mnist, plan: LakePlan = LakePlan()) -> dict:
    """Lay out a data lake: ``base/`` (training set), ``holdout/`` (the MNIST test set, never
    trained on) and ``incoming/batch-NNNN`` nightly batches carved from the remaining training
    images, plus ``lake-manifest.json`` with the sha256 of every shard. Same inputs → same bytes.
    """
    plan.check(len(mnist.train_labels))
    out_dir = Path(out_dir)
    shards = []

    def add(role: str, name: str, images: np.ndarray, labels: np.ndarray) -> None:
        relative = f"{role}/{name}{SHARD_SUFFIX}"
        sha = write_shard(out_dir / relative, images, labels)
        counts = np.bincount(labels, minlength=10).tolist()
        shards.append(
            {"role": role, "key": relative, "sha256": sha, "rows": int(len(labels)), "class_counts": counts}
        )
        progress(f"wrote {relative} ({len(labels)} images)")

    for start in range(0, plan.base_size, plan.shard_size):
        stop = min(start + plan.shard_size, plan.base_size)
        add(
            "base",
            f"base-{start // plan.shard_size:05d}",
            mnist.train_images[start:stop],
            mnist.train_labels[start:stop],
        )
    add("holdout", "holdout-00000", mnist.test_images, mnist.test_labels)
    for number in range(1, plan.batches + 1):
        start = plan.base_size + (number - 1) * plan.batch_size
        stop = start + plan.batch_size
        add("incoming", f"batch-{number:04d}", mnist.train_images[start:stop], mnist.train_labels[start:stop])

    manifest = {
        "source": SOURCE_PACKAGE,
        "source_sha256": SOURCE_SHA256,
        "plan": plan.__dict__,
        "shards": shards,
    }
    (out_dir / "lake-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
