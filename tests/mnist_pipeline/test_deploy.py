"""Lambda deployment operators against moto's Lambda control plane (versions, aliases, routing).

moto cannot Invoke without Docker, so the smoke test and canary check get their answers from the
real handler (``lambda_package/handler.py``) run in-process per version, serving ONNX models fitted
on real MNIST (see tests/fixtures/plugin_aws.py). Their run against a real Invoke is left to the
localcloud end-to-end tests.
"""

import hashlib
import io
import json
import zipfile

import boto3
import pytest

from mnist_pipeline import deploy, endpoint, evaluate, live_alias
from mnist_pipeline.artifacts import keep_served_files
from mnist_pipeline.lambda_zip import build_lambda_zip, code_sha256
from mnist_pipeline.rollback import LambdaAliasRollbackOperator
from tests.fixtures.plugin_aws import (
    HANDLER_FILE,
    REGION,
    load_handler,
    model_tar_gz,
    put_shard,
    record_calls,
    serve_lambda_versions,
    write_model_dir,
)

FUNCTION = "mnist-classifier"
ALIAS = "live"


@pytest.fixture
def function(s3, pipeline_config):
    """A function as the infrastructure creates it: placeholder code, version 1, alias live → 1."""
    iam = boto3.client("iam", region_name=REGION)
    role = iam.create_role(RoleName="mnist-lambda", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    placeholder = io.BytesIO()
    with zipfile.ZipFile(placeholder, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return {}\n")
    client = boto3.client("lambda", region_name=REGION)
    client.create_function(
        FunctionName=FUNCTION,
        Runtime="python3.12",
        Role=role,
        Handler="handler.handler",
        Code={"ZipFile": placeholder.getvalue()},
    )
    client.publish_version(FunctionName=FUNCTION)
    client.create_alias(FunctionName=FUNCTION, Name=ALIAS, FunctionVersion="1")
    return client


def keep_model(s3, config, tmp_path, model: bytes, job: str) -> dict:
    """A job's model files kept in S3 as the evaluate step keeps them: its ``model_files``."""
    model_dir = write_model_dir(tmp_path / job, model, job)
    return keep_served_files(s3, config.bucket, f"evaluations/{job}/model/", model_dir)


def upload_zip(s3, config, tmp_path, model: bytes, job: str) -> tuple[str, str]:
    """A job's evaluated model, packaged for Lambda by the pipeline: (zip key, CodeSha256)."""
    files = keep_model(s3, config, tmp_path, model, job)
    package = deploy.upload_lambda_package(s3, config, files, hashlib.sha256(model).hexdigest())
    return package["s3_key"], package["code_sha256"]


def publish_operator(config, key, sha, description=""):
    return deploy.LambdaPublishVersionOperator(
        task_id="publish_lambda_version",
        function_name=FUNCTION,
        s3_bucket=config.bucket,
        s3_key=key,
        code_sha256=sha,
        description=description,
        waiter_delay=0,
        aws_conn_id=None,
        region_name=REGION,
    )


def publish(config, key, sha, description="run r; job j; accuracy 0.9900"):
    operator = publish_operator(config, key, sha, description)
    return operator, operator.execute({})


def operator(cls, **kwargs):
    return cls(task_id=cls.__name__, function_name=FUNCTION, aws_conn_id=None, region_name=REGION, **kwargs)


def alias_now(client):
    return live_alias.alias_state(client.get_alias(FunctionName=FUNCTION, Name=ALIAS))


# --- packaging and publishing --------------------------------------------------------------------------------------


def test_a_model_is_packaged_with_the_handler_and_uploaded_once(
    s3, pipeline_config, tmp_path, centroid_models
):
    files = keep_model(s3, pipeline_config, tmp_path, centroid_models["good"], "job-1")
    evaluated = hashlib.sha256(centroid_models["good"]).hexdigest()

    first = deploy.upload_lambda_package(s3, pipeline_config, files, evaluated)
    again = deploy.upload_lambda_package(s3, pipeline_config, files, evaluated)

    assert (first["uploaded"], again["uploaded"]) == (True, False)
    assert again["s3_key"] == first["s3_key"] and again["code_sha256"] == first["code_sha256"]
    data = s3.get_object(Bucket=pipeline_config.bucket, Key=first["s3_key"])["Body"].read()
    assert first["s3_key"] == f"lambda/{hashlib.sha256(data).hexdigest()}.zip"
    assert code_sha256(data) == first["code_sha256"]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["handler.py", "model.onnx", "model_card.json"]
        assert archive.read("handler.py") == HANDLER_FILE.read_bytes()
        assert archive.read("model.onnx") == centroid_models["good"]


def test_a_runs_model_tar_gz_is_fetched_once_and_the_zip_holds_what_was_evaluated(
    s3, pipeline_config, holdout_uri, tmp_path, centroid_models
):
    model_key = "training/job-1/output/model.tar.gz"
    model_dir = write_model_dir(tmp_path / "job-1", centroid_models["good"], "job-1")
    s3.put_object(Bucket=pipeline_config.bucket, Key=model_key, Body=model_tar_gz(model_dir))
    reads = record_calls(s3, "GetObject")

    evaluation = evaluate.evaluate_run(
        s3,
        pipeline_config,
        run_id="manual__r1",
        training_job="job-1",
        model_uri=pipeline_config.s3_uri(model_key),
        min_accuracy=0.3,
        max_regression=0.002,
        live=None,
    )
    # Replaced after the evaluation: the deployment packages the evaluated files, not this.
    swapped = write_model_dir(tmp_path / "swapped", centroid_models["weak"], "job-1")
    s3.put_object(Bucket=pipeline_config.bucket, Key=model_key, Body=model_tar_gz(swapped))
    package = deploy.upload_lambda_package(
        s3, pipeline_config, evaluation["model_files"], evaluation["model_sha256"]
    )

    assert [read["Key"] for read in reads].count(model_key) == 1
    data = s3.get_object(Bucket=pipeline_config.bucket, Key=package["s3_key"])["Body"].read()
    # The same bytes as a zip of the job's own files: the same model keeps its CodeSha256.
    assert data == build_lambda_zip(HANDLER_FILE, model_dir / "model.onnx", model_dir / "model_card.json")
    assert package["model_sha256"] == hashlib.sha256(centroid_models["good"]).hexdigest()


def test_the_package_is_built_only_from_the_model_the_evaluation_scored(
    s3, pipeline_config, tmp_path, centroid_models
):
    files = keep_model(s3, pipeline_config, tmp_path, centroid_models["good"], "job-1")
    evaluated = hashlib.sha256(centroid_models["good"]).hexdigest()

    built = deploy.upload_lambda_package(s3, pipeline_config, files, evaluated)
    assert built["model_sha256"] == evaluated

    # The kept model.onnx is replaced after the evaluation: the deployment refuses it.
    kept = files["model.onnx"]["key"]
    s3.put_object(Bucket=pipeline_config.bucket, Key=kept, Body=centroid_models["weak"])
    with pytest.raises(
        endpoint.DeploymentCheckFailed, match=f"{kept} has sha256 .* but the evaluation scored {evaluated}"
    ):
        deploy.upload_lambda_package(s3, pipeline_config, files, evaluated)


def test_a_model_card_changed_or_missing_since_the_evaluation_is_refused(
    s3, pipeline_config, tmp_path, centroid_models
):
    files = keep_model(s3, pipeline_config, tmp_path, centroid_models["good"], "job-1")
    evaluated = hashlib.sha256(centroid_models["good"]).hexdigest()

    card = files["model_card.json"]
    s3.put_object(Bucket=pipeline_config.bucket, Key=card["key"], Body=b'{"output": {"name": "other"}}')
    with pytest.raises(endpoint.DeploymentCheckFailed, match=f"but the evaluation kept {card['sha256']}"):
        deploy.upload_lambda_package(s3, pipeline_config, files, evaluated)

    # An artifact without a model card is evaluated, but cannot be packaged.
    without_card = {"model.onnx": files["model.onnx"]}
    with pytest.raises(FileNotFoundError, match="the evaluated model has no model_card.json"):
        deploy.upload_lambda_package(s3, pipeline_config, without_card, evaluated)


def test_publishing_waits_for_the_version_to_be_active(
    function, s3, pipeline_config, tmp_path, centroid_models
):
    key, sha = upload_zip(s3, pipeline_config, tmp_path, centroid_models["good"], "job-1")
    operator_ = publish_operator(pipeline_config, key, sha)
    reads = record_calls(operator_.hook.conn, "GetFunctionConfiguration")
    result = operator_.execute({})
    assert {"FunctionName": FUNCTION, "Qualifier": result["version"]} in reads


def test_new_code_is_deployed_and_published_as_a_new_version(
    function, s3, pipeline_config, tmp_path, centroid_models
):
    key, sha = upload_zip(s3, pipeline_config, tmp_path, centroid_models["good"], "job-1")
    _, result = publish(
        pipeline_config, key, sha, description=deploy.version_description("r1", "job-1", 0.99123)
    )

    assert result["version"] == "2"
    assert result["created"] is True and result["code_updated"] is True
    assert result["code_sha256"] == sha
    version = function.get_function_configuration(FunctionName=FUNCTION, Qualifier="2")
    assert version["CodeSha256"] == sha


def test_publishing_the_same_code_again_yields_the_existing_version(
    function, s3, pipeline_config, tmp_path, centroid_models
):
    key, sha = upload_zip(s3, pipeline_config, tmp_path, centroid_models["good"], "job-1")
    publish(pipeline_config, key, sha)

    retry, result = publish(pipeline_config, key, sha)

    assert result["version"] == "2"
    assert result["created"] is False and result["code_updated"] is False
    versions = [v["Version"] for v in function.list_versions_by_function(FunctionName=FUNCTION)["Versions"]]
    assert versions == ["$LATEST", "1", "2"]


def test_an_update_is_skipped_when_latest_already_has_the_code(
    function, s3, pipeline_config, tmp_path, centroid_models
):
    key, sha = upload_zip(s3, pipeline_config, tmp_path, centroid_models["good"], "job-1")
    function.update_function_code(
        FunctionName=FUNCTION, S3Bucket=pipeline_config.bucket, S3Key=key
    )  # crashed before publishing

    operator_ = publish_operator(pipeline_config, key, sha)
    updates = record_calls(operator_.hook.conn, "UpdateFunctionCode")
    publishes = record_calls(operator_.hook.conn, "PublishVersion")
    result = operator_.execute({})

    assert updates == []
    assert publishes == [{"FunctionName": FUNCTION, "CodeSha256": sha, "Description": ""}]
    assert result["version"] == "2" and result["created"] is True


def test_a_second_model_gets_its_own_version(function, s3, pipeline_config, tmp_path, centroid_models):
    publish(pipeline_config, *upload_zip(s3, pipeline_config, tmp_path, centroid_models["good"], "job-1"))
    _, result = publish(
        pipeline_config, *upload_zip(s3, pipeline_config, tmp_path, centroid_models["weak"], "job-2")
    )
    assert result["version"] == "3" and result["created"] is True


def test_a_zip_that_is_not_the_one_hashed_fails_the_task(
    function, s3, pipeline_config, tmp_path, centroid_models
):
    key, _ = upload_zip(s3, pipeline_config, tmp_path, centroid_models["good"], "job-1")
    _, other_sha = upload_zip(s3, pipeline_config, tmp_path, centroid_models["weak"], "job-2")
    with pytest.raises(Exception, match=r"\$LATEST has CodeSha256 .* not the zip that sha was computed from"):
        publish(pipeline_config, key, other_sha)
    assert [v["Version"] for v in function.list_versions_by_function(FunctionName=FUNCTION)["Versions"]] == [
        "$LATEST",
        "1",
    ]


# --- the alias -----------------------------------------------------------------------------------------


def publish_versions(function, count):
    """Publish ``count`` more versions (2, 3, ...) of the placeholder code."""
    for number in range(count):
        function.update_function_configuration(FunctionName=FUNCTION, Description=f"configuration {number}")
        function.publish_version(FunctionName=FUNCTION)


def test_a_canary_keeps_the_old_version_primary_and_routes_its_weight_to_the_new_one(function):
    publish_versions(function, 1)
    shift = operator(deploy.LambdaAliasShiftOperator, alias=ALIAS, version="2", weight=0.1)
    updates = record_calls(shift.hook.conn, "UpdateAlias")
    revision = function.get_alias(FunctionName=FUNCTION, Name=ALIAS)["RevisionId"]
    result = shift.execute({})

    assert result["before"]["version"] == "1" and result["before"]["weights"] == {}
    assert result["after"]["version"] == "1" and result["after"]["weights"] == {"2": 0.1}
    assert alias_now(function)["weights"] == {"2": 0.1}
    assert updates[0]["RevisionId"] == revision  # a concurrent change would fail, not be overwritten


def test_full_promotion_clears_routing_and_a_retry_moves_nothing(function):
    publish_versions(function, 1)
    operator(deploy.LambdaAliasShiftOperator, alias=ALIAS, version="2", weight=0.1).execute({})
    promote = operator(deploy.LambdaAliasShiftOperator, alias=ALIAS, version="2")
    result = promote.execute({})
    assert (result["after"]["version"], result["after"]["weights"]) == ("2", {})

    retry = operator(deploy.LambdaAliasShiftOperator, alias=ALIAS, version="2")
    updates = record_calls(retry.hook.conn, "UpdateAlias")
    assert retry.execute({})["changed"] is False
    # A canary task cleared after the promotion must not move the alias back either.
    canary_again = operator(deploy.LambdaAliasShiftOperator, alias=ALIAS, version="2", weight=0.1)
    record = record_calls(canary_again.hook.conn, "UpdateAlias")
    assert canary_again.execute({})["changed"] is False
    assert updates == record == []
    assert (alias_now(function)["version"], alias_now(function)["weights"]) == ("2", {})


def test_a_missing_alias_is_created_on_the_version(function):
    function.delete_alias(FunctionName=FUNCTION, Name=ALIAS)
    result = operator(deploy.LambdaAliasShiftOperator, alias=ALIAS, version="1", weight=0.1).execute({})
    assert result["before"]["exists"] is False
    assert alias_now(function)["version"] == "1"


def test_the_alias_must_point_at_a_version_number_with_a_sensible_weight(function):
    with pytest.raises(ValueError, match=r"published version number, not '\$LATEST'"):
        operator(deploy.LambdaAliasShiftOperator, alias=ALIAS, version="$LATEST").execute({})
    with pytest.raises(ValueError, match=r"weight must be in \(0, 1\], got 1.5"):
        operator(deploy.LambdaAliasShiftOperator, alias=ALIAS, version="1", weight=1.5).execute({})


class RunXComs:
    """What a run's earlier tasks returned, as ``ti.xcom_pull`` gives it to a later task."""

    def __init__(self, **results):
        self.results = results

    def xcom_pull(self, task_ids, key="return_value", default=None):
        return self.results.get(task_ids, default)


def start_of_run(function) -> dict:
    """What inspect_live_alias records at the start of a run: the alias's state then."""
    try:
        return {"alias": alias_now(function)}
    except function.exceptions.ResourceNotFoundException:
        return {"alias": live_alias.alias_state(None)}


def shift(version, weight=1.0, **results):
    step = operator(
        deploy.LambdaAliasShiftOperator,
        alias=ALIAS,
        version=version,
        weight=weight,
        previous_steps=["check_live_alias", "deploy.shift_canary"],
    )
    return step.execute({"ti": RunXComs(**results)})


def rollback(start, **results):
    step = operator(
        LambdaAliasRollbackOperator,
        alias=ALIAS,
        start_state=start["alias"],
        left_by=["deploy.shift_canary", "deploy.promote_alias"],
    )
    return step, step.execute({"ti": RunXComs(**results)})


def test_rollback_restores_the_starting_version_and_clears_routing_once(function):
    publish_versions(function, 1)
    start = start_of_run(function)
    canary = shift("2", 0.2, check_live_alias=start)

    step, result = rollback(start, **{"deploy.shift_canary": canary})
    assert result["changed"] is True
    assert (alias_now(function)["version"], alias_now(function)["weights"]) == ("1", {})

    # Cleared and run again: the alias is back where the run started; nothing moves.
    again, result = rollback(start, **{"deploy.shift_canary": canary})
    assert result["changed"] is False
    assert (alias_now(function)["version"], alias_now(function)["weights"]) == ("1", {})


def test_rolling_back_a_first_deployment_removes_the_alias_it_created(function):
    function.delete_alias(FunctionName=FUNCTION, Name=ALIAS)
    start = start_of_run(function)
    created = shift("1", check_live_alias=start)
    _, result = rollback(start, **{"deploy.promote_alias": created})
    assert result["changed"] is True and result["after"]["exists"] is False
    assert function.list_aliases(FunctionName=FUNCTION)["Aliases"] == []


def test_a_hotfix_made_after_the_run_moved_the_alias_is_never_rolled_back(function):
    publish_versions(function, 2)  # versions 2 (this run's) and 3 (a person's hotfix)
    start = start_of_run(function)
    promoted = shift("2", check_live_alias=start)
    function.update_alias(FunctionName=FUNCTION, Name=ALIAS, FunctionVersion="3")  # the hotfix

    with pytest.raises(live_alias.AliasChangedElsewhere) as error:
        rollback(start, **{"deploy.promote_alias": promoted})

    assert alias_now(function)["version"] == "3"  # untouched
    message = str(error.value)
    assert "alias live is at version 3 (revision" in message
    assert f"not at version 2 (revision {promoted['after']['revision_id']}) where this run left it" in message


def test_clearing_an_old_runs_rollback_after_a_newer_deployment_reverts_nothing(function):
    publish_versions(function, 2)
    old_start = start_of_run(function)
    old_promoted = shift("2", check_live_alias=old_start)  # an old run deployed 2
    new_start = start_of_run(function)
    shift("3", check_live_alias=new_start)  # a newer run deployed 3

    with pytest.raises(live_alias.AliasChangedElsewhere):
        rollback(old_start, **{"deploy.promote_alias": old_promoted})  # someone clears the old run's task
    assert (alias_now(function)["version"], alias_now(function)["weights"]) == ("3", {})


def test_a_run_that_never_moved_the_alias_rolls_nothing_back(function):
    publish_versions(function, 1)
    start = start_of_run(function)
    function.update_alias(FunctionName=FUNCTION, Name=ALIAS, FunctionVersion="2")  # someone else's change
    _, result = rollback(start)  # the smoke test failed: no shift ran
    assert result["changed"] is False and alias_now(function)["version"] == "2"


def test_the_canary_shift_refuses_an_alias_changed_since_the_run_started(function):
    publish_versions(function, 2)
    start = start_of_run(function)
    function.update_alias(FunctionName=FUNCTION, Name=ALIAS, FunctionVersion="3")  # a hotfix mid-run

    with pytest.raises(
        live_alias.AliasChangedElsewhere, match="not at version 1 .* where this run last saw it"
    ):
        shift("2", 0.1, check_live_alias=start)
    assert (alias_now(function)["version"], alias_now(function)["weights"]) == ("3", {})


def test_promotion_moves_on_from_the_canary_state_this_run_left(function):
    publish_versions(function, 1)
    start = start_of_run(function)
    canary = shift("2", 0.1, check_live_alias=start)
    promoted = shift("2", **{"check_live_alias": start, "deploy.shift_canary": canary})
    assert (promoted["after"]["version"], promoted["after"]["weights"]) == ("2", {})
    # Promotion straight from a changed canary state is refused.
    publish_versions(function, 1)  # version 3
    start = start_of_run(function)
    canary = shift("3", 0.1, check_live_alias=start)
    function.update_alias(
        FunctionName=FUNCTION, Name=ALIAS, RoutingConfig={"AdditionalVersionWeights": {"3": 0.5}}
    )
    with pytest.raises(live_alias.AliasChangedElsewhere):
        shift("3", **{"check_live_alias": start, "deploy.shift_canary": canary})


# --- smoke test and canary (handler in process) -----------------------------------------------------


@pytest.fixture
def holdout_uri(s3, pipeline_config, mnist):
    key = "data/holdout/holdout-00000.npz"
    put_shard(s3, pipeline_config.bucket, key, mnist.test_images[:1000], mnist.test_labels[:1000])
    return pipeline_config.s3_uri(key)


@pytest.fixture
def handlers(tmp_path, centroid_models):
    good = load_handler(write_model_dir(tmp_path / "good", centroid_models["good"]), "2")
    weak = load_handler(write_model_dir(tmp_path / "weak", centroid_models["weak"]), "3")
    return {"2": good, "3": weak}


def smoke_test(version, holdout_uri, handlers, min_accuracy, **kwargs):
    smoke = operator(
        deploy.MnistEndpointSmokeTestOperator,
        version=version,
        examples_uri=holdout_uri,
        min_accuracy=min_accuracy,
        **{"num_examples": 200, "batch_size": 64, **kwargs},
    )
    calls = serve_lambda_versions(smoke.hook.conn, FUNCTION, handlers)
    return smoke.execute({}), calls


def test_a_good_version_passes_the_smoke_test(function, holdout_uri, handlers, mnist):
    result, calls = smoke_test("2", holdout_uri, handlers, min_accuracy=0.75)
    assert result["examples"] == 200 and result["accuracy"] >= 0.75
    assert 400 <= result["malformed_status"] < 500
    assert {call["qualifier"] for call in calls} == {"2"}  # the version itself, never the alias
    assert [len(call["event"]["inputs"]) for call in calls[:-1]] == [64, 64, 64, 8]


def test_by_default_every_digit_is_sent_and_the_evaluated_accuracy_is_reproduced(
    function, holdout_uri, handlers, mnist, tmp_path, centroid_models
):
    result, calls = smoke_test(
        "2", holdout_uri, handlers, min_accuracy=0.75, num_examples=None, batch_size=200
    )
    evaluated = evaluate.evaluate_onnx(
        write_model_dir(tmp_path / "evaluated", centroid_models["good"]),
        mnist.test_images[:1000],
        mnist.test_labels[:1000],
        latency_samples=1,
    )
    assert result["examples"] == 1000
    assert result["accuracy"] == pytest.approx(evaluated["accuracy"])
    assert len(calls) == 5 + 1  # 1000 digits in batches of 200, then the malformed request


def test_a_version_below_the_accuracy_bar_fails_with_what_it_got_wrong(function, holdout_uri, handlers):
    with pytest.raises(endpoint.DeploymentCheckFailed) as error:
        smoke_test("3", holdout_uri, handlers, min_accuracy=0.75)
    message = str(error.value)
    assert message.startswith("mnist-classifier:3 classified ")
    assert "below min_accuracy 0.75; e.g. #" in message


def test_a_version_that_accepts_malformed_input_fails(function, holdout_uri, handlers):
    lenient = handlers["2"]

    def answers_200_to_everything(event, context):
        if "input" in event:
            return {"statusCode": 200, "headers": {}, "body": json.dumps({"prediction": 0})}
        return lenient(event, context)

    with pytest.raises(endpoint.DeploymentCheckFailed, match="to a malformed request .* it must answer 4xx"):
        smoke_test("2", holdout_uri, {"2": answers_200_to_everything}, min_accuracy=0.75)


def test_the_smoke_test_checks_the_version_serves_the_evaluated_model(
    function, holdout_uri, handlers, centroid_models
):
    good = hashlib.sha256(centroid_models["good"]).hexdigest()
    result, _ = smoke_test("2", holdout_uri, handlers, min_accuracy=0.5, expected_model_sha256=good)
    assert result["model_sha256"] == good
    # Version 3 classifies well enough for a low bar, but it is not the model that was evaluated.
    with pytest.raises(endpoint.DeploymentCheckFailed, match=f"not the evaluated {good}"):
        smoke_test("3", holdout_uri, handlers, min_accuracy=0.1, expected_model_sha256=good)


def test_the_smoke_test_refuses_an_alias(function, holdout_uri, handlers):
    with pytest.raises(ValueError, match="not 'live' \\(an alias or \\$LATEST\\)"):
        smoke_test("live", holdout_uri, handlers, min_accuracy=0.75)


def route_to_canary(function, weight: float) -> None:
    """Versions 2 (live) and 3 (the canary, ``weight`` of the traffic) behind the alias."""
    publish_versions(function, 2)
    function.update_alias(
        FunctionName=FUNCTION,
        Name=ALIAS,
        FunctionVersion="2",
        RoutingConfig={"AdditionalVersionWeights": {"3": weight}},
    )


def canary_check(holdout_uri, version="3", **kwargs):
    return operator(
        deploy.MnistCanaryCheckOperator,
        alias=ALIAS,
        version=version,
        examples_uri=holdout_uri,
        **kwargs,
    )


def test_the_canary_check_counts_calls_per_version_through_the_alias(function, holdout_uri, handlers):
    route_to_canary(function, 0.5)
    canary = canary_check(holdout_uri, invocations=20)
    calls = serve_lambda_versions(canary.hook.conn, FUNCTION, handlers)
    result = canary.execute({})

    assert {call["qualifier"] for call in calls} == {ALIAS}
    assert set(result["by_version"]) == {"2", "3"}
    assert result["invocations"] == sum(counts["invocations"] for counts in result["by_version"].values())
    assert result["invocations"] >= 20 and result["version_invocations"] >= 5


@pytest.mark.slow  # 40 canary checks, each with its own AWS clients: about 17 s
def test_the_canary_passes_only_once_the_new_version_answered_enough_calls(function, holdout_uri, handlers):
    route_to_canary(function, 0.1)
    # With 20 calls at 10%, about one run in eight sent none to the new version and still passed.
    for seed in range(40):
        canary = canary_check(holdout_uri, invocations=20, min_version_calls=5)
        serve_lambda_versions(canary.hook.conn, FUNCTION, handlers, seed=seed)
        result = canary.execute({})
        assert result["by_version"]["3"]["invocations"] >= 5, (seed, result)
        assert result["invocations"] <= 200  # 4 × 5 / 0.1


def test_a_canary_the_new_version_never_answered_fails(function, holdout_uri, handlers):
    route_to_canary(function, 0.01)
    canary = canary_check(holdout_uri, invocations=10, max_invocations=10)
    serve_lambda_versions(canary.hook.conn, FUNCTION, handlers, seed=1)
    with pytest.raises(
        endpoint.DeploymentCheckFailed, match="only 0 of 10 calls .* were executed by version 3"
    ):
        canary.execute({})
    # And an alias that sends the version nothing at all is not a canary.
    function.update_alias(FunctionName=FUNCTION, Name=ALIAS, RoutingConfig={"AdditionalVersionWeights": {}})
    unrouted = canary_check(holdout_uri)
    with pytest.raises(endpoint.DeploymentCheckFailed, match="sends no traffic to version 3"):
        unrouted.execute({})


def test_the_canary_check_fails_when_any_call_fails(function, holdout_uri, handlers):
    def crashes(event, context):
        raise RuntimeError("model file missing")

    canary = canary_check(holdout_uri, version="1", invocations=5)
    serve_lambda_versions(canary.hook.conn, FUNCTION, {"1": crashes})
    with pytest.raises(
        endpoint.DeploymentCheckFailed,
        match="mnist-classifier:live raised an error .*model file missing",
    ):
        canary.execute({})


def test_an_answer_that_is_not_an_api_gateway_response_is_named():
    with pytest.raises(
        endpoint.DeploymentCheckFailed, match="fn:2 answered b'\"ok\"', not an API Gateway-style"
    ):
        endpoint.parse_handler_response(b'"ok"', "fn:2")


class FormattingLog:
    """Formats every call like Airflow's task logger does (``message % args``), so a bad
    placeholder fails here as it fails under the real task runner; dag.test() swallows it."""

    def __getattr__(self, level):
        return lambda message, *args, **kwargs: message % args if args else message


def test_the_canary_check_takes_its_rendered_template_values(function, holdout_uri, handlers):
    # The DAG passes invocations="{{ params.canary_invocations }}", which renders to a string.
    canary = canary_check(holdout_uri, version="2", invocations="4", min_version_calls="3")
    canary._cached_logger = FormattingLog()
    publish_versions(function, 1)  # version 2, the good model
    function.update_alias(FunctionName=FUNCTION, Name=ALIAS, FunctionVersion="2")
    serve_lambda_versions(canary.hook.conn, FUNCTION, handlers)
    result = canary.execute({})
    assert result["invocations"] == 4
    assert sum(counts["invocations"] for counts in result["by_version"].values()) == 4


def test_the_smoke_test_takes_its_rendered_template_values(function, holdout_uri, handlers):
    smoke = operator(
        deploy.MnistEndpointSmokeTestOperator,
        version="2",
        examples_uri=holdout_uri,
        num_examples="50",
        min_accuracy="0.5",
    )
    smoke._cached_logger = FormattingLog()
    serve_lambda_versions(smoke.hook.conn, FUNCTION, handlers)
    assert smoke.execute({})["examples"] == 50


# --- the rollout ------------------------------------------------------------------------------------


def test_rollout_starts_with_the_canary_only_when_it_gets_traffic():
    route = {"canary_task": "deploy.shift_canary", "promote_task": "deploy.promote_alias"}
    assert deploy.rollout_start(0.1, **route) == "deploy.shift_canary"
    assert deploy.rollout_start(0, **route) == "deploy.promote_alias"
