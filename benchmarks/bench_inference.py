"""Inference: the local endpoint (HTTP API → alias ``live`` → Lambda runtime) against a bare server.

A model is trained first in quick mode (10k images, one epoch, through the SageMaker toolkit as
localcloud runs it): serving speed does not depend on how well the model was trained. Then:

- the handler's compute alone, in this process (an HTTP API event for one image);
- localcloud as its own process, with the function built from the deployment zip, a version
  behind the alias ``live`` and a quick-created HTTP API, at concurrency 1, 8 and 32;
- beside it, in the same rounds, ``benchmarks.baseline_server`` (FastAPI + uvicorn + httptools +
  onnxruntime, the handler's own validation and model) with the same load generator;
- the cold start of a newly published version, the zip's size, and 64-image batch requests.

Targets (issue 6): endpoint p50 <= 1.5x the baseline's p50 at concurrency 1; >= 500 req/s at
concurrency 8; zero errors. The load generator is a separate process with one keep-alive
``http.client`` connection per concurrent client; it talks to loopback only and stops after a
fixed number of requests or a time cap, whichever comes first.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import io
import itertools
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.harness import Figure, free_port, percentile, run_threads, serving

REPO = Path(__file__).resolve().parents[1]
QUICK_HYPERPARAMETERS = {
    "epochs": "1",
    "augment": "false",
    "max-train-samples": "10000",
    "max-test-samples": "2000",
}
CONCURRENCY = (1, 8, 32)
REQUESTS = {1: 2000, 8: 2000, 32: 2000}  # per round and concurrency level
ROUNDS = 3
TIME_CAP_S = 20.0  # per load run: a stuck server ends the run, not the benchmark
HANDLER_CALLS = 1000
COLD_STARTS = 3
BATCH_IMAGES = 64
BATCH_REQUESTS = 100
FUNCTION = "bench-mnist"
# localcloud routes by the SigV4 credential scope and verifies no signature (see bench_localcloud).
INVOKE_HEADERS = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/lambda/aws4_request, "
    "SignedHeaders=host, Signature=0"
}
ROLE = "arn:aws:iam::000000000000:role/bench"


# -- load generator (runs in its own process) ---------------------------------------------------


def generate_load(
    url: str, body: bytes, concurrency: int, requests: int, time_cap_s: float, headers: dict | None = None
) -> dict:
    """POST ``body`` to ``url`` ``requests`` times from ``concurrency`` keep-alive clients.

    Returns each answered request's latency (ms), the count of errors (a status other than 200, or
    a broken connection) and the wall time. Stops at ``time_cap_s`` even if requests remain.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.hostname != "127.0.0.1":
        raise ValueError(f"the load generator only sends to loopback (127.0.0.1), not {parts.hostname!r}")
    tickets = itertools.count()  # next() on a count is atomic under the GIL: each request is sent once
    latencies: list[float] = []
    errors: list[str] = []
    headers = {"Content-Type": "application/json", **(headers or {})}
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    deadline = time.perf_counter() + time_cap_s

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        while next(tickets) < requests and time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                connection.request("POST", target, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as error:
                errors.append(f"{type(error).__name__}: {error}")
                connection.close()  # reconnects on the next request
                continue
            if response.status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors.append(f"{response.status}: {answer[:200]!r}")
        connection.close()

    wall_s = run_threads([client] * concurrency)
    return {
        "latencies_ms": latencies,
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": wall_s,
    }


class LoadRun:
    """One load run's result, summarised."""

    def __init__(self, result: dict):
        self.latencies = result["latencies_ms"]
        self.errors = result["errors"]
        self.first_errors = result["first_errors"]
        self.rate = len(self.latencies) / result["wall_s"]
        self.p50 = percentile(self.latencies, 50) if self.latencies else float("nan")
        self.p99 = percentile(self.latencies, 99) if self.latencies else float("nan")
        # CPU microseconds per request of the server process and of its child processes, when measured.
        self.cpu_us: tuple[float, float] | None = None


def process_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) a process has used so far, and its living descendants together."""
    import psutil

    process = psutil.Process(pid)
    children = 0.0
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            children += sum(child.cpu_times()[:2])
    return sum(process.cpu_times()[:2]), children


# -- the two servers ------------------------------------------------------------------------------


def train_quick_model(work_dir: Path) -> Path:
    """A model directory (model.onnx, model_card.json) from a quick real-MNIST training job."""
    from devtools.mnist import load_mnist
    from localcloud.sagemaker.runner import collect_result, prepare_job_dir, start_training
    from model_code.shards import write_shard

    mnist = load_mnist()
    write_shard(work_dir / "train/train.npz", mnist.train_images, mnist.train_labels)
    write_shard(work_dir / "test/holdout.npz", mnist.test_images, mnist.test_labels)
    job = prepare_job_dir(
        work_dir / "job",
        job_name="bench-inference-model",
        hyperparameters=QUICK_HYPERPARAMETERS,
        channels={"train": work_dir / "train", "test": work_dir / "test"},
        entry_point="train.py",
        submit_dir=str(REPO / "model_code"),
    )
    proc = start_training(job)
    log = proc.stdout.read()
    proc.wait()
    succeeded, reason = collect_result(job)
    if not succeeded:
        raise RuntimeError(f"quick training job failed: {reason}\n{log[-3000:]}")
    return job.model_dir


_quick_model: Path | None = None


def quick_model_dir() -> Path:
    """The quick model, trained once per benchmark process (the inference and load sections share it)."""
    global _quick_model
    if _quick_model is None:
        work_dir = Path(tempfile.mkdtemp(prefix="bench-model-"))
        atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
        _quick_model = train_quick_model(work_dir)
    return _quick_model


@contextlib.contextmanager
def serve_baseline(model_dir: Path, processes: list | None = None):
    """``benchmarks.baseline_server`` on a free loopback port; yields its POST /mnist URL.

    :param processes: if given, receives the server's Popen.
    """
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "benchmarks.baseline_server",
        "--port",
        str(port),
        "--model-dir",
        str(model_dir),
    ]
    url = f"http://127.0.0.1:{port}/mnist"
    with serving(argv, url, cwd=REPO) as proc:  # GET /mnist answers 405: up
        if processes is not None:
            processes.append(proc)
        yield url


def deploy_endpoint(make_client, package: bytes) -> str:
    """Function from the zip, version 1 behind alias ``live``, an HTTP API; returns POST /mnist's URL."""
    from mnist_pipeline.lambda_zip import HANDLER

    lam = make_client("lambda")
    lam.create_function(
        FunctionName=FUNCTION,
        Runtime="python3.12",
        Role=ROLE,
        Handler=HANDLER,
        Code={"ZipFile": package},
        Timeout=30,
        MemorySize=2048,
    )
    lam.get_waiter("function_active_v2").wait(FunctionName=FUNCTION)
    version = lam.publish_version(FunctionName=FUNCTION)["Version"]
    alias_arn = lam.create_alias(FunctionName=FUNCTION, Name="live", FunctionVersion=version)["AliasArn"]
    api = make_client("apigatewayv2").create_api(
        Name="bench-mnist", ProtocolType="HTTP", Target=alias_arn, RouteKey="POST /mnist"
    )
    return f"{api['ApiEndpoint']}/mnist"


