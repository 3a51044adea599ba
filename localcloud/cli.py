"""`localcloud serve` runs the local AWS in the foreground; `localcloud status` asks a running one.

Settings come from flags, then LOCALCLOUD_* environment variables (LOCALCLOUD_HOST, LOCALCLOUD_PORT,
LOCALCLOUD_DATA_DIR, LOCALCLOUD_ALLOWED_HOSTS, ...), then defaults (127.0.0.1:4566, ./.localcloud).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import urllib.request
from typing import Any

from localcloud import __version__
from localcloud.config import default_endpoint_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcloud", description="A durable, loopback-only local AWS.")
    parser.add_argument("--version", action="version", version=f"localcloud {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve S3, CloudWatch Logs, STS, ... until interrupted")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 4566; 0 picks a free one)")
    serve.add_argument("--data-dir", help="where state is kept (default ./.localcloud)")
    serve.add_argument("--region", help="default region (default us-east-1)")
    serve.add_argument("--account-id", help="the one account every caller is (default 000000000000)")
    serve.add_argument(
        "--allow-non-loopback",
        action="store_true",
        default=None,
        help="allow listening on a non-loopback address; anyone who can reach it gets full access",
    )
    serve.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        help="comma-separated host names requests may name besides 127.0.0.1, localhost and [::1] "
        "(e.g. a compose service name)",
    )
    serve.add_argument(
        "--allowed-origins",
        metavar="ORIGINS",
        help="comma-separated browser origins (scheme://host[:port]) whose pages may call localcloud; "
        "none by default",
    )
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    status = commands.add_parser("status", help="print a running localcloud's services and resource counts")
    status.add_argument(
        "--endpoint-url", default=default_endpoint_url(), help="default http://127.0.0.1:$LOCALCLOUD_PORT"
    )
    status.add_argument("--json", action="store_true", help="print the raw health document")

    args = parser.parse_args(argv)
    return _serve(args) if args.command == "serve" else _status(args)


# glibc's M_MMAP_THRESHOLD, for mallopt().
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 512 * 1024  # twice localcloud.wire.CHUNK_BYTES


def return_large_buffers_to_the_system() -> bool:
    """Serve every allocation over 512 KiB with its own mmap, returned to the system when freed.

    glibc raises its mmap threshold (128 KiB) to the size of each large block it frees, so after a
    burst of large requests (a 256-image batch body is ~1 MB, copied a few times on its way to the
    function) every later one comes from the threads' heaps, which keep what was freed: measured
    under make bench's load, localcloud's RSS went from 83 MB to 142 MB and stayed there. With a
    fixed threshold it went 58 → 81 → 63 MB, back within 30 s. Bodies and files are streamed in
    256 KiB pieces (CHUNK_BYTES), below the threshold, so an upload does not map and unmap every
    piece. `malloc_trim` after the load instead released only a third of it (the freed blocks sit
    between live ones).
    True when set (glibc), False elsewhere.
    """
    try:
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return_large_buffers_to_the_system()
    from localcloud.app import LocalCloud  # imports botocore; keep `status` and `--help` instant
    from localcloud.config import Config, split_list
    from localcloud.store import DataDirInUse

    try:
        config = Config.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            region=args.region,
            account_id=args.account_id,
            allow_non_loopback=args.allow_non_loopback,
            allowed_hosts=None if args.allowed_hosts is None else split_list(args.allowed_hosts),
            allowed_origins=None if args.allowed_origins is None else split_list(args.allowed_origins),
        )
        cloud = LocalCloud(config).start()
    except (ValueError, RuntimeError, DataDirInUse) as error:
        print(f"localcloud: {error}", file=sys.stderr)
        return 2
    print(
        f"localcloud {__version__} listening on {cloud.endpoint_url} (data dir {config.data_dir})", flush=True
    )
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    while not stopping.wait(0.5):
        pass
    cloud.stop()
    return 0


def _status(args: argparse.Namespace) -> int:
    url = args.endpoint_url.rstrip("/") + "/_localcloud/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes via a proxy
    try:
        with opener.open(url, timeout=3) as response:
            health: dict[str, Any] = json.load(response)
    except (OSError, ValueError) as error:
        print(f"localcloud is not running at {args.endpoint_url} ({error})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(health, indent=2))
        return 0
    print(f"localcloud {health['version']} {health['status']} at {args.endpoint_url}")
    print(f"data dir: {health['data_dir']}")
    for name, counts in health["services"].items():
        summary = " ".join(f"{key}={value}" for key, value in counts.items())
        print(f"  {name:<14} {summary}")
    return 0
