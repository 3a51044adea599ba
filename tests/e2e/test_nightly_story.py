"""End to end: the mnist_retraining DAG run by ``dag.test()`` against an in-process localcloud.

One story, in order, on one localcloud (each run builds on what the previous ones left, as nightly
runs do): a first deployment; a night with nothing new; new data, one bad batch, promoted through
a canary; the same run cleared and run again; a regression; a dry run; a broken version caught by
the smoke test; a training job that fails. Each step checks what a person would: where the alias ``live``
points, the model packages' statuses, and the run's audit record.

The story cannot be half-run: every test of this module asks the ``story`` fixture for the outcome
of its chapter, and the fixture runs every chapter, in order, once per session. So ``-k regression``
still runs the nights before it (and after), and reports only on the regression.

Training is real (SageMaker's toolkit running ``model_code/train.py``) but tiny: one epoch on a
couple of thousand images, so a run takes seconds. Lambda versions run the real handler.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os

import numpy as np
import pytest

from devtools.airflow_env import host_aws_variables
from devtools.bootstrap import bootstrap
from devtools.lake import LakePlan, seed_lake
from devtools.mnist import Mnist
from mnist_pipeline.audit import read_audit
from mnist_pipeline.config import PipelineConfig
from model_code.shards import shard_bytes
from tests.fixtures.localcloud import LocalCloudHandle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ACCOUNT = "000000000000"
SAGEMAKER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/mnist-sagemaker"
LAMBDA_ROLE = f"arn:aws:iam::{ACCOUNT}:role/mnist-lambda"
BASE, BATCH, HOLDOUT = 4000, 1000, 1000
# Quick-mode training, and bars a one-epoch model on a few thousand images clears.
QUICK = {
    "epochs": 1,
    "max_train_samples": 2000,
    "min_accuracy": 0.5,
    "max_regression": 0.1,
    "canary_invocations": 5,
}


class Pipeline:
    """The DAG, the cloud it deploys to, and what a test needs to look at both."""

    def __init__(self, dag, cloud: LocalCloudHandle, config: PipelineConfig, mnist: Mnist):
        self.dag, self.cloud, self.config, self.mnist = dag, cloud, config, mnist
        self.s3, self.lambda_, self.sm = cloud.client("s3"), cloud.client("lambda"), cloud.client("sagemaker")
        self.runs = 0
        # dag.test() leaves a run's conf in dag.params; every run starts from the defaults again.
        self.defaults = copy.deepcopy(dag.params).validate()

    def run(self, when: dt.datetime | None = None, **conf):
        """One DAG run; the same ``when`` twice is the same run id, cleared and run again."""
        if when is None:
            self.runs += 1
            when = dt.datetime(2026, 1, self.runs, 2, tzinfo=dt.UTC)
        dag_run = self.dag.test(
            run_after=when, logical_date=when, run_conf={**self.defaults, **QUICK, **conf}
        )
        try:
            return dag_run, read_audit(self.s3, self.config, dag_run.run_id)
        except FileNotFoundError:
            pytest.fail(f"run {dag_run.run_id} wrote no audit record; task states: {self.states(dag_run)}")

    @staticmethod
    def states(dag_run) -> dict[str, str]:
        """Task states of a run, for failure messages."""
        return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}

    def put_batch(self, number: int, images: np.ndarray, labels: np.ndarray) -> str:
        key = f"{self.config.incoming_prefix}batch-{number:04d}.npz"
        self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=shard_bytes(images, labels))
        return key

    def clean_batch(self, number: int) -> str:
        """A batch of real MNIST training images no other batch or the base set holds."""
        start = BASE + number * BATCH
        return self.put_batch(
            number,
            self.mnist.train_images[start : start + BATCH],
            self.mnist.train_labels[start : start + BATCH],
        )

    def alias(self) -> dict | None:
        try:
            alias = self.lambda_.get_alias(
                FunctionName=self.config.lambda_function, Name=self.config.lambda_alias
            )
        except self.lambda_.exceptions.ResourceNotFoundException:
            return None
        return {
            "version": alias["FunctionVersion"],
            "weights": (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {},
        }

    def packages(self) -> dict[str, dict]:
        """The group's packages by the run id in their metadata: status and Lambda version."""
        summaries = self.sm.list_model_packages(ModelPackageGroupName=self.config.model_package_group)
        packages = {}
        for summary in summaries["ModelPackageSummaryList"]:
            package = self.sm.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
            metadata = package.get("CustomerMetadataProperties") or {}
            packages[metadata["run_id"]] = {
                "status": package["ModelApprovalStatus"],
                "lambda_version": metadata.get("lambda_version"),
                "arn": package["ModelPackageArn"],
            }
        return packages

    def training_jobs(self) -> list[str]:
        return sorted(
            job["TrainingJobName"]
            for job in self.sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
        )

    def consumed(self) -> set[str]:
        body = self.s3.get_object(Bucket=self.config.bucket, Key=self.config.consumed_index_key)[
            "Body"
        ].read()
        return set(json.loads(body)["batches"])

    def versions(self) -> list[str]:
        listed = self.lambda_.list_versions_by_function(FunctionName=self.config.lambda_function)["Versions"]
        return [version["Version"] for version in listed if version["Version"] != "$LATEST"]


