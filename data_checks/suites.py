"""The Great Expectations suites a data batch must pass, each expectation under a stable name.

Two suites, because some checks must pass before the per-image features can even be computed:

- ``mnist_batch_structure`` runs on a one-row frame that describes the arrays (shape, dtype,
  label count), so a wrong-shape batch gets a named failure instead of a crash;
- ``mnist_batch_content`` runs on the per-image feature frame (see ``features.py``).

Some bounds depend on the batch size and the reference, so the suites are built per batch. Each
expectation's check name is ``meta["check"]``; its ``description``, which Data Docs show instead
of GX's generic sentence, starts with that name and states the bound in words.
"""

from __future__ import annotations

import math

from data_checks.reference import DRIFT_FEATURES, NUM_CLASSES, Reference

STRUCTURE_SUITE = "mnist_batch_structure"
CONTENT_SUITE = "mnist_batch_content"
DIGITS = list(range(NUM_CLASSES))
INTEGER_DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"]

# Limits for a clean batch, chosen on real MNIST so that clean batches of 500 images or more pass
# with a margin, including batches cut from consecutive images, which come from one group of
# writers and so differ more than random samples do:
# - every digit makes up 9.0-11.4% of MNIST and 500 consecutive images hold 0.68-1.40 times the
#   overall share; half to double the base share is allowed;
# - MNIST has no duplicate and no blank image (the least ink is on 4.3% of the pixels);
# - drift: the batch mean of a feature may move DRIFT_Z standard errors from the base mean, and at
#   least DRIFT_TOLERANCE (in the feature's unit: grey levels, or a fraction of the pixels). Every
#   MNIST image has background 0 and peak 254-255, so a rescaled or offset batch moves pixel_max or
#   pixel_min far beyond 8 grey levels; ink varies by writer, and 500 consecutive images differ from
#   the mean by up to 8.2 grey levels in pixel_mean, 8.7 in pixel_std and 0.031 in nonzero_fraction;
# - 81% of base images are nearest to their own digit's mean image and 500 consecutive images agree
#   at least 75% of the time; rewriting 30% of the labels drops agreement to about 58%.
CLASS_SHARE_FACTOR = 2.0
MAX_DUPLICATE_FRACTION = 0.01
MAX_BLANK_FRACTION = 0.01
BLANK_NONZERO_FRACTION = 0.01  # an image with ink on fewer than 1% of its pixels (< 8) is blank
DRIFT_Z = 5.0
DRIFT_TOLERANCE = {
    "pixel_min": 8.0,
    "pixel_max": 8.0,
    "pixel_mean": 10.0,
    "pixel_std": 12.0,
    "nonzero_fraction": 0.06,
}
AGREEMENT_TOLERANCE = 0.10


def check_name(expectation) -> str:
    return expectation.meta["check"]


def _check(name: str, description: str, expectation_class, **kwargs):
    return expectation_class(meta={"check": name}, description=f"{name}: {description}", **kwargs)


def structure_suite(row_count: int):
    """Expectations on the one-row frame from ``features.structure_frame``."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    label_shape = str((row_count,))
    return gx.ExpectationSuite(
        name=STRUCTURE_SUITE,
        expectations=[
            _check("images_shape_is_28x28", "images must be an array of 28 x 28 pixel images.",
                   gxe.ExpectColumnValuesToBeInSet, column="image_shape", value_set=["(28, 28)"]),
            _check("images_dtype_is_uint8", "pixels must be uint8, as in the data lake's shards.",
                   gxe.ExpectColumnValuesToBeInSet, column="image_dtype", value_set=["uint8"]),
            _check("labels_one_per_image", f"labels must have shape {label_shape}: one label per image.",
                   gxe.ExpectColumnValuesToBeInSet, column="label_shape", value_set=[label_shape]),
            _check("labels_are_integers", "labels are class indices, so they must be integers.",
                   gxe.ExpectColumnValuesToBeInSet, column="label_dtype", value_set=INTEGER_DTYPES),
        ],
    )  # fmt: skip


def content_suite(reference: Reference, row_count: int, *, min_rows: int, max_rows: int):
    """Expectations on the per-image frame from ``features.feature_frame``; drift bounds are
    scaled to a batch of ``row_count`` images."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = [
        _check("row_count_in_bounds", f"the batch must have {min_rows}..{max_rows} images.",
               gxe.ExpectTableRowCountToBeBetween, min_value=min_rows, max_value=max_rows),
        _check("labels_in_0_9", "every label must be a digit 0..9.",
               gxe.ExpectColumnValuesToBeInSet, column="label", value_set=DIGITS),
        _check("pixels_at_least_0", "no pixel may be below 0.",
               gxe.ExpectColumnMinToBeBetween, column="pixel_min", min_value=0),
        _check("pixels_at_most_255", "no pixel may be above 255.",
               gxe.ExpectColumnMaxToBeBetween, column="pixel_max", max_value=255),
        _check("all_classes_present", "every digit 0..9 must occur.",
               gxe.ExpectColumnDistinctValuesToContainSet, column="label", value_set=DIGITS),
    ]  # fmt: skip
    for digit, share in enumerate(reference.class_proportions):
        low, high = share / CLASS_SHARE_FACTOR, share * CLASS_SHARE_FACTOR
        expectations.append(
            _check(f"class_{digit}_proportion",
                   f"the share of digit {digit} must be {low:.4f}..{high:.4f} "
                   f"(half to double the base set's {share:.4f}).",
                   gxe.ExpectColumnMeanToBeBetween, column=f"label_is_{digit}", min_value=low, max_value=high)
        )  # fmt: skip
    expectations += [
        _check("few_duplicate_images",
               f"at least {1 - MAX_DUPLICATE_FRACTION:.0%} of images must be unique (by content hash).",
               gxe.ExpectColumnProportionOfUniqueValuesToBeBetween, column="content_hash",
               min_value=1 - MAX_DUPLICATE_FRACTION),
        _check("few_blank_images",
               f"at most {MAX_BLANK_FRACTION:.0%} of images may be blank "
               f"(ink on under {BLANK_NONZERO_FRACTION:.0%} of the pixels).",
               gxe.ExpectColumnMeanToBeBetween, column="is_blank", max_value=MAX_BLANK_FRACTION),
    ]  # fmt: skip
    rows = max(row_count, 1)
    for feature in DRIFT_FEATURES:
        stats = reference.features[feature]
        tolerance = max(DRIFT_Z * stats.std / math.sqrt(rows), DRIFT_TOLERANCE[feature])
        low, high = stats.mean - tolerance, stats.mean + tolerance
        expectations.append(
            _check(f"{feature}_matches_reference",
                   f"the mean {feature} must be {low:.4g}..{high:.4g} (base set: {stats.mean:.4g}).",
                   gxe.ExpectColumnMeanToBeBetween, column=feature, min_value=low, max_value=high)
        )  # fmt: skip
    agreement = reference.centroid_agreement
    standard_error = math.sqrt(agreement * (1 - agreement) / rows)
    least = agreement - max(DRIFT_Z * standard_error, AGREEMENT_TOLERANCE)
    expectations.append(
        _check("labels_agree_with_images",
               f"at least {least:.1%} of images must be nearest to their own label's mean image "
               f"(base set: {agreement:.1%}); rewritten labels lower this share.",
               gxe.ExpectColumnMeanToBeBetween, column="label_matches_centroid", min_value=least)
    )  # fmt: skip
    return gx.ExpectationSuite(name=CONTENT_SUITE, expectations=expectations)
