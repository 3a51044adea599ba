"""Training: the default hyperparameters on full MNIST, through the official SageMaker toolkit.

Targets (issue 2/6): >= 99.3% holdout accuracy within <= 120 s of training on this machine. Three
runs, with seeds 0 (the default), 1 and 2, give each figure a spread. The job runs exactly as
localcloud runs a SageMaker job (toolkit, SM_* layout, script mode), so "job time" includes the
toolkit's start, the requirements check, ONNX export and the parity check.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure

MODEL_CODE = Path(__file__).resolve().parents[1] / "model_code"
# The SageMaker PyTorch MNIST example on an ml.c4.xlarge, printed beside our figures as an anchor
# (not measured here): 96.42% after 1 epoch, a ~17 s training loop, 136 billable s, ~283 s fit().
RUNS = 3  # BENCH_TRAINING_RUNS overrides; each run takes about 95 s here
ANCHOR = "SageMaker PyTorch MNIST example (ml.c4.xlarge): 96.42% after 1 epoch, ~17 s loop, 136 billable s, ~283 s fit()"


def run() -> list[Figure]:
    from devtools.mnist import load_mnist

    mnist = load_mnist()
    runs = [train_once(mnist, seed) for seed in range(int(os.environ.get("BENCH_TRAINING_RUNS") or RUNS))]
    epochs = len(runs[0]["accuracies"])
    rows = [
        Figure(
            "training",
            "time per epoch (60k images)",
            "s",
            [seconds for run in runs for seconds in run["epoch_seconds"]],
            notes=f"{epochs} epochs x {len(runs)} runs",
        ),
        Figure(
            "training",
            "training time (all epochs)",
            "s",
            [sum(run["epoch_seconds"]) for run in runs],
            target="<= 120",
            notes=ANCHOR,
        ),
        Figure("training", "job time (toolkit start to model saved)", "s", [run["job_s"] for run in runs]),
    ]
    for epoch in range(epochs):
        last = epoch == epochs - 1
        rows.append(
            Figure(
                "training",
                "holdout accuracy after the last epoch"
                if last
                else f"holdout accuracy after epoch {epoch + 1}",
                "fraction",
                [run["accuracies"][epoch] for run in runs],
                target=">= 0.993" if last else None,
                notes=f"epoch {epoch + 1} of {epochs}; seeds {', '.join(str(run['seed']) for run in runs)}",
            )
        )
    return rows


def train_once(mnist, seed: int) -> dict:
    """One job with the default hyperparameters (seed 0 is the default; other runs change only the seed)."""
    from localcloud.sagemaker.runner import collect_result, prepare_job_dir, start_training
    from model_code.metric_definitions import METRIC_DEFINITIONS
    from model_code.shards import write_shard

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmp = Path(tmp)
        write_shard(tmp / "train/train.npz", mnist.train_images, mnist.train_labels)
        write_shard(tmp / "test/holdout.npz", mnist.test_images, mnist.test_labels)
        job = prepare_job_dir(
            tmp / "job",
            job_name=f"bench-default-hyperparameters-seed-{seed}",
            hyperparameters={"seed": str(seed)} if seed else {},
            channels={"train": tmp / "train", "test": tmp / "test"},
            entry_point="train.py",
            submit_dir=str(MODEL_CODE),
        )
        print(f"  training run with seed {seed}", flush=True)
        started = time.perf_counter()
        proc = start_training(job)
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("METRICS"):
                print(f"  {line.strip()}", flush=True)
        proc.wait()
        job_seconds = time.perf_counter() - started
        succeeded, reason = collect_result(job)
        if not succeeded:
            raise RuntimeError(f"training job failed: {reason}\n" + "\n".join(lines[-30:]))
        shutil.rmtree(job.base, ignore_errors=True)

    epochs = [line for line in lines if line.startswith("METRICS")]
    accuracy_regex = next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == "test:accuracy")
    return {
        "seed": seed,
        "accuracies": [float(re.search(accuracy_regex, line).group(1)) for line in epochs],
        "epoch_seconds": [float(re.search(r"seconds=([0-9.]+)", line).group(1)) for line in epochs],
        "job_s": job_seconds,
    }
