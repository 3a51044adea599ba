"""Live-traffic drift: the monitor_traffic step compares what the live alias was asked since the last
run with the data it was trained on.

The serving handler writes, per answered request, one JSON log line with a compact record of each
image (never its pixels): the prediction, its confidence, the mean intensity and the share of nonzero
pixels, and the model's sha (``lambda_package/handler.py``, ``feature_record``). This step reads the
lines of the alias's version(s) from the function's log group with FilterLogEvents (paginated), over
the window from where the previous run's check ended (``monitoring/<run>.json``) until now, and
scores them against the training reference ``data/reference.json`` (``data_checks``):

- each feature's **standardized mean difference**, ``|observed mean - expected mean| / expected
  std`` (the reference's per-image mean and std): a shift of the whole population, independent of
  the sample count, so a busy day does not make noise significant;
- the **prediction shift**, the total variation distance between the predicted digits' shares and
  the training set's class proportions (0: the same, 1: disjoint);
- the **low-confidence share**, reported, not a drift test on its own.

The drift score is the largest of those statistics divided by its threshold (1.0 = at a threshold),
so one chart shows every run. Fewer than ``drift_min_samples`` images is "too_few_samples" (no drift
claimed on so little), none at all "no_traffic". Drift forces a retrain even without new batches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from mnist_pipeline import s3io
from mnist_pipeline.audit_view import MONITORING_KEYS
from mnist_pipeline.config import PipelineConfig

# The features the handler logs that the reference describes (data_checks.reference.DRIFT_FEATURES).
TRAFFIC_FEATURES = ("pixel_mean", "nonzero_fraction")
LOG_MESSAGE = "mnist request"
DEFAULT_LOOKBACK_S = 24 * 3600
SCHEMA_VERSION = 1

# The DAG's Params (name -> JSON-schema bits); thresholds_from_params reads them back.
DRIFT_PARAMS: dict[str, dict[str, Any]] = {
    "drift_feature_threshold": {
        "default": 1.0,
        "type": "number",
        "minimum": 0.01,
        "maximum": 100.0,
        "description": "Drift when a traffic feature's mean is this many reference standard deviations off.",
    },
    "drift_prediction_threshold": {
        "default": 0.25,
        "type": "number",
        "minimum": 0.01,
        "maximum": 1.0,
        "description": "Drift when the predicted digits' shares differ from the training classes' by this much (total variation).",
    },
    "drift_min_samples": {
        "default": 50,
        "type": "integer",
        "minimum": 1,
        "maximum": 1_000_000,
        "description": "Below this many images of live traffic, no drift is claimed.",
    },
    "drift_low_confidence": {
        "default": 0.6,
        "type": "number",
        "minimum": 0.0,
        "maximum": 1.0,
        "description": "A prediction whose top probability is below this counts as low confidence.",
    },
}


@dataclass(frozen=True)
class Thresholds:
    feature: float = DRIFT_PARAMS["drift_feature_threshold"]["default"]
    prediction: float = DRIFT_PARAMS["drift_prediction_threshold"]["default"]
    min_samples: int = DRIFT_PARAMS["drift_min_samples"]["default"]
    low_confidence: float = DRIFT_PARAMS["drift_low_confidence"]["default"]


def thresholds_from_params(params: Mapping[str, Any] | None) -> Thresholds:
    """The run's drift thresholds; a Param the run lacks (an older DAG version) takes its default."""
    params = params or {}

    def value(name: str):
        return params.get(name, DRIFT_PARAMS[name]["default"])

    return Thresholds(
        feature=float(value("drift_feature_threshold")),
        prediction=float(value("drift_prediction_threshold")),
        min_samples=int(value("drift_min_samples")),
        low_confidence=float(value("drift_low_confidence")),
    )


class Traffic:
    """The feature records of the window, as arrays (one entry per image)."""

    def __init__(self) -> None:
        self.columns: dict[str, list] = {
            "prediction": [],
            "confidence": [],
            **{f: [] for f in TRAFFIC_FEATURES},
        }
        self.models: set[str] = set()
        self.requests = 0

    def add_line(self, line: str, versions: set[str]) -> None:
        """One handler log line; lines of other versions, direct invokes (the smoke test and the
        canary), errors and other output are skipped."""
        if LOG_MESSAGE not in line:
            return
        try:
            record = json.loads(line)
        except ValueError:
            return
        features = record.get("features") if isinstance(record, dict) else None
        if record.get("status") != 200 or not isinstance(features, dict):
            return
        if versions and str(record.get("version")) not in versions:
            return
        if record.get("source") == "invoke":
            return  # the pipeline's own smoke test and canary calls: not clients' traffic
        predictions = record.get("predictions") or []
        lists = [features.get(name) or [] for name in ("confidence", *TRAFFIC_FEATURES)]
        if not all(isinstance(column, list) and len(column) == len(predictions) for column in lists):
            return  # a record cut short: never half an image
        self.columns["prediction"].extend(predictions)
        for name, column in zip(("confidence", *TRAFFIC_FEATURES), lists, strict=True):
            self.columns[name].extend(column)
        self.requests += 1
        if record.get("model_sha256"):
            self.models.add(record["model_sha256"])

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.columns[name], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.columns["prediction"])


