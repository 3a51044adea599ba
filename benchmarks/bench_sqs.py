"""localcloud's SQS beside moto's server, in the same run: message throughput and long-poll latency.

Each server runs as a process of its own (localcloud: ``python -m localcloud serve``; moto: its
``ThreadedMotoServer`` in a child Python), and the clients are boto3 in this process, so neither
server shares the client's interpreter. Figures, each with moto's median as its baseline:

- throughput, one message per call: SendMessage, then ReceiveMessage + DeleteMessage one at a time;
- throughput in batches of 10: SendMessageBatch, ReceiveMessage(10), DeleteMessageBatch;
- long-poll latency: from the start of a SendMessage to the return of a ReceiveMessage
  (WaitTimeSeconds=20) that was already waiting in another thread, median and p95. localcloud's
  durability is included: each message is committed to SQLite before SendMessage answers.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from benchmarks.bench_localcloud import serve_localcloud
from benchmarks.harness import Figure, free_port, percentile, serving

MESSAGES = 200  # per throughput repeat
REPEATS = 3
LATENCY_ROUNDS = 30
_MOTO = (
    "import sys, threading; from moto.server import ThreadedMotoServer; "
    "ThreadedMotoServer(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False).start(); "
    "threading.Event().wait()"
)


@contextmanager
def serve_moto():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-c", _MOTO, str(port)], f"{url}/moto-api/"):
        yield url


def _client(url: str):
    from botocore.config import Config as BotoConfig

    from localcloud.app import make_client

    return make_client(url, "sqs", config=BotoConfig(max_pool_connections=4))


def _one_at_a_time(sqs, queue: str) -> None:
    for i in range(MESSAGES):
        sqs.send_message(QueueUrl=queue, MessageBody=f"message {i}")
    done = 0
    while done < MESSAGES:
        for message in sqs.receive_message(QueueUrl=queue).get("Messages", []):
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            done += 1


def _batched(sqs, queue: str) -> None:
    for start in range(0, MESSAGES, 10):
        entries = [{"Id": str(i), "MessageBody": f"message {i}"} for i in range(start, start + 10)]
        sqs.send_message_batch(QueueUrl=queue, Entries=entries)
    done = 0
    while done < MESSAGES:
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        if messages:
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
            sqs.delete_message_batch(QueueUrl=queue, Entries=entries)
            done += len(messages)


def _throughput(url: str, cycle: Callable) -> list[float]:
    sqs = _client(url)
    queue = sqs.create_queue(QueueName=f"throughput-{cycle.__name__.strip('_')}")["QueueUrl"]
    cycle(sqs, queue)  # warm-up: connections, the queue's pages
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        cycle(sqs, queue)
        samples.append(MESSAGES / (time.perf_counter() - started))
    return samples


def _long_poll_latency(url: str) -> list[float]:
    sender, waiter = _client(url), _client(url)
    queue = sender.create_queue(QueueName="latency")["QueueUrl"]
    samples = []
    for _ in range(LATENCY_ROUNDS + 1):
        returned: list[float] = []

        def wait(returned: list[float] = returned) -> None:
            waiter.receive_message(QueueUrl=queue, WaitTimeSeconds=20)
            returned.append(time.perf_counter())

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.05)  # the receive is waiting on the server by now
        sent = time.perf_counter()
        sender.send_message(QueueUrl=queue, MessageBody="wake")
        thread.join(25)
        samples.append((returned[0] - sent) * 1000)
        for message in sender.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
            sender.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return samples[1:]  # the first round opened connections


def _measure(url: str) -> dict[str, list[float]]:
    return {
        "single": _throughput(url, _one_at_a_time),
        "batched": _throughput(url, _batched),
        "latency": _long_poll_latency(url),
    }


def run() -> list[Figure]:
    with serve_moto() as moto_url:
        moto = _measure(moto_url)
    with serve_localcloud() as localcloud_url:
        ours = _measure(localcloud_url)
    figures = []
    for key, title in (
        ("single", f"SQS send + receive + delete, one message per call ({MESSAGES} messages)"),
        ("batched", f"SQS send + receive + delete in batches of 10 ({MESSAGES} messages)"),
    ):
        baseline = Figure("sqs", f"moto server: {title}", "messages/s", moto[key])
        figures += [
            baseline,
            Figure(
                "sqs",
                f"localcloud: {title}",
                "messages/s",
                ours[key],
                baseline=baseline.name,
                baseline_median=baseline.median,
                notes="boto3 client in the benchmark process; each server in its own process",
            ),
        ]
    p95 = {name: percentile(samples["latency"], 95) for name, samples in (("moto", moto), ("ours", ours))}
    baseline = Figure(
        "sqs",
        "moto server: long-poll latency, SendMessage start to a waiting ReceiveMessage's return",
        "ms",
        moto["latency"],
        notes=f"p95 {p95['moto']:.1f} ms",
        extra={"p95_ms": p95["moto"]},
    )
    figures += [
        baseline,
        Figure(
            "sqs",
            "localcloud: long-poll latency, SendMessage start to a waiting ReceiveMessage's return",
            "ms",
            ours["latency"],
            baseline=baseline.name,
            baseline_median=baseline.median,
            notes=f"p95 {p95['ours']:.1f} ms; WaitTimeSeconds=20, the send committed before it answers",
            extra={"p95_ms": p95["ours"]},
        ),
    ]
    return figures


if __name__ == "__main__":
    from benchmarks.harness import markdown_table

    print(markdown_table(run()))