# The chapters of the story, in the order they run (see ``story``).
CHAPTERS = []


def chapter(night):
    """Adds a night to the story; nights run in the order they are defined."""
    CHAPTERS.append(night)
    return night


@pytest.fixture(scope="module")
def pipeline(airflow_db, mnist, tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    from tests.fixtures.airflow import DAGS_FOLDER

    workdir = tmp_path_factory.mktemp("e2e")
    small = Mnist(
        mnist.train_images, mnist.train_labels, mnist.test_images[:HOLDOUT], mnist.test_labels[:HOLDOUT]
    )
    seed_lake(
        workdir / "lake", small, LakePlan(base_size=BASE, shard_size=BASE // 2, batches=2, batch_size=BATCH)
    )
    cloud = LocalCloudHandle(workdir / "localcloud")
    region = cloud.config.region
    config = PipelineConfig(bucket="mnist-e2e", region=region, sagemaker_role_arn=SAGEMAKER_ROLE)
    bootstrap(
        cloud.client("s3"),
        cloud.client("lambda"),
        cloud.client("sagemaker"),
        config,
        workdir / "lake",
        lambda_role_arn=LAMBDA_ROLE,
    )
    connection = {
        "conn_type": "aws",
        "login": "localcloud",
        "password": "localcloud",
        "extra": {"endpoint_url": cloud.endpoint_url, "region_name": region},
    }
    environment = pytest.MonkeyPatch()
    for name, value in {
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        "MNIST_BUCKET": config.bucket,
        "MNIST_REGION": region,
        "MNIST_SAGEMAKER_ROLE_ARN": SAGEMAKER_ROLE,
        # Recorded on the job, never pulled by localcloud; saves importing the sagemaker SDK per run.
        "MNIST_TRAINING_IMAGE_URI": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-cpu-py312",
        "MNIST_TRAINING_POKE_INTERVAL": "1",  # read when the DAG is parsed
    }.items():
        environment.setenv(name, value)
    for name in host_aws_variables(os.environ):
        environment.delenv(name)
    dag_bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert dag_bag.import_errors == {}
    dag = dag_bag.dags["mnist_retraining"]
    for task in dag.tasks:
        # Keep the retries (a failing check is still retried twice) but not the minutes between them.
        task.retry_delay, task.max_retry_delay = dt.timedelta(seconds=1), dt.timedelta(seconds=2)
    yield Pipeline(dag, cloud, config, mnist)
    environment.undo()
    cloud.stop()


@chapter
def first_run_deploys_version_1_behind_a_new_alias(pipeline):
    assert pipeline.alias() is None

    dag_run, record = pipeline.run()

    assert dag_run.state == "success", pipeline.states(dag_run)
    assert pipeline.alias() == {"version": "1", "weights": {}}, (pipeline.states(dag_run), record["result"])
    assert pipeline.packages()[dag_run.run_id]["status"] == "Approved"
    assert pipeline.packages()[dag_run.run_id]["lambda_version"] == "1"
    assert record["result"]["outcome"] == "deployed"
    assert record["run"]["run_id"] == dag_run.run_id
    assert record["run"]["params"]["epochs"] == 1
    assert record["training"]["status"] == "Completed"
    assert record["decision"]["gate"]["approved"] is True
    assert record["decision"]["champion"] is None
    assert record["deployment"]["lambda_version"] == "1"
    assert record["deployment"]["alias_before"]["exists"] is False
    assert record["deployment"]["alias_after"]["version"] == "1"
    assert set(record["result"]["consumed_batches"]) == {
        "data/incoming/batch-0001.npz",
        "data/incoming/batch-0002.npz",
    }
    assert pipeline.consumed() == set(record["result"]["consumed_batches"])


@chapter
def a_night_without_new_data_trains_nothing(pipeline):
    jobs = pipeline.training_jobs()

    dag_run, record = pipeline.run()

    assert dag_run.state == "success"
    assert record["result"]["outcome"] == "nothing_to_do"
    assert record["data"]["new_batches"] == []
    assert record["training"] is None
    assert pipeline.training_jobs() == jobs
    assert pipeline.alias() == {"version": "1", "weights": {}}


@chapter
def new_data_is_promoted_through_the_canary_and_a_bad_batch_is_quarantined(pipeline):
    good = pipeline.clean_batch(3)
    images = pipeline.mnist.train_images[:BATCH].copy()
    images[:, :, :] = 255  # all-white "digits": the content checks must refuse them
    bad = pipeline.put_batch(4, images, pipeline.mnist.train_labels[:BATCH])

    dag_run, record = pipeline.run(max_train_samples=3000, canary_weight=0.2)

    assert dag_run.state == "success", record["result"]
    assert record["result"]["outcome"] == "deployed"
    assert [batch["key"] for batch in record["data"]["accepted"]] == [good]
    (quarantined,) = record["data"]["quarantined"]
    assert quarantined["key"] == bad and quarantined["reasons"]
    assert pipeline.s3.head_object(Bucket=pipeline.config.bucket, Key=quarantined["quarantine_key"])
    assert pipeline.s3.head_object(Bucket=pipeline.config.bucket, Key=quarantined["report_key"])
    assert pipeline.s3.list_objects_v2(Bucket=pipeline.config.bucket, Prefix=bad)["KeyCount"] == 0
    # Canary first (version 2 beside version 1), then all traffic.
    canary, promotion = record["deployment"]["alias_shifts"]
    assert canary["after"] == {**canary["after"], "version": "1", "weights": {"2": 0.2}}
    assert promotion["after"]["version"] == "2" and promotion["after"]["weights"] == {}
    # At least canary_invocations calls, and as many more as it took version 2 itself to answer 5.
    canary_check = record["deployment"]["canary"]
    assert canary_check["invocations"] >= 5 and canary_check["by_version"]["2"]["invocations"] >= 5
    assert record["decision"]["champion"]["lambda_version"] == "1"
    assert pipeline.alias() == {"version": "2", "weights": {}}
    assert pipeline.packages()[dag_run.run_id] == {
        **pipeline.packages()[dag_run.run_id],
        "status": "Approved",
        "lambda_version": "2",
    }
    assert good in pipeline.consumed() and bad not in pipeline.consumed()


@chapter
def clearing_a_run_resumes_its_training_job_and_deploys_nothing_twice(pipeline):
    jobs, versions, packages = pipeline.training_jobs(), pipeline.versions(), pipeline.packages()
    when = dt.datetime(2026, 1, pipeline.runs, 2, tzinfo=dt.UTC)  # the previous test's run

    # Its batches are consumed now, by this very run: the rerun finds them again and repeats the run.
    dag_run, record = pipeline.run(when, max_train_samples=3000, canary_weight=0.2)

    assert dag_run.state == "success", record["result"]
    assert record["result"]["outcome"] == "deployed"  # its audit keeps telling what the run did
    assert pipeline.training_jobs() == jobs
    assert record["training"]["job_name"] in jobs
    assert pipeline.versions() == versions
    assert pipeline.packages() == packages
    assert pipeline.alias() == {"version": "2", "weights": {}}
    assert record["deployment"]["version_created"] is False


@chapter
def a_regression_is_rejected_and_the_alias_stays(pipeline):
    batch = pipeline.clean_batch(5)

    # A model that barely trained: far below the champion.
    dag_run, record = pipeline.run(max_train_samples=200, learning_rate=0.00001, min_accuracy=0.0)

    assert dag_run.state == "success"  # a rejection is a decision, not a failure
    assert record["result"]["outcome"] == "rejected"
    assert record["decision"]["gate"]["approved"] is False
    assert any("champion" in reason and "<" in reason for reason in record["decision"]["gate"]["reasons"])
    assert pipeline.packages()[dag_run.run_id]["status"] == "Rejected"
    assert record["decision"]["model_package"]["status"] == "Rejected"
    assert record["deployment"] is None
    assert pipeline.alias() == {"version": "2", "weights": {}}
    assert batch not in pipeline.consumed()


@chapter
def a_dry_run_trains_and_evaluates_but_registers_and_deploys_nothing(pipeline):
    versions, packages = pipeline.versions(), pipeline.packages()

    dag_run, record = pipeline.run(dry_run=True, min_accuracy=0.0, max_regression=1.0)

    assert dag_run.state == "success"
    assert record["result"]["outcome"] == "dry_run"
    assert record["training"]["status"] == "Completed"
    assert record["decision"]["gate"]["approved"] is True
    assert record["decision"]["model_package"]["arn"] is None
    assert pipeline.packages() == packages
    assert pipeline.versions() == versions
    assert pipeline.alias() == {"version": "2", "weights": {}}
    assert record["result"]["consumed_batches"] == []


@chapter
def a_version_failing_its_smoke_test_is_rolled_back(pipeline):
    function = pipeline.config.lambda_function
    # Someone points the handler at a function that does not exist: every version published now breaks.
    pipeline.lambda_.update_function_configuration(FunctionName=function, Handler="handler.missing")
    pipeline.lambda_.get_waiter("function_updated_v2").wait(FunctionName=function)
    try:
        # Whatever it scores, the gate lets it through: the smoke test is what must stop it.
        dag_run, record = pipeline.run(max_train_samples=2500, min_accuracy=0.3, max_regression=1.0)
    finally:
        pipeline.lambda_.update_function_configuration(FunctionName=function, Handler="handler.handler")
        pipeline.lambda_.get_waiter("function_updated_v2").wait(FunctionName=function)

    assert dag_run.state == "failed", (pipeline.states(dag_run), record["result"], record["decision"])
    assert record["result"]["outcome"] == "rolled_back"
    assert "deploy.smoke_test" in record["result"]["failed_tasks"]
    assert record["deployment"]["rollback"]["version"] == "2"
    assert pipeline.alias() == {"version": "2", "weights": {}}
    assert pipeline.packages()[dag_run.run_id]["status"] == "Rejected"
    assert pipeline.packages()[dag_run.run_id]["lambda_version"] is None


@chapter
def a_failed_training_job_deploys_nothing(pipeline):
    versions, packages = pipeline.versions(), pipeline.packages()
    corrupt = f"{pipeline.config.holdout_prefix}holdout-corrupt.npz"
    pipeline.s3.put_object(Bucket=pipeline.config.bucket, Key=corrupt, Body=b"not a shard")
    try:
        dag_run, record = pipeline.run()
    finally:
        pipeline.s3.delete_object(Bucket=pipeline.config.bucket, Key=corrupt)

    assert dag_run.state == "failed"
    assert record["result"]["outcome"] == "failed"
    assert record["training"]["status"] == "Failed"
    assert "holdout-corrupt.npz" in record["training"]["failure_reason"]
    assert "holdout-corrupt.npz" in record["result"]["error"]
    assert record["decision"] is None and record["deployment"] is None
    assert pipeline.versions() == versions
    assert pipeline.packages() == packages
    assert pipeline.alias() == {"version": "2", "weights": {}}


@pytest.fixture(scope="module")
def story(pipeline) -> dict[str, BaseException | None]:
    """Runs every chapter in order, whichever chapters were selected; what each one raised."""
    outcomes: dict[str, BaseException | None] = {}
    for night in CHAPTERS:
        try:
            night(pipeline)
        except (Exception, pytest.fail.Exception) as failure:
            outcomes[night.__name__] = failure
        else:
            outcomes[night.__name__] = None
    return outcomes


@pytest.mark.parametrize("night", CHAPTERS, ids=[night.__name__ for night in CHAPTERS])
def test_night(story, night):
    failure = story[night.__name__]
    if failure is not None:
        raise failure
