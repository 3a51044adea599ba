"""localcloud itself: S3 throughput for a 50 MB object, and what a warm Lambda Invoke adds.

localcloud runs as its own process (``python -m localcloud serve``), as in ``make demo``, and the
client is boto3 in this process. Targets (issue 3): S3 put/get >= 200 MB/s; warm Invoke overhead
p50 <= 1 ms. The overhead is measured with a handler that does nothing, so the whole round trip
(boto3 → localcloud → Runtime API → awslambdaric worker → back) is what localcloud and the runtime
add. It is measured twice: over a raw keep-alive HTTP connection (what localcloud and the runtime
add, the target) and through boto3 (which adds its own serialisation and signing, for reference).
"""

from __future__ import annotations

import http.client
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager

from benchmarks.harness import Figure, free_port, repeat, serving

OBJECT_MB = 50
S3_REPEATS = 5
INVOKES = 500
STARTUP_REPEATS = 5
NOOP_HANDLER = "def handler(event, context):\n    return event\n"


@contextmanager
def serve_localcloud(started: list[float] | None = None, processes: list | None = None):
    """A localcloud server process on a free loopback port with a throwaway data dir.

    :param started: if given, receives the seconds from spawning the process to a healthy answer.
    :param processes: if given, receives the server's Popen.
    """
    url = f"http://127.0.0.1:{free_port()}"
    spawned = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-localcloud-") as data_dir:
        argv = [
            sys.executable,
            "-m",
            "localcloud",
            "serve",
            "--port",
            url.rsplit(":", 1)[1],
            "--data-dir",
            data_dir,
        ]
        with serving(argv, f"{url}/_localcloud/health") as proc:
            if started is not None:
                started.append(time.perf_counter() - spawned)
            if processes is not None:
                processes.append(proc)
            yield url


def _s3_figures(make_client) -> list[Figure]:
    s3 = make_client("s3")
    s3.create_bucket(Bucket="bench")
    body = os.urandom(OBJECT_MB * 2**20)
    put = repeat(lambda: s3.put_object(Bucket="bench", Key="50mb", Body=body), S3_REPEATS, warmup=1)
    get = repeat(lambda: s3.get_object(Bucket="bench", Key="50mb")["Body"].read(), S3_REPEATS, warmup=1)
    return [
        Figure(
            "localcloud",
            f"S3 PutObject {OBJECT_MB} MB",
            "MB/s",
            [OBJECT_MB / t for t in put],
            target=">= 200",
        ),
        Figure(
            "localcloud",
            f"S3 GetObject {OBJECT_MB} MB",
            "MB/s",
            [OBJECT_MB / t for t in get],
            target=">= 200",
        ),
    ]


def _invoke_figures(make_client, endpoint_url: str) -> list[Figure]:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("noop.py", NOOP_HANDLER)
    lam = make_client("lambda")
    lam.create_function(
        FunctionName="bench-noop",
        Runtime="python3.12",
        Role="arn:aws:iam::000000000000:role/bench",
        Handler="noop.handler",
        Code={"ZipFile": archive.getvalue()},
    )
    lam.get_waiter("function_active_v2").wait(FunctionName="bench-noop")
    version = lam.publish_version(FunctionName="bench-noop")["Version"]
    lam.create_alias(FunctionName="bench-noop", Name="live", FunctionVersion=version)

    payload = b'{"ping": 1}'
    started = time.perf_counter()
    lam.invoke(FunctionName="bench-noop", Qualifier="live", Payload=payload)
    cold = time.perf_counter() - started

    host, port = endpoint_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port))
    path = "/2015-03-31/functions/bench-noop/invocations?Qualifier=live"
    # localcloud routes by the SigV4 credential scope and verifies no signature, so a fixed header
    # stands in for boto3's signing here.
    headers = {
        "Content-Type": "application/json",
        "Authorization": "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/lambda/aws4_request, "
        "SignedHeaders=host, Signature=0",
    }

    def raw_invoke() -> None:
        connection.request("POST", path, body=payload, headers=headers)
        response = connection.getresponse()
        if response.read() != payload or response.status != 200:
            raise RuntimeError(f"invoke answered {response.status}")

    raw = [s * 1000 for s in repeat(raw_invoke, INVOKES, warmup=20)]
    connection.close()
    boto = [
        s * 1000
        for s in repeat(
            lambda: lam.invoke(FunctionName="bench-noop", Qualifier="live", Payload=payload),
            INVOKES,
            warmup=20,
        )
    ]
    raw_p99, boto_p99 = (statistics.quantiles(samples, n=100)[98] for samples in (raw, boto))
    return [
        Figure(
            "localcloud",
            "warm Invoke overhead (no-op handler, raw keep-alive HTTP, via alias)",
            "ms",
            raw,
            target="<= 1",
            notes=f"p99 {raw_p99:.2f} ms; first invoke of the version (cold start) {cold * 1000:.0f} ms",
            extra={"p99_ms": raw_p99, "cold_start_ms": cold * 1000},
        ),
        Figure(
            "localcloud",
            "warm Invoke through boto3 (same no-op handler)",
            "ms",
            boto,
            notes=f"p99 {boto_p99:.2f} ms; includes boto3's own serialisation and signing",
            extra={"p99_ms": boto_p99},
        ),
    ]


def run() -> list[Figure]:
    from localcloud.app import make_client

    startups: list[float] = []
    for _ in range(STARTUP_REPEATS):
        with serve_localcloud(startups):
            pass
    startup = Figure("localcloud", "startup: process spawn to healthy", "s", startups, target="<= 2")
    with serve_localcloud() as url:
        client = lambda service: make_client(url, service)  # noqa: E731
        return [startup, *_s3_figures(client), *_invoke_figures(client, url)]
