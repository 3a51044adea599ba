"""The evaluate step: score the exact ONNX artifact a training job produced, and the live champion.

- :func:`evaluate_onnx` scores ``model.onnx`` with onnxruntime on the holdout: accuracy,
  per-class accuracy, confusion matrix, and latency per image (single-image runs on one thread,
  as the Lambda handler runs).
- :func:`evaluate_run` does it for one run, and records the metric gate's decision
  (:func:`mnist_pipeline.gate.gate_decision`) (models fetched and unpacked safely by
  :func:`mnist_pipeline.artifacts.download_model`; the champion is what the run's start found
  behind the alias) and writes ``evaluation.json`` and ``report.md`` to ``evaluations/<run>/``,
  with the files of the scored artifact that the Lambda zip needs under ``evaluations/<run>/model/``:
  the deploy step packages those, so the job's ``model.tar.gz`` is fetched and unpacked once.

onnxruntime is imported inside the functions that run a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from mnist_pipeline import s3io
from mnist_pipeline.artifacts import download_model, keep_served_files
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.data import read_shards
from mnist_pipeline.gate import gate_decision

log = logging.getLogger(__name__)

CLASSES = 10
PIXELS = 28 * 28


# --- scoring ------------------------------------------------------------------------------------


def _session(model_path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread, like the Lambda handler: latency figures then mean what a request will see.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _output_name(session, model_dir: Path) -> str:
    """The output the handler uses: model_card.json's ``output.name``, else the first."""
    card_path = model_dir / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    names = [output.name for output in session.get_outputs()]
    name = (card.get("output") or {}).get("name", names[0])
    if name not in names:
        raise ValueError(f"model_card.json names output {name!r}, but the model has outputs {names}")
    return name


