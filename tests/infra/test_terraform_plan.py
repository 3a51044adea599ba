"""infra/terraform as Terraform itself evaluates it, with no AWS account: the data-events queue and its
dead-letter queue, the bucket's notification, the alerts topic and its optional subscription, and the
Airflow workers' policy as the provider renders it (least privilege on the new resources).

`terraform test` applies a temporary copy with every managed resource overridden (the real provider
validates each resource's configuration and renders every aws_iam_policy_document, but no resource is
created and no AWS API is called; the overrides give the ARNs and URLs AWS would assign), once with
the defaults and once with `alert_email` and `events_max_receive_count` set, and checks that a
malformed `alert_email` is refused. The states come back through `-json -verbose`. The runs are in
tests/infra/terraform/offline_plan.tftest.hcl; the overrides are generated here from the resources
the .tf files declare, so a resource added later is overridden too and can never reach AWS.
"""

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.infra.test_terraform import TERRAFORM_DIR, find_plugin_mirror, terraform, tf_files

pytestmark = [
    pytest.mark.slow,  # about 15 s: three runs of the 700 MB provider
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed"),
]

TEST_FILE = Path(__file__).parent / "terraform" / "offline_plan.tftest.hcl"
ACCOUNT = "123456789012"
REGION = "eu-west-1"  # the provider's region in the test file
BUCKET = f"mnist-pipeline-{ACCOUNT}"
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
QUEUE_URL = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/mnist-data-events"
QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:mnist-data-events"
DLQ_URL = f"{QUEUE_URL}-dlq"
DLQ_ARN = f"{QUEUE_ARN}-dlq"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:mnist-pipeline-alerts"
LOG_GROUP_ARN = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/mnist-classifier"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:mnist-classifier"

# What AWS would assign on create, for the resources whose identifiers the checks below name. Every
# other resource gets an ARN of its own address (validators want ARN syntax) and generated values.
ASSIGNED = {
    "aws_s3_bucket.pipeline": {"id": BUCKET, "arn": BUCKET_ARN},
    "aws_sqs_queue.events": {"id": QUEUE_URL, "url": QUEUE_URL, "arn": QUEUE_ARN},
    "aws_sqs_queue.events_dlq": {"id": DLQ_URL, "url": DLQ_URL, "arn": DLQ_ARN},
    "aws_sns_topic.alerts": {"id": TOPIC_ARN, "arn": TOPIC_ARN},
    "aws_cloudwatch_log_group.lambda": {"id": "/aws/lambda/mnist-classifier", "arn": LOG_GROUP_ARN},
    "aws_lambda_function.classifier": {
        "arn": FUNCTION_ARN,
        "qualified_arn": f"{FUNCTION_ARN}:1",
        "version": "1",
    },
    "aws_lambda_alias.live": {
        "arn": f"{FUNCTION_ARN}:live",
        "invoke_arn": f"arn:aws:apigateway:{REGION}:lambda:path/2015-03-31/functions/{FUNCTION_ARN}:live/invocations",
    },
    "aws_apigatewayv2_api.mnist": {
        "id": "abc123",
        "execution_arn": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:abc123",
        "api_endpoint": f"https://abc123.execute-api.{REGION}.amazonaws.com",
    },
}


