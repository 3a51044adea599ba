"""Settings come from Airflow Variables, then MNIST_* env; problems are reported all at once."""

import pytest

from mnist_pipeline.config import (
    ConfigError,
    PipelineConfig,
    dag_schedule,
    load_config,
    run_key,
    training_poke_interval,
)

REQUIRED_ENV = {
    "MNIST_BUCKET": "mnist-pipeline-123456789012",
    "MNIST_REGION": "eu-west-1",
    "MNIST_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/mnist-sagemaker",
}


def test_env_alone_gives_a_complete_config_with_the_documented_defaults():
    config = load_config(variables={}, environ=REQUIRED_ENV)
    assert config.bucket == "mnist-pipeline-123456789012"
    assert config.region == "eu-west-1"
    assert config.lambda_alias == "live"
    assert config.schedule == "0 2 * * *"
    assert config.training_image_uri is None
    assert config.incoming_prefix == "data/incoming/"


def test_an_airflow_variable_wins_over_the_environment():
    config = load_config(
        variables={"mnist_bucket": "from-variable", "mnist_instance_type": "ml.g5.xlarge"},
        environ={**REQUIRED_ENV, "MNIST_BUCKET": "from-env"},
    )
    assert config.bucket == "from-variable"
    assert config.instance_type == "ml.g5.xlarge"


def test_every_missing_setting_is_named_with_where_to_set_it():
    with pytest.raises(ConfigError) as error:
        load_config(variables={}, environ={})
    message = str(error.value)
    for variable, env in (
        ("mnist_bucket", "MNIST_BUCKET"),
        ("mnist_region", "MNIST_REGION"),
        ("mnist_sagemaker_role_arn", "MNIST_SAGEMAKER_ROLE_ARN"),
    ):
        assert (
            f"{variable}: missing; set the Airflow Variable '{variable}' or the environment variable {env}"
            in message
        )
    assert "lambda_alias" not in message  # has a default


def test_malformed_values_are_reported_together_with_the_value_seen():
    with pytest.raises(ConfigError) as error:
        load_config(
            variables={"mnist_region": "Ireland", "mnist_incoming_prefix": "/data/incoming"},
            environ={
                **REQUIRED_ENV,
                "MNIST_SAGEMAKER_ROLE_ARN": "mnist-sagemaker",
                "MNIST_SCHEDULE": "nightly",
            },
        )
    message = str(error.value)
    assert "mnist_region: 'Ireland' is not valid (expected e.g. 'eu-west-1')" in message
    assert "mnist_sagemaker_role_arn: 'mnist-sagemaker' is not valid" in message
    assert "mnist_incoming_prefix: '/data/incoming' must be a key prefix" in message
    assert "mnist_schedule: 'nightly' is neither a 5-field cron expression" in message


def test_real_airflow_variables_are_read_through_the_task_sdk(monkeypatch):
    # Airflow resolves AIRFLOW_VAR_* through its environment secrets backend, with no database.
    monkeypatch.setenv("AIRFLOW_VAR_MNIST_BUCKET", "from-airflow")
    monkeypatch.setenv("MNIST_BUCKET", "from-env")
    for name, value in REQUIRED_ENV.items():
        if name != "MNIST_BUCKET":
            monkeypatch.setenv(name, value)
    assert load_config().bucket == "from-airflow"


def test_run_keys_are_key_safe_readable_and_keep_distinct_run_ids_apart():
    assert run_key("manual__plain-id_1") == "manual__plain-id_1"
    scheduled = run_key("scheduled__2025-01-01T02:00:00+00:00")
    assert scheduled.startswith("scheduled__2025-01-01T02-00-00-00-00-")
    assert set(scheduled) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert run_key("a:b") != run_key("a+b")
    assert run_key("a:b") == run_key("a:b")


def test_the_s3_layout_uses_the_configured_prefixes():
    config = PipelineConfig(
        bucket="b-1",
        region="eu-west-1",
        sagemaker_role_arn="arn:aws:iam::1:role/r",
        audit_prefix="records/audit/",
    )
    assert config.audit_key("manual__x") == "records/audit/manual__x.json"
    assert config.snapshot_prefix("manual__x") == "snapshots/manual__x/"
    assert config.s3_uri(config.consumed_index_key) == "s3://b-1/snapshots/consumed.json"


# --- parse-time settings ----------------------------------------------------------------------------


def test_schedule_comes_from_the_environment_at_parse_time():
    assert dag_schedule({}) == "0 2 * * *"
    assert dag_schedule({"MNIST_SCHEDULE": "30 3 * * *"}) == "30 3 * * *"
    assert dag_schedule({"AIRFLOW_VAR_MNIST_SCHEDULE": "@daily", "MNIST_SCHEDULE": "30 3 * * *"}) == "@daily"
    with pytest.raises(ConfigError, match="mnist_schedule.*'every night'"):
        dag_schedule({"MNIST_SCHEDULE": "every night"})


def test_training_poke_interval_is_whole_seconds():
    assert training_poke_interval({}) == 60
    assert training_poke_interval({"MNIST_TRAINING_POKE_INTERVAL": "5"}) == 5
    with pytest.raises(ConfigError, match="MNIST_TRAINING_POKE_INTERVAL.*'0'"):
        training_poke_interval({"MNIST_TRAINING_POKE_INTERVAL": "0"})


# --- defaults for runs nobody fills the form for (MNIST_RUN_DEFAULTS) ------------------------------


def _params():
    from airflow.sdk import Param

    return {
        "epochs": Param(3, type="integer", minimum=1, maximum=50, description="Training epochs."),
        "dry_run": Param(False, type="boolean", description="Never deploy."),
    }


def test_run_defaults_replace_the_params_defaults_and_keep_their_schema():
    from mnist_pipeline.config import with_run_defaults

    params = with_run_defaults(_params(), {"MNIST_RUN_DEFAULTS": '{"epochs": 1}'})
    assert params["epochs"].resolve() == 1 and params["dry_run"].resolve() is False
    assert params["epochs"].description == "Training epochs."
    assert params["epochs"].schema["maximum"] == 50
    assert with_run_defaults(_params(), {})["epochs"].resolve() == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{epochs: 1}", "MNIST_RUN_DEFAULTS: not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"epoch": 1}', "names no Param of this DAG: epoch"),
    ],
)
def test_bad_run_defaults_fail_the_parse_naming_what_is_wrong(value, message):
    from mnist_pipeline.config import ConfigError, with_run_defaults

    with pytest.raises(ConfigError, match=message):
        with_run_defaults(_params(), {"MNIST_RUN_DEFAULTS": value})


def test_a_run_default_its_param_refuses_fails_the_parse_naming_the_param():
    from airflow.sdk.exceptions import ParamValidationError

    from mnist_pipeline.config import with_run_defaults

    with pytest.raises(ParamValidationError, match="epochs|51"):
        with_run_defaults(_params(), {"MNIST_RUN_DEFAULTS": '{"epochs": 51}'})
