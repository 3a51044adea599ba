"""The environment of the demo's Airflow processes."""

from __future__ import annotations

import json

from devtools.airflow_env import airflow_environment
from devtools.layout import BUCKET, REGION
from mnist_pipeline.config import load_config


def test_airflow_environment_points_aws_default_at_localcloud_and_sets_every_required_variable(layout):
    env = airflow_environment(layout, "abc123", {"PATH": "/usr/bin", "AWS_PROFILE": "prod"})

    connection = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert connection["extra"] == {"endpoint_url": layout.localcloud_url, "region_name": REGION}
    assert "AWS_PROFILE" not in env  # a developer's real AWS profile never reaches the tasks
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == str(layout.airflow_port)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW_HOME"] == str(layout.root / ".airflow")
    variables = {
        name.removeprefix("AIRFLOW_VAR_").lower(): value
        for name, value in env.items()
        if name.startswith("AIRFLOW_VAR_")
    }
    config = load_config(variables, environ={})
    assert (config.bucket, config.api_id) == (BUCKET, "abc123")
    # The JWT secret is shared by every Airflow process and survives a restart.
    assert (
        airflow_environment(layout, None, {})["AIRFLOW__API_AUTH__JWT_SECRET"]
        == env["AIRFLOW__API_AUTH__JWT_SECRET"]
    )


def test_airflow_environment_carries_the_events_queue_and_the_alerts_topic(layout):
    url = f"{layout.localcloud_url}/000000000000/mnist-data-events"
    topic = "arn:aws:sns:us-east-1:000000000000:mnist-pipeline-alerts"
    env = airflow_environment(layout, None, {}, events_queue_url=url, alerts_topic_arn=topic)
    assert env["MNIST_EVENTS_QUEUE_URL"] == url
    assert env["AIRFLOW_VAR_MNIST_ALERTS_TOPIC_ARN"] == topic
    assert "MNIST_EVENTS_QUEUE_URL" not in airflow_environment(layout, None, {})


def test_the_training_wait_checks_often_when_deferred_and_far_apart_in_reschedule_mode(layout):
    assert airflow_environment(layout, None, {})["MNIST_TRAINING_POKE_INTERVAL"] == "5"
    rescheduled = airflow_environment(layout, None, {"MNIST_TRAINING_WAIT": "reschedule"})
    assert rescheduled["MNIST_TRAINING_WAIT"] == "reschedule"  # the DAG's parse reads it too
    assert rescheduled["MNIST_TRAINING_POKE_INTERVAL"] == "30"  # apache/airflow#71172
