"""Validate a data batch with Great Expectations and report each failure by its check name."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_checks import suites
from data_checks.features import can_compute_features, feature_frame, structure_frame
from data_checks.reference import Reference

DEFAULT_MIN_ROWS = 500  # below this the class-share and drift checks lose their statistical margin
DEFAULT_MAX_ROWS = 100_000
# What map and distinct-value expectations report instead of a single observed value.
_OBSERVED_KEYS = ("unexpected_count", "unexpected_percent", "partial_unexpected_list", "missing_count",
                  "partial_missing_list")  # fmt: skip
# Keys of an expectation's configuration that say where it looks rather than what it expects.
_NOT_EXPECTED = {"column", "batch_id", "row_condition", "condition_parser", "result_format",
                 "catch_exceptions"}  # fmt: skip


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of ``validate_batch``.

    :param batch_name: the name the batch was validated under.
    :param checks: one entry per evaluated check: ``{"expectation": name, "column", "success",
        "observed", "expected", "suite"}``, JSON-serialisable.
    :param skipped: checks of the content suite that were not evaluated because the batch's
        structure (shape, label count) made the per-image features impossible to compute.
    :param gx_results: the raw Great Expectations ``ExpectationSuiteValidationResult`` of each
        suite that ran (structure, then content).
    """

    batch_name: str
    checks: tuple[dict, ...]
    skipped: tuple[str, ...] = ()
    gx_results: tuple[Any, ...] = field(default=(), repr=False)

    @property
    def success(self) -> bool:
        return not self.skipped and all(check["success"] for check in self.checks)

    @property
    def failed(self) -> list[dict]:
        """``{"expectation", "column", "observed", "expected"}`` for each failed check."""
        keys = ("expectation", "column", "observed", "expected")
        return [{key: check[key] for key in keys} for check in self.checks if not check["success"]]

    def summary(self) -> str:
        """One line for logs and exception messages."""
        if self.success:
            return f"batch {self.batch_name!r} passed all {len(self.checks)} data checks"
        parts = [
            f"{item['expectation']} (observed {_short(item['observed'])}, expected {_short(item['expected'])})"
            for item in self.failed
        ]
        if self.skipped:
            parts.append(f"{len(self.skipped)} content checks skipped")
        return f"batch {self.batch_name!r} failed data checks: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "batch_name": self.batch_name,
            "success": self.success,
            "failed": self.failed,
            "skipped": list(self.skipped),
            "checks": list(self.checks),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)


def validate_batch(
    images: np.ndarray,
    labels: np.ndarray,
    reference: Reference,
    *,
    batch_name: str,
    min_rows: int = DEFAULT_MIN_ROWS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ValidationResult:
    """Run the data checks on one batch of images and labels.

    Never raises for bad data: a wrong shape, dtype or content is a failed check in the result.

    :param images: the batch's images; a clean batch is uint8 [N, 28, 28].
    :param labels: the batch's labels; a clean batch is integer [N] with digits 0..9.
    :param reference: statistics of the base set, from ``compute_reference``.
    :param batch_name: names the batch in the result and in Data Docs.
    :param min_rows: fewest images a batch may have (``row_count_in_bounds``).
    :param max_rows: most images a batch may have (``row_count_in_bounds``).
    """
    if not isinstance(reference, Reference):
        raise TypeError(
            f"reference must be a Reference (see Reference.from_json), got {type(reference).__name__}"
        )
    if not isinstance(batch_name, str) or not batch_name:
        raise ValueError(f"batch_name must be a non-empty string, got {batch_name!r}")
    if not 0 <= min_rows <= max_rows:
        raise ValueError(f"need 0 <= min_rows <= max_rows, got min_rows={min_rows}, max_rows={max_rows}")
    images = np.asarray(images)
    labels = np.asarray(labels)
    row_count = images.shape[0] if images.ndim else 0
    structure = suites.structure_suite(row_count)
    content = suites.content_suite(reference, row_count, min_rows=min_rows, max_rows=max_rows)
    suite_order = [suites.check_name(e) for e in structure.expectations + content.expectations]

    raw_results = [_run(structure, structure_frame(images, labels), batch_name)]
    skipped: tuple[str, ...] = ()
    if can_compute_features(images, labels):
        raw_results.append(_run(content, feature_frame(images, labels, reference), batch_name))
    else:
        skipped = tuple(suites.check_name(expectation) for expectation in content.expectations)
    # GX groups results by column; list them in the suites' order instead, which reads top-down.
    entries = [_check_entry(raw, item) for raw in raw_results for item in raw.results]
    checks = tuple(sorted(entries, key=lambda entry: suite_order.index(entry["expectation"])))
    return ValidationResult(
        batch_name=batch_name, checks=checks, skipped=skipped, gx_results=tuple(raw_results)
    )


def render_data_docs(result: ValidationResult, out_dir: str | Path) -> Path:
    """Render the result as Great Expectations Data Docs (a static HTML site) in ``out_dir``.

    Returns the path of the site's ``index.html``, which links to one validation page per suite
    that ran.
    """
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    if not result.gx_results:
        raise ValueError(f"batch {result.batch_name!r} has no Great Expectations results to render")
    out_dir = Path(out_dir).resolve()
    context, _ = _gx()
    site_name = "site_" + hashlib.sha256(str(out_dir).encode()).hexdigest()[:12]
    if site_name not in context.get_site_names():
        context.add_data_docs_site(
            site_name,
            {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(out_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    keys = []
    for raw in result.gx_results:
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=raw.suite_name),
            run_id=raw.meta["run_id"],
            batch_identifier=raw.batch_id,
        )
        context.validation_results_store.set(key, raw)
        keys.append(key)
    context.build_data_docs(site_names=[site_name], resource_identifiers=keys)
    return out_dir / "index.html"


@functools.cache
def _gx():
    """A process-wide ephemeral GX context with one pandas data asset per suite. Built on first
    use, so importing this package stays cheap."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("mnist_batches")
    batch_definitions = {
        name: source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole_batch")
        for name in (suites.STRUCTURE_SUITE, suites.CONTENT_SUITE)
    }
    return context, batch_definitions


def _run(suite, frame, batch_name: str):
    from great_expectations.core.run_identifier import RunIdentifier

    _, batch_definitions = _gx()
    batch = batch_definitions[suite.name].get_batch(batch_parameters={"dataframe": frame})
    raw = batch.validate(suite, result_format="BASIC")
    # batch.validate leaves the run unnamed; Data Docs file and title the page by this run id.
    raw.meta["run_id"] = RunIdentifier(run_name=batch_name)
    return raw


def _check_entry(raw, item) -> dict:
    config = item.expectation_config
    if item.exception_info and item.exception_info.get("raised_exception"):
        observed: Any = {"error": item.exception_info.get("exception_message")}
    elif item.result.get("observed_value") is not None:
        observed = item.result["observed_value"]
    else:
        observed = {key: item.result[key] for key in _OBSERVED_KEYS if key in item.result}
    return {
        "expectation": config.meta["check"],
        "column": config.kwargs.get("column"),
        "success": bool(item.success),
        "observed": _plain(observed),
        "expected": _plain({key: value for key, value in config.kwargs.items() if key not in _NOT_EXPECTED}),
        "suite": raw.suite_name,
    }


def _plain(value: Any) -> Any:
    """Numpy scalars, sets and non-finite floats as plain JSON values."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        items = [_plain(item) for item in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{key}: {_short(item)}" for key, item in value.items() if item is not None) + "}"
        )
    if isinstance(value, list) and len(value) > 12:
        return "[" + ", ".join(_short(item) for item in value[:12]) + ", ...]"
    return str(value)
