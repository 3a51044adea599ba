"""LocalCloud: the store, the services and the HTTP server of one local AWS, started and stopped together.

    with LocalCloud(Config(data_dir=tmp_path, port=0)) as cloud:
        s3 = cloud.client("s3")
        cloud.logs.append("/aws/lambda/f", "stream", ["hello"])   # in-process service APIs

Adding a service: build its backend and service in `_build_services` (wiring its dependencies on other
backends explicitly), and it is routed, health-counted, started and stopped with the rest.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from localcloud import __version__
from localcloud.apigateway import ApiGatewayBackend, ApiGatewayService
from localcloud.awslambda import LambdaBackend, LambdaService
from localcloud.chaos import FAULTS_PATH, FaultRules
from localcloud.config import Config
from localcloud.logs import LogsBackend, LogsService
from localcloud.processes import ProcessGroups
from localcloud.routing import Router
from localcloud.s3 import S3Backend, S3Service
from localcloud.sagemaker import SageMakerBackend, SageMakerService
from localcloud.server import HttpServer, is_loopback
from localcloud.service import Backend, Service
from localcloud.sns import SnsBackend, SnsService
from localcloud.sqs import SqsBackend, SqsService
from localcloud.store import Store
from localcloud.sts import StsService
from localcloud.trust import RequestGuard
from localcloud.wire import Request, Response, ServiceError, json_response

logger = logging.getLogger("localcloud")


class LocalCloud:
    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        """`overrides` are Config fields (port=0, data_dir=...) applied on top of `config` or the env."""
        self.config = replace(config, **overrides) if config else Config.from_env(**overrides)
        self.endpoint_url = ""
        self.services: list[Service] = []
        self._server: HttpServer | None = None
        self._side_servers: list[HttpServer] = []

    # --- wiring ------------------------------------------------------------------------------------

    def _build_services(self, store: Store) -> None:
        config = self.config
        self.faults = FaultRules()
        self.sqs = SqsBackend(store, config)
        self.s3 = S3Backend(store, config, sqs=self.sqs)
        self.logs = LogsBackend(store, config)
        self.sagemaker = SageMakerBackend(store, config, s3=self.s3, logs=self.logs)
        self.lambda_ = LambdaBackend(store, config, s3=self.s3, logs=self.logs, faults=self.faults)
        self.apigateway = ApiGatewayBackend(store, config, lambda_=self.lambda_)
        self.sns = SnsBackend(store, config, sqs=self.sqs, faults=self.faults)
        self.services = [
            S3Service(self.s3, config),
            LogsService(self.logs, config),
            SageMakerService(self.sagemaker, config),
            LambdaService(self.lambda_, config),
            ApiGatewayService(self.apigateway, config),
            StsService(None, config),
            SqsService(self.sqs, config),
            SnsService(self.sns, config),
        ]

    @property
    def backends(self) -> list[Backend]:
        found: list[Backend] = []
        for service in self.services:
            if service.backend is not None and service.backend not in found:
                found.append(service.backend)
        return found

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LocalCloud:
        """Bind the port, run every backend's start hook, then serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("localcloud is already running")
        host, port = self.config.host, self.config.port
        if not is_loopback(host) and not self.config.allow_non_loopback:
            raise ValueError(
                f"refusing to listen on {host}: localcloud accepts any credentials, so it must not be "
                "reachable from other machines; pass --allow-non-loopback "
                "(LOCALCLOUD_ALLOW_NON_LOOPBACK=1) to do it anyway"
            )
        RequestGuard(self.config.allowed_hosts, self.config.allowed_origins)  # bad settings fail here, named
        self.store = Store(self.config.data_dir)
        started: list[Backend] = []
        try:
            # Safe only here, before any service runs: a writer's new blob has no document until its COMMIT.
            swept = self.store.sweep_unreferenced_blobs()
            if swept:
                logger.info("removed %d blob(s) no document refers to (left by a crash)", swept)
            # Workers and training jobs a killed localcloud left behind, before any service starts new ones.
            ProcessGroups(self.store).reap_leftovers()
            self._build_services(self.store)
            internal = {("GET", "/_localcloud/health"): self._health}
            internal.update(
                {(method, FAULTS_PATH): self.faults.handle for method in ("GET", "POST", "DELETE")}
            )
            router = Router(self.services, internal)
            self._server = _bind(host, port, router.dispatch, self.config, router.error_response)
            self.endpoint_url = f"http://{_url_host(host)}:{self._server.server_address[1]}"
            for backend in self.backends:
                backend.start(self)
                started.append(backend)
        except BaseException:
            self._shutdown(started)
            raise
        self._server.serve_in_background()
        logger.info(
            "localcloud %s serving %s (data: %s)", __version__, self.endpoint_url, self.config.data_dir
        )
        return self

    def stop(self) -> None:
        """Stop accepting requests, run every backend's stop hook, close connections and the store."""
        if self._server is not None:
            self._shutdown(self.backends)

    def _shutdown(self, started: list[Backend]) -> None:
        if self._server is not None:
            self._server.stop_accepting()
        for backend in reversed(started):
            try:
                backend.stop()
            except Exception:
                logger.exception("shutdown hook of %s failed", type(backend).__name__)
        for server in self._side_servers:
            server.stop()
        if self._server is not None:
            self._server.close_connections()
        self.store.close()
        self._server = None
        self._side_servers = []

    def start_side_server(self, dispatch: Callable[[Request], Response], name: str) -> HttpServer:
        """Serve `dispatch` on another free loopback port until localcloud stops (or `.stop()` is called).

        For endpoints whose clients cannot be told a path, only a host:port: e.g. a Lambda Runtime API
        per worker (AWS_LAMBDA_RUNTIME_API). The URL is `http://127.0.0.1:{server.server_address[1]}`.
        """
        server = _bind("127.0.0.1", 0, dispatch, self.config)
        server.serve_in_background(name)
        self._side_servers.append(server)
        return server

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    # --- health and clients ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "running",
            "version": __version__,
            "endpoint_url": self.endpoint_url,
            "data_dir": str(self.config.data_dir),
            "services": {
                service.model_name: service.backend.counts() if service.backend else {}
                for service in self.services
            },
        }

    def _health(self, request: Request) -> Response:
        return json_response(self.health())

    def client(self, service_name: str, **kwargs: Any) -> Any:
        """A boto3 client for this localcloud (path-style S3, dummy credentials, this region)."""
        return make_client(self.endpoint_url, service_name, self.config.region, **kwargs)


def _bind(
    host: str,
    port: int,
    dispatch: Callable[[Request], Response],
    config: Config,
    render_error: Callable[[Request, ServiceError], Response] | None = None,
) -> HttpServer:
    try:
        return HttpServer(host, port, dispatch, config, render_error)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise RuntimeError(
                f"port {port} on {host} is in use: is localcloud already running "
                "(`localcloud status`)? Use --port or LOCALCLOUD_PORT to pick another"
            ) from None
        raise


def _url_host(host: str) -> str:
    if ":" in host:
        return f"[{host}]"
    # A wildcard bind is reached via loopback from this machine.
    return "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104


def make_client(endpoint_url: str, service_name: str, region: str = "us-east-1", **kwargs: Any) -> Any:
    """A boto3 client configured the way localcloud needs: endpoint, path-style S3, any credentials."""
    import boto3
    from botocore.config import Config as BotoConfig

    config = BotoConfig(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3})
    if "config" in kwargs:
        config = config.merge(kwargs.pop("config"))
    return boto3.session.Session().client(
        service_name,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="localcloud",
        aws_secret_access_key="localcloud",  # noqa: S106 - any credentials are accepted
        config=config,
        **kwargs,
    )
