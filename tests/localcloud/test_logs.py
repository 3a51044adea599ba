"""localcloud CloudWatch Logs driven by real boto3 and by the Airflow amazon provider's own log reader."""

import time

import pytest
from botocore.exceptions import ClientError


def error_code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def logs(localcloud):
    client = localcloud.client("logs")
    client.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    client.create_log_stream(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="job-1/algo-1-1700000000"
    )
    return client


GROUP, STREAM = "/aws/sagemaker/TrainingJobs", "job-1/algo-1-1700000000"


def put(logs, messages, start=None, stream=STREAM):
    start = start or now_ms()
    events = [{"timestamp": start + i, "message": message} for i, message in enumerate(messages)]
    return logs.put_log_events(logGroupName=GROUP, logStreamName=stream, logEvents=events)


def test_groups_and_streams_lifecycle_and_errors(localcloud):
    logs = localcloud.client("logs")
    logs.create_log_group(logGroupName="/aws/lambda/mnist")
    with pytest.raises(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName="/aws/lambda/mnist")
    with pytest.raises(logs.exceptions.InvalidParameterException):
        logs.create_log_group(logGroupName="bad name with spaces")
    with pytest.raises(logs.exceptions.ResourceNotFoundException) as excinfo:
        logs.create_log_stream(logGroupName="/missing", logStreamName="s")
    assert "log group does not exist" in str(excinfo.value)

    logs.create_log_stream(logGroupName="/aws/lambda/mnist", logStreamName="2024/01/01/[$LATEST]abc")
    with pytest.raises(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_stream(logGroupName="/aws/lambda/mnist", logStreamName="2024/01/01/[$LATEST]abc")
    with pytest.raises(logs.exceptions.ResourceNotFoundException) as excinfo:
        logs.put_log_events(
            logGroupName="/aws/lambda/mnist",
            logStreamName="nope",
            logEvents=[{"timestamp": now_ms(), "message": "x"}],
        )
    assert "log stream does not exist" in str(excinfo.value)

    logs.put_retention_policy(logGroupName="/aws/lambda/mnist", retentionInDays=7)
    group = logs.describe_log_groups(logGroupNamePrefix="/aws/lambda")["logGroups"][0]
    assert group["logGroupName"] == "/aws/lambda/mnist" and group["retentionInDays"] == 7
    assert group["arn"] == "arn:aws:logs:us-east-1:000000000000:log-group:/aws/lambda/mnist:*"

    logs.delete_log_stream(logGroupName="/aws/lambda/mnist", logStreamName="2024/01/01/[$LATEST]abc")
    assert logs.describe_log_streams(logGroupName="/aws/lambda/mnist")["logStreams"] == []
    logs.delete_log_group(logGroupName="/aws/lambda/mnist")
    with pytest.raises(logs.exceptions.ResourceNotFoundException):
        logs.describe_log_streams(logGroupName="/aws/lambda/mnist")


def test_get_log_events_tokens_follow_cloudwatch(logs):
    start = now_ms()
    put(logs, [f"epoch {i}" for i in range(5)], start)

    first = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, startFromHead=True, limit=3)
    assert [e["message"] for e in first["events"]] == ["epoch 0", "epoch 1", "epoch 2"]
    rest = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, nextToken=first["nextForwardToken"])
    assert [e["message"] for e in rest["events"]] == ["epoch 3", "epoch 4"]

    # Caught up: no events and the same forward token, which is how readers know to stop polling.
    idle = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, nextToken=rest["nextForwardToken"])
    assert idle["events"] == [] and idle["nextForwardToken"] == rest["nextForwardToken"]

    put(logs, ["epoch 5"], start + 10)
    new = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, nextToken=idle["nextForwardToken"])
    assert [e["message"] for e in new["events"]] == ["epoch 5"]

    # Without startFromHead CloudWatch returns the newest events, oldest first, and pages backwards.
    tail = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, limit=2)
    assert [e["message"] for e in tail["events"]] == ["epoch 4", "epoch 5"]
    older = logs.get_log_events(
        logGroupName=GROUP, logStreamName=STREAM, limit=2, nextToken=tail["nextBackwardToken"]
    )
    assert [e["message"] for e in older["events"]] == ["epoch 2", "epoch 3"]

    window = logs.get_log_events(
        logGroupName=GROUP, logStreamName=STREAM, startFromHead=True, startTime=start + 1, endTime=start + 3
    )
    assert [e["message"] for e in window["events"]] == ["epoch 1", "epoch 2"]
    assert all(e["ingestionTime"] >= e["timestamp"] - 10 for e in new["events"])


