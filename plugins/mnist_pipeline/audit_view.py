"""The run history, as the audit CLI and the Airflow UI plugin show it: one row per DAG run.

Both views call :func:`run_rows`: the audit records (``audit/<run>.json``, newest first, through
:func:`mnist_pipeline.audit.list_audits` and :func:`~mnist_pipeline.audit.read_audit`) joined with
the model registry, because a package's status can change after its run's record was written
(a later rollback or a person rejects it). :func:`cells` turns a row into the text both views
print, so the terminal table and the HTML table cannot disagree. The page draws more from the same
rows: :func:`chart_data` (holdout accuracy against the gate's threshold, the drift score) and
:func:`evaluation_summaries` (each run's confusion matrix, from its ``evaluation.json``);
:func:`evaluation_file` is the run's report or evaluation, read for the page's links.

Sections added to the record later (``trigger``, ``monitoring``, ``alert``) are optional: rows of
older records say "-" there.

Command line (the ``aws_default`` connection and the ``mnist_*`` settings, as the DAG uses them)::

    python -m mnist_pipeline.audit_view [--limit N] [--json] [--airflow-url URL]

Against the local demo, ``make audit`` (``python -m devtools audit``) runs it with the demo's
connection and Variables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from mnist_pipeline import audit, s3io
from mnist_pipeline.config import PipelineConfig

DAG_ID = "mnist_retraining"
AWS_CONN_ID = "aws_default"
DEFAULT_LIMIT = 30
# What a row keeps of the record's monitoring section (the monitor_traffic step's result).
MONITORING_KEYS = (
    "uri",
    "status",
    "samples",
    "drift",
    "drift_score",
    "drifted_features",
    "prediction_shift",
    "low_confidence_share",
)
# Only the demo's Airflow processes have its connection and Variables; `make audit` passes them on.
DEMO_HINT = (
    "For the local demo (make demo), run `make audit` (or `make audit ARGS=--json`): it supplies them."
)


def default_airflow_url(environ: Mapping[str, str] = os.environ) -> str:
    """``AIRFLOW__API__BASE_URL``, else the local api-server on ``AIRFLOW_PORT`` (8080)."""
    return environ.get("AIRFLOW__API__BASE_URL") or f"http://127.0.0.1:{environ.get('AIRFLOW_PORT') or 8080}"


def run_url(airflow_url: str, run_id: str) -> str:
    """The Airflow UI page of a DAG run (``airflow_url`` may be empty: a root-relative link)."""
    return f"{airflow_url.rstrip('/')}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"


def package_status(sm, arn: str | None) -> str | None:
    """The package's approval status in the registry now; "deleted" when it no longer exists."""
    if not arn:
        return None
    try:
        return sm.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"]
    except ClientError as error:
        if error.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            return "deleted"
        raise


def run_row(record: Mapping, sm, airflow_url: str) -> dict:
    """One run's row from its audit record (sections that did not run stay None)."""
    run, result = record["run"], record["result"]
    data, training = record.get("data"), record.get("training")
    decision, deployment = record.get("decision") or {}, record.get("deployment") or {}
    monitoring = record.get("monitoring")
    gate, approval = decision.get("gate") or {}, decision.get("approval")
    package = decision.get("model_package") or {}
    approved = gate.get("approved")
    reasons = list(gate.get("reasons") or [])
    if approval:  # a person had the last word
        approved = approved if approval.get("deploy") is None else approval["deploy"]
        answer = ", ".join(approval.get("chosen_options") or ["no answer"])
        reasons.append(f"{answer} by {approval.get('responded_by')}")
    return {
        "run_id": run["run_id"],
        "run_url": run_url(airflow_url, run["run_id"]),
        "date": run.get("logical_date") or run.get("run_after") or run.get("start_date"),
        "trigger": run.get("trigger") or {"type": None, "by": None},
        # Why it ran ({"kind", "object_keys", "drift_triggered"}); None in records older than that.
        "started_by": record.get("trigger"),
        "monitoring": None if monitoring is None else {key: monitoring.get(key) for key in MONITORING_KEYS},
        "data": None
        if data is None
        else {
            "accepted": len(data["accepted"]),
            "quarantined": len(data["quarantined"]),
            "quarantine_reasons": [
                reason for batch in data["quarantined"] for reason in batch.get("reasons") or []
            ],
        },
        "training": None
        if training is None
        else {key: training.get(key) for key in ("job_name", "status", "duration_seconds")},
        "accuracy": (decision.get("candidate") or {}).get("accuracy"),
        "champion_accuracy": (decision.get("champion") or {}).get("accuracy"),
        # The gate's threshold as the run was asked for it (its params), else as the gate recorded it.
        "min_accuracy": _float((run.get("params") or {}).get("min_accuracy", gate.get("min_accuracy"))),
        "evaluation_uri": decision.get("evaluation_uri"),
        "report_uri": decision.get("report_uri"),
        "gate": None if not gate else {"approved": approved, "reasons": reasons},
        "model_package": None
        if not package.get("arn")
        else {
            "arn": package["arn"],
            "status": package_status(sm, package["arn"]),
            "status_at_run": package.get("status"),
        },
        "lambda_version": deployment.get("lambda_version"),
        "alias_before": deployment.get("alias_before"),
        "alias_after": deployment.get("alias_after"),
        "outcome": result["outcome"],
        "error": result.get("error"),
        "alert": record.get("alert"),
    }


