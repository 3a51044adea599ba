"""The run history, as the audit CLI and the Airflow UI plugin show it: one row per DAG run.

Both views call :func:`run_rows`: the audit records (``audit/<run>.json``, newest first, through
:func:`mnist_pipeline.audit.list_audits` and :func:`~mnist_pipeline.audit.read_audit`) joined with
the model registry, because a package's status can change after its run's record was written
(a later rollback or a person rejects it). :func:`cells` turns a row into the text both views
print, so the terminal table and the HTML table cannot disagree.

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

from mnist_pipeline import audit
from mnist_pipeline.config import PipelineConfig

DAG_ID = "mnist_retraining"
AWS_CONN_ID = "aws_default"
DEFAULT_LIMIT = 30
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
    }


def run_rows(
    s3, sm, config: PipelineConfig, *, airflow_url: str = "", limit: int | None = DEFAULT_LIMIT
) -> list[dict]:
    """The latest ``limit`` runs, newest first, each joined with its package's current status."""
    summaries = audit.list_audits(s3, config, limit=limit)
    return [
        run_row(audit.read_audit(s3, config, summary["run_id"]), sm, airflow_url) for summary in summaries
    ]


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


def cells(row: Mapping) -> dict[str, str]:
    """The row as the columns of both tables show it, column title → text."""
    trigger, data, gate = row["trigger"], row["data"], row["gate"]
    return {
        "Date": (row["date"] or "-")[:16].replace("T", " "),
        "Run": row["run_id"],
        "Trigger": f"{trigger.get('type') or '?'} by {trigger.get('by') or '?'}",
        "Data": "-" if data is None else f"{data['accepted']} accepted, {data['quarantined']} quarantined",
        "Training": _training(row["training"]),
        "Accuracy": _accuracy(row),
        "Gate": "-" if gate is None else ("approved" if gate["approved"] else "rejected"),
        "Package": _package(row["model_package"]),
        "Lambda": "-" if row["lambda_version"] is None else f"v{row['lambda_version']}",
        "Alias": _alias_move(row["alias_before"], row["alias_after"]),
        "Outcome": row["outcome"],
    }


def details(row: Mapping) -> list[str]:
    """The lines under a row: why the gate decided, what went wrong, why batches were quarantined."""
    lines = list((row["gate"] or {}).get("reasons") or [])
    lines += [f"quarantined: {reason}" for reason in (row["data"] or {}).get("quarantine_reasons") or []]
    if row["error"]:
        lines.append(f"error: {row['error']}")
    return lines


def text_table(rows: Sequence[Mapping]) -> str:
    """A terminal table: one line per run, then its reasons and its Airflow link, indented."""
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
