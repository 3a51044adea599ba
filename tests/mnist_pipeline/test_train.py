"""The training job: derived names, a valid CreateTrainingJob request, a reproducible source tarball,
and an operator that resumes the run's job instead of starting a second one (moto SageMaker)."""

import io
import os
import tarfile

import boto3
import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException
from botocore.exceptions import ParamValidationError
from botocore.validate import validate_parameters

from mnist_pipeline import train
from model_code.metric_definitions import METRIC_DEFINITIONS
from tests.fixtures import run as night
from tests.fixtures.plugin_aws import ACCOUNT, REGION, ROLE_ARN

RUN_ID = "scheduled__2025-01-01T02:00:00+00:00"


def create_training_job_shape():
    client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    return client.meta.service_model.operation_model("CreateTrainingJob").input_shape


def job_config(**overrides):
    arguments = {
        "job_name": train.training_job_name("mnist_retraining", RUN_ID),
        "role_arn": ROLE_ARN,
        "region": REGION,
        "train_manifest_uri": "s3://mnist-pipeline-test/snapshots/run/train.manifest",
        "holdout_uri": "s3://mnist-pipeline-test/data/holdout/",
        "output_uri": "s3://mnist-pipeline-test/training/",
        "source_uri": "s3://mnist-pipeline-test/code/sourcedir-abc.tar.gz",
        "hyperparameters": {"epochs": 3, "lr": 0.003, "batch-size": 128, "augment": False},
        "tags": {"dag_id": "mnist_retraining", "run_id": RUN_ID, "snapshot_sha256": "f" * 64},
    }
    return train.build_training_job_config(**{**arguments, **overrides})


# --- names -----------------------------------------------------------------------------------------


def test_the_job_name_is_derived_from_the_run_and_is_a_valid_sagemaker_name():
    name = train.training_job_name("mnist_retraining", RUN_ID)
    assert name == train.training_job_name("mnist_retraining", RUN_ID)
    assert name.startswith("mnist-retraining-scheduled-2025-01-01T02-00-00-")
    assert train.JOB_NAME_PATTERN.match(name) and len(name) <= 63
    assert train.training_job_name("mnist_retraining", "scheduled__2025-01-02T02:00:00+00:00") != name


def test_long_or_odd_run_ids_still_give_distinct_valid_names_for_every_attempt():
    long_a = "manual__" + "x" * 200 + "a"
    long_b = "manual__" + "x" * 200 + "b"
    names = {
        train.training_job_name("mnist_retraining", run_id, attempt)
        for run_id in (long_a, long_b, "manual__ü ñ!!", "a:b", "a+b")
        for attempt in (1, 2, 12)
    }
    assert len(names) == 15
    for name in names:
        assert train.JOB_NAME_PATTERN.match(name) and len(name) <= 63, name
    first = train.training_job_name("mnist_retraining", long_a)
    assert train.training_job_name("mnist_retraining", long_a, 2) == first + "-a2"


# --- the request -------------------------------------------------------------------------------


