"""Data validation cost: the GX suite on 1k, 10k and 70k real MNIST images (target: 70k <= 10 s)."""

from __future__ import annotations

import numpy as np

from benchmarks.harness import Figure, repeat

SIZES = (1_000, 10_000, 70_000)
REPEATS = 5


def run() -> list[Figure]:
    from data_checks import compute_reference, validate_batch
    from devtools.mnist import load_mnist

    mnist = load_mnist()
    images = np.concatenate([mnist.train_images, mnist.test_images])
    labels = np.concatenate([mnist.train_labels, mnist.test_labels])
    reference = compute_reference(mnist.train_images[:50_000], mnist.train_labels[:50_000])
    validate_batch(images[:1000], labels[:1000], reference, batch_name="warmup")  # GX import + context

    figures = []
    for size in SIZES:
        result = validate_batch(
            images[:size], labels[:size], reference, batch_name=f"bench-{size}", max_rows=size
        )
        samples = repeat(
            lambda size=size: validate_batch(
                images[:size], labels[:size], reference, batch_name=f"bench-{size}", max_rows=size
            ),
            REPEATS,
        )
        figures.append(
            Figure(
                "data validation",
                f"GX suite, {size:,} images",
                "s",
                samples,
                target="<= 10" if size == 70_000 else None,
                notes=f"{size / np.median(samples):,.0f} images/s; batch passed: {result.success}",
                extra={"images_per_s": size / float(np.median(samples)), "passed": result.success},
            )
        )
    return figures