def cold_starts(make_client, package_for) -> tuple[list[float], list[float]]:
    """Publish COLD_STARTS new versions; time each one's first invoke (ms) and read its Init Duration."""
    lam = make_client("lambda")
    first_invokes, init_durations = [], []
    for build in range(COLD_STARTS):
        # A different file makes a different CodeSha256, so PublishVersion makes a new version.
        lam.update_function_code(FunctionName=FUNCTION, ZipFile=package_for(build))
        lam.get_waiter("function_updated_v2").wait(FunctionName=FUNCTION)
        version = lam.publish_version(FunctionName=FUNCTION)["Version"]
        started = time.perf_counter()
        answer = lam.invoke(
            FunctionName=FUNCTION, Qualifier=version, Payload=json.dumps({"input": [0] * 784}), LogType="Tail"
        )
        first_invokes.append((time.perf_counter() - started) * 1000)
        if "FunctionError" in answer:
            raise RuntimeError(f"version {version}'s first invoke failed: {answer['Payload'].read()[:500]!r}")
        init = re.search(
            r"Init Duration: ([0-9.]+) ms", base64.b64decode(answer.get("LogResult", "")).decode()
        )
        if init:
            init_durations.append(float(init.group(1)))
    return first_invokes, init_durations


# -- measurements -----------------------------------------------------------------------------------


def handler_compute(model_dir: Path, body: str) -> list[float]:
    """Milliseconds per call of the handler itself, in this process, for an HTTP API event."""
    # The handler loads its model when imported; MODEL_DIR is put back so no later section sees it.
    previous = os.environ.get("MODEL_DIR")
    os.environ["MODEL_DIR"] = str(model_dir)
    try:
        from lambda_package import handler
    finally:
        if previous is None:
            os.environ.pop("MODEL_DIR")
        else:
            os.environ["MODEL_DIR"] = previous

    event = {
        "version": "2.0",
        "routeKey": "POST /mnist",
        "rawPath": "/mnist",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": "POST", "path": "/mnist"}},
        "body": body,
        "isBase64Encoded": False,
    }
    latencies = []
    with contextlib.redirect_stdout(io.StringIO()):  # its one log line per request stays, unseen
        for _ in range(HANDLER_CALLS + 50):
            started = time.perf_counter()
            response = handler.handler(event, None)
            latencies.append((time.perf_counter() - started) * 1000)
    if response["statusCode"] != 200:
        raise RuntimeError(f"the handler answered {response}")
    return latencies[50:]