def _float(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def run_rows(
    s3, sm, config: PipelineConfig, *, airflow_url: str = "", limit: int | None = DEFAULT_LIMIT
) -> list[dict]:
    """The latest ``limit`` runs, newest first, each joined with its package's current status."""
    summaries = audit.list_audits(s3, config, limit=limit)
    return [
        run_row(audit.read_audit(s3, config, summary["run_id"]), sm, airflow_url) for summary in summaries
    ]


# --- what the page draws besides the table -------------------------------------------------------

# An evaluation.json is a few kilobytes; a reader refuses more rather than load anything at all.
MAX_EVALUATION_BYTES = 4 << 20
EVALUATION_FILES = {"report.md": "report_uri", "evaluation.json": "evaluation_uri"}


class EvaluationNotFound(LookupError):
    """The run, its evaluation or the file asked for does not exist (the page answers 404)."""


def _label(row: Mapping) -> str:
    return (row["date"] or row["run_id"])[:16].replace("T", " ")


def chart_data(rows: Sequence[Mapping]) -> dict:
    """What the page's charts draw, oldest run first (the rows come newest first).

    ``accuracy``: the runs that were evaluated, with the candidate's and the champion's holdout
    accuracy (None without a champion) and the gate's ``min_accuracy``; ``drift``: the runs whose
    live traffic was scored, with the drift score and whether it counted as drift.
    """
    ordered = list(reversed(rows))
    evaluated = [row for row in ordered if row["accuracy"] is not None]
    scored = [row for row in ordered if (row.get("monitoring") or {}).get("drift_score") is not None]
    return {
        "accuracy": {
            "runs": [row["run_id"] for row in evaluated],
            "labels": [_label(row) for row in evaluated],
            "candidate": [row["accuracy"] for row in evaluated],
            "champion": [row["champion_accuracy"] for row in evaluated],
            "min_accuracy": [row.get("min_accuracy") for row in evaluated],
        },
        "drift": {
            "runs": [row["run_id"] for row in scored],
            "labels": [_label(row) for row in scored],
            "score": [row["monitoring"]["drift_score"] for row in scored],
            "drift": [bool(row["monitoring"].get("drift")) for row in scored],
        },
    }


def _key_in_bucket(config: PipelineConfig, uri: str) -> str:
    """The key of an ``s3://`` URI in the pipeline's bucket (the page reads nothing else)."""
    bucket, key = s3io.split_s3_uri(uri)
    if bucket != config.bucket:
        raise ValueError(f"{uri} is not in the pipeline's bucket {config.bucket}")
    return key


def evaluation_summaries(s3, config: PipelineConfig, rows: Sequence[Mapping]) -> dict[str, dict]:
    """Run id → its candidate's ``confusion_matrix``, ``per_class_accuracy`` and ``examples``,
    read from the run's ``evaluation.json``; ``{"error": ...}`` for one that cannot be read, so
    one bad file costs its own matrix, not the page."""
    summaries = {}
    for row in rows:
        if not row.get("evaluation_uri"):
            continue
        try:
            key = _key_in_bucket(config, row["evaluation_uri"])
            candidate = json.loads(s3io.get_bytes(s3, config.bucket, key, max_bytes=MAX_EVALUATION_BYTES))[
                "candidate"
            ]
            summaries[row["run_id"]] = {
                "confusion_matrix": candidate["confusion_matrix"],
                "per_class_accuracy": candidate.get("per_class_accuracy"),
                "examples": candidate.get("examples"),
            }
        except (OSError, ValueError, KeyError, TypeError, ClientError) as error:
            summaries[row["run_id"]] = {"error": f"{row['evaluation_uri']}: {error}"}
    return summaries


def evaluation_file(s3, config: PipelineConfig, run_id: str, name: str) -> bytes:
    """The run's ``report.md`` or ``evaluation.json``, where its audit record says they are.

    :raise EvaluationNotFound: no such run, file name, evaluation or object.
    """
    if name not in EVALUATION_FILES:
        raise EvaluationNotFound(f"no evaluation file {name!r}: there are {', '.join(EVALUATION_FILES)}")
    try:
        record = audit.read_audit(s3, config, run_id)
    except FileNotFoundError as error:
        raise EvaluationNotFound(f"no audit record for run {run_id!r}") from error
    uri = (record.get("decision") or {}).get(EVALUATION_FILES[name])
    if not uri:
        raise EvaluationNotFound(f"run {run_id!r} has no {name}: its evaluate step did not run")
    try:
        return s3io.get_bytes(s3, config.bucket, _key_in_bucket(config, uri), max_bytes=MAX_EVALUATION_BYTES)
    except (FileNotFoundError, ValueError) as error:
        raise EvaluationNotFound(f"run {run_id!r}: {error}") from error


# --- the text both views show ---------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _alias(state: Mapping | None) -> str:
    if not state or not state.get("exists"):
        return "-"
    canary = ", ".join(f"v{version} {weight:.0%}" for version, weight in (state.get("weights") or {}).items())
    return f"v{state['version']}" + (f" (+{canary})" if canary else "")


def _alias_move(before: Mapping | None, after: Mapping | None) -> str:
    if before is None and after is None:
        return "-"  # the run never touched the alias
    return f"{_alias(before)} -> {_alias(after)}"


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return ""
    minutes, seconds = divmod(int(seconds), 60)
    return f" ({minutes}m{seconds:02d}s)" if minutes else f" ({seconds}s)"


def _training(training: Mapping | None) -> str:
    if training is None:
        return "-"
    return f"{training['job_name']} {training['status']}{_duration(training['duration_seconds'])}"


def _accuracy(row: Mapping) -> str:
    if row["accuracy"] is None:
        return "-"
    return f"{_number(row['accuracy'])} vs {_number(row['champion_accuracy'])}"


def _package(package: Mapping | None) -> str:
    if package is None:
        return "-"
    if package["status"] != package["status_at_run"]:
        return f"{package['status']} (was {package['status_at_run']})"
    return package["status"]


def _trigger(row: Mapping) -> str:
    """``manual by alice``, ``asset (2 keys)``, ``schedule by scheduler, drift``."""
    trigger, started = row["trigger"], row.get("started_by") or {}
    kind = started.get("kind") or trigger.get("type") or "?"
    text = f"{kind} by {trigger['by']}" if trigger.get("by") else kind
    if keys := started.get("object_keys"):
        text += f" ({len(keys)} key{'' if len(keys) == 1 else 's'})"
    if started.get("drift_triggered"):
        text += ", drift"
    return text


def _drift(monitoring: Mapping | None) -> str:
    """The live-traffic check: ``ok 0.081``, ``drift 0.412, 2 features``, ``no traffic``..."""
    if monitoring is None:
        return "-"
    status, score = monitoring.get("status"), monitoring.get("drift_score")
    if status == "too_few_samples":
        return f"too few samples ({monitoring.get('samples')})"
    if status == "no_traffic":
        return "no traffic"
    text = (status or "?") + ("" if score is None else f" {score:.3f}")
    if features := monitoring.get("drifted_features"):
        text += f", {len(features)} feature{'' if len(features) == 1 else 's'}"
    return text


def _alert(alert: Mapping | None) -> str:
    if alert is None:
        return "-"
    if not alert.get("wanted"):
        return "none"
    if alert.get("sent"):
        return "sent"
    return "failed" if alert.get("error") else "not sent"


def cells(row: Mapping) -> dict[str, str]:
    """The row as the columns of both tables show it, column title → text."""
    data, gate = row["data"], row["gate"]
    return {
        "Date": (row["date"] or "-")[:16].replace("T", " "),
        "Run": row["run_id"],
        "Trigger": _trigger(row),
        "Drift": _drift(row.get("monitoring")),
        "Data": "-" if data is None else f"{data['accepted']} accepted, {data['quarantined']} quarantined",
        "Training": _training(row["training"]),
        "Accuracy": _accuracy(row),
        "Gate": "-" if gate is None else ("approved" if gate["approved"] else "rejected"),
        "Package": _package(row["model_package"]),
        "Lambda": "-" if row["lambda_version"] is None else f"v{row['lambda_version']}",
        "Alias": _alias_move(row["alias_before"], row["alias_after"]),
        "Alert": _alert(row.get("alert")),
        "Outcome": row["outcome"],
    }


def _value(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _traffic(monitoring: Mapping) -> str | None:
    """``traffic: 1200 samples, prediction shift 0.04, low confidence 3.1%`` (what was measured)."""
    shift, low = monitoring.get("prediction_shift"), monitoring.get("low_confidence_share")
    parts = [
        None if monitoring.get("samples") is None else f"{monitoring['samples']} samples",
        None if shift is None else f"prediction shift {_value(shift)}",
        None if low is None else f"low confidence {low:.1%}",
    ]
    parts = [part for part in parts if part]
    return "traffic: " + ", ".join(parts) if parts else None


def notes(row: Mapping) -> dict[str, list[str]]:
    """The lines under a row, by the column they explain (the HTML page puts them in that cell):
    the keys that started it, what drifted, why batches were quarantined, why the gate decided,
    the alert, what went wrong."""
    started, monitoring, alert = row.get("started_by") or {}, row.get("monitoring"), row.get("alert")
    lines: dict[str, list[str]] = {}
    if keys := started.get("object_keys"):
        lines["Trigger"] = [f"key: {key}" for key in keys]
    if monitoring:
        drift = [
            f"drifted: {feature.get('feature')} {_value(feature.get('observed'))} vs expected "
            f"{_value(feature.get('expected'))} (threshold {_value(feature.get('threshold'))})"
            for feature in monitoring.get("drifted_features") or []
        ]
        if traffic := _traffic(monitoring):
            drift.append(traffic)
        lines["Drift"] = drift
    lines["Data"] = [
        f"quarantined: {reason}" for reason in (row["data"] or {}).get("quarantine_reasons") or []
    ]
    lines["Gate"] = list((row["gate"] or {}).get("reasons") or [])
    if alert and alert.get("wanted"):
        lines["Alert"] = [f"alert: {alert.get('reason') or 'no reason given'}"]
        if alert.get("error"):
            lines["Alert"].append(f"alert not sent: {alert['error']}")
    if row["error"]:
        lines["Outcome"] = [f"error: {row['error']}"]
    return {column: column_lines for column, column_lines in lines.items() if column_lines}


def details(row: Mapping) -> list[str]:
    """All of :func:`notes`, in the order of the columns."""
    by_column = notes(row)
    return [line for column in cells(row) for line in by_column.get(column, [])]


def text_table(rows: Sequence[Mapping]) -> str:
    """A terminal table: one line per run, then its notes and its Airflow link, indented."""
    if not rows:
        return "No audited runs yet."
    table = [cells(row) for row in rows]
    titles = list(table[0])
    widths = {title: max(len(title), *(len(line[title]) for line in table)) for title in titles}
    lines = ["  ".join(title.ljust(widths[title]) for title in titles).rstrip()]
    for row, line in zip(rows, table, strict=True):
        lines.append("  ".join(line[title].ljust(widths[title]) for title in titles).rstrip())
        lines += [f"    {detail}" for detail in details(row)]
        lines.append(f"    {row['run_url']}")
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------------


def aws_clients(conn_id: str = AWS_CONN_ID) -> tuple:
    """S3 and SageMaker clients through the Airflow connection, as the DAG's tasks get theirs."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    return S3Hook(aws_conn_id=conn_id).conn, SageMakerHook(aws_conn_id=conn_id).conn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_pipeline.audit_view",
        description=f"The audit of past {DAG_ID} runs: outcome, data, training, gate, deployment.",
    )
    parser.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help="the latest N runs (default %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument(
        "--airflow-url",
        default=default_airflow_url(),
        help="the api-server's base URL, for the run links (default: AIRFLOW__API__BASE_URL or the "
        "local api-server on AIRFLOW_PORT: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")

    from mnist_pipeline.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as error:
        print(error, file=sys.stderr)
        print(DEMO_HINT, file=sys.stderr)
        return 2
    try:
        # Airflow logs to stdout (the connection's "credentials retrieved" lines); the rows are
        # the only thing printed there, so that --json output can be piped.
        with contextlib.redirect_stdout(sys.stderr):
            s3, sm = aws_clients()
            rows = run_rows(s3, sm, config, airflow_url=args.airflow_url, limit=args.limit)
    except (BotoCoreError, ClientError) as error:
        print(
            f"could not read {config.s3_uri(config.audit_prefix)} or the registry: {error}", file=sys.stderr
        )
        return 1
    print(json.dumps(rows, indent=2) if args.json else text_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
