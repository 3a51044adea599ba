"""infra/terraform: formatted and valid (offline, when terraform is installed), least privilege,
and the Airflow workers' policy in step with the AWS calls the DAG makes."""

import ast
import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import botocore.session
import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = ROOT / "infra" / "terraform"
PLUGIN_MIRROR_CANDIDATES = [
    os.environ.get("TF_PLUGIN_DIR", ""),
    "/opt/tf-plugins",
    "/usr/share/terraform/plugins",
]

# plugins/ modules that set up local state (`make demo`); on AWS, Terraform does their part.
SETUP_MODULES = {"bootstrap.py", "demo.py", "dataset.py"}

# Calls the amazon provider's operators make for the DAG (not visible in plugins/):
# SageMakerTrainingOperator → create_training_job after checking the S3 inputs exist;
# SageMakerRegisterModelVersionOperator → create_model_package_group (every run, "exists" is fine),
# create_model_package, and delete_model_package_group when it created the group and then failed.
PROVIDER_CALLS = {
    "s3": {"head_bucket", "head_object", "list_objects_v2"},
    "sagemaker": {
        "create_training_job",
        "create_model_package_group",
        "create_model_package",
        "delete_model_package_group",
    },
}

# Provider classes that make AWS calls of their own when plugins/ or dags/ import them: the SNS
# notifier and hook publish (to the alerts topic).
PROVIDER_CLASS_CALLS = {
    "SnsNotifier": {("sns", "publish")},
    "send_sns_notification": {("sns", "publish")},
    "SnsHook": {("sns", "publish")},
}

# Permissions a call needs beyond its own name. SQS and SNS batch calls have no IAM action of their
# own: each is authorized as its single-message action.
IMPLIED_ACTIONS = {
    "s3:HeadObject": {"s3:GetObject"},
    "s3:HeadBucket": {"s3:ListBucket"},
    "s3:ListObjectsV2": {"s3:ListBucket"},
    "s3:CopyObject": {"s3:GetObject", "s3:PutObject"},
    "lambda:Invoke": {"lambda:InvokeFunction"},
    "sagemaker:CreateTrainingJob": {"sagemaker:CreateTrainingJob", "sagemaker:AddTags", "iam:PassRole"},
    "sqs:DeleteMessageBatch": {"sqs:DeleteMessage"},
    "sqs:ChangeMessageVisibilityBatch": {"sqs:ChangeMessageVisibility"},
    "sqs:SendMessageBatch": {"sqs:SendMessage"},
    "sns:PublishBatch": {"sns:Publish"},
}

SERVICES = ("s3", "sagemaker", "lambda", "sqs", "logs", "sns")
# A client's variable name says its service; conn, hook and client (the provider's and the async
# triggers' spelling) are resolved by the operation's name, which must then belong to one service.
CLIENT_CALL = re.compile(r"\b(s3|sm|sqs|logs|sns|conn|hook|client)\.([a-z][a-z0-9_]*)\(")
RECEIVER_SERVICES = {"s3": "s3", "sm": "sagemaker", "sqs": "sqs", "logs": "logs", "sns": "sns"}
PAGINATOR_OR_WAITER = re.compile(r"\bget_(paginator|waiter)\(\s*\"([a-z0-9_]+)\"")
# boto3/provider helpers, not calls (get_async_conn: the aiobotocore client of a trigger's hook).
NON_API_METHODS = {"get_paginator", "get_waiter", "check_status", "get_async_conn"}
# The pipeline's own hook methods (``self.hook.publish_code(...)``): the AWS calls are inside them.
HOOK_METHODS = {
    name
    for hook in ("lambda_hook.py", "sagemaker_hook.py")
    for name in re.findall(
        r"^    def ([a-z][a-z0-9_]*)\(", (ROOT / "plugins/mnist_pipeline" / hook).read_text(), re.M
    )
}


