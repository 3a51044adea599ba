"""The local cloud's bootstrap: stand up what the DAG expects to find, with the boto3 calls a person (or Terraform) would make.

- the bucket, with the data lake from :func:`devtools.lake.seed_lake` under the configured
  prefixes (base, holdout, incoming) and ``data/reference.json`` computed from the base shards;
- the Lambda function, created from ``lambda_package/handler.py`` alone, with no model and no
  alias: the first run that passes the gate publishes version 1 and creates the alias ``live`` on
  it (and a rollback of that first deployment deletes the alias again);
- the SageMaker model package group.

Every step checks what exists first, so bootstrapping twice changes nothing. Against AWS the
same resources come from ``infra/terraform/``; this is for localcloud and for tests.
- for the demo, the HTTP API ``POST /mnist`` in front of the function's alias, localcloud's own
  process, and the nightly batches that ``feed`` delivers one by one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from botocore.exceptions import ClientError

from devtools.layout import (
    API_NAME,
    BUCKET,
    LAMBDA_ROLE,
    REGION,
    ROUTE_KEY,
    SAGEMAKER_ROLE,
    DemoError,
    Layout,
    say,
)
from devtools.processes import running_pid, start_process, wait_for_http
from mnist_pipeline import s3io
from mnist_pipeline.artifacts import source_package_dir
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lambda_zip import HANDLER, deterministic_zip
from model_code.shards import SHARD_SUFFIX, read_shard

log = logging.getLogger(__name__)

LAKE_ROLES = ("base", "holdout", "incoming")
LAMBDA_RUNTIME = "python3.12"
LAMBDA_MEMORY_MB = 1024
LAMBDA_TIMEOUT_S = 30


def lake_prefix(config: PipelineConfig, role: str) -> str:
    """The configured S3 prefix of a lake role (``base``, ``holdout``, ``incoming``)."""
    if role not in LAKE_ROLES:
        raise ValueError(f"lake role must be one of {LAKE_ROLES}, got {role!r}")
    return getattr(config, f"{role}_prefix")


def ensure_bucket(s3, config: PipelineConfig) -> bool:
    """Create the bucket unless it exists; True when created."""
    try:
        s3.head_bucket(Bucket=config.bucket)
        return False
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
    arguments = {"Bucket": config.bucket}
    if config.region != "us-east-1":  # S3 refuses a LocationConstraint of us-east-1
        arguments["CreateBucketConfiguration"] = {"LocationConstraint": config.region}
    s3.create_bucket(**arguments)
    log.info("created bucket %s", config.bucket)
    return True


def upload_lake(
    s3, config: PipelineConfig, lake_dir: str | Path, roles: Iterable[str] = LAKE_ROLES
) -> list[str]:
    """Upload a seeded lake's shards (``<lake_dir>/<role>/*.npz``) under the configured prefixes.

    A shard already in S3 with the same size is left alone. Returns the keys uploaded.
    """
    lake_dir, uploaded = Path(lake_dir), []
    for role in roles:
        paths = sorted((lake_dir / role).glob(f"*{SHARD_SUFFIX}"))
        if not paths:
            raise FileNotFoundError(f"no {SHARD_SUFFIX} shards in {lake_dir / role}; run seed_lake first")
        for path in paths:
            key = lake_prefix(config, role) + path.name
            existing = s3io.head(s3, config.bucket, key)
            if existing is not None and existing["ContentLength"] == path.stat().st_size:
                continue
            s3io.put_bytes(s3, config.bucket, key, path.read_bytes())
            uploaded.append(key)
    log.info("uploaded %d shards from %s", len(uploaded), lake_dir)
    return uploaded


def write_reference(s3, config: PipelineConfig, lake_dir: str | Path) -> str:
    """Compute the data checks' reference statistics from the base shards; put them at reference_key."""
    import numpy as np

    from data_checks.reference import compute_reference  # Great Expectations' side: heavy

    parts = [read_shard(path) for path in sorted((Path(lake_dir) / "base").glob(f"*{SHARD_SUFFIX}"))]
    if not parts:
        raise FileNotFoundError(f"no base shards in {Path(lake_dir) / 'base'} to compute the reference from")
    reference = compute_reference(
        np.concatenate([images for images, _ in parts]), np.concatenate([labels for _, labels in parts])
    )
    return s3io.put_bytes(
        s3, config.bucket, config.reference_key, reference.to_json().encode(), "application/json"
    )


