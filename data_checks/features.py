"""The frames the suites run on: one row describing the arrays, and one row per image."""

from __future__ import annotations

import numpy as np

from data_checks.reference import IMAGE_SHAPE, NUM_CLASSES, Reference, image_features
from data_checks.suites import BLANK_NONZERO_FRACTION


def structure_frame(images: np.ndarray, labels: np.ndarray):
    """A one-row frame describing the arrays, for ``mnist_batch_structure``."""
    import pandas as pd

    return pd.DataFrame(
        {
            "image_shape": [str(tuple(images.shape[1:]))],
            "image_dtype": [str(images.dtype)],
            "label_shape": [str(tuple(labels.shape))],
            "label_dtype": [str(labels.dtype)],
        }
    )


def can_compute_features(images: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the per-image features are defined: numeric [N, 28, 28] images, numeric [N] labels.
    A wrong dtype alone does not stop them: out-of-range pixels are only visible in a wider dtype."""
    return (
        images.ndim == 3
        and images.shape[1:] == IMAGE_SHAPE
        and images.dtype.kind in "iuf"
        and labels.shape == (len(images),)
        and labels.dtype.kind in "iuf"
    )


def feature_frame(images: np.ndarray, labels: np.ndarray, reference: Reference):
    """One row per image, for ``mnist_batch_content``: the label, its one-hot indicators (their
    means are the class shares), pixel statistics, a blank flag, a content hash, and whether the
    image is nearest to its own label's mean image."""
    import pandas as pd

    features = image_features(images, reference.unit_centroids())
    columns = {"label": labels}
    columns.update(
        {f"label_is_{digit}": (labels == digit).astype(np.float64) for digit in range(NUM_CLASSES)}
    )
    columns.update({name: features[name] for name in ("pixel_min", "pixel_max", "pixel_mean", "pixel_std")})
    columns["nonzero_fraction"] = features["nonzero_fraction"]
    columns["is_blank"] = (features["nonzero_fraction"] < BLANK_NONZERO_FRACTION).astype(np.float64)
    columns["content_hash"] = features["content_hash"]
    columns["label_matches_centroid"] = (features["nearest_centroid"] == labels).astype(np.float64)
    return pd.DataFrame(columns)