def test_the_request_is_valid_for_the_sagemaker_api():
    config = job_config()
    validate_parameters(config, create_training_job_shape())  # raises on any malformed field
    assert config["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.6-cpu-py312"
    )
    assert config["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert "EnableManagedSpotTraining" not in config


def test_sagemaker_restarts_the_job_itself_after_an_internal_failure():
    # A lost host (locally: localcloud killed mid-job) is retried by SageMaker under the same name.
    assert job_config()["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert "RetryStrategy" not in job_config(max_retry_attempts=0)
    with pytest.raises(ValueError, match="max_retry_attempts must be 0..30"):
        job_config(max_retry_attempts=31)


def test_channels_read_exactly_the_snapshot_manifest_and_the_holdout():
    train, test = job_config()["InputDataConfig"]
    assert train["ChannelName"] == "train"
    assert train["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile"
    assert train["DataSource"]["S3DataSource"]["S3Uri"].endswith("/train.manifest")
    assert test["ChannelName"] == "test"
    assert test["DataSource"]["S3DataSource"] == {
        "S3DataType": "S3Prefix",
        "S3Uri": "s3://mnist-pipeline-test/data/holdout/",
        "S3DataDistributionType": "FullyReplicated",
    }


def test_hyperparameters_are_json_strings_and_name_the_script_and_its_source():
    hyperparameters = job_config()["HyperParameters"]
    assert hyperparameters == {
        "epochs": "3",
        "lr": "0.003",
        "batch-size": "128",
        "augment": "false",
        "sagemaker_program": '"train.py"',
        "sagemaker_submit_directory": '"s3://mnist-pipeline-test/code/sourcedir-abc.tar.gz"',
        "sagemaker_region": '"eu-west-1"',
    }
    with pytest.raises(ValueError, match=r"hyperparameters \['sagemaker_program'\] are set by the pipeline"):
        job_config(hyperparameters={"sagemaker_program": "other.py"})


def test_tags_link_the_job_to_its_run_in_a_form_sagemaker_accepts():
    tags = {tag["Key"]: tag["Value"] for tag in job_config(tags={"run_id": "manual__a~b"})["Tags"]}
    assert tags == {"run_id": "manual__a_b"}
    tags = {tag["Key"]: tag["Value"] for tag in job_config()["Tags"]}
    assert tags["run_id"] == RUN_ID


def test_spot_training_adds_checkpoints_and_a_longer_wait():
    config = job_config(use_spot=True, max_runtime_s=1800, instance_type="ml.g5.xlarge")
    validate_parameters(config, create_training_job_shape())
    assert config["EnableManagedSpotTraining"] is True
    assert config["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800, "MaxWaitTimeInSeconds": 3600}
    assert config["CheckpointConfig"]["S3Uri"].startswith(
        "s3://mnist-pipeline-test/training/checkpoints/mnist-"
    )
    assert config["AlgorithmSpecification"]["TrainingImage"].endswith("pytorch-training:2.6-gpu-py312")


def test_bad_settings_are_all_named():
    with pytest.raises(ValueError) as error:
        job_config(
            job_name="bad_name", holdout_uri="data/holdout/", use_spot=True, max_runtime_s=600, max_wait_s=600
        )
    message = str(error.value)
    assert "job_name 'bad_name' is not a valid SageMaker job name" in message
    assert "holdout_uri must be an s3:// URI, got 'data/holdout/'" in message
    assert "max_wait_s (600) must be more than max_runtime_s (600)" in message


def test_an_image_override_is_used_as_is():
    config = job_config(image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/mnist:1")
    assert (
        config["AlgorithmSpecification"]["TrainingImage"]
        == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mnist:1"
    )


def test_the_botocore_validator_would_catch_a_broken_request():
    config = job_config()
    config["ResourceConfig"]["InstanceCount"] = "one"
    with pytest.raises(ParamValidationError):
        validate_parameters(config, create_training_job_shape())


# --- the source tarball --------------------------------------------------------------------------


def make_source(directory):
    (directory / "pkg").mkdir(parents=True)
    (directory / "train.py").write_text("print('train')\n")
    (directory / "pkg" / "net.py").write_text("NET = 1\n")
    (directory / "requirements.txt").write_text("numpy\n")
    return directory


def test_the_tarball_is_reproducible_and_holds_only_source_files(tmp_path):
    first_dir, second_dir = make_source(tmp_path / "a"), make_source(tmp_path / "b")
    (second_dir / "__pycache__").mkdir()
    (second_dir / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\x00")
    (second_dir / ".hidden").write_text("x")
    for path in second_dir.rglob("*"):
        os.utime(path, (2_000_000_000, 2_000_000_000))
    (second_dir / "train.py").chmod(0o700)

    first, first_sha = train.pack_source_dir(first_dir)
    second, second_sha = train.pack_source_dir(second_dir)

    assert (first, first_sha) == (second, second_sha)
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as archive:
        entries = archive.getmembers()
    assert [entry.name for entry in entries] == ["pkg/net.py", "requirements.txt", "train.py"]
    assert {(entry.mode, entry.mtime, entry.uid) for entry in entries} == {(0o644, 0, 0)}


def test_changed_source_changes_the_sha(tmp_path):
    _, before = train.pack_source_dir(make_source(tmp_path / "a"))
    (tmp_path / "a" / "train.py").write_text("print('train v2')\n")
    _, after = train.pack_source_dir(tmp_path / "a")
    assert before != after


def test_a_symlink_in_the_source_is_refused(tmp_path):
    source = make_source(tmp_path / "a")
    (source / "link.py").symlink_to(source / "train.py")
    with pytest.raises(ValueError, match="link.py is a link or not a regular file"):
        train.pack_source_dir(source)


def test_model_code_is_uploaded_once_and_the_training_toolkit_unpacks_it(s3, pipeline_config, tmp_path):
    from sagemaker_training.files import download_and_extract

    first = train.upload_source_dir(s3, pipeline_config)
    again = train.upload_source_dir(s3, pipeline_config)
    assert first["uploaded"] is True and again["uploaded"] is False
    assert again["uri"] == first["uri"] == f"s3://mnist-pipeline-test/code/sourcedir-{first['sha256']}.tar.gz"

    download_and_extract(first["uri"], str(tmp_path / "code"))  # as the toolkit does in the job
    assert (tmp_path / "code" / "train.py").read_bytes() == (train.model_code_dir() / "train.py").read_bytes()
    assert not list((tmp_path / "code").rglob("__pycache__"))


# --- the operator ----------------------------------------------------------------------------------


@pytest.fixture
def job_inputs(s3, pipeline_config):
    """The objects CreateTrainingJob's channels name (the provider checks they exist)."""
    bucket = pipeline_config.bucket
    s3.put_object(Bucket=bucket, Key="snapshots/run/train.manifest", Body=b"[]")
    s3.put_object(Bucket=bucket, Key="data/holdout/holdout-00000.npz", Body=b"x")
    return boto3.client("sagemaker", region_name=REGION)


def training_operator(**kwargs):
    return train.ResumableSageMakerTrainingOperator(
        task_id="train_model",
        config=job_config(),
        wait_for_completion=False,
        print_log=False,
        aws_conn_id=None,
        region_name=REGION,
        **kwargs,
    )


def set_job_status(name, status, reason):
    from moto.sagemaker.models import sagemaker_backends

    job = sagemaker_backends[ACCOUNT][REGION].training_jobs[name]
    job.training_job_status, job.failure_reason = status, reason


def test_a_retried_task_resumes_the_same_job(job_inputs):
    first = training_operator().execute({})
    second = training_operator().execute({})

    name = train.training_job_name("mnist_retraining", RUN_ID)
    assert first["Training"]["TrainingJobName"] == second["Training"]["TrainingJobName"] == name
    assert second["Training"]["TrainingJobStatus"] == "Completed"
    assert [job["TrainingJobName"] for job in job_inputs.list_training_jobs()["TrainingJobSummaries"]] == [
        name
    ]


def test_a_failed_job_is_followed_by_a_new_attempt_never_beside_a_live_one(job_inputs):
    name = train.training_job_name("mnist_retraining", RUN_ID)
    training_operator().execute({})
    set_job_status(name, "Failed", "AlgorithmError: out of memory")

    retried = training_operator().execute({})
    assert retried["Training"]["TrainingJobName"] == name + "-a2"

    set_job_status(name + "-a2", "InProgress", None)
    resumed = training_operator().execute({})
    assert resumed["Training"]["TrainingJobName"] == name + "-a2"
    assert len(job_inputs.list_training_jobs()["TrainingJobSummaries"]) == 2


def test_after_the_last_failed_attempt_the_task_fails_with_every_reason(job_inputs):
    name = train.training_job_name("mnist_retraining", RUN_ID)
    training_operator(max_job_attempts=2).execute({})
    set_job_status(name, "Failed", "AlgorithmError: bad data")
    training_operator(max_job_attempts=2).execute({})
    set_job_status(name + "-a2", "Stopped", "Stopped by user")

    with pytest.raises(AirflowException) as error:
        training_operator(max_job_attempts=2).execute({})
    assert str(error.value) == (
        f"all 2 training job attempts of this run ended without success: {name}: Failed (AlgorithmError: bad data); "
        f"{name}-a2: Stopped (Stopped by user)"
    )
    assert len(job_inputs.list_training_jobs()["TrainingJobSummaries"]) == 2


# --- the run's training job -------------------------------------------------------------------------


def test_hyperparameters_use_the_training_script_names_and_skip_an_unset_sample_size():
    assert train.hyperparameters(night.PARAMS) == {"epochs": 2, "lr": 0.002, "batch-size": 64}
    assert train.hyperparameters({**night.PARAMS, "max_train_samples": 500})["max-train-samples"] == 500


def test_training_job_request_is_named_after_the_run_and_tagged_with_it():
    snapshot = {
        "train_manifest_uri": "s3://mnist-pipeline-test/snapshots/r/train.manifest",
        "sha256": "5" * 64,
    }
    source = {"uri": "s3://mnist-pipeline-test/code/sourcedir-1.tar.gz", "sha256": "1" * 64}
    request = train.training_job_request(
        night.CONFIG,
        dag_id="mnist_retraining",
        run_id=night.RUN_ID,
        snapshot=snapshot,
        source=source,
        params=night.PARAMS,
    )
    again = train.training_job_request(
        night.CONFIG,
        dag_id="mnist_retraining",
        run_id=night.RUN_ID,
        snapshot=snapshot,
        source=source,
        params=night.PARAMS,
    )
    assert request["TrainingJobName"] == again["TrainingJobName"]
    assert request["TrainingJobName"].startswith("mnist-retraining-scheduled-2026-01-01")
    tags = {tag["Key"]: tag["Value"] for tag in request["Tags"]}
    assert tags["snapshot_sha256"] == "5" * 64 and tags["dag_id"] == "mnist_retraining"
    assert request["ResourceConfig"]["InstanceType"] == night.CONFIG.instance_type
    assert request["HyperParameters"]["epochs"] == "2"
    assert "EnableManagedSpotTraining" not in request


def test_training_job_request_takes_instance_type_and_spot_from_the_run():
    snapshot = {"train_manifest_uri": "s3://b/snapshots/r/train.manifest", "sha256": "5" * 64}
    source = {"uri": "s3://b/code/sourcedir-1.tar.gz", "sha256": "1" * 64}
    request = train.training_job_request(
        night.CONFIG,
        dag_id="mnist_retraining",
        run_id=night.RUN_ID,
        snapshot=snapshot,
        source=source,
        params={**night.PARAMS, "instance_type": "ml.g5.xlarge", "use_spot": True},
    )
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"]["S3Uri"] == night.CONFIG.checkpoint_uri(request["TrainingJobName"])


def test_a_job_without_a_model_is_not_evaluated_and_the_error_says_why():
    sm = night.FakeSageMaker({"TrainingJobStatus": "Failed", "FailureReason": "labels must be digits 0..9"})
    with pytest.raises(train.RunFailed, match="job-1 is Failed.*labels must be digits"):
        train.completed_job(sm, "job-1")
    assert issubclass(train.RunFailed, AirflowFailException)  # retrying cannot help
