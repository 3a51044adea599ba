"""Monitoring cost: ``monitor_traffic`` reading and scoring 100k images of live traffic (target <= 10 s).

The traffic is 100,000 MNIST images (train then test, cycled) answered by the real serving handler
(``lambda_package/handler.py`` imported as version 3, as Lambda's init does, with a nearest-centroid
ONNX model from ``tests.fixtures.plugin_aws``: what is timed does not depend on the model's
accuracy). Its log lines go into the function's log group in localcloud's CloudWatch Logs (a server
process of its own, as in ``make demo``), each beside the ``START``, ``END`` and ``REPORT`` lines
Lambda's runtime writes around every invocation, spread over 4 streams (4 warm instances), in the
last hour. Two shapes of the same 100k images:

- **one image per request** (the target): 100,000 handler lines, 400,000 log events in the group;
  FilterLogEvents' filter pattern skips the runtime's 300,000 server-side;
- **256 images per request** (the handler's ``MAX_BATCH``): 391 handler lines, 1,564 events.

Each figure is ``monitor_traffic`` end to end, as the DAG's step runs it: the reference read from
S3, every FilterLogEvents page over HTTP (localcloud answers up to 10,000 events a page, as AWS
does), each line parsed, the window scored, ``monitoring/<run>.json`` written. Median of 3; each
repeat's document is deleted afterwards, so every repeat reads the same whole window. Its baseline,
measured in the same run, is the same handler lines parsed and scored in this process
(``Traffic.add_line`` + ``score``, no reading): the ratio is what reading through CloudWatch Logs
costs.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import types
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.bench_localcloud import serve_localcloud
from benchmarks.harness import Figure, repeat

IMAGES = 100_000
BATCH_IMAGES = 256  # lambda_package/handler.py MAX_BATCH
STREAMS = 4
REPEATS = 3
VERSION = "3"
# PutLogEvents' limits (10,000 events, 1 MiB counting 26 bytes an event), with room to spare.
PUT_EVENTS = 10_000
PUT_BYTES = 1_000_000
EVENT_OVERHEAD_BYTES = 26
LIVE = {"alias": {"exists": True, "version": VERSION, "weights": {}, "revision_id": "bench"}}


def handler_lines(images: np.ndarray, per_request: int) -> list[str]:
    """The handler's log line for each request of ``per_request`` images, as it writes them."""
    from devtools.mnist import load_mnist
    from tests.fixtures.plugin_aws import api_event, centroid_onnx, load_handler, write_model_dir

    mnist = load_mnist()
    model = centroid_onnx(mnist.train_images[:10_000], mnist.train_labels[:10_000])
    with tempfile.TemporaryDirectory(prefix="bench-monitor-model-") as model_dir:
        handler = load_handler(write_model_dir(Path(model_dir), model), VERSION)
    flat = images.reshape(len(images), -1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for start in range(0, len(flat), per_request):
            context = types.SimpleNamespace(aws_request_id=str(uuid.uuid4()))
            # Through the endpoint, as clients call it: the monitor counts only those requests.
            body = {"inputs": flat[start : start + per_request].tolist()}
            response = handler(api_event(body), context)
            if response["statusCode"] != 200:
                raise RuntimeError(f"the handler answered {response['statusCode']}: {response['body'][:300]}")
    return out.getvalue().splitlines()


def invocation_events(line: str) -> list[str]:
    """One invocation's events in the function's log group: the runtime's lines around the handler's."""
    request_id = uuid.uuid4()
    return [
        f"START RequestId: {request_id} Version: {VERSION}",
        line,
        f"END RequestId: {request_id}",
        f"REPORT RequestId: {request_id}\tDuration: 1.50 ms\tBilled Duration: 2 ms\t"
        "Memory Size: 1024 MB\tMax Memory Used: 180 MB\t",
    ]


def ship(logs, group: str, lines: list[str], first_ms: int, step_ms: int) -> int:
    """Put each handler line, as an invocation, into the group; returns the number of log events."""
    logs.create_log_group(logGroupName=group)
    day = time.strftime("%Y/%m/%d", time.gmtime(first_ms / 1000))
    streams = [f"{day}/[{VERSION}]{uuid.uuid4().hex}" for _ in range(STREAMS)]
    for stream in streams:
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    total = 0
    for index, stream in enumerate(streams):
        batch: list[dict] = []
        size = 0
        for number in range(index, len(lines), STREAMS):
            for message in invocation_events(lines[number]):
                event_bytes = len(message.encode()) + EVENT_OVERHEAD_BYTES
                if len(batch) == PUT_EVENTS or size + event_bytes > PUT_BYTES:
                    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
                    batch, size = [], 0
                batch.append({"timestamp": first_ms + number * step_ms, "message": message})
                size += event_bytes
                total += 1
        if batch:
            logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
    return total


def run() -> list[Figure]:
    from data_checks.reference import compute_reference
    from devtools.mnist import load_mnist
    from localcloud.app import make_client
    from mnist_pipeline import monitor
    from mnist_pipeline.config import PipelineConfig

    mnist = load_mnist()
    images = np.resize(np.concatenate([mnist.train_images, mnist.test_images]), (IMAGES, 28, 28))
    reference = compute_reference(mnist.train_images[:50_000], mnist.train_labels[:50_000])
    thresholds = monitor.Thresholds()
    shapes = {1: handler_lines(images, 1), BATCH_IMAGES: handler_lines(images, BATCH_IMAGES)}

    figures = []
    with serve_localcloud() as url:
        s3, logs = make_client(url, "s3"), make_client(url, "logs")
        base = PipelineConfig(
            bucket="bench-monitor", region="us-east-1", sagemaker_role_arn="arn:aws:iam::000000000000:role/x"
        )
        s3.create_bucket(Bucket=base.bucket)
        s3.put_object(Bucket=base.bucket, Key=base.reference_key, Body=reference.to_json().encode())
        pages: list[int] = []
        logs.meta.events.register("after-call.cloudwatch-logs.FilterLogEvents", lambda **_: pages.append(1))
        now_ms = int(time.time() * 1000)
        for per_request, lines in shapes.items():
            config = replace(base, lambda_function=f"bench-monitor-{per_request}")
            group = f"/aws/lambda/{config.lambda_function}"
            # the last hour: the invocations spread over 50 minutes of it, evenly
            events = ship(logs, group, lines, now_ms - 3_600_000, max(1, 3_000_000 // len(lines)))
            results: list[dict] = []

            def check(config=config, results=results) -> None:
                run_id = f"bench-{len(results)}"
                results.append(
                    monitor.monitor_traffic(
                        logs, s3, config, run_id=run_id, live=LIVE, thresholds=thresholds, now_ms=now_ms
                    )
                )
                s3.delete_object(Bucket=config.bucket, Key=config.monitoring_key(run_id))

            pages.clear()
            samples = repeat(check, REPEATS, warmup=1)
            for result in results:
                if result["samples"] != IMAGES or result["status"] != "ok":
                    raise RuntimeError(
                        f"monitor_traffic saw {result['samples']} images, status {result['status']}"
                    )

            def score_only(lines=lines) -> None:
                traffic = monitor.Traffic()
                for line in lines:
                    traffic.add_line(line, {VERSION})
                monitor.score(traffic, reference, thresholds)

            baseline = Figure(
                "monitoring",
                f"score only, in process: {IMAGES:,} images from {len(lines):,} handler lines",
                "s",
                repeat(score_only, REPEATS),
                notes="Traffic.add_line + score on the lines in memory; no reading, no S3",
            )
            shape = "one image per request" if per_request == 1 else f"{per_request} images per request"
            figures += [
                baseline,
                Figure(
                    "monitoring",
                    f"monitor_traffic end to end, {IMAGES:,} images, {shape}",
                    "s",
                    samples,
                    target="<= 10" if per_request == 1 else None,
                    baseline=baseline.name,
                    baseline_median=baseline.median,
                    notes=f"{len(lines):,} handler lines among {events:,} log events; "
                    f"FilterLogEvents pages: {len(pages) // (REPEATS + 1)}; localcloud over HTTP",
                    extra={
                        "log_events": events,
                        "handler_lines": len(lines),
                        "images_per_request": per_request,
                    },
                ),
            ]
    return figures


if __name__ == "__main__":
    from benchmarks.harness import markdown_table

    print(markdown_table(run()))