def overrides() -> str:
    blocks = []
    for kind, name in re.findall(
        r'^resource "([a-z0-9_]+)" "([a-z0-9_]+)"', "\n".join(tf_files().values()), re.M
    ):
        address = f"{kind}.{name}"
        values = {"arn": f"arn:aws:test:{REGION}:{ACCOUNT}:{kind}/{name}", **ASSIGNED.get(address, {})}
        body = "\n".join(f"    {key} = {json.dumps(value)}" for key, value in values.items())
        blocks.append(f"override_resource {{\n  target = {address}\n  values = {{\n{body}\n  }}\n}}\n")
    return "\n".join(blocks)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Each run's state: {"resources": {address: values (with "depends_on")}, "outputs": {name: value}}."""
    mirror = find_plugin_mirror()
    if mirror is None:
        pytest.skip("no local provider mirror with hashicorp/aws (set TF_PLUGIN_DIR)")
    work = tmp_path_factory.mktemp("tf-offline") / "terraform"
    shutil.copytree(TERRAFORM_DIR, work, ignore=shutil.ignore_patterns(".terraform*", "build", "*.tfstate*"))
    for artifact in ("layer.zip", "function.zip"):  # build_artifacts.sh's outputs; only hashed here
        (work / "build").mkdir(exist_ok=True)
        with zipfile.ZipFile(work / "build" / artifact, "w") as archive:
            archive.writestr("handler.py", "")
    (work / "tests").mkdir()
    (work / "tests" / TEST_FILE.name).write_text(TEST_FILE.read_text() + "\n" + overrides())

    init = terraform("init", "-backend=false", "-input=false", f"-plugin-dir={mirror}", cwd=work)
    assert init.returncode == 0, f"terraform init failed:\n{init.stdout}{init.stderr}"
    test = terraform("test", "-json", "-verbose", cwd=work)
    messages = [json.loads(line) for line in test.stdout.splitlines() if line.startswith("{")]
    problems = [
        f"{message['@message']}: {message.get('diagnostic', {}).get('detail', '')}"
        for message in messages
        if message["type"] == "diagnostic" and message["@level"] == "error"
    ]
    summary = [message["test_summary"] for message in messages if message["type"] == "test_summary"]
    assert test.returncode == 0 and summary and summary[0]["status"] == "pass", (
        f"terraform test failed: {summary}\n" + "\n".join(problems) + test.stderr[-2000:]
    )
    states = {}
    for message in messages:
        if message["type"] == "test_state":
            state = message["test_state"]
            states[message["@testrun"]] = {
                "resources": {
                    resource["address"]: {**resource["values"], "depends_on": resource.get("depends_on", [])}
                    for resource in state["root_module"]["resources"]
                },
                "outputs": {name: output["value"] for name, output in state.get("outputs", {}).items()},
            }
    assert set(states) == {"defaults", "with_alert_email"}, f"states for runs {sorted(states)}"
    return states


@pytest.fixture(scope="module")
def defaults(runs) -> dict:
    return runs["defaults"]


def policy(document: str) -> list[dict]:
    """The statements of a policy document, each with Action and Resource as lists."""
    statements = json.loads(document)["Statement"]
    for statement in statements:
        for key in ("Action", "Resource"):
            if isinstance(statement.get(key), str):
                statement[key] = [statement[key]]
    return statements


def granting(statements: list[dict], prefix: str) -> list[dict]:
    return [s for s in statements if any(action.startswith(prefix) for action in s.get("Action", []))]


# --- the data-events queue -----------------------------------------------------------------------


def test_the_events_queue_redrives_to_its_dead_letter_queue(runs):
    from mnist_pipeline import events

    for run, receives in (("defaults", 5), ("with_alert_email", 3)):
        resources = runs[run]["resources"]
        queue, dlq = resources["aws_sqs_queue.events"], resources["aws_sqs_queue.events_dlq"]
        assert json.loads(queue["redrive_policy"]) == {
            "deadLetterTargetArn": DLQ_ARN,
            "maxReceiveCount": receives,
        }
        # The watcher receives with its own visibility; the queue's default is no shorter.
        assert queue["visibility_timeout_seconds"] >= events.DEFAULT_VISIBILITY_S
        # A moved message keeps its first enqueue time, so the DLQ must keep messages longer.
        assert dlq["message_retention_seconds"] > queue["message_retention_seconds"] >= 24 * 3600
        assert queue["sqs_managed_sse_enabled"] and dlq["sqs_managed_sse_enabled"]
        assert not queue["fifo_queue"], "S3 notifications cannot go to a FIFO queue"

    allow = json.loads(
        runs["defaults"]["resources"]["aws_sqs_queue_redrive_allow_policy.events_dlq"]["redrive_allow_policy"]
    )
    assert allow == {"redrivePermission": "byQueue", "sourceQueueArns": [QUEUE_ARN]}


def test_only_this_bucket_in_this_account_may_send_to_the_queue(defaults):
    statements = policy(defaults["resources"]["aws_sqs_queue_policy.events"]["policy"])
    assert [s["Effect"] for s in statements] == ["Allow"]
    (statement,) = statements
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == ["sqs:SendMessage"]
    assert statement["Resource"] == [QUEUE_ARN]
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": BUCKET_ARN},
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
    }
    assert defaults["resources"]["aws_sqs_queue_policy.events"]["queue_url"] == QUEUE_URL


def test_new_batches_in_incoming_notify_the_queue_and_nothing_else_does(defaults):
    from mnist_pipeline import events
    from mnist_pipeline.config import PipelineConfig

    notification = defaults["resources"]["aws_s3_bucket_notification.pipeline"]
    assert notification["bucket"] == BUCKET
    assert notification["lambda_function"] == [] and notification["topic"] == []
    (queue,) = notification["queue"]
    assert queue["queue_arn"] == QUEUE_ARN
    assert queue["events"] == ["s3:ObjectCreated:*"]
    assert queue["filter_prefix"] == PipelineConfig.incoming_prefix == events.DEFAULT_INCOMING_PREFIX
    assert queue["filter_suffix"] == events.BATCH_SUFFIX
    # S3 checks it may send when the notification is put: the queue policy must exist first.
    assert "aws_sqs_queue_policy.events" in notification["depends_on"]