def score(traffic: Traffic, reference, thresholds: Thresholds) -> dict:
    """The window's statistics against the reference (see the module docstring)."""
    samples = len(traffic)
    result: dict[str, Any] = {
        "samples": samples,
        "requests": traffic.requests,
        "models": sorted(traffic.models),
        "features": {},
        "drifted_features": [],
        "prediction_distribution": None,
        "prediction_shift": None,
        "low_confidence_share": None,
        "drift_score": None,
        "drift": False,
    }
    if samples == 0:
        return {**result, "status": "no_traffic"}
    confidence = traffic.array("confidence")
    result["low_confidence_share"] = round(float(np.mean(confidence < thresholds.low_confidence)), 4)
    predictions = traffic.array("prediction").astype(np.int64)
    observed = np.bincount(np.clip(predictions, 0, 9), minlength=10) / samples
    expected = np.asarray(reference.class_proportions, dtype=np.float64)
    shift = round(float(0.5 * np.abs(observed - expected).sum()), 4)
    result["prediction_distribution"] = {
        "observed": [round(float(share), 4) for share in observed],
        "expected": [round(float(share), 4) for share in expected],
    }
    result["prediction_shift"] = shift
    scores = [shift / thresholds.prediction]
    for name in TRAFFIC_FEATURES:
        stats = reference.features[name]
        mean = float(traffic.array(name).mean())
        distance = abs(mean - stats.mean) / stats.std if stats.std > 0 else float(mean != stats.mean)
        result["features"][name] = {
            "observed": round(mean, 4),
            "expected": round(stats.mean, 4),
            "standardized_difference": round(distance, 4),
        }
        scores.append(distance / thresholds.feature)
        if distance > thresholds.feature:
            result["drifted_features"].append(
                {
                    "feature": name,
                    "observed": round(mean, 4),
                    "expected": round(stats.mean, 4),
                    "threshold": thresholds.feature,
                }  # fmt: skip
            )
    if shift > thresholds.prediction:
        result["drifted_features"].append(
            {
                "feature": "prediction_distribution",
                "observed": shift,
                "expected": 0.0,
                "threshold": thresholds.prediction,
            }
        )
    result["drift_score"] = round(max(scores), 4)
    if samples < thresholds.min_samples:
        return {**result, "drifted_features": [], "status": "too_few_samples"}
    drift = bool(result["drifted_features"])
    return {**result, "drift": drift, "status": "drift" if drift else "ok"}


def log_lines(logs, log_group: str, start_ms: int, end_ms: int) -> Iterator[str]:
    """The group's lines in [start_ms, end_ms), every page; none when the group does not exist."""
    paginator = logs.get_paginator("filter_log_events")
    pages = paginator.paginate(
        logGroupName=log_group, startTime=start_ms, endTime=end_ms, filterPattern=f'"{LOG_MESSAGE}"'
    )
    try:
        for page in pages:
            for event in page.get("events", []):
                yield event["message"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceNotFoundException":
            raise


def previous_window_end(s3, config: PipelineConfig) -> int | None:
    """Where the newest earlier check's window ended (epoch ms), if any run checked before."""
    listed = list(s3io.list_keys(s3, config.bucket, config.monitoring_prefix))
    for item in sorted(listed, key=lambda item: item["LastModified"], reverse=True):
        document = s3io.get_json(s3, config.bucket, item["Key"], default=None)
        if isinstance(document, dict) and isinstance((document.get("window") or {}).get("end_ms"), int):
            return document["window"]["end_ms"]
    return None


def served_versions(live: Mapping | None) -> set[str]:
    """The versions the alias routes to (its version and any canary weights)."""
    alias = (live or {}).get("alias") or {}
    return {str(version) for version in [alias.get("version"), *(alias.get("weights") or {})] if version}


def monitor_traffic(
    logs,
    s3,
    config: PipelineConfig,
    *,
    run_id: str,
    live: Mapping | None,
    thresholds: Thresholds,
    reference=None,
    now_ms: int | None = None,
) -> dict:
    """Score the live alias's traffic since the last check; write ``monitoring/<run>.json``; return
    the summary the audit keeps (``audit_view.MONITORING_KEYS``)."""
    from data_checks.reference import Reference

    end_ms = int(time.time() * 1000) if now_ms is None else now_ms
    start_ms = previous_window_end(s3, config)
    if start_ms is None or start_ms >= end_ms:
        start_ms = end_ms - DEFAULT_LOOKBACK_S * 1000
    if reference is None:
        reference = Reference.from_json(s3io.get_bytes(s3, config.bucket, config.reference_key))
    versions = served_versions(live)
    traffic = Traffic()
    if versions:  # no alias: nothing is live, nothing to read
        for line in log_lines(logs, f"/aws/lambda/{config.lambda_function}", start_ms, end_ms):
            traffic.add_line(line, versions)
    result = score(traffic, reference, thresholds)
    key = config.monitoring_key(run_id)
    document = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "window": {"start_ms": start_ms, "end_ms": end_ms},
        "versions": sorted(versions),
        "thresholds": asdict(thresholds),
        **result,
    }
    uri = s3io.put_json(s3, config.bucket, key, document)
    return {"uri": uri, **{name: result[name] for name in MONITORING_KEYS if name != "uri"}}