def test_airflow_provider_log_reader_reads_everything_and_stops(localcloud, logs, monkeypatch):
    from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook

    for name, value in {
        "AWS_ENDPOINT_URL": localcloud.endpoint_url,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    start = now_ms()
    put(logs, [f"line {i}" for i in range(25)], start)

    hook = AwsLogsHook(aws_conn_id=None, region_name="us-east-1")
    token = AwsLogsHook.ContinuationToken()
    read = [e["message"] for e in hook.get_log_events(GROUP, STREAM, continuation_token=token)]
    assert read == [f"line {i}" for i in range(25)]

    put(logs, ["line 25"], start + 100)
    assert [e["message"] for e in hook.get_log_events(GROUP, STREAM, continuation_token=token)] == ["line 25"]
    # SageMaker's print_log resumes by timestamp and skip count instead of a token.
    resumed = [e["message"] for e in hook.get_log_events(GROUP, STREAM, start_time=start + 24, skip=1)]
    assert resumed == ["line 25"]


def test_describe_log_streams_order_and_pages(logs):
    base = now_ms()
    for name, offset in (("job-1/algo-1-a", 30), ("job-1/algo-1-b", 10), ("job-2/algo-1-c", 20)):
        logs.create_log_stream(logGroupName=GROUP, logStreamName=name)
        put(logs, ["x"], base + offset, stream=name)

    by_prefix = logs.describe_log_streams(
        logGroupName=GROUP, logStreamNamePrefix="job-1/", orderBy="LogStreamName"
    )
    assert [s["logStreamName"] for s in by_prefix["logStreams"]] == [
        "job-1/algo-1-1700000000",
        "job-1/algo-1-a",
        "job-1/algo-1-b",
    ]
    newest = logs.describe_log_streams(logGroupName=GROUP, orderBy="LastEventTime", descending=True, limit=2)
    assert [s["logStreamName"] for s in newest["logStreams"]] == ["job-1/algo-1-a", "job-2/algo-1-c"]
    assert newest["logStreams"][0]["lastEventTimestamp"] == base + 30

    pages = logs.get_paginator("describe_log_streams").paginate(
        logGroupName=GROUP, PaginationConfig={"PageSize": 1}
    )
    assert len([s for page in pages for s in page["logStreams"]]) == 4

    with pytest.raises(logs.exceptions.InvalidParameterException):
        logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix="job-1/", orderBy="LastEventTime")


def test_filter_log_events_across_streams(logs):
    base = now_ms()
    logs.create_log_stream(logGroupName=GROUP, logStreamName="job-2/algo-1-1")
    put(logs, ["INFO epoch 1 acc=0.97", "ERROR disk full"], base)
    put(logs, ["INFO epoch 2 acc=0.99", "WARN slow step"], base + 5, stream="job-2/algo-1-1")

    everything = logs.filter_log_events(logGroupName=GROUP)["events"]
    assert [e["message"] for e in everything] == [
        "INFO epoch 1 acc=0.97",
        "ERROR disk full",
        "INFO epoch 2 acc=0.99",
        "WARN slow step",
    ]
    assert everything[2]["logStreamName"] == "job-2/algo-1-1"

    def messages(**kwargs):
        return [e["message"] for e in logs.filter_log_events(logGroupName=GROUP, **kwargs)["events"]]

    assert messages(filterPattern="INFO acc") == ["INFO epoch 1 acc=0.97", "INFO epoch 2 acc=0.99"]
    assert messages(filterPattern='"disk full"') == ["ERROR disk full"]
    assert messages(filterPattern="?ERROR ?WARN") == ["ERROR disk full", "WARN slow step"]
    assert messages(filterPattern="INFO -0.97") == ["INFO epoch 2 acc=0.99"]
    assert messages(logStreamNamePrefix="job-2/") == ["INFO epoch 2 acc=0.99", "WARN slow step"]
    assert messages(logStreamNames=[STREAM], startTime=base + 1) == ["ERROR disk full"]

    pages = logs.get_paginator("filter_log_events").paginate(
        logGroupName=GROUP, PaginationConfig={"PageSize": 3}
    )
    assert [e["message"] for page in pages for e in page["events"]] == [e["message"] for e in everything]

    with pytest.raises(logs.exceptions.InvalidParameterException) as excinfo:
        logs.filter_log_events(logGroupName=GROUP, filterPattern='{ $.level = "ERROR" }')
    assert "plain-term" in str(excinfo.value)


