"""What a clean batch looks like: statistics of the base training set, and the per-image features
both the reference and the checks are built from.

Everything here is numpy only, so the DAG can import it at parse time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
REFERENCE_VERSION = 1
# Per-image statistics whose batch mean is compared with the reference (data drift).
DRIFT_FEATURES = ("pixel_min", "pixel_max", "pixel_mean", "pixel_std", "nonzero_fraction")
# Features are computed this many images at a time, so a 70k batch never needs a float copy of all
# of it (70k x 784 float64 would be 440 MB).
_CHUNK = 8192


@dataclass(frozen=True)
class FeatureStats:
    mean: float
    std: float


@dataclass(frozen=True)
class Reference:
    """Statistics of the base set that nightly batches are compared with.

    Saved as JSON next to the base set (``to_json`` / ``from_json``).

    :param image_count: how many images the reference was computed from.
    :param images_sha256: sha256 of the base images' bytes, to tie the reference to its data.
    :param class_proportions: share of each digit 0..9 in the base set.
    :param features: mean and standard deviation over images of each of ``DRIFT_FEATURES``.
    :param class_centroids: the mean image of each digit (10 rows of 784 pixel values, 0..255).
    :param centroid_agreement: share of base images whose nearest centroid (cosine) is their own
        label's; a batch whose labels were rewritten agrees far less often.
    """

    image_count: int
    images_sha256: str
    class_proportions: tuple[float, ...]
    features: dict[str, FeatureStats]
    class_centroids: tuple[tuple[float, ...], ...]
    centroid_agreement: float
    version: int = REFERENCE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Reference:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"reference is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"reference must be a JSON object, got {type(data).__name__}")
        if data.get("version") != REFERENCE_VERSION:
            raise ValueError(
                f"reference version {data.get('version')!r} is not supported (expected {REFERENCE_VERSION}); "
                "recompute it with compute_reference"
            )
        expected = {
            "image_count", "images_sha256", "class_proportions", "features",
            "class_centroids", "centroid_agreement", "version",
        }  # fmt: skip
        if set(data) != expected:
            raise ValueError(
                f"reference keys are wrong: missing {sorted(expected - set(data))}, "
                f"unexpected {sorted(set(data) - expected)}"
            )
        try:
            features = {
                name: FeatureStats(float(s["mean"]), float(s["std"])) for name, s in data["features"].items()
            }
            centroids = np.asarray(data["class_centroids"], dtype=np.float64)
            proportions = tuple(float(p) for p in data["class_proportions"])
            reference = cls(
                image_count=int(data["image_count"]),
                images_sha256=str(data["images_sha256"]),
                class_proportions=proportions,
                features=features,
                class_centroids=tuple(tuple(row) for row in centroids.tolist()),
                centroid_agreement=float(data["centroid_agreement"]),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"reference has a malformed value: {error!r}") from None
        if set(features) != set(DRIFT_FEATURES):
            raise ValueError(f"reference 'features' must have exactly the keys {list(DRIFT_FEATURES)}")
        if centroids.shape != (NUM_CLASSES, PIXELS):
            raise ValueError(
                f"reference 'class_centroids' must be {NUM_CLASSES} x {PIXELS} numbers, got shape {centroids.shape}"
            )
        if len(proportions) != NUM_CLASSES:
            raise ValueError(f"reference 'class_proportions' must have {NUM_CLASSES} entries")
        return reference

    def unit_centroids(self) -> np.ndarray:
        """The class centroids scaled to unit length, float32 [10, 784], for cosine similarity."""
        return _unit_rows(np.asarray(self.class_centroids, dtype=np.float32))


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def image_features(images: np.ndarray, unit_centroids: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image features of a numeric [N, 28, 28] array (any integer or float dtype, so that
    out-of-range values are measured rather than wrapped).

    Returns arrays of length N: ``pixel_min``, ``pixel_max``, ``pixel_mean``, ``pixel_std``,
    ``nonzero_fraction``, ``nearest_centroid`` (the digit whose mean image is most similar) and
    ``content_hash`` (blake2b of the image's bytes, to find duplicates).
    """
    flat = images.reshape(len(images), PIXELS)
    features = {
        "pixel_min": flat.min(axis=1),
        "pixel_max": flat.max(axis=1),
        "pixel_mean": np.empty(len(flat)),
        "pixel_std": np.empty(len(flat)),
        "nonzero_fraction": np.empty(len(flat)),
        "nearest_centroid": np.empty(len(flat), dtype=np.int64),
    }
    for start in range(0, len(flat), _CHUNK):
        chunk = flat[start : start + _CHUNK].astype(np.float32)
        rows = slice(start, start + len(chunk))
        features["pixel_mean"][rows] = chunk.mean(axis=1)
        features["pixel_std"][rows] = chunk.std(axis=1)
        features["nonzero_fraction"][rows] = np.count_nonzero(chunk, axis=1) / PIXELS
        # Cosine similarity: the image's own length is the same for every class, so the argmax of
        # the dot product with unit centroids is the argmax of the cosine.
        features["nearest_centroid"][rows] = (chunk @ unit_centroids.T).argmax(axis=1)
    features["content_hash"] = np.array(
        [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in np.ascontiguousarray(flat)],
        dtype=object,
    )
    return features


def compute_reference(images: np.ndarray, labels: np.ndarray) -> Reference:
    """Compute the reference statistics from a clean base set.

    :param images: uint8 [N, 28, 28], the base training images.
    :param labels: integer [N], digits 0..9; every digit must occur.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"reference images must be uint8 [N, 28, 28], got {images.dtype} {list(images.shape)}"
        )
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"reference labels must be integers [{len(images)}] (one per image), "
            f"got {labels.dtype} {list(labels.shape)}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"reference labels must be 0..9, found {labels.min()}..{labels.max()}")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    missing = np.flatnonzero(counts == 0).tolist()
    if missing:
        raise ValueError(f"reference set lacks digits {missing}: a reference needs every class")

    centroids = np.stack(
        [images[labels == digit].mean(axis=0, dtype=np.float64).ravel() for digit in range(NUM_CLASSES)]
    )
    centroids = np.round(centroids, 3)  # JSON stays small; 1e-3 of a grey level is far below any check
    features = image_features(images, _unit_rows(centroids.astype(np.float32)))
    return Reference(
        image_count=len(images),
        images_sha256=hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
        class_proportions=tuple((counts / len(labels)).tolist()),
        features={
            name: FeatureStats(float(features[name].mean()), float(features[name].std()))
            for name in DRIFT_FEATURES
        },
        class_centroids=tuple(tuple(row) for row in centroids.tolist()),
        centroid_agreement=float((features["nearest_centroid"] == labels).mean()),
    )
