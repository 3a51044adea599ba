"""Settings for one localcloud instance: flags win over LOCALCLOUD_* environment variables over defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB
DEFAULT_LAMBDA_WORKERS_PER_VERSION = 4
DEFAULT_LAMBDA_QUEUE_PER_VERSION = 64


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path(".localcloud")
    host: str = "127.0.0.1"
    port: int = 4566
    region: str = "us-east-1"
    account_id: str = "000000000000"
    allow_non_loopback: bool = False
    # Host names besides 127.0.0.1, localhost and [::1] that requests may name (a compose service name).
    allowed_hosts: tuple[str, ...] = ()
    # Browser origins (scheme://host[:port]) whose pages may call localcloud; none by default.
    allowed_origins: tuple[str, ...] = ()
    # JSON and XML API bodies; AWS's own limit for Lambda Invoke payloads is 6 MB.
    max_request_bytes: int = 6 * MiB
    # One S3 PutObject or UploadPart, streamed to disk; AWS allows 5 GiB.
    max_object_bytes: int = 5 * GiB
    # Open connections, each served by a thread; past it a connection gets 503 and is closed.
    max_connections: int = 256
    # A keep-alive connection with no request for this long is closed (also a stalled body read).
    idle_timeout_s: int = 60
    # A request's line and headers must arrive within this long of its first byte (slowloris).
    request_head_timeout_s: int = 10
    # Lambda Event invocations accepted but not finished; past it Invoke answers 429.
    lambda_event_queue: int = 100
    # Lambda worker processes per function version, and the invocations that may wait for a busy one's
    # (past them Invoke answers 429; a queue of 0 is AWS's behaviour). Unlike the fields above, these
    # two read LOCALCLOUD_LAMBDA_* whenever a Config is made, from_env or not, as Lambda always has.
    lambda_workers_per_version: int = field(
        default_factory=lambda: _env_int(
            "LOCALCLOUD_LAMBDA_WORKERS_PER_VERSION", DEFAULT_LAMBDA_WORKERS_PER_VERSION, minimum=1
        )
    )
    lambda_queue_per_version: int = field(
        default_factory=lambda: _env_int(
            "LOCALCLOUD_LAMBDA_QUEUE_PER_VERSION", DEFAULT_LAMBDA_QUEUE_PER_VERSION, minimum=0
        )
    )
    # SageMaker training jobs that train at once; the others wait in Starting (a job uses every core it
    # finds). Read from LOCALCLOUD_MAX_TRAINING_JOBS whenever a Config is made, as the two above.
    max_training_jobs: int = field(
        default_factory=lambda: _env_int("LOCALCLOUD_MAX_TRAINING_JOBS", 1, minimum=1)
    )

    @classmethod
    def from_env(cls, **overrides: object) -> Config:
        """Defaults, then LOCALCLOUD_<FIELD> variables, then the non-None `overrides` (CLI flags)."""
        values: dict[str, object] = {}
        for spec in fields(cls):
            raw = os.environ.get(f"LOCALCLOUD_{spec.name.upper()}")
            if raw is not None:
                values[spec.name] = _parse(spec.name, raw, spec.type)
        values.update({name: value for name, value in overrides.items() if value is not None})
        config = replace(cls(), **values)
        return replace(config, data_dir=Path(config.data_dir).absolute())


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return value


def default_endpoint_url() -> str:
    """Where `localcloud status` looks: LOCALCLOUD_ENDPOINT_URL, else 127.0.0.1 at LOCALCLOUD_PORT (4566)."""
    port = os.environ.get("LOCALCLOUD_PORT", str(Config.port))
    return os.environ.get("LOCALCLOUD_ENDPOINT_URL") or f"http://127.0.0.1:{port}"


def split_list(raw: str) -> tuple[str, ...]:
    """A comma-separated setting ("a, b,") as a tuple of its non-empty items."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _parse(name: str, raw: str, kind: object) -> object:
    if kind in (int, "int"):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"LOCALCLOUD_{name.upper()} must be an integer, got {raw!r}") from None
    if kind in (bool, "bool"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind in (Path, "Path"):
        return Path(raw)
    if kind in (tuple[str, ...], "tuple[str, ...]"):
        return split_list(raw)
    return raw