# --- alerts --------------------------------------------------------------------------------------


def test_the_email_subscription_exists_only_when_an_address_is_given(runs):
    assert not [a for a in runs["defaults"]["resources"] if a.startswith("aws_sns_topic_subscription.")]
    subscriptions = {
        address: values
        for address, values in runs["with_alert_email"]["resources"].items()
        if address.startswith("aws_sns_topic_subscription.")
    }
    assert list(subscriptions) == ["aws_sns_topic_subscription.alert_email[0]"]
    subscription = subscriptions["aws_sns_topic_subscription.alert_email[0]"]
    assert (subscription["topic_arn"], subscription["protocol"], subscription["endpoint"]) == (
        TOPIC_ARN,
        "email",
        "ops@example.com",
    )


def test_every_alarm_notifies_the_alerts_topic(defaults):
    alarms = {a: v for a, v in defaults["resources"].items() if a.startswith("aws_cloudwatch_metric_alarm.")}
    assert "aws_cloudwatch_metric_alarm.events_dlq" in alarms
    for address, alarm in alarms.items():
        assert TOPIC_ARN in alarm["alarm_actions"], f"{address} does not notify the alerts topic"
    dlq_alarm = alarms["aws_cloudwatch_metric_alarm.events_dlq"]
    assert dlq_alarm["dimensions"] == {"QueueName": "mnist-data-events-dlq"}
    assert (dlq_alarm["namespace"], dlq_alarm["metric_name"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )


# --- the Airflow workers' policy, as rendered ----------------------------------------------------


def test_the_workers_use_the_events_queue_only_as_its_consumer(defaults):
    statements = policy(defaults["outputs"]["airflow_policy_json"])
    sqs = granting(statements, "sqs:")
    assert {action for s in sqs for action in s["Action"]} == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
    }
    assert all(s["Resource"] == [QUEUE_ARN] and s["Effect"] == "Allow" and "Condition" not in s for s in sqs)
    assert not [s for s in statements if DLQ_ARN in s["Resource"]], "the workers never touch the DLQ"


def test_the_workers_publish_only_to_the_alerts_topic(defaults):
    statements = policy(defaults["outputs"]["airflow_policy_json"])
    sns = granting(statements, "sns:")
    assert [(s["Action"], s["Resource"]) for s in sns] == [(["sns:Publish"], [TOPIC_ARN])]


def test_the_workers_read_only_the_serving_functions_log_group(defaults):
    statements = policy(defaults["outputs"]["airflow_policy_json"])
    logs = granting(statements, "logs:")
    assert {action for s in logs for action in s["Action"]} == {"logs:FilterLogEvents"}
    assert {resource for s in logs for resource in s["Resource"]} <= {LOG_GROUP_ARN, f"{LOG_GROUP_ARN}:*"}


def test_the_workers_write_monitoring_records_but_delete_only_incoming_batches(defaults):
    statements = policy(defaults["outputs"]["airflow_policy_json"])
    writes = {r for s in statements if "s3:PutObject" in s["Action"] for r in s["Resource"]}
    assert f"{BUCKET_ARN}/monitoring/*" in writes
    assert f"{BUCKET_ARN}/data/incoming/*" not in writes, "the pipeline never writes new batches itself"
    deletes = {r for s in statements if "s3:DeleteObject" in s["Action"] for r in s["Resource"]}
    assert deletes == {f"{BUCKET_ARN}/data/incoming/*"}


def test_the_rendered_policy_is_the_one_attached(defaults):
    assert (
        defaults["resources"]["aws_iam_policy.airflow"]["policy"]
        == defaults["outputs"]["airflow_policy_json"]
    )


# --- what Airflow is handed ----------------------------------------------------------------------


def test_the_outputs_hand_airflow_the_queue_and_the_topic(defaults):
    from mnist_pipeline import events

    outputs = defaults["outputs"]
    assert (outputs["events_queue_url"], outputs["events_queue_arn"]) == (QUEUE_URL, QUEUE_ARN)
    assert outputs["events_dlq_url"] == DLQ_URL
    assert outputs["alerts_topic_arn"] == TOPIC_ARN
    variables = outputs["airflow_variables"]
    assert (variables["mnist_events_queue_url"], variables["mnist_alerts_topic_arn"]) == (
        QUEUE_URL,
        TOPIC_ARN,
    )
    assert outputs["airflow_environment"] == {
        events.QUEUE_URL_ENV: QUEUE_URL,
        "MNIST_ALERTS_TOPIC_ARN": TOPIC_ARN,
    }