def find_plugin_mirror() -> Path | None:
    for candidate in PLUGIN_MIRROR_CANDIDATES:
        if candidate and (Path(candidate) / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            return Path(candidate)
    return None


def terraform(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_CLI_CONFIG_FILE": os.devnull, "CHECKPOINT_DISABLE": "1"}
    return subprocess.run(
        ["terraform", *args, "-no-color"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def tf_files() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(TERRAFORM_DIR.glob("*.tf"))}


def iam_actions(hcl: str) -> list[str]:
    """Every string in an ``actions = [...]`` list."""
    actions = []
    for block in re.findall(r"\bactions\s*=\s*\[(.*?)\]", hcl, flags=re.S):
        actions += re.findall(r'"([^"]*)"', block)
    return actions


def operation_names() -> dict[str, dict[str, str]]:
    """Per service: boto3 method name → API operation name, from botocore's own models."""
    session = botocore.session.get_session()
    names = {}
    for service in SERVICES:
        model = session.get_service_model(service)
        names[service] = {botocore.xform_name(op): op for op in model.operation_names}
    return names


def calls_in_plugins() -> set[tuple[str, str]]:
    """(service, API operation) for each boto3 call in plugins/mnist_pipeline (setup modules aside),
    and for the provider classes that call AWS themselves, wherever the DAG or plugins use them."""
    operations = operation_names()
    lambda_waiters = botocore.session.get_session().get_waiter_model("lambda")
    calls = set()
    for path in sorted((ROOT / "plugins" / "mnist_pipeline").glob("*.py")):
        if path.name in SETUP_MODULES:
            continue
        source = path.read_text()
        methods = {
            (receiver, name)
            for receiver, name in CLIENT_CALL.findall(source)
            if name not in NON_API_METHODS | HOOK_METHODS
        }
        for kind, name in PAGINATOR_OR_WAITER.findall(source):
            if kind == "paginator":
                methods.add(("", name))
                continue
            waiter = "".join(part.capitalize() for part in name.split("_"))  # function_updated_v2
            assert waiter in lambda_waiters.waiter_names, f"{path.name}: {name!r} is not a Lambda waiter"
            calls.add(("lambda", lambda_waiters.get_waiter(waiter).operation))
        for receiver, method in methods:
            if receiver in RECEIVER_SERVICES:
                services = [RECEIVER_SERVICES[receiver]]
                assert method in operations[services[0]], (
                    f"{path.name} calls {receiver}.{method}(), which is no {services[0]} operation: "
                    "teach this test what it is (a helper: NON_API_METHODS)"
                )
            else:
                services = [service for service in SERVICES if method in operations[service]]
            assert len(services) == 1, (
                f"{path.name} calls {method}(), which is an operation of {services or 'none'} of {SERVICES}: "
                "teach this test which service it belongs to"
            )
            calls.add((services[0], operations[services[0]][method]))
    for path in sorted([*(ROOT / "plugins" / "mnist_pipeline").glob("*.py"), *(ROOT / "dags").glob("*.py")]):
        if path.name in SETUP_MODULES:
            continue
        for name in imported_names(path) & PROVIDER_CLASS_CALLS.keys():
            calls |= {
                (service, operations[service][method]) for service, method in PROVIDER_CLASS_CALLS[name]
            }
    return calls


def imported_names(path: Path) -> set[str]:
    """The names a module imports (``from x import Name`` and ``import x.Name``), wherever it does."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names |= {alias.name.rsplit(".", 1)[-1] for alias in node.names}
    return names


def required_actions() -> set[str]:
    operations = operation_names()
    calls = calls_in_plugins()
    calls |= {
        (service, operations[service][method])
        for service, methods in PROVIDER_CALLS.items()
        for method in methods
    }
    required = set()
    for service, operation in calls:
        action = f"{service}:{operation}"
        required |= IMPLIED_ACTIONS.get(action, {action})
    return required


# --- static checks (always run) -----------------------------------------------------------------


def test_the_resources_the_issue_asks_for_are_declared():
    hcl = "\n".join(tf_files().values())
    for resource in [
        'resource "aws_s3_bucket_versioning"',
        'resource "aws_s3_bucket_server_side_encryption_configuration"',
        'resource "aws_s3_bucket_public_access_block"',
        'resource "aws_iam_role" "sagemaker"',
        'resource "aws_iam_role" "lambda"',
        'resource "aws_lambda_layer_version"',
        'resource "aws_lambda_alias" "live"',
        'resource "aws_apigatewayv2_route"',
        'resource "aws_cloudwatch_metric_alarm" "alias_errors"',
        'resource "aws_cloudwatch_metric_alarm" "alias_latency"',
        'resource "aws_iam_policy" "airflow"',
        'resource "aws_sqs_queue" "events"',
        'resource "aws_sqs_queue" "events_dlq"',
        'resource "aws_sqs_queue_policy" "events"',
        'resource "aws_s3_bucket_notification" "pipeline"',
        'resource "aws_sns_topic" "alerts"',
        'resource "aws_sns_topic_subscription" "alert_email"',
    ]:
        assert resource in hcl, f"infra/terraform declares no {resource}"
    for setting in [
        r'runtime\s*=\s*"python3\.12"',
        r'route_key\s*=\s*"POST /mnist"',
        r"reserved_concurrent_executions\s*=\s*var\.reserved_concurrency",
        r"throttling_rate_limit\s*=",
        r"access_log_settings\s*\{",
        r"retention_in_days\s*=",
        r"redrive_policy\s*=",
        r'events\s*=\s*\["s3:ObjectCreated:\*"\]',
    ]:
        assert re.search(setting, hcl), f"infra/terraform has no {setting}"


def test_no_iam_statement_grants_a_wildcard_action():
    for name, hcl in tf_files().items():
        actions = iam_actions(hcl)
        wildcards = [action for action in actions if "*" in action]
        assert not wildcards, f"{name} grants wildcard actions {wildcards}; name each action"
        malformed = [action for action in actions if not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action)]
        assert not malformed, f"{name} has actions that are not service:Action: {malformed}"


def test_airflow_worker_policy_grants_exactly_what_the_dag_calls():
    granted = set(iam_actions(tf_files()["airflow.tf"]))
    required = required_actions()
    assert required - granted == set(), (
        f"the DAG calls these but airflow.tf does not grant them: {sorted(required - granted)}"
    )
    assert granted - required == set(), (
        f"airflow.tf grants these but the DAG never calls them: {sorted(granted - required)}"
    )


def string_literals_in_plugins() -> set[str]:
    """Every string constant in plugins/mnist_pipeline (the names of settings the code reads)."""
    literals = set()
    for path in (ROOT / "plugins" / "mnist_pipeline").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
    return literals


def output_map_keys(name: str) -> set[str]:
    outputs = tf_files()["outputs.tf"]
    block = re.search(rf'output "{name}".*?value = \{{(.*?)\n  \}}', outputs, flags=re.S).group(1)
    return set(re.findall(r"^\s*([A-Za-z_]+)\s*=", block, flags=re.M))


def test_airflow_variables_output_uses_the_pipeline_setting_names():
    """Every Variable Terraform hands over is one the code reads: a setting of config.py, or a name
    (Variable ``mnist_x`` or env ``MNIST_X``) a module reads itself, like the data-events queue."""
    from mnist_pipeline.config import PipelineConfig

    names = output_map_keys("airflow_variables")
    settings = {f"mnist_{field.name}" for field in dataclasses.fields(PipelineConfig)}
    literals = string_literals_in_plugins()
    read = {name for name in names if name in literals or name.upper() in literals}
    assert names <= settings | read, f"not settings the code reads: {sorted(names - settings - read)}"
    required = {
        f"mnist_{field.name}"
        for field in dataclasses.fields(PipelineConfig)
        if field.default is dataclasses.MISSING
    }
    assert required <= names, f"required settings missing from the output: {sorted(required - names)}"


def test_airflow_environment_output_hands_over_what_is_read_at_parse_time():
    """The environment form of the Variables that must reach the DAG's parse (the data-events queue
    decides the schedule): each is also in airflow_variables, and the code reads its env name."""
    from mnist_pipeline import events
    from mnist_pipeline.config import PipelineConfig

    names = output_map_keys("airflow_environment")
    assert events.QUEUE_URL_ENV in names, f"airflow_environment does not set {events.QUEUE_URL_ENV}"
    assert {name.lower() for name in names} <= output_map_keys("airflow_variables")
    literals = string_literals_in_plugins()
    settings = {f"MNIST_{field.name.upper()}" for field in dataclasses.fields(PipelineConfig)}
    unread = {name for name in names if name not in literals and name not in settings}
    assert not unread, f"airflow_environment sets variables no code reads: {sorted(unread)}"


# --- terraform itself (when installed) ----------------------------------------------------------

needs_terraform = pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")


@needs_terraform
def test_terraform_fmt_check_passes():
    result = terraform("fmt", "-check", "-recursive", "-diff", cwd=TERRAFORM_DIR)
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


@needs_terraform
def test_terraform_validate_passes_offline(tmp_path):
    mirror = find_plugin_mirror()
    if mirror is None:
        pytest.skip("no local provider mirror with hashicorp/aws (set TF_PLUGIN_DIR)")
    work = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, work, ignore=shutil.ignore_patterns(".terraform*", "build", "*.tfstate*"))
    init = terraform("init", "-backend=false", "-input=false", f"-plugin-dir={mirror}", cwd=work)
    assert init.returncode == 0, f"terraform init failed:\n{init.stdout}{init.stderr}"
    validate = terraform("validate", cwd=work)
    assert validate.returncode == 0, f"terraform validate failed:\n{validate.stdout}{validate.stderr}"


def test_the_functions_first_version_is_marked_as_the_placeholder():
    """An alias on the version Terraform publishes is a first deployment, not an unknown model: the
    DAG recognises it by this description (live_alias.PLACEHOLDER_DESCRIPTION)."""
    from mnist_pipeline.live_alias import PLACEHOLDER_DESCRIPTION

    function = re.search(
        r'resource "aws_lambda_function" "classifier" \{(.*?)\n\}',
        (TERRAFORM_DIR / "lambda.tf").read_text(),
        re.S,
    )
    description = re.search(r'^\s*description\s*=\s*"([^"]*)"', function.group(1), re.M).group(1)
    assert description.startswith(PLACEHOLDER_DESCRIPTION)
    assert re.search(r"^\s*publish\s*=\s*true", function.group(1), re.M)
