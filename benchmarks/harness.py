"""What every benchmark shares: repeated timing, medians and spread, the machine, the JSON file.

A benchmark module exposes ``run(ctx) -> list[Figure]``. ``benchmarks.run`` calls the selected
modules in one process, so each figure's baseline is measured in the same run as the figure.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field


@dataclass
class Figure:
    section: str
    name: str
    unit: str
    samples: list[float]
    target: str | None = None  # e.g. "<= 120", ">= 0.993"
    baseline: str | None = None  # name of the figure this one is compared with
    baseline_median: float | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.samples), max(self.samples)

    @property
    def ratio(self) -> float | None:
        if self.baseline_median in (None, 0):
            return None
        return self.median / self.baseline_median

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        op, value = self.target.split()
        value = float(value)
        return self.median <= value if op == "<=" else self.median >= value

    def to_json(self) -> dict:
        data = asdict(self)
        lo, hi = self.spread
        data.update(median=self.median, min=lo, max=hi, n=len(self.samples), ratio=self.ratio, met=self.met)
        return data


def repeat(fn: Callable[[], object], times: int, *, warmup: int = 0) -> list[float]:
    """Wall-clock seconds of ``fn`` over ``times`` runs, after ``warmup`` unrecorded runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def run_threads(targets: list[Callable[[], object]]) -> float:
    """Run every target in a thread of its own, all at once; the wall seconds until the last ended."""
    threads = [threading.Thread(target=target) for target in targets]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) of samples, interpolated between the nearest ranks."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("percentile of no samples")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(argv: list[str], ready_url: str, *, timeout_s: float = 30.0, cwd=None):
    """Run a server process for the block; yields it once ``ready_url`` answers (any HTTP status).

    Its stderr goes to a temporary file (a pipe nobody reads could fill and stall the server) and
    is quoted when the server dies or does not answer in time.
    """
    from devtools.layout import DemoError
    from devtools.processes import wait_for_http

    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            try:  # polled often: the localcloud section reports the startup time this measures
                wait_for_http(ready_url, timeout_s, process_alive=lambda: proc.poll() is None, poll_s=0.01)
            except DemoError:
                stderr.seek(0)
                tail = stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{' '.join(argv[1:4])} did not answer at {ready_url}: {tail}") from None
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown_table(figures: list[Figure]) -> str:
    lines = [
        "| section | figure | median | spread (min–max) | n | target | met | baseline (median) | ratio | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fig in figures:
        lo, hi = fig.spread
        met = {True: "yes", False: "**no**", None: ""}[fig.met]
        base = f"{fig.baseline} ({_fmt(fig.baseline_median)})" if fig.baseline else ""
        ratio = f"{fig.ratio:.2f}×" if fig.ratio is not None else ""
        lines.append(
            f"| {fig.section} | {fig.name} | {_fmt(fig.median)} {fig.unit} | {_fmt(lo)}–{_fmt(hi)} | "
            f"{len(fig.samples)} | {fig.target or ''} | {met} | {base} | {ratio} | {fig.notes} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4g}"