def test_put_log_events_validates_like_cloudwatch(logs):
    now = now_ms()
    with pytest.raises(logs.exceptions.InvalidParameterException) as excinfo:
        logs.put_log_events(
            logGroupName=GROUP,
            logStreamName=STREAM,
            logEvents=[{"timestamp": now, "message": "b"}, {"timestamp": now - 5, "message": "a"}],
        )
    assert "chronological" in str(excinfo.value)

    fifteen_days = 15 * 24 * 3600 * 1000
    result = logs.put_log_events(
        logGroupName=GROUP,
        logStreamName=STREAM,
        logEvents=[{"timestamp": now - fifteen_days, "message": "ancient"}],
    )
    assert result["rejectedLogEventsInfo"] == {"tooOldLogEventEndIndex": 0}
    assert logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM)["events"] == []


def test_in_process_append_is_visible_over_the_wire(localcloud):
    localcloud.cloud.logs.append(
        "/aws/lambda/mnist", "2024/01/01/[1]abc", ["START RequestId: 1", "END RequestId: 1"]
    )
    localcloud.cloud.logs.append("/aws/lambda/mnist", "2024/01/01/[1]abc", "REPORT RequestId: 1")

    logs = localcloud.client("logs")
    events = logs.get_log_events(
        logGroupName="/aws/lambda/mnist", logStreamName="2024/01/01/[1]abc", startFromHead=True
    )
    assert [e["message"] for e in events["events"]] == [
        "START RequestId: 1",
        "END RequestId: 1",
        "REPORT RequestId: 1",
    ]
    stream = logs.describe_log_streams(logGroupName="/aws/lambda/mnist")["logStreams"][0]
    assert stream["lastEventTimestamp"] >= stream["firstEventTimestamp"] > 0


def test_logs_survive_a_restart(localcloud, logs):
    put(logs, ["before restart"])
    localcloud.restart()
    logs = localcloud.client("logs")
    events = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, startFromHead=True)["events"]
    assert [e["message"] for e in events] == ["before restart"]
    assert localcloud.cloud.health()["services"]["logs"] == {"log_groups": 1, "log_streams": 1, "events": 1}


def test_unknown_target_and_unsupported_operation(localcloud, logs):
    with pytest.raises(ClientError) as excinfo:
        logs.start_query(logGroupName=GROUP, startTime=0, endTime=1, queryString="fields @message")
    assert error_code(excinfo) == "NotImplemented"
    assert "CloudWatch Logs.StartQuery" in str(excinfo.value)


def test_filter_patterns_select_the_same_events_on_every_page(logs):
    """Terms are case-sensitive substrings, a quoted phrase must appear as written, and every page
    of a filtered, time-bounded read holds exactly the events the terms choose, in time order."""
    from localcloud.logs import compile_filter_pattern

    base = now_ms()
    logs.create_log_stream(logGroupName=GROUP, logStreamName="job-2/algo-1-1")
    kinds = [
        "ERROR disk full",
        "error disk",
        "disk ERROR full",
        "WARN é slow",
        "INFO\x00 after nul",
        "INFO ok",
    ]
    messages = [f"{kinds[i % len(kinds)]} #{i}" for i in range(60)]
    put(logs, messages[0::2], base)
    put(logs, messages[1::2], base, stream="job-2/algo-1-1")
    everything = logs.filter_log_events(logGroupName=GROUP)["events"]
    assert len(everything) == 60 and {e["timestamp"] for e in everything[:2]} == {base}  # before startTime

    def read(pattern):
        pages = logs.get_paginator("filter_log_events").paginate(
            logGroupName=GROUP, filterPattern=pattern, startTime=base + 1, PaginationConfig={"PageSize": 4}
        )
        return [(e["logStreamName"], e["message"]) for page in pages for e in page["events"]]

    assert [message for _, message in read("error")] == [f"error disk #{i}" for i in range(7, 60, 6)]
    assert {message for _, message in read('"disk full"')} == {
        f"ERROR disk full #{i}" for i in range(6, 60, 6)
    }
    assert {message for _, message in read("after nul")} == {
        f"INFO\x00 after nul #{i}" for i in range(4, 60, 6)
    }
    for pattern in ["ERROR", "?WARN ?nul", "INFO -ok", "é", '"full #1"', "#3 -#33", "disk full"]:
        matches = compile_filter_pattern(pattern)
        wanted = [(e["logStreamName"], e["message"]) for e in everything[2:] if matches(e["message"])]
        assert read(pattern) == wanted and wanted, pattern
