"""Stand up what the DAG expects to find, with the boto3 calls a person (or Terraform) would make.

- the bucket, with the data lake from :func:`mnist_pipeline.dataset.seed_lake` under the configured
  prefixes (base, holdout, incoming) and ``data/reference.json`` computed from the base shards;
- the Lambda function, created from ``lambda_package/handler.py`` alone, with no model and no
  alias: the first run that passes the gate publishes version 1 and creates the alias ``live`` on
  it (and a rollback of that first deployment deletes the alias again);
- the SageMaker model package group.

Every step checks what exists first, so bootstrapping twice changes nothing. Against AWS the
same resources come from ``infra/terraform/``; this is for localcloud and for tests.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterable
from pathlib import Path

from botocore.exceptions import ClientError

from mnist_pipeline import s3io
from mnist_pipeline.artifacts import source_package_dir
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lambda_zip import HANDLER, ZIP_EPOCH
from mnist_pipeline.shards import SHARD_SUFFIX, read_shard

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
    handler = (source_package_dir("lambda_package") / "handler.py").read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        entry = zipfile.ZipInfo("handler.py", date_time=ZIP_EPOCH)
        entry.external_attr = 0o100644 << 16
        archive.writestr(entry, handler)
    return buffer.getvalue()


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