def run() -> list[Figure]:
    from benchmarks.bench_localcloud import serve_localcloud
    from devtools.mnist import load_mnist
    from localcloud.app import make_client
    from mnist_pipeline.lambda_zip import build_lambda_zip

    mnist = load_mnist()
    one = json.dumps({"input": mnist.test_images[0].reshape(-1).tolist()})
    batch = json.dumps({"inputs": mnist.test_images[:BATCH_IMAGES].reshape(BATCH_IMAGES, -1).tolist()})

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as load:
        model_dir = quick_model_dir()

        def package_for(build: int | None = None) -> bytes:
            extra = None if build is None else {"build.txt": str(build).encode()}
            return build_lambda_zip(
                REPO / "lambda_package/handler.py",
                model_dir / "model.onnx",
                model_dir / "model_card.json",
                extra,
            )

        package = package_for()
        compute = handler_compute(model_dir, one)

        def measure(
            url: str,
            body: str,
            concurrency: int,
            requests: int,
            headers: dict | None = None,
            server_pid: int | None = None,
        ) -> LoadRun:
            """One load run; with ``server_pid``, also the CPU the server (and its workers) used per request."""
            before = process_cpu_s(server_pid) if server_pid else None
            job = load.submit(generate_load, url, body.encode(), concurrency, requests, TIME_CAP_S, headers)
            result = LoadRun(job.result())
            if before is not None:
                after = process_cpu_s(server_pid)
                count = max(1, len(result.latencies) + result.errors)
                result.cpu_us = ((after[0] - before[0]) / count * 1e6, (after[1] - before[1]) / count * 1e6)
            return result

        runs: dict[tuple[str, int | str], list[LoadRun]] = {}
        servers: list = []  # localcloud's Popen, then the baseline's
        with (
            serve_localcloud(processes=servers) as cloud_url,
            serve_baseline(model_dir, servers) as baseline_url,
        ):
            client = lambda service: make_client(cloud_url, service)  # noqa: E731
            endpoint_url = deploy_endpoint(client, package)
            targets = {"endpoint": endpoint_url, "baseline": baseline_url}
            pids = {"endpoint": servers[0].pid, "baseline": servers[1].pid}
            for url in targets.values():  # start every Lambda worker (and warm both) before measuring
                warmup = measure(url, one, 8, 200)
                if warmup.errors:
                    raise RuntimeError(f"warm-up against {url} failed: {warmup.first_errors}")
            for _ in range(ROUNDS):
                for concurrency in CONCURRENCY:
                    for name, url in targets.items():
                        # At concurrency 1 the servers' CPU per request says where the latency goes.
                        pid = pids[name] if concurrency == 1 else None
                        runs.setdefault((name, concurrency), []).append(
                            measure(url, one, concurrency, REQUESTS[concurrency], server_pid=pid)
                        )
                for name, url in targets.items():
                    runs.setdefault((name, "batch"), []).append(measure(url, batch, 1, BATCH_REQUESTS))
                # The same function without API Gateway: splits the endpoint's latency by layer.
                invoke_url = f"{cloud_url}/2015-03-31/functions/{FUNCTION}/invocations?Qualifier=live"
                runs.setdefault(("invoke", 1), []).append(
                    measure(invoke_url, one, 1, REQUESTS[1], INVOKE_HEADERS)
                )
            first_invokes, init_durations = cold_starts(client, package_for)

    return [
        *_compute_figures(compute),
        *_endpoint_figures(runs),
        *_extra_figures(runs, package, first_invokes, init_durations),
    ]


def _compute_figures(compute: list[float]) -> list[Figure]:
    p99 = percentile(compute, 99)
    return [
        Figure(
            "inference",
            "handler compute alone, 1 image (in process, HTTP API event)",
            "ms",
            compute,
            notes=f"p99 {p99:.3f} ms",
            extra={"p99_ms": p99},
        )
    ]


