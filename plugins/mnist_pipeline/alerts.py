"""Alerts: one SNS message per run that needs a person (failed, rolled back, rejected by the gate, or
live traffic drifted), through the amazon provider's ``SnsNotifier``.

Exactly once per run: the audit step decides and sends, then records the result in the audit record's
``alert`` section (``wanted``, ``reason``, ``sent``, ``error``). A retried or cleared audit step finds
the alert its earlier try sent in the record it wrote, and does not send it again
(:func:`alert_once`). The run's final failure (``conclude_run``) sends nothing more. An alert that
cannot be sent (SNS down, no permission) never fails the run: the record says why it was not sent.
If the audit itself fails, its task's failure callback (:func:`on_audit_failure`) alerts instead,
since no record will.

With no topic configured (``mnist_alerts_topic_arn``), alerts are decided and recorded, never sent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from mnist_pipeline.config import PipelineConfig

logger = logging.getLogger(__name__)

AUDIT_PATH = "/mnist-audit/"
SUBJECT_LIMIT = 100  # SNS's limit for email subjects
MESSAGE_LIMIT = 200_000  # well under SNS's 256 KB


def alert_reason(record: Mapping) -> str | None:
    """Why a finished run's audit record wants an alert, or None."""
    result = record.get("result") or {}
    outcome = result.get("outcome")
    reasons = []
    if outcome == "failed":
        failed = ", ".join(result.get("failed_tasks") or []) or "a task"
        reasons.append(f"failed in {failed}: {result.get('error') or 'no error recorded'}")
    elif outcome == "rolled_back":
        reasons.append(f"rolled back: {result.get('error') or 'the canary failed'}")
    elif outcome == "rejected":
        gate = ((record.get("decision") or {}).get("gate")) or {}
        reasons.append(
            "rejected by the gate: " + ("; ".join(gate.get("reasons") or []) or "no reason recorded")
        )
    monitoring = record.get("monitoring") or {}
    if monitoring.get("drift"):
        features = ", ".join(str(f.get("feature")) for f in monitoring.get("drifted_features") or [])
        reasons.append(f"live traffic drifted ({features or 'drift score'} {monitoring.get('drift_score')})")
    return "; ".join(reasons) or None


def audit_url(environ: Mapping[str, str] | None = None) -> str:
    """The audit page under the api-server's public base URL (``AIRFLOW__API__BASE_URL``)."""
    environ = os.environ if environ is None else environ
    base = (environ.get("AIRFLOW__API__BASE_URL") or "http://127.0.0.1:8080").rstrip("/")
    return base + AUDIT_PATH


def message(record: Mapping, reason: str, *, url: str) -> tuple[str, str]:
    """The subject (ASCII, at most 100 characters) and the text of an alert."""
    run_id = (record.get("run") or {}).get("run_id")
    outcome = (record.get("result") or {}).get("outcome")
    subject = f"mnist_retraining {outcome}: {run_id}".encode("ascii", "replace").decode()[:SUBJECT_LIMIT]
    text = "\n".join([f"Run: {run_id}", f"Outcome: {outcome}", f"Reason: {reason}", f"Audit: {url}"])
    return subject, text[:MESSAGE_LIMIT]


def send_alert(record: Mapping, config: PipelineConfig, *, aws_conn_id: str, url: str | None = None) -> dict:
    """Decide, send (when wanted and a topic is set) and return the record's ``alert`` section."""
    reason = alert_reason(record)
    section = {"wanted": reason is not None, "reason": reason, "sent": False, "topic_arn": config.alerts_topic_arn,
               "error": None, "skipped": None}  # fmt: skip
    if reason is None:
        return section
    if not config.alerts_topic_arn:
        return {**section, "skipped": "no alerts topic configured (mnist_alerts_topic_arn)"}
    subject, text = message(record, reason, url=url or audit_url())
    error = publish(config, subject, text, aws_conn_id=aws_conn_id)
    return {**section, "sent": error is None, "error": error}


def publish(config: PipelineConfig, subject: str, text: str, *, aws_conn_id: str) -> str | None:
    """Publish through the provider's ``SnsNotifier``; the error as text, or None once sent."""
    try:
        from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

        SnsNotifier(
            aws_conn_id=aws_conn_id,
            target_arn=config.alerts_topic_arn,
            message=text,
            subject=subject,
            region_name=config.region,
        ).notify({})
    except Exception as error:  # an alert that cannot go out must not fail the run
        logger.warning("alert for %s not sent: %s", config.alerts_topic_arn, error)
        return f"publishing to {config.alerts_topic_arn} failed: {error}"[:500]
    logger.info("alert sent to %s: %s", config.alerts_topic_arn, subject)
    return None


def alert_once(record: Mapping, earlier: Mapping | None, config: PipelineConfig, *, aws_conn_id: str) -> dict:
    """``send_alert``, unless this run's audit record already written (``earlier``: a retried or
    cleared audit step) says the same alert was sent: then that section again, nothing sent."""
    previous = (earlier or {}).get("alert") or {}
    if previous.get("sent") and previous.get("reason") == alert_reason(record):
        return dict(previous)
    return send_alert(record, config, aws_conn_id=aws_conn_id)


def on_audit_failure(context: Mapping) -> None:
    """The audit task's failure callback: no record will say the run needs a person, so say it here
    (a run whose audit cannot be written is a failed run)."""
    from mnist_pipeline.config import load_config

    try:
        config = load_config()
    except Exception as error:
        logger.warning("no alert for the failed audit: settings unreadable: %s", error)
        return
    if not config.alerts_topic_arn:
        return
    run_id = getattr(context.get("dag_run"), "run_id", None) or context.get("run_id")
    record = {
        "run": {"run_id": run_id},
        "result": {"outcome": "failed", "failed_tasks": ["audit.record_audit"],
                   "error": str(context.get("exception") or "the audit record could not be written")},
    }  # fmt: skip
    reason = alert_reason(record)
    subject, text = message(record, reason, url=audit_url())
    publish(config, subject, text, aws_conn_id="aws_default")  # the DAG's AWS_CONN_ID