def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """Accuracy, per-class accuracy (None for a class absent from labels) and the confusion matrix
    (rows: true digit, columns: predicted digit)."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape or labels.size == 0:
        raise ValueError(
            f"need as many predictions as labels (>0), got {predictions.shape} and {labels.shape}"
        )
    confusion = np.zeros((CLASSES, CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    support = confusion.sum(axis=1)
    per_class = [float(confusion[c, c] / support[c]) if support[c] else None for c in range(CLASSES)]
    return {
        "examples": int(labels.size),
        "correct": int(np.trace(confusion)),
        "accuracy": float(np.trace(confusion) / labels.size),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def evaluate_onnx(
    model_dir: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 1000,
    latency_samples: int = 200,
) -> dict:
    """Score ``model_dir/model.onnx`` on raw-pixel images (uint8 [N, 28, 28]) and their labels.

    Returns :func:`classification_metrics` plus ``model_sha256`` (of model.onnx, as the handler
    reports it) and ``latency_ms`` ``{"p50", "p99", "samples"}`` per single-image run.
    """
    model_dir = Path(model_dir)
    model_path = model_dir / "model.onnx"
    session = _session(model_path)
    input_name = session.get_inputs()[0].name
    output_name = _output_name(session, model_dir)
    pixels = np.asarray(images, dtype=np.float32).reshape(len(images), PIXELS)

    predictions = np.concatenate(
        [
            session.run([output_name], {input_name: pixels[start : start + batch_size]})[0].argmax(axis=1)
            for start in range(0, len(pixels), batch_size)
        ]
    )
    metrics = classification_metrics(labels, predictions)

    samples = pixels[np.linspace(0, len(pixels) - 1, num=min(latency_samples, len(pixels))).astype(int)]
    session.run([output_name], {input_name: samples[:1]})  # warm-up: first run allocates
    timings = []
    for row in samples:
        start = time.perf_counter()
        session.run([output_name], {input_name: row[None, :]})
        timings.append((time.perf_counter() - start) * 1000)
    metrics["latency_ms"] = {
        "p50": float(np.percentile(timings, 50)),
        "p99": float(np.percentile(timings, 99)),
        "samples": len(timings),
    }
    metrics["model_sha256"] = hashlib.sha256(model_path.read_bytes()).hexdigest()
    return metrics


# --- the run's evaluation -------------------------------------------------------------------------


def evaluate_run(
    s3,
    config: PipelineConfig,
    *,
    run_id: str,
    training_job: str,
    model_uri: str,
    min_accuracy: float,
    max_regression: float,
    live: dict | None,
) -> dict:
    """Evaluate the run's model and the champion on the holdout, decide, and write the reports.

    :param live: what :func:`mnist_pipeline.endpoint.inspect_live_alias` found behind the alias
        at the start of the run: the champion, and the problems that block a deployment.
    :return: the evaluation document (also at ``evaluation_uri``; its ``model_files`` maps each
        file of the scored artifact the Lambda zip needs to ``{"key", "sha256"}`` of the copy kept
        under ``evaluations/<run>/model/``) with ``evaluation_uri``, ``report_uri`` and
        ``examples_uri`` (a holdout shard, for the Lambda smoke test) added, and, flat for the
        DAG's wiring, ``accuracy`` and ``model_sha256`` (the candidate's) and ``champion_version``
        (the Approved version behind the alias, None without one).
    """
    images, labels, holdout_shards = read_shards(s3, config.bucket, config.holdout_prefix)
    live = live or {}
    alias = live.get("alias") or {}
    champion = None
    if alias.get("exists"):
        champion = {
            "lambda_version": alias.get("version"),
            "model_package_arn": live.get("champion_package_arn"),
            "model_uri": live.get("champion_model_uri"),
        }
    problems = list(live.get("problems") or [])
    prefix = config.evaluation_prefix(run_id)
    with tempfile.TemporaryDirectory(prefix="mnist-evaluation-") as workdir:
        candidate_dir = download_model(s3, model_uri, Path(workdir, "candidate"))
        candidate = evaluate_onnx(candidate_dir, images, labels)
        # The deploy step packages these very files, rather than fetching the archive again.
        model_files = keep_served_files(s3, config.bucket, prefix + "model/", candidate_dir)
        if champion and champion["model_uri"] and not problems:
            champion_dir = download_model(s3, champion["model_uri"], Path(workdir, "champion"))
            champion["metrics"] = evaluate_onnx(champion_dir, images, labels)
    champion_note = None
    if champion and "metrics" not in champion:
        if live.get("placeholder"):
            champion_note = (
                f"live version {champion['lambda_version']} is the infrastructure's placeholder (no model): "
                "no champion to compare with"
            )
        else:
            champion_note = f"live version {champion['lambda_version']} is not a champion to compare with"
    gate = gate_decision(
        candidate["accuracy"],
        min_accuracy=min_accuracy,
        max_regression=max_regression,
        champion_accuracy=champion["metrics"]["accuracy"] if champion and "metrics" in champion else None,
        champion_note=champion_note,
        blocked_by=problems,
    )
    evaluation = {
        "run_id": run_id,
        "training_job": training_job,
        "model_uri": model_uri,
        "holdout": {"rows": int(len(labels)), "shards": holdout_shards},
        "candidate": candidate,
        "model_files": model_files,
        "champion": champion,
        "live_alias": live or None,
        "gate": gate,
    }
    evaluation_uri = s3io.put_json(s3, config.bucket, prefix + "evaluation.json", evaluation)
    report_uri = s3io.put_bytes(
        s3, config.bucket, prefix + "report.md", render_report(evaluation).encode(), "text/markdown"
    )
    log.info("evaluation of %s: %s", training_job, "; ".join(gate["reasons"]))
    return {
        **evaluation,
        "evaluation_uri": evaluation_uri,
        "report_uri": report_uri,
        "examples_uri": config.s3_uri(holdout_shards[0]["key"]),
        "accuracy": candidate["accuracy"],
        "model_sha256": candidate["model_sha256"],
        "champion_version": live.get("champion_version"),
    }


def render_report(evaluation: dict) -> str:
    """The evaluation as Markdown for people: decision first, then the numbers behind it."""
    gate, candidate, champion = evaluation["gate"], evaluation["candidate"], evaluation.get("champion")
    champion_metrics = (champion or {}).get("metrics")
    lines = [
        f"# Evaluation of {evaluation['training_job']}",
        "",
        f"Run `{evaluation['run_id']}`; model `{evaluation['model_uri']}` (model.onnx sha256 "
        f"`{candidate['model_sha256'][:16]}…`); holdout of {evaluation['holdout']['rows']} images.",
        "",
        f"## Decision: {'APPROVED' if gate['approved'] else 'REJECTED'}",
        "",
        *[f"- {reason}" for reason in gate["reasons"]],
        "",
        "## Metrics",
        "",
        "| | candidate | champion |",
        "|---|---|---|",
        f"| accuracy | {candidate['accuracy']:.4f} | {_number(champion_metrics, 'accuracy')} |",
        f"| latency p50 (ms/image) | {candidate['latency_ms']['p50']:.3f} | {_latency(champion_metrics, 'p50')} |",
        f"| latency p99 (ms/image) | {candidate['latency_ms']['p99']:.3f} | {_latency(champion_metrics, 'p99')} |",
        "",
        f"Champion: {_champion_line(champion)}",
        "",
        "## Per-class accuracy (candidate)",
        "",
        "| digit | " + " | ".join(str(c) for c in range(CLASSES)) + " |",
        "|---" * (CLASSES + 1) + "|",
        "| accuracy | "
        + " | ".join("-" if value is None else f"{value:.4f}" for value in candidate["per_class_accuracy"])
        + " |",
        "",
        "## Confusion matrix (candidate; rows: true digit, columns: predicted)",
        "",
        "| | " + " | ".join(str(c) for c in range(CLASSES)) + " |",
        "|---" * (CLASSES + 1) + "|",
        *[
            f"| **{digit}** | " + " | ".join(str(count) for count in row) + " |"
            for digit, row in enumerate(candidate["confusion_matrix"])
        ],
        "",
    ]
    return "\n".join(lines)


def _number(metrics: dict | None, key: str) -> str:
    return "-" if not metrics else f"{metrics[key]:.4f}"


def _latency(metrics: dict | None, key: str) -> str:
    return "-" if not metrics else f"{metrics['latency_ms'][key]:.3f}"


def _champion_line(champion: dict | None) -> str:
    if champion is None:
        return "none (the alias does not exist yet)."
    if not champion.get("model_package_arn"):
        return f"Lambda version {champion['lambda_version']}, with no Approved model package (not evaluated)."
    return f"Lambda version {champion['lambda_version']}, package `{champion['model_package_arn']}`."
