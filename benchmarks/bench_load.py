"""Load: 64 clients for 120 s against the local endpoint, a tenth of their requests 256-image batches.

The endpoint is the one ``bench_inference`` measures (HTTP API → alias ``live`` → Lambda workers,
localcloud as its own process, the quick model). What a user of a loaded laptop endpoint relies on
(issue 10, section 8):

- every answer is a 200, or a throttle (429/503) that tells the client to slow down: never a 5xx
  of another kind, never a broken connection;
- the Lambda workers of the version stay within ``LOCALCLOUD_LAMBDA_WORKERS_PER_VERSION``;
- once the load stops, localcloud's threads and resident memory come back to what they were
  before it (within 30 s), so a burst leaves nothing behind.

Reported: answered requests per second, p50/p99 latency of single-image and batch requests, the
answers by status, and localcloud's threads and RSS before, at their peak, and after.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import random
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from benchmarks.harness import Figure, percentile, run_threads

CLIENTS = 64
DURATION_S = 120.0
BATCH_SHARE = 0.1
BATCH_IMAGES = 256
SETTLE_S = 30.0
ALLOWED = {200, 429, 503}
# Tolerances for "back to baseline": a thread or two of localcloud's own housekeeping (log shipper,
# deployer) may be mid-cycle, and CPython keeps a few MB of freed arenas.
THREAD_SLACK = 2
RSS_SLACK_MB = 16


def generate_mixed_load(url: str, single: bytes, batch: bytes, clients: int, duration_s: float) -> dict:
    """``clients`` keep-alive clients POSTing for ``duration_s``; a ``BATCH_SHARE`` of requests is
    the batch body. Returns latencies by kind, statuses counted, broken connections, wall time."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname != "127.0.0.1":
        raise ValueError(f"the load generator only sends to loopback (127.0.0.1), not {parts.hostname!r}")
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {"single": [], "batch": []}
    statuses: Counter = Counter()
    broken: list[str] = []
    deadline = time.perf_counter() + duration_s

    def client(seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        while time.perf_counter() < deadline:
            kind = "batch" if rng.random() < BATCH_SHARE else "single"
            started = time.perf_counter()
            try:
                connection.request(
                    "POST",
                    parts.path,
                    body=batch if kind == "batch" else single,
                    headers={"Content-Type": "application/json"},
                )
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                with lock:
                    broken.append(f"{type(error).__name__}: {error}")
                connection.close()
                continue
            with lock:
                statuses[response.status] += 1
                if response.status == 200:
                    latencies[kind].append((time.perf_counter() - started) * 1000)
        connection.close()

    wall_s = run_threads([lambda seed=seed: client(seed) for seed in range(clients)])
    return {
        "latencies_ms": latencies,
        "statuses": dict(statuses),
        "broken": len(broken),
        "first_broken": broken[:3],
        "wall_s": wall_s,
    }


def sample_server(pid: int, health_url: str) -> dict:
    """localcloud's threads and RSS now, and the Lambda workers it runs."""
    import psutil

    process = psutil.Process(pid)
    with urllib.request.urlopen(health_url, timeout=10) as answer:  # noqa: S310 (loopback)
        workers = json.load(answer)["services"]["lambda"]["workers"]
    return {"threads": process.num_threads(), "rss_mb": process.memory_info().rss / 2**20, "workers": workers}


def run() -> list[Figure]:
    from benchmarks.bench_inference import deploy_endpoint, quick_model_dir
    from benchmarks.bench_localcloud import serve_localcloud
    from devtools.mnist import load_mnist
    from localcloud.app import make_client
    from localcloud.config import DEFAULT_LAMBDA_WORKERS_PER_VERSION as DEFAULT_WORKERS_PER_VERSION
    from mnist_pipeline.artifacts import source_package_dir
    from mnist_pipeline.lambda_zip import build_lambda_zip

    mnist = load_mnist()
    single = json.dumps({"input": mnist.test_images[0].reshape(-1).tolist()}).encode()
    batch = json.dumps(
        {"inputs": mnist.test_images[:BATCH_IMAGES].reshape(BATCH_IMAGES, -1).tolist()}
    ).encode()
    model_dir = quick_model_dir()
    package = build_lambda_zip(
        source_package_dir("lambda_package") / "handler.py",
        model_dir / "model.onnx",
        model_dir / "model_card.json",
    )
    servers: list = []
    with (
        serve_localcloud(processes=servers) as cloud_url,
        ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as load,
    ):
        endpoint = deploy_endpoint(lambda service: make_client(cloud_url, service), package)
        health = f"{cloud_url}/_localcloud/health"
        pid = servers[0].pid
        warmup = load.submit(generate_mixed_load, endpoint, single, batch, 8, 5.0).result()
        if set(warmup["statuses"]) - {200} or warmup["broken"]:
            raise RuntimeError(f"warm-up failed: {warmup['statuses']}, {warmup['first_broken']}")
        time.sleep(2)  # the warm-up's connections close and their threads end
        before = sample_server(pid, health)

        job = load.submit(generate_mixed_load, endpoint, single, batch, CLIENTS, DURATION_S)
        during = []
        while not job.done():
            during.append(sample_server(pid, health))
            time.sleep(1)
        result = job.result()

        stopped = time.monotonic()
        after, settled_s = sample_server(pid, health), None
        while time.monotonic() - stopped < SETTLE_S:
            after = sample_server(pid, health)
            if (
                after["threads"] <= before["threads"] + THREAD_SLACK
                and after["rss_mb"] <= before["rss_mb"] + RSS_SLACK_MB
            ):
                settled_s = time.monotonic() - stopped
                break
            time.sleep(1)
    return _figures(result, before, during, after, settled_s, DEFAULT_WORKERS_PER_VERSION)


def _figures(
    result: dict, before: dict, during: list[dict], after: dict, settled_s: float | None, worker_cap: int
) -> list[Figure]:
    statuses = result["statuses"]
    answered = sum(statuses.values())
    unexpected = {status: count for status, count in statuses.items() if status not in ALLOWED}
    single, batch = result["latencies_ms"]["single"], result["latencies_ms"]["batch"]
    peak_threads = max(sample["threads"] for sample in during)
    peak_rss = max(sample["rss_mb"] for sample in during)
    peak_workers = max(sample["workers"] for sample in during)
    load = (
        f"{CLIENTS} clients, {DURATION_S:.0f} s, {BATCH_SHARE:.0%} of requests {BATCH_IMAGES}-image batches"
    )
    return [
        Figure(
            "load",
            f"answered requests per second ({load})",
            "req/s",
            [answered / result["wall_s"]],
            notes=f"{answered} answers: {dict(sorted(statuses.items()))}",
            extra={"statuses": statuses},
        ),
        _latency_figure("single-image request", single),
        _latency_figure(f"{BATCH_IMAGES}-image batch", batch),
        Figure(
            "load",
            "answers other than 200, 429 or 503, and broken connections",
            "answers",
            [sum(unexpected.values()) + result["broken"]],
            target="<= 0",
            notes=f"unexpected statuses {unexpected or 'none'}; broken connections {result['broken']} "
            f"{result['first_broken'] or ''}".strip(),
        ),
        Figure(
            "load",
            "Lambda workers of the version at the peak of the load",
            "workers",
            [peak_workers],
            target=f"<= {worker_cap}",
            notes=f"LOCALCLOUD_LAMBDA_WORKERS_PER_VERSION is {worker_cap}",
        ),
        Figure(
            "load",
            "seconds after the load until localcloud's threads and RSS are back to before it",
            "s",
            [settled_s if settled_s is not None else float("inf")],
            target=f"<= {SETTLE_S:.0f}",
            notes=f"threads {before['threads']} before, {peak_threads} at the peak, {after['threads']} after; "
            f"RSS {before['rss_mb']:.0f} MB before, {peak_rss:.0f} MB at the peak, {after['rss_mb']:.0f} MB after "
            f"(back means within {THREAD_SLACK} threads and {RSS_SLACK_MB} MB)",
            extra={"before": before, "after": after, "peak_threads": peak_threads, "peak_rss_mb": peak_rss},
        ),
    ]


def _latency_figure(what: str, latencies: list[float]) -> Figure:
    p99 = percentile(latencies, 99) if latencies else None
    return Figure(
        "load",
        f"{what} latency under load, p50",
        "ms",
        [percentile(latencies, 50)] if latencies else [float("nan")],
        notes=f"p99 {p99:.1f} ms over {len(latencies)} answered" if latencies else "none answered",
        extra={"p99_ms": p99},
    )