def _endpoint_figures(runs: dict) -> list[Figure]:
    figures = []
    for concurrency in CONCURRENCY:
        endpoint, baseline = runs["endpoint", concurrency], runs["baseline", concurrency]
        base_p50 = percentile([r.p50 for r in baseline], 50)
        base_rate = percentile([r.rate for r in baseline], 50)
        p99 = [r.p99 for r in endpoint]
        base_p99 = [r.p99 for r in baseline]
        figures += [
            Figure(
                "inference",
                f"endpoint p50 latency, concurrency {concurrency}",
                "ms",
                [r.p50 for r in endpoint],
                baseline="FastAPI baseline p50",
                baseline_median=base_p50,
                notes=f"p99 {percentile(p99, 50):.2f} ms (baseline p99 {percentile(base_p99, 50):.2f} ms); "
                f"median over {len(endpoint)} rounds",
                extra={
                    "p99_ms": p99,
                    "baseline_p50_ms": [r.p50 for r in baseline],
                    "baseline_p99_ms": base_p99,
                },
            ),
            Figure(
                "inference",
                f"endpoint throughput, concurrency {concurrency}",
                "req/s",
                [r.rate for r in endpoint],
                target=">= 500" if concurrency == 8 else None,
                baseline="FastAPI baseline req/s",
                baseline_median=base_rate,
                extra={"baseline_req_per_s": [r.rate for r in baseline]},
            ),
        ]
        if concurrency == 1:
            figures.append(
                Figure(
                    "inference",
                    "endpoint p50 / baseline p50, concurrency 1 (same round)",
                    "x",
                    [e.p50 / b.p50 for e, b in zip(endpoint, baseline, strict=True)],
                    target="<= 1.5",
                    notes="handler compute, Lambda Invoke without API Gateway and the endpoint, "
                    "each p50: see the rows around this one",
                )
            )
            figures += _cpu_figures(endpoint, baseline)
            invoke = runs["invoke", 1]
            figures.append(
                Figure(
                    "inference",
                    "direct Invoke of alias live (no API Gateway), concurrency 1: p50 latency",
                    "ms",
                    [r.p50 for r in invoke],
                    baseline="FastAPI baseline p50",
                    baseline_median=base_p50,
                    notes=f"p99 {percentile([r.p99 for r in invoke], 50):.2f} ms; raw keep-alive HTTP, "
                    "the endpoint minus this is what the HTTP API layer adds",
                )
            )
    return figures


def _cpu_figures(endpoint: list[LoadRun], baseline: list[LoadRun]) -> list[Figure]:
    """Where the endpoint's latency goes at concurrency 1: CPU per request in each server process."""
    base_cpu = [r.cpu_us[0] for r in baseline]
    parts = (
        (
            "localcloud process (front door, HTTP API, Runtime API, logs)",
            "user + system time over the round, divided by its requests",
        ),
        (
            "Lambda worker processes (awslambdaric + handler)",
            "the baseline server does the handler's work too, inside uvicorn; compare the handler "
            "compute row for the share that is the handler's own",
        ),
    )
    return [
        Figure(
            "inference",
            f"CPU per request, concurrency 1: {what}",
            "us",
            [r.cpu_us[index] for r in endpoint],
            baseline="FastAPI baseline server CPU per request",
            baseline_median=percentile(base_cpu, 50),
            notes=notes,
            extra={"baseline_cpu_us": base_cpu},
        )
        for index, (what, notes) in enumerate(parts)
    ]


def _extra_figures(
    runs: dict, package: bytes, first_invokes: list[float], init_durations: list[float]
) -> list[Figure]:
    endpoint_runs = [r for (name, _), rs in runs.items() if name == "endpoint" for r in rs]
    baseline_runs = [r for (name, _), rs in runs.items() if name == "baseline" for r in rs]
    first_error = next((r.first_errors[0] for r in endpoint_runs if r.first_errors), "none")
    batch_rate = [r.rate * BATCH_IMAGES for r in runs["endpoint", "batch"]]
    base_batch_rate = [r.rate * BATCH_IMAGES for r in runs["baseline", "batch"]]
    return [
        Figure(
            "inference",
            "endpoint errors (all measured requests)",
            "errors",
            [sum(r.errors for r in endpoint_runs)],
            target="<= 0",
            notes=f"of {sum(len(r.latencies) + r.errors for r in endpoint_runs)} requests; first: {first_error}; "
            f"baseline errors {sum(r.errors for r in baseline_runs)}; "
            f"direct Invoke errors {sum(r.errors for r in runs['invoke', 1])}",
        ),
        Figure(
            "inference",
            f"batch requests ({BATCH_IMAGES} images each), concurrency 1",
            "images/s",
            batch_rate,
            baseline="FastAPI baseline images/s",
            baseline_median=percentile(base_batch_rate, 50),
            extra={"baseline_images_per_s": base_batch_rate},
        ),
        Figure(
            "inference",
            "cold start: first invoke of a newly published version (boto3 Invoke)",
            "ms",
            first_invokes,
            notes="Init Duration " + ", ".join(f"{d:.0f}" for d in init_durations) + " ms",
            extra={"init_duration_ms": init_durations},
        ),
        Figure(
            "inference",
            "deployment package size (zip: handler, model.onnx, model_card.json)",
            "MB",
            [len(package) / 2**20],
            extra={"bytes": len(package)},
        ),
    ]