def placeholder_zip() -> bytes:
    """The function's first code: the handler without a model (nothing serves until a run deploys)."""
    return deterministic_zip({"handler.py": source_package_dir("lambda_package") / "handler.py"})


def ensure_lambda_function(
    lambda_conn,
    config: PipelineConfig,
    role_arn: str,
    *,
    memory_mb: int = LAMBDA_MEMORY_MB,
    timeout_s: int = LAMBDA_TIMEOUT_S,
) -> dict:
    """Create the function (handler only, no alias) unless it exists; wait until it is Active."""
    try:
        existing = lambda_conn.get_function_configuration(FunctionName=config.lambda_function)
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
    else:
        return existing
    lambda_conn.create_function(
        FunctionName=config.lambda_function,
        Runtime=LAMBDA_RUNTIME,
        Role=role_arn,
        Handler=HANDLER,
        Code={"ZipFile": placeholder_zip()},
        Description="MNIST digit classifier; versions are published by the mnist_retraining DAG",
        MemorySize=memory_mb,
        Timeout=timeout_s,
    )
    lambda_conn.get_waiter("function_active_v2").wait(
        FunctionName=config.lambda_function, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    log.info("created Lambda function %s", config.lambda_function)
    return lambda_conn.get_function_configuration(FunctionName=config.lambda_function)


def ensure_model_package_group(sm, config: PipelineConfig) -> str:
    """Create the model package group unless it exists; return its ARN."""
    try:
        return sm.describe_model_package_group(ModelPackageGroupName=config.model_package_group)[
            "ModelPackageGroupArn"
        ]
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("ValidationException", "ResourceNotFound"):
            raise
    created = sm.create_model_package_group(
        ModelPackageGroupName=config.model_package_group,
        ModelPackageGroupDescription="MNIST classifiers trained by the mnist_retraining DAG",
    )
    log.info("created model package group %s", config.model_package_group)
    return created["ModelPackageGroupArn"]


def bootstrap(
    s3, lambda_conn, sm, config: PipelineConfig, lake_dir: str | Path, *, lambda_role_arn: str
) -> dict:
    """Everything above, in order. ``lake_dir`` is a directory written by ``seed_lake``.

    :return: ``{"bucket_created", "uploaded", "reference_uri", "function_arn", "package_group_arn"}``.
    """
    bucket_created = ensure_bucket(s3, config)
    uploaded = upload_lake(s3, config, lake_dir)
    reference_uri = write_reference(s3, config, lake_dir)
    function = ensure_lambda_function(lambda_conn, config, lambda_role_arn)
    group_arn = ensure_model_package_group(sm, config)
    return {
        "bucket_created": bucket_created,
        "uploaded": uploaded,
        "reference_uri": reference_uri,
        "function_arn": function["FunctionArn"],
        "package_group_arn": group_arn,
    }


# --- the demo's local cloud: its process, its clients, the HTTP API, the nightly batches ----------


def pipeline_config():
    from mnist_pipeline.config import PipelineConfig

    return PipelineConfig(bucket=BUCKET, region=REGION, sagemaker_role_arn=SAGEMAKER_ROLE)


def client(layout: Layout, service: str):
    from localcloud.app import make_client

    return make_client(layout.localcloud_url, service, REGION)


def prepare_lake(layout: Layout, mnist, plan=None) -> None:
    """Seed the lake once; keep nightly batches 2.. aside so that ``feed`` can deliver them.

    :param plan: a :class:`~devtools.lake.LakePlan`; default: the full-size one.
    """
    from devtools.lake import LakePlan, seed_lake

    if (layout.lake_dir / "lake-manifest.json").exists():
        return
    staging = layout.run_dir / "lake-staging"
    shutil.rmtree(staging, ignore_errors=True)
    seed_lake(staging, mnist, plan or LakePlan())
    layout.pending_dir.mkdir(parents=True, exist_ok=True)
    for batch in sorted((staging / "incoming").glob("batch-*.npz"))[1:]:
        batch.rename(layout.pending_dir / batch.name)
    staging.rename(layout.lake_dir)  # the manifest appears last: an interrupted seed starts over


def ensure_http_api(apigw, function_arn: str, alias: str) -> dict:
    """The quick-created HTTP API ``POST /mnist`` → the function's alias; found by name if it exists.

    The alias need not exist yet: API Gateway resolves it per request, so the endpoint starts
    answering once the first run has created ``live``.
    """
    for api in apigw.get_apis()["Items"]:
        if api["Name"] == API_NAME:
            return api
    return apigw.create_api(
        Name=API_NAME, ProtocolType="HTTP", Target=f"{function_arn}:{alias}", RouteKey=ROUTE_KEY
    )


def bootstrap_demo(layout: Layout) -> dict:
    """Bucket, lake (base, holdout, first nightly batch), reference, function, group, HTTP API."""
    config = pipeline_config()
    result = bootstrap(
        client(layout, "s3"),
        client(layout, "lambda"),
        client(layout, "sagemaker"),
        config,
        layout.lake_dir,
        lambda_role_arn=LAMBDA_ROLE,
    )
    api = ensure_http_api(client(layout, "apigatewayv2"), result["function_arn"], config.lambda_alias)
    sqs = client(layout, "sqs")
    queue_url, queue_arn = ensure_events_queue(sqs)
    ensure_batch_notification(client(layout, "s3"), config, queue_arn)
    topic_arn, inbox_url = ensure_alerts(client(layout, "sns"), sqs)
    return {
        **result,
        "api_id": api["ApiId"],
        "endpoint": api["ApiEndpoint"] + "/mnist",
        "events_queue_url": queue_url,
        "events_queue_arn": queue_arn,
        "alerts_topic_arn": topic_arn,
        "alerts_inbox_url": inbox_url,
    }


def require_localcloud(layout: Layout) -> None:
    if running_pid(layout.run_dir, "localcloud") is None:
        raise DemoError(f"localcloud is not running (no live process in {layout.run_dir}); run `make demo`")


def find_endpoint(layout: Layout) -> str:
    require_localcloud(layout)
    for api in client(layout, "apigatewayv2").get_apis()["Items"]:
        if api["Name"] == API_NAME:
            return api["ApiEndpoint"] + "/mnist"
    raise DemoError(
        f"no HTTP API named {API_NAME!r} in localcloud at {layout.localcloud_url}; run `make demo`"
    )


def feed_next_batch(layout: Layout) -> str:
    """Upload the next nightly batch to the incoming prefix; return its S3 key."""
    require_localcloud(layout)
    pending = sorted(layout.pending_dir.glob("batch-*.npz"))
    if not pending:
        raise DemoError(f"every nightly batch has been fed already (nothing left in {layout.pending_dir})")
    batch, config = pending[0], pipeline_config()
    key = config.incoming_prefix + batch.name
    s3io.put_bytes(client(layout, "s3"), config.bucket, key, batch.read_bytes())
    batch.rename(layout.lake_dir / "incoming" / batch.name)  # bootstrap keeps it there from now on
    return key


def start_localcloud(layout: Layout) -> None:
    if running_pid(layout.run_dir, "localcloud"):
        say(f"localcloud already running at {layout.localcloud_url}")
        return
    env = {**os.environ, "LOCALCLOUD_PORT": str(layout.localcloud_port)}
    argv = [
        sys.executable,
        "-m",
        "localcloud",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(layout.localcloud_port),
        "--data-dir",
        str(layout.localcloud_dir),
    ]
    start_process(layout.run_dir, "localcloud", argv, env, layout.run_dir / "localcloud.log", layout.root)
    wait_for_http(
        f"{layout.localcloud_url}/_localcloud/health",
        30,
        process_alive=lambda: running_pid(layout.run_dir, "localcloud") is not None,
    )
    say(f"localcloud started at {layout.localcloud_url} (data in {layout.localcloud_dir})")


# --- the closed loop: data events (S3 → SQS) and alerts (SNS → a local inbox queue) ---------------

EVENTS_QUEUE = "mnist-data-events"
EVENTS_DLQ = "mnist-data-events-dlq"
EVENTS_MAX_RECEIVE_COUNT = 5
NOTIFICATION_ID = "new-batches"
ALERTS_TOPIC = "mnist-pipeline-alerts"
ALERTS_INBOX = "mnist-alerts-inbox"


def _ensure_queue(sqs, name: str, attributes: dict[str, str]) -> tuple[str, str]:
    """Create the queue unless it exists (CreateQueue with the same attributes is a no-op, but an
    existing queue with other attributes is an error, so look first); return (URL, ARN)."""
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as error:
        if error.response["Error"]["Code"] not in (
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
        ):
            raise
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        log.info("created queue %s", name)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def ensure_events_queue(sqs) -> tuple[str, str]:
    """The data-events queue and its DLQ, as ``infra/terraform/events.tf`` makes them; (URL, ARN)."""
    _, dlq_arn = _ensure_queue(sqs, EVENTS_DLQ, {"MessageRetentionPeriod": "1209600"})
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": EVENTS_MAX_RECEIVE_COUNT})
    return _ensure_queue(
        sqs,
        EVENTS_QUEUE,
        {
            "VisibilityTimeout": "43200",  # as the watcher receives (events.DEFAULT_VISIBILITY_S)
            "MessageRetentionPeriod": "345600",
            "ReceiveMessageWaitTimeSeconds": "20",
            "RedrivePolicy": redrive,
        },
    )


def ensure_batch_notification(s3, config: PipelineConfig, queue_arn: str) -> bool:
    """The bucket's ``new-batches`` notification to the events queue; True when it was put.

    A bucket has one notification configuration: other entries in it are kept, ours is replaced
    only when it differs.
    """
    wanted = {
        "Id": NOTIFICATION_ID,
        "QueueArn": queue_arn,
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {
            "Key": {
                "FilterRules": [
                    {"Name": "Prefix", "Value": config.incoming_prefix},
                    {"Name": "Suffix", "Value": SHARD_SUFFIX},
                ]
            }
        },
    }
    current = s3.get_bucket_notification_configuration(Bucket=config.bucket)
    current.pop("ResponseMetadata", None)
    queues = current.get("QueueConfigurations", [])
    ours = [entry for entry in queues if entry.get("Id") == NOTIFICATION_ID]

    def normal(entry: dict) -> tuple:
        rules = entry.get("Filter", {}).get("Key", {}).get("FilterRules", [])
        return (
            entry.get("QueueArn"),
            tuple(entry.get("Events", [])),
            tuple(sorted((rule["Name"].lower(), rule["Value"]) for rule in rules)),
        )

    if ours and normal(ours[0]) == normal(wanted):
        return False
    current["QueueConfigurations"] = [entry for entry in queues if entry.get("Id") != NOTIFICATION_ID] + [
        wanted
    ]
    s3.put_bucket_notification_configuration(Bucket=config.bucket, NotificationConfiguration=current)
    log.info("bucket %s: new batches under %s notify %s", config.bucket, config.incoming_prefix, queue_arn)
    return True


def ensure_alerts(sns, sqs) -> tuple[str, str]:
    """The alerts topic and the local inbox queue subscribed to it; (topic ARN, inbox URL).

    RawMessageDelivery stays off: SNS's envelope carries the Subject and the Timestamp, which is
    what ``make alerts`` prints beside the message.
    """
    topic_arn = sns.create_topic(Name=ALERTS_TOPIC)["TopicArn"]  # idempotent by name
    inbox_url, inbox_arn = _ensure_queue(sqs, ALERTS_INBOX, {})
    subscribed = [
        subscription
        for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn)
        for subscription in page["Subscriptions"]
        if subscription["Protocol"] == "sqs" and subscription["Endpoint"] == inbox_arn
    ]
    if not subscribed:
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=inbox_arn)
        log.info("subscribed %s to %s", ALERTS_INBOX, topic_arn)
    return topic_arn, inbox_url
