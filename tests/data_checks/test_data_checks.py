"""Great Expectations data checks on real MNIST: clean batches pass, each corruption is caught by
its named check."""

import json
import subprocess
import sys

import numpy as np
import pytest

from data_checks import Reference, compute_reference, render_data_docs, validate_batch

BASE = slice(0, 50_000)  # the lake's base set; batches below come from the images after it


@pytest.fixture(scope="module")
def reference(mnist) -> Reference:
    return compute_reference(mnist.train_images[BASE], mnist.train_labels[BASE])


@pytest.fixture(scope="module")
def clean(mnist):
    """1000 training images that are not in the base set."""
    return mnist.train_images[50_000:51_000], mnist.train_labels[50_000:51_000]


def failed_names(result) -> list[str]:
    return [item["expectation"] for item in result.failed]


def test_clean_batch_passes_every_named_check(clean, reference):
    result = validate_batch(*clean, reference, batch_name="clean")

    assert result.success, result.summary()
    assert result.failed == [] and result.skipped == ()
    names = [check["expectation"] for check in result.checks]
    assert len(names) == len(set(names)) == 27
    assert {
        "images_shape_is_28x28",
        "labels_in_0_9",
        "class_5_proportion",
        "labels_agree_with_images",
    } <= set(names)
    assert [raw.success for raw in result.gx_results] == [True, True]


@pytest.mark.parametrize("start", range(50_000, 60_000, 500))
def test_small_clean_batches_of_consecutive_images_pass(mnist, reference, start):
    # Consecutive MNIST images come from one group of writers and differ more from the base set
    # than random samples; the lake carves nightly batches this way, so they must pass too.
    images, labels = mnist.train_images[start : start + 500], mnist.train_labels[start : start + 500]
    result = validate_batch(images, labels, reference, batch_name=f"slice-{start}")
    assert result.success, result.summary()


def test_holdout_set_passes(mnist, reference):
    result = validate_batch(mnist.test_images, mnist.test_labels, reference, batch_name="holdout")
    assert result.success, result.summary()


# --- corruptions: each returns (images, labels) and names the check that must catch it -----------


def relabel_randomly(images, labels, rng):
    # Each chosen label moves to a different digit, so the class shares barely change: only the
    # label-vs-image check can see it.
    labels = labels.copy()
    chosen = rng.choice(len(labels), size=len(labels) * 3 // 10, replace=False)
    labels[chosen] = (labels[chosen] + rng.integers(1, 10, size=len(chosen))) % 10
    return images, labels


def relabel_to_one_digit(images, labels, rng):
    labels = labels.copy()
    labels[rng.choice(len(labels), size=len(labels) * 3 // 10, replace=False)] = 3
    return images, labels


def pixels_above_255(images, labels, rng):
    wide = images.astype(np.int16)
    wide[:5, 14, 14] = 300
    return wide, labels


def pixels_below_0(images, labels, rng):
    wide = images.astype(np.int16)
    wide[:5, 0, 0] = -5
    return wide, labels


def crop_to_27x27(images, labels, rng):
    return images[:, :27, :27], labels


def flatten(images, labels, rng):
    return images.reshape(len(images), 784), labels


def float_pixels(images, labels, rng):
    return images.astype(np.float32), labels


def drop_a_label(images, labels, rng):
    return images, labels[:-1]


def blank_five_percent(images, labels, rng):
    images = images.copy()
    images[rng.choice(len(images), size=len(images) // 20, replace=False)] = 0
    return images, labels


def duplicate_five_percent(images, labels, rng):
    images, labels = images.copy(), labels.copy()
    copies = rng.choice(len(images), size=len(images) // 20, replace=False)
    images[copies], labels[copies] = images[copies - 1], labels[copies - 1]
    return images, labels


def remove_digit_7(images, labels, rng):
    keep = labels != 7
    return images[keep], labels[keep]


def label_10(images, labels, rng):
    labels = labels.astype(np.int64)
    labels[:3] = 10
    return images, labels


def darken(images, labels, rng):
    return (images * 0.6).astype(np.uint8), labels


def brighten(images, labels, rng):
    return np.clip(images.astype(np.int16) + 40, 0, 255).astype(np.uint8), labels


def too_few(images, labels, rng):
    return images[:100], labels[:100]


def empty(images, labels, rng):
    return images[:0], labels[:0]


CORRUPTIONS = [
    (relabel_randomly, "labels_agree_with_images"),
    (relabel_to_one_digit, "class_3_proportion"),
    (pixels_above_255, "pixels_at_most_255"),
    (pixels_below_0, "pixels_at_least_0"),
    (crop_to_27x27, "images_shape_is_28x28"),
    (flatten, "images_shape_is_28x28"),
    (float_pixels, "images_dtype_is_uint8"),
    (drop_a_label, "labels_one_per_image"),
    (blank_five_percent, "few_blank_images"),
    (duplicate_five_percent, "few_duplicate_images"),
    (remove_digit_7, "all_classes_present"),
    (label_10, "labels_in_0_9"),
    (darken, "pixel_max_matches_reference"),
    (brighten, "pixel_min_matches_reference"),
    (too_few, "row_count_in_bounds"),
    (empty, "row_count_in_bounds"),
]


@pytest.mark.parametrize(("corrupt", "check"), CORRUPTIONS, ids=[c.__name__ for c, _ in CORRUPTIONS])
def test_corruption_is_caught_by_its_named_check(clean, reference, corrupt, check):
    images, labels = corrupt(*clean, np.random.default_rng(7))
    result = validate_batch(images, labels, reference, batch_name=corrupt.__name__)

    assert not result.success
    assert check in failed_names(result), result.summary()
    assert check in result.summary()


def test_randomly_flipped_labels_keep_class_shares_and_fail_only_on_content(clean, reference):
    result = validate_batch(
        *relabel_randomly(*clean, np.random.default_rng(7)), reference, batch_name="flipped"
    )
    assert failed_names(result) == ["labels_agree_with_images"]
    (agreement,) = result.failed
    assert agreement["observed"] < agreement["expected"]["min_value"] < reference.centroid_agreement


def test_failure_reports_observed_and_expected_values(clean, reference):
    images, labels = relabel_to_one_digit(*clean, np.random.default_rng(7))
    result = validate_batch(images, labels, reference, batch_name="threes")

    (share,) = [item for item in result.failed if item["expectation"] == "class_3_proportion"]
    assert share["column"] == "label_is_3"
    assert share["observed"] == pytest.approx(np.mean(labels == 3))
    assert (
        share["observed"]
        > share["expected"]["max_value"]
        == pytest.approx(2 * reference.class_proportions[3])
    )


def test_wrong_shape_is_a_named_failure_and_content_checks_are_skipped(clean, reference):
    images, labels = crop_to_27x27(*clean, None)
    result = validate_batch(images, labels, reference, batch_name="cropped")

    assert failed_names(result) == ["images_shape_is_28x28"]
    assert result.failed[0]["observed"]["partial_unexpected_list"] == ["(27, 27)"]
    assert "labels_agree_with_images" in result.skipped and "row_count_in_bounds" in result.skipped
    assert len(result.gx_results) == 1  # only the structure suite could run
    assert "skipped" in result.summary()


def test_result_is_strict_machine_readable_json(clean, reference):
    images, labels = pixels_above_255(*clean, None)
    document = json.loads(validate_batch(images, labels, reference, batch_name="hot").to_json())

    assert document["batch_name"] == "hot" and document["success"] is False
    assert {item["expectation"] for item in document["failed"]} == {
        "images_dtype_is_uint8",
        "pixels_at_most_255",
    }
    hot = next(item for item in document["failed"] if item["expectation"] == "pixels_at_most_255")
    assert hot == {"expectation": "pixels_at_most_255", "column": "pixel_max", "observed": 300,
                   "expected": {"max_value": 255}}  # fmt: skip
    assert len(document["checks"]) == 27


def test_data_docs_render_the_failed_check(clean, reference, tmp_path):
    result = validate_batch(*darken(*clean, None), reference, batch_name="dark-batch")
    index = render_data_docs(result, tmp_path / "docs")

    assert index == tmp_path / "docs" / "index.html" and index.is_file()
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(pages) == 2  # structure and content suites
    content = next(page for page in pages if "mnist_batch_content" in page.parts).read_text()
    assert "dark-batch" in content and "pixel_max_matches_reference" in content and "Failed" in content


def test_reference_round_trips_through_json(reference):
    assert Reference.from_json(reference.to_json()) == reference
    assert reference.image_count == 50_000
    assert sum(reference.class_proportions) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"version": 99}', "version 99 is not supported"),
        ('{"version": 1, "image_count": 5}', "missing"),
    ],
)
def test_bad_reference_json_is_rejected_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        Reference.from_json(text)


def test_reference_needs_every_digit(mnist):
    images, labels = mnist.train_images[:2000], mnist.train_labels[:2000]
    with pytest.raises(ValueError, match=r"lacks digits \[4\]"):
        compute_reference(images[labels != 4], labels[labels != 4])
    with pytest.raises(ValueError, match="uint8"):
        compute_reference(images.astype(np.float32), labels)


def test_caller_mistakes_raise_instead_of_failing_the_batch(clean, reference):
    with pytest.raises(TypeError, match="Reference"):
        validate_batch(*clean, json.loads(reference.to_json()), batch_name="x")
    with pytest.raises(ValueError, match="min_rows"):
        validate_batch(*clean, reference, batch_name="x", min_rows=10, max_rows=5)
    with pytest.raises(ValueError, match="batch_name"):
        validate_batch(*clean, reference, batch_name="")


def test_importing_the_package_does_not_load_great_expectations_or_pandas():
    code = "import sys, data_checks; print(sorted({'great_expectations', 'pandas'} & set(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"
