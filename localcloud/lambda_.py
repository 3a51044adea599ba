"""AWS Lambda (rest-json): functions, versions, aliases and Invoke, executed by real worker processes.

(The module is `lambda_` because `lambda` is a Python keyword.)

State, in the store:
    lambda/function  <name>               {"latest": <$LATEST config>, "active": <what $LATEST runs>,
                                           "next_version": n, "published": {...}, "tags", "policy"}
    lambda/version   <name>:<%010d>       <config of a published version>
    lambda/alias     <name>:<alias>       <alias configuration>
    lambda/code      <sha256 hex>         {"blob": id, "size": n}: one zip however many versions use it

A config is boto3's FunctionConfiguration plus "_code", the zip's sha256 in hex, which names its blob
and its extracted code directory (<data dir>/lambda/code/<hex>/, shared by every version with that zip).

States move as on AWS, because the work behind them is real: CreateFunction answers Pending, and the
deployer thread unpacks the zip (safely, within Lambda's 250 MB limit) and checks that the handler's
module is in it before the function turns Active (or Failed, with a StateReason); an update answers
LastUpdateStatus InProgress until the same work is done; a published version is Pending until its code
is ready. Until an update succeeds, $LATEST keeps running the code and settings it had ("active").

Invoke resolves the qualifier (version, alias with its routing weights, or $LATEST) to a FunctionPool of
warm workers (lambda_runtime.py). The resolution is cached per function and dropped on any change, so
the invoke path reads no SQLite.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import datetime as dt
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from localcloud.chaos import FaultRules
from localcloud.config import Config
from localcloud.files import UnsafePath, extract_archive, safe_join
from localcloud.lambda_runtime import (
    RESERVED_ENVIRONMENT,
    FunctionPool,
    FunctionSpec,
    InvocationResult,
    LambdaRuntime,
    PoolRetired,
    error_payload,
)
from localcloud.logs import LogsBackend
from localcloud.processes import ProcessGroups
from localcloud.s3 import S3Backend
from localcloud.service import Backend, Service, operation, route
from localcloud.store import Store
from localcloud.wire import CHUNK_BYTES, FileBody, Request, Response, ServiceError

if TYPE_CHECKING:
    from localcloud.app import LocalCloud

logger = logging.getLogger("localcloud")

FUNCTION_KIND = "lambda/function"
VERSION_KIND = "lambda/version"
ALIAS_KIND = "lambda/alias"
CODE_KIND = "lambda/code"

LATEST = "$LATEST"
MAX_INVOKE_PAYLOAD_BYTES = 6 * 1024 * 1024  # synchronous Invoke request payload, as on AWS
MAX_EVENT_PAYLOAD_BYTES = 1024 * 1024  # an Event (asynchronous) invocation's payload, as on AWS since 2025
MAX_REQUEST_BYTES = 70_167_211  # a CreateFunction body with a 50 MB zip, base64-encoded, as on AWS
MAX_UNZIPPED_BYTES = 262_144_000
MAX_ENVIRONMENT_BYTES = 4096
DEFAULT_LIST_ITEMS = 50
DEFAULT_WORKERS_PER_VERSION = 4
DEFAULT_QUEUE_PER_VERSION = 64
UNUSED_CODE_GRACE_S = 60

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_FUNCTION_REF = re.compile(
    r"(?:arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:\d{12}:function:|\d{12}:function:)?"
    r"(?P<name>[a-zA-Z0-9_-]{1,64})(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9_-]{1,128}))?"
)
_ALIAS_NAME = re.compile(r"(?!^[0-9]+$)[a-zA-Z0-9_-]{1,128}")
_VERSION = re.compile(r"[0-9]+")
_ROLE = re.compile(r"arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")
_ENV_NAME = re.compile(r"[a-zA-Z]([a-zA-Z0-9_])+")
_PYTHON_RUNTIME = re.compile(r"python3\.\d+")

# Settings a published version freezes, and whose change makes PublishVersion publish a new version.
_PUBLISHED_SETTINGS = (
    "CodeSha256",
    "Runtime",
    "Handler",
    "Role",
    "Timeout",
    "MemorySize",
    "Environment",
    "Description",
    "TracingConfig",
    "EphemeralStorage",
    "LoggingConfig",
)
_CONFIGURABLE = ("Role", "Handler", "Description", "Timeout", "MemorySize", "Runtime", "TracingConfig")


# --- errors, as Lambda words them ------------------------------------------------------------------


def _not_found(message: str) -> ServiceError:
    return ServiceError("ResourceNotFoundException", message, 404, Type="User")


def _invalid(message: str) -> ServiceError:
    return ServiceError("InvalidParameterValueException", message, 400, Type="User")


def _validation(value: Any, field: str, constraint: str) -> ServiceError:
    return ServiceError(
        "ValidationException",
        f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {constraint}",
    )


def _conflict(message: str) -> ServiceError:
    return ServiceError("ResourceConflictException", message, 409, Type="User")


def _revision_mismatch() -> ServiceError:
    return ServiceError(
        "PreconditionFailedException",
        "The Revision Id provided does not match the latest Revision Id. "
        "Call the GetFunction/GetAlias API to retrieve the latest Revision Id",
        412,
        Type="User",
    )


def _new_revision() -> str:
    return str(uuid.uuid4())


def _last_modified() -> str:
    """Lambda's LastModified format: 2026-11-25T12:00:00.000+0000."""
    moment = dt.datetime.now(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def public(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config as the API shows it: without localcloud's own "_" fields."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


def _version_key(name: str, version: str) -> str:
    return f"{name}:{int(version):010d}"


@dataclass(frozen=True)
class CodeSource:
    """Where new code comes from: the zip's bytes, or an S3 object."""

    zip_file: bytes | None = None
    s3_bucket: str | None = None
    s3_key: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CodeSource:
        if params.get("ImageUri"):
            raise _invalid("localcloud runs zip packages only; ImageUri is not supported")
        if params.get("ZipFile") is not None:
            if params.get("S3Bucket") or params.get("S3Key"):
                raise _invalid("Please provide either ZipFile or S3Bucket and S3Key, not both.")
            return cls(zip_file=params["ZipFile"])
        if params.get("S3Bucket") and params.get("S3Key"):
            return cls(s3_bucket=params["S3Bucket"], s3_key=params["S3Key"])
        raise _invalid("Please provide a source for function code: ZipFile, or S3Bucket and S3Key.")


@dataclass
class _Target:
    """A resolved (function, qualifier): the pools to run it on, or why it cannot run now."""

    generation: int
    version: str
    invoked_arn: str
    pool: FunctionPool | None
    extra_version: str | None = None
    extra_pool: FunctionPool | None = None
    extra_weight: float = 0.0
    refusal: ServiceError | None = None

    def pick(self) -> tuple[str, FunctionPool]:
        # Alias routing as on AWS: each invocation goes to the additional version with its weight.
        if self.extra_pool is not None and random.random() < self.extra_weight:  # noqa: S311
            return self.extra_version, self.extra_pool
        return self.version, self.pool


class LambdaBackend(Backend):
    def __init__(
        self,
        store: Store,
        config: Config,
        s3: S3Backend,
        logs: LogsBackend,
        *,
        workers_per_version: int | None = None,
        queue_per_version: int | None = None,
        faults: FaultRules | None = None,
    ) -> None:
        self.store = store
        self.faults = faults or FaultRules()
        self.config = config
        self.s3 = s3
        self.logs = logs
        self.root = store.service_dir("lambda")
        self.code_root = self.root / "code"
        self.code_root.mkdir(exist_ok=True)
        self.runtime = LambdaRuntime(
            logs,
            self.root / "bytecode",
            ProcessGroups(store),
            workers_per_version=workers_per_version
            or _env_int("LOCALCLOUD_LAMBDA_WORKERS_PER_VERSION", DEFAULT_WORKERS_PER_VERSION, minimum=1),
            queue_per_version=_env_int(
                "LOCALCLOUD_LAMBDA_QUEUE_PER_VERSION", DEFAULT_QUEUE_PER_VERSION, minimum=0
            )
            if queue_per_version is None
            else queue_per_version,
        )
        self.endpoint_url = ""
        self._targets: dict[tuple[str, str | None], _Target] = {}
        self._generations: dict[str, int] = {}
        self._generation_counter = itertools.count(1)
        self._jobs: list[tuple[Callable[..., None], tuple[str, ...]] | None] = []
        self._jobs_ready = threading.Condition()
        self._deployer: threading.Thread | None = None
        self._async: concurrent.futures.ThreadPoolExecutor | None = None
        self._async_lock = threading.Lock()
        self._events_pending = 0  # Event invocations accepted and not finished

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, cloud: LocalCloud) -> None:
        self.endpoint_url = cloud.endpoint_url
        self.runtime.start(cloud)
        self._deployer = threading.Thread(target=self._deploy, name="lambda-deployer", daemon=True)
        self._deployer.start()
        # Work a previous run left unfinished (the server stopped while a function was Pending).
        for name, doc in self.store.scan(FUNCTION_KIND):
            latest = doc["latest"]
            if latest.get("State") == "Pending" or latest.get("LastUpdateStatus") == "InProgress":
                self._schedule(self._deploy_latest, name)
        for _, version in self.store.scan(VERSION_KIND):
            if version.get("State") == "Pending":
                self._schedule(self._deploy_version, version["FunctionName"], version["Version"])
        self._schedule(self._collect_unused_code)

    def stop(self) -> None:
        with self._jobs_ready:
            self._jobs.append(None)
            self._jobs_ready.notify()
        if self._deployer is not None:
            self._deployer.join(timeout=10)
        if self._async is not None:
            self._async.shutdown(wait=False, cancel_futures=True)
        self.runtime.stop()

    def counts(self) -> dict[str, int]:
        return {
            "functions": self.store.count(FUNCTION_KIND),
            "versions": self.store.count(VERSION_KIND),
            "aliases": self.store.count(ALIAS_KIND),
            "workers": self.runtime.worker_count(),
        }

    # --- names and ARNs ----------------------------------------------------------------------------

    def arn(self, name: str, qualifier: str | None = None) -> str:
        base = f"arn:aws:lambda:{self.config.region}:{self.config.account_id}:function:{name}"
        return f"{base}:{qualifier}" if qualifier else base

    def parse_ref(self, function_name: str, qualifier: str | None = None) -> tuple[str, str | None]:
        """(name, qualifier) from a name, ARN or partial ARN, with or without ":qualifier"."""
        found = _FUNCTION_REF.fullmatch(function_name)
        if found is None:
            raise _validation(
                function_name,
                "functionName",
                "Member must satisfy regular expression pattern: (arn:(aws[a-zA-Z-]*)?:lambda:)?"
                r"([a-z]{2}(-gov)?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?([a-zA-Z0-9-_]+)"
                r"(:(\$LATEST|[a-zA-Z0-9-_]+))?",
            )
        derived = found.group("qualifier")
        if derived and qualifier and derived != qualifier:
            raise _invalid(
                "The derived qualifier from the function name does not match the specified qualifier."
            )
        return found.group("name"), derived or qualifier or None

    def _unqualified(self, function_name: str) -> str:
        name, qualifier = self.parse_ref(function_name)
        if qualifier:
            raise _invalid(f"Remove the qualifier {qualifier!r} from the function name {function_name!r}.")
        return name

    # --- reading state -----------------------------------------------------------------------------

    def function(self, name: str) -> dict[str, Any]:
        doc = self.store.get(FUNCTION_KIND, name)
        if doc is None:
            raise _not_found(f"Function not found: {self.arn(name)}")
        return doc

    def configuration(self, function_name: str, qualifier: str | None = None) -> dict[str, Any]:
        """The config of $LATEST, a version, or the version an alias points to (as the API shows it)."""
        name, qualifier = self.parse_ref(function_name, qualifier)
        doc = self.function(name)
        if qualifier in (None, LATEST):
            config = public(doc["latest"])
            if qualifier == LATEST:
                config["FunctionArn"] = self.arn(name, LATEST)
            return config
        if _VERSION.fullmatch(qualifier):
            return public(self._version(name, qualifier))
        alias = self._alias_or_none(name, qualifier)
        if alias is None:
            raise _not_found(f"Function not found: {self.arn(name, qualifier)}")
        target = alias["FunctionVersion"]
        config = public(doc["latest"] if target == LATEST else self._version(name, target))
        config["FunctionArn"] = self.arn(name, qualifier)
        return config

    def _version(self, name: str, version: str) -> dict[str, Any]:
        found = self.store.get(VERSION_KIND, _version_key(name, version))
        if found is None:
            self.function(name)
            raise _not_found(f"Function not found: {self.arn(name, version)}")
        return found

    def _alias_or_none(self, name: str, alias: str) -> dict[str, Any] | None:
        return self.store.get(ALIAS_KIND, f"{name}:{alias}")

    def get_function(self, function_name: str, qualifier: str | None = None) -> dict[str, Any]:
        """GetFunction: the configuration, where to download the code, and the tags."""
        name, qualifier = self.parse_ref(function_name, qualifier)
        config = self.configuration(name, qualifier)
        doc = self.function(name)
        stored = doc["latest"] if config["Version"] == LATEST else self._version(name, config["Version"])
        location = f"{self.endpoint_url}/_localcloud/lambda/code/{stored['_code']}.zip"
        return {
            "Configuration": config,
            "Code": {"RepositoryType": "S3", "Location": location},
            "Tags": doc["tags"] or None,
        }

    def open_code(self, code_id: str) -> BinaryIO:
        doc = self.store.get(CODE_KIND, code_id) if re.fullmatch(r"[0-9a-f]{64}", code_id) else None
        if doc is None:
            raise _not_found(f"No function code {code_id}")
        return self.store.open_blob(doc["blob"])

    def list_functions(self) -> list[dict[str, Any]]:
        return [public(doc["latest"]) for _, doc in self.store.scan(FUNCTION_KIND)]

    # --- functions ---------------------------------------------------------------------------------

    def create_function(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._unqualified(params["FunctionName"])
        if params.get("PackageType", "Zip") != "Zip":
            raise _invalid("localcloud runs zip packages only; PackageType Image is not supported")
        runtime, handler = params.get("Runtime"), params.get("Handler")
        if not runtime or not handler:
            raise _invalid(
                "Runtime and Handler are mandatory parameters for functions created with deployment packages."
            )
        _check_runtime(runtime)
        _check_role(params["Role"])
        timeout, memory = _checked_limits(params.get("Timeout", 3), params.get("MemorySize", 128))
        variables = _checked_environment(params.get("Environment"))
        description = _checked_description(params.get("Description", ""))
        code = self._store_code(CodeSource.from_params(params["Code"]))
        log_group = (params.get("LoggingConfig") or {}).get("LogGroup") or f"/aws/lambda/{name}"
        config = {
            "FunctionName": name,
            "FunctionArn": self.arn(name),
            "Runtime": runtime,
            "Role": params["Role"],
            "Handler": handler,
            "CodeSize": code["size"],
            "Description": description,
            "Timeout": timeout,
            "MemorySize": memory,
            "LastModified": _last_modified(),
            "CodeSha256": code["sha256"],
            "Version": LATEST,
            "Environment": {"Variables": variables} if variables is not None else None,
            "TracingConfig": {"Mode": (params.get("TracingConfig") or {}).get("Mode", "PassThrough")},
            "RevisionId": _new_revision(),
            "State": "Pending",
            "StateReason": "The function is being created.",
            "StateReasonCode": "Creating",
            "PackageType": "Zip",
            "Architectures": params.get("Architectures") or ["x86_64"],
            "EphemeralStorage": params.get("EphemeralStorage") or {"Size": 512},
            "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
            "LoggingConfig": {"LogFormat": "Text", "LogGroup": log_group},
            "_code": code["hex"],
        }
        config = {key: value for key, value in config.items() if value is not None}
        doc = {
            "latest": config,
            "active": None,
            "next_version": 1,
            "published": None,
            "tags": params.get("Tags") or {},
            "policy": {},
        }
        with self.store.transaction():
            if not self.store.insert(FUNCTION_KIND, name, doc):
                raise _conflict(f"Function already exist: {name}")
            result = self._publish_in_transaction(name, None) if params.get("Publish") else config
        self._changed(name)
        self._schedule(self._deploy_latest, name)
        if params.get("Publish"):
            self._schedule(self._deploy_version, name, result["Version"])
        return public(result)

    def update_function_code(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._unqualified(params["FunctionName"])
        source = CodeSource.from_params(params)
        code = self._store_code(source)
        if params.get("DryRun"):
            config = public(self.function(name)["latest"])
            return {**config, "CodeSha256": code["sha256"], "CodeSize": code["size"]}
        with self.store.transaction():
            doc = self.function(name)
            latest = doc["latest"]
            self._check_updatable(latest, params.get("RevisionId"))
            latest.update(
                CodeSha256=code["sha256"],
                CodeSize=code["size"],
                _code=code["hex"],
                LastModified=_last_modified(),
                RevisionId=_new_revision(),
                **_UPDATING,
            )
            self.store.put(FUNCTION_KIND, name, doc)
            result = self._publish_in_transaction(name, None) if params.get("Publish") else latest
        self._changed(name)
        self._schedule(self._deploy_latest, name)
        if params.get("Publish"):
            self._schedule(self._deploy_version, name, result["Version"])
        return public(result)

    def update_function_configuration(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._unqualified(params["FunctionName"])
        changes = {key: params[key] for key in _CONFIGURABLE if key in params}
        if "Runtime" in changes:
            _check_runtime(changes["Runtime"])
        if "Role" in changes:
            _check_role(changes["Role"])
        if "Description" in changes:
            _checked_description(changes["Description"])
        if "Environment" in params:
            variables = _checked_environment(params["Environment"])
            changes["Environment"] = {"Variables": variables or {}}
        if "EphemeralStorage" in params:
            changes["EphemeralStorage"] = params["EphemeralStorage"]
        if "LoggingConfig" in params:
            changes["LoggingConfig"] = {
                "LogFormat": "Text",
                "LogGroup": params["LoggingConfig"].get("LogGroup") or f"/aws/lambda/{name}",
            }
        with self.store.transaction():
            doc = self.function(name)
            latest = doc["latest"]
            self._check_updatable(latest, params.get("RevisionId"))
            _checked_limits(
                changes.get("Timeout", latest["Timeout"]), changes.get("MemorySize", latest["MemorySize"])
            )
            latest.update(changes, LastModified=_last_modified(), RevisionId=_new_revision(), **_UPDATING)
            self.store.put(FUNCTION_KIND, name, doc)
        self._changed(name)
        self._schedule(self._deploy_latest, name)
        return public(latest)

    def _check_updatable(self, latest: dict[str, Any], revision_id: str | None) -> None:
        if revision_id and revision_id != latest["RevisionId"]:
            raise _revision_mismatch()
        if latest.get("State") == "Pending":
            raise _conflict(
                "The operation cannot be performed at this time. "
                "The function is currently in the following state: Pending"
            )
        if latest.get("LastUpdateStatus") == "InProgress":
            raise _conflict(
                "The operation cannot be performed at this time. "
                f"An update is in progress for resource: {latest['FunctionArn']}"
            )

    def delete_function(self, function_name: str, qualifier: str | None) -> None:
        name, qualifier = self.parse_ref(function_name, qualifier)
        if qualifier is None:
            with self.store.transaction():
                self.function(name)
                self.store.delete(FUNCTION_KIND, name)
                for kind in (VERSION_KIND, ALIAS_KIND):
                    for key, _ in self.store.scan(kind, prefix=f"{name}:"):
                        self.store.delete(kind, key)
            self._changed(name)
            self.runtime.retire(name)
            self._schedule(self._collect_unused_code)  # its code, unless something else uses it
            return
        if qualifier == LATEST:
            raise _invalid("$LATEST version cannot be deleted without deleting all versions and aliases.")
        if not _VERSION.fullmatch(qualifier):
            raise _invalid(
                f"Deletion of aliases is not supported through DeleteFunction; use DeleteAlias for {qualifier}."
            )
        with self.store.transaction():
            self._version(name, qualifier)
            using = [alias["Name"] for alias in self._aliases(name) if _alias_uses(alias, qualifier)]
            if using:
                raise _conflict(
                    f"Unable to delete version because the following aliases reference it: {using}"
                )
            self.store.delete(VERSION_KIND, _version_key(name, qualifier))
        self._changed(name)
        self.runtime.retire(name, qualifier)
        self._schedule(self._collect_unused_code)

    # --- versions ----------------------------------------------------------------------------------

    def publish_version(
        self, function_name: str, code_sha256: str | None, description: str | None, revision_id: str | None
    ) -> dict[str, Any]:
        name = self._unqualified(function_name)
        with self.store.transaction():
            latest = self.function(name)["latest"]
            if code_sha256 and code_sha256 != latest["CodeSha256"]:
                raise _invalid(
                    f"CodeSHA256 ({code_sha256}) is different from current CodeSHA256 in $LATEST "
                    f"({latest['CodeSha256']}). Please try again with the CodeSHA256 in $LATEST."
                )
            if revision_id and revision_id != latest["RevisionId"]:
                raise _revision_mismatch()
            if latest.get("State") != "Active" or latest.get("LastUpdateStatus") == "InProgress":
                state = (
                    latest.get("LastUpdateStatus") if latest.get("State") == "Active" else latest.get("State")
                )
                raise _conflict(
                    "The operation cannot be performed at this time. "
                    f"The function is currently in the following state: {state}"
                )
            version = self._publish_in_transaction(
                name, _checked_description(description) if description is not None else None
            )
        self._changed(name)
        self._schedule(self._deploy_version, name, version["Version"])
        return public(version)

    def _publish_in_transaction(self, name: str, description: str | None) -> dict[str, Any]:
        """Snapshot $LATEST as the next version, or return the last one if nothing changed since."""
        doc = self.function(name)
        latest = doc["latest"]
        settings = {key: latest.get(key) for key in _PUBLISHED_SETTINGS}
        published = doc.get("published")
        if published and published["settings"] == settings:
            existing = self.store.get(VERSION_KIND, _version_key(name, published["version"]))
            if existing is not None:
                return existing  # as on AWS: an unchanged function gets its last version back
        number = str(doc["next_version"])
        version = {
            **latest,
            "FunctionArn": self.arn(name, number),
            "Version": number,
            "Description": latest.get("Description", "") if description is None else description,
            "RevisionId": _new_revision(),
            "State": "Pending",
            "StateReason": "The function is being created.",
            "StateReasonCode": "Creating",
        }
        for key in ("LastUpdateStatus", "LastUpdateStatusReason", "LastUpdateStatusReasonCode"):
            version.pop(key, None)  # versions have no update status
        doc["next_version"] += 1
        doc["published"] = {"version": number, "settings": settings}
        latest["RevisionId"] = _new_revision()  # publishing counts as a change of $LATEST's revision
        self.store.put(FUNCTION_KIND, name, doc)
        self.store.put(VERSION_KIND, _version_key(name, number), version)
        return version

    def list_versions(self, function_name: str) -> list[dict[str, Any]]:
        name = self._unqualified(function_name)
        latest = public(self.function(name)["latest"])
        latest["FunctionArn"] = self.arn(name, LATEST)
        return [latest] + [public(doc) for _, doc in self.store.scan(VERSION_KIND, prefix=f"{name}:")]

    # --- aliases -----------------------------------------------------------------------------------

    def _aliases(self, name: str) -> list[dict[str, Any]]:
        return [doc for _, doc in self.store.scan(ALIAS_KIND, prefix=f"{name}:")]

    def alias(self, function_name: str, alias: str) -> dict[str, Any]:
        name = self._unqualified(function_name)
        found = self._alias_or_none(name, alias)
        if found is None:
            self.function(name)
            raise _not_found(f"Alias not found: {self.arn(name, alias)}")
        return found

    def create_alias(
        self, function_name: str, alias: str, version: str, description: str, routing: dict[str, Any] | None
    ) -> dict[str, Any]:
        name = self._unqualified(function_name)
        if not _ALIAS_NAME.fullmatch(alias):
            raise _validation(
                alias, "name", r"Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)"
            )
        with self.store.transaction():
            self._check_version_exists(name, version)
            weights = self._checked_routing(name, version, routing)
            doc = {
                "AliasArn": self.arn(name, alias),
                "Name": alias,
                "FunctionVersion": version,
                "Description": _checked_description(description or ""),
                "RoutingConfig": {"AdditionalVersionWeights": weights} if weights else None,
                "RevisionId": _new_revision(),
            }
            doc = {key: value for key, value in doc.items() if value is not None}
            if not self.store.insert(ALIAS_KIND, f"{name}:{alias}", doc):
                raise _conflict(f"Alias already exists: {self.arn(name, alias)}")
        self._changed(name)
        return doc

    def update_alias(self, function_name: str, alias: str, params: dict[str, Any]) -> dict[str, Any]:
        name = self._unqualified(function_name)
        with self.store.transaction():
            doc = self.alias(name, alias)
            if params.get("RevisionId") and params["RevisionId"] != doc["RevisionId"]:
                raise _revision_mismatch()
            version = params.get("FunctionVersion", doc["FunctionVersion"])
            self._check_version_exists(name, version)
            if "RoutingConfig" in params:
                weights = self._checked_routing(name, version, params["RoutingConfig"])
                doc.pop("RoutingConfig", None)
                if weights:
                    doc["RoutingConfig"] = {"AdditionalVersionWeights": weights}
            elif doc.get("RoutingConfig"):
                weights = self._checked_routing(name, version, doc["RoutingConfig"])
            if "Description" in params:
                doc["Description"] = _checked_description(params["Description"])
            doc.update(FunctionVersion=version, RevisionId=_new_revision())
            self.store.put(ALIAS_KIND, f"{name}:{alias}", doc)
        self._changed(name)
        return doc

    def delete_alias(self, function_name: str, alias: str) -> None:
        name = self._unqualified(function_name)
        with self.store.transaction():
            self.alias(name, alias)
            self.store.delete(ALIAS_KIND, f"{name}:{alias}")
        self._changed(name)

    def list_aliases(self, function_name: str, version: str | None) -> list[dict[str, Any]]:
        name = self._unqualified(function_name)
        self.function(name)
        return [alias for alias in self._aliases(name) if version in (None, alias["FunctionVersion"])]

    def _check_version_exists(self, name: str, version: str) -> None:
        if version == LATEST:
            self.function(name)
        elif _VERSION.fullmatch(version):
            self._version(name, version)
        else:
            raise _validation(
                version,
                "functionVersion",
                r"Member must satisfy regular expression pattern: (\$LATEST|[0-9]+)",
            )

    def _checked_routing(self, name: str, version: str, routing: dict[str, Any] | None) -> dict[str, float]:
        weights = (routing or {}).get("AdditionalVersionWeights") or {}
        if len(weights) > 1:
            raise _invalid("Number of items in AdditionalVersionWeights cannot be greater than 1")
        for extra, weight in weights.items():
            if not 0.0 <= weight < 1.0:
                raise _validation(
                    f"{{{extra}={weight}}}",
                    "routingConfig.additionalVersionWeights",
                    "Map value must satisfy constraint: [Member must have value less than or equal to 1.0, "
                    "Member must have value greater than or equal to 0.0, Member must not be null]",
                )
            if extra == version:
                raise _invalid(
                    f"Invalid function version {version}. Function version {version} is already included in "
                    "routing configuration."
                )
            if version == LATEST:
                raise _invalid("$LATEST is not supported for an alias pointing to more than 1 version")
            if not _VERSION.fullmatch(extra):
                raise _validation(
                    f"{{{extra}={weight}}}",
                    "routingConfig.additionalVersionWeights",
                    "Map keys must satisfy constraint: [Member must satisfy regular expression pattern: [0-9]+]",
                )
            self._version(name, extra)
        return dict(weights)

    # --- permissions and tags (recorded; localcloud does not enforce IAM) --------------------------

    def add_permission(self, function_name: str, qualifier: str | None, params: dict[str, Any]) -> str:
        name, qualifier = self.parse_ref(function_name, qualifier)
        sid = params["StatementId"]
        statement = {
            "Sid": sid,
            "Effect": "Allow",
            "Principal": {
                "Service" if params["Principal"].endswith(".amazonaws.com") else "AWS": params["Principal"]
            },
            "Action": params["Action"],
            "Resource": self.arn(name, qualifier),
        }
        if params.get("SourceArn"):
            statement["Condition"] = {"ArnLike": {"AWS:SourceArn": params["SourceArn"]}}
        with self.store.transaction():
            doc = self.function(name)
            if sid in doc["policy"]:
                raise _conflict(
                    f"The statement id ({sid}) provided already exists. Please provide a new statement id, or remove the existing statement."
                )
            doc["policy"][sid] = statement
            self.store.put(FUNCTION_KIND, name, doc)
        return json.dumps(statement)

    def policy(self, function_name: str) -> str:
        name, _ = self.parse_ref(function_name)
        statements = list(self.function(name)["policy"].values())
        if not statements:
            raise _not_found("The resource you requested does not exist.")
        return json.dumps({"Version": "2012-10-17", "Id": "default", "Statement": statements})

    def remove_permission(self, function_name: str, sid: str) -> None:
        name, _ = self.parse_ref(function_name)
        with self.store.transaction():
            doc = self.function(name)
            if doc["policy"].pop(sid, None) is None:
                raise _not_found(f"Statement {sid} is not found in resource policy.")
            self.store.put(FUNCTION_KIND, name, doc)

    # --- invoking ----------------------------------------------------------------------------------

    def invoke(
        self,
        function_name: str,
        qualifier: str | None,
        payload: bytes,
        *,
        invocation_type: str = "RequestResponse",
        tail: bool = False,
        client_context: str | None = None,
    ) -> InvocationResult | None:
        """Run the function (sync), queue it (Event) or only check it could run (DryRun: None)."""
        limit = MAX_EVENT_PAYLOAD_BYTES if invocation_type == "Event" else MAX_INVOKE_PAYLOAD_BYTES
        if len(payload) > limit:
            raise payload_too_large(limit, len(payload))
        name, qualifier = (
            (function_name, qualifier)
            if _NAME.fullmatch(function_name)
            else self.parse_ref(function_name, qualifier)
        )
        context = _decoded_client_context(client_context) if client_context else None
        target = self._target(name, qualifier)
        if invocation_type == "DryRun":
            return None
        if invocation_type == "Event":
            self._queue_event(name, qualifier, payload or b"{}")
            return None
        for _ in range(3):
            version, pool = target.pick()
            if self.faults.rules:
                fault = self.faults.match(
                    "lambda", "Invoke", function_name=name, qualifier=qualifier, version=version
                )
                if fault is not None:
                    return InvocationResult(
                        error_payload(fault["error_type"], fault["error_message"]), "Unhandled", None, version
                    )
            try:
                return pool.invoke(payload or b"{}", target.invoked_arn, client_context=context, tail=tail)
            except PoolRetired:  # replaced between lookup and enqueue: look it up again
                self._changed(name)
                target = self._target(name, qualifier)
        raise ServiceError("ServiceException", f"{name} kept changing while it was being invoked; retry", 500)

    def _queue_event(self, name: str, qualifier: str | None, payload: bytes) -> None:
        """Run an Event invocation later, unless `lambda_event_queue` of them are already waiting or running.

        AWS keeps an asynchronous queue per function; here each queued event holds its payload (up to
        1 MB) in memory, so the queue is bounded and a full one answers as a throttled Lambda does.
        """
        with self._async_lock:
            if self._events_pending >= self.config.lambda_event_queue:
                raise ServiceError(
                    "TooManyRequestsException",
                    f"Rate Exceeded: {self._events_pending} Event invocations are already queued or running "
                    "(LOCALCLOUD_LAMBDA_EVENT_QUEUE)",
                    429,
                    Type="User",
                    Reason="ConcurrentInvocationLimitExceeded",
                )
            if self._async is None:
                self._async = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="lambda-event")
            self._events_pending += 1
            pool = self._async
        try:
            pool.submit(self._run_event, name, qualifier, payload)
        except RuntimeError:  # shutting down
            self._event_done()
            raise

    def _run_event(self, name: str, qualifier: str | None, payload: bytes) -> None:
        try:
            self.invoke(name, qualifier, payload)
        except Exception:
            logger.debug("asynchronous invocation of %s failed", name, exc_info=True)
        finally:
            self._event_done()

    def _event_done(self) -> None:
        with self._async_lock:
            self._events_pending -= 1

    def _target(self, name: str, qualifier: str | None) -> _Target:
        generation = self._generations.get(name, 0)
        target = self._targets.get((name, qualifier))
        if target is None or target.generation != generation:
            target = self._resolve(name, qualifier, generation)
            self._targets[(name, qualifier)] = target
        if target.refusal is not None:
            raise target.refusal
        return target

    def _resolve(self, name: str, qualifier: str | None, generation: int) -> _Target:
        doc = self.function(name)
        invoked_arn = self.arn(name, qualifier)
        if qualifier in (None, LATEST):
            return self._latest_target(name, doc, generation, invoked_arn)
        if _VERSION.fullmatch(qualifier):
            version = self._version(name, qualifier)
            return _Target(generation, qualifier, invoked_arn, *self._version_pool(version))
        alias = self._alias_or_none(name, qualifier)
        if alias is None:
            raise _not_found(f"Function not found: {invoked_arn}")
        primary = alias["FunctionVersion"]
        if primary == LATEST:
            target = self._latest_target(name, doc, generation, invoked_arn)
            return target
        pool, refusal = self._version_pool(self._version(name, primary))
        target = _Target(generation, primary, invoked_arn, pool, refusal=refusal)
        for extra, weight in (
            (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        ).items():
            extra_pool, extra_refusal = self._version_pool(self._version(name, extra))
            target.extra_version, target.extra_pool, target.extra_weight = extra, extra_pool, weight
            target.refusal = target.refusal or extra_refusal
        return target

    def _latest_target(self, name: str, doc: dict[str, Any], generation: int, invoked_arn: str) -> _Target:
        latest, active = doc["latest"], doc.get("active")
        if active is None:  # never became Active: Pending, or Failed at creation
            return _Target(generation, LATEST, invoked_arn, None, refusal=_state_conflict(latest["State"]))
        return _Target(generation, LATEST, invoked_arn, self.runtime.pool(self._spec(name, LATEST, active)))

    def _version_pool(self, version: dict[str, Any]) -> tuple[FunctionPool | None, ServiceError | None]:
        if version["State"] != "Active":
            return None, _state_conflict(version["State"])
        return self.runtime.pool(self._spec(version["FunctionName"], version["Version"], version)), None

    def _spec(self, name: str, version: str, config: dict[str, Any]) -> FunctionSpec:
        variables = (config.get("Environment") or {}).get("Variables") or {}
        return FunctionSpec(
            function_name=name,
            version=version,
            function_arn=self.arn(name),
            handler=config["Handler"],
            runtime=config["Runtime"],
            code_dir=self.code_root / config["_code"],
            environment=tuple(sorted(variables.items())),
            timeout_s=config["Timeout"],
            memory_mb=config["MemorySize"],
            log_group=config["LoggingConfig"]["LogGroup"],
            region=self.config.region,
        )

    def _changed(self, name: str) -> None:
        """Drop cached invoke targets of `name`: the next invocation resolves it from the store again.

        Call it after the change is committed. Every call gets a value never used before, so a target
        resolved from state read before the change can never pass for a current one.
        """
        self._generations[name] = next(self._generation_counter)

    # --- code: storing, unpacking, checking ---------------------------------------------------------

    def _store_code(self, source: CodeSource) -> dict[str, Any]:
        """Keep the zip as a blob (once per distinct zip); returns {"hex", "sha256", "size"}."""
        digest = hashlib.sha256()
        with self.store.blob_writer() as writer:
            if source.zip_file is not None:
                reader: BinaryIO = io.BytesIO(source.zip_file)
            else:
                try:
                    _, reader = self.s3.open_object(source.s3_bucket, source.s3_key)
                except ServiceError as error:
                    raise _invalid(
                        f"Error occurred while GetObject. S3 Error Code: {error.code}. S3 Error Message: {error.message}"
                    ) from None
            with reader:
                head = b""
                while chunk := reader.read(CHUNK_BYTES):
                    head = head or chunk[:4]
                    digest.update(chunk)
                    writer.write(chunk)
            if not head.startswith(b"PK"):
                raise _invalid(
                    "Could not unzip uploaded file. Please check your file, then try to upload again."
                )
            code_id = digest.hexdigest()
            size = writer.size
            with self.store.transaction():
                if self.store.get(CODE_KIND, code_id) is None:
                    self.store.put(
                        CODE_KIND, code_id, {"blob": writer.commit(), "size": size, "stored": time.time()}
                    )
        return {"hex": code_id, "sha256": base64.b64encode(digest.digest()).decode(), "size": size}

    def _unpack(self, code_id: str) -> Path:
        """The code's directory, unpacked once; raises UnsafePath for a zip Lambda would refuse."""
        target = self.code_root / code_id
        if target.is_dir():
            return target
        doc = self.store.get(CODE_KIND, code_id)
        if doc is None:
            raise UnsafePath(f"the deployment package {code_id} is missing from the store")
        staging = self.code_root / f".staging-{uuid.uuid4().hex}"
        try:
            archive = self.store.blob_path(doc["blob"])
            if not zipfile.is_zipfile(archive):
                raise UnsafePath(
                    "Could not unzip uploaded file. Please check your file, then try to upload again."
                )
            extract_archive(archive, staging, max_bytes=MAX_UNZIPPED_BYTES)
            staging.rename(target)  # readers see no directory or a complete one
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _check_code(self, config: dict[str, Any]) -> tuple[str, str] | None:
        """(reason code, reason) when the code cannot run, as a failed deployment; None when it can."""
        try:
            code_dir = self._unpack(config["_code"])
        except (UnsafePath, zipfile.BadZipFile, OSError) as error:
            return "InvalidZipFileException", str(error)
        problem = _entry_point_problem(code_dir, config["Handler"])
        return ("FunctionError.InvalidEntryPoint", problem) if problem else None

    # --- the deployer thread: state transitions ------------------------------------------------------

    def _schedule(self, step: Callable[..., None], *args: str) -> None:
        """Run `step(*args)` on the deployer thread, after the steps scheduled before it."""
        with self._jobs_ready:
            self._jobs.append((step, args))
            self._jobs_ready.notify()

    def _deploy(self) -> None:
        while True:
            with self._jobs_ready:
                while not self._jobs:
                    self._jobs_ready.wait()
                job = self._jobs.pop(0)
            if job is None:
                return
            step, args = job
            try:
                step(*args)
            except Exception:
                logger.exception("Lambda deployment step %s%s failed", step.__name__, args)

    def _deploy_latest(self, name: str) -> None:
        doc = self.store.get(FUNCTION_KIND, name)
        if doc is None:
            return
        latest = doc["latest"]
        if latest.get("State") != "Pending" and latest.get("LastUpdateStatus") != "InProgress":
            return
        failure = self._check_code(latest)
        with self.store.transaction():
            doc = self.store.get(FUNCTION_KIND, name)
            if doc is None or doc["latest"]["RevisionId"] != latest["RevisionId"]:
                return  # changed meanwhile; a later job handles the newer revision
            latest = doc["latest"]
            creating = latest.get("State") == "Pending"
            for key in (
                "StateReason",
                "StateReasonCode",
                "LastUpdateStatusReason",
                "LastUpdateStatusReasonCode",
            ):
                latest.pop(key, None)
            if failure is None:
                latest.update(State="Active", LastUpdateStatus="Successful")
                doc["active"] = {
                    key: latest.get(key) for key in (*_PUBLISHED_SETTINGS, "_code", "FunctionName")
                }
            else:
                code, reason = failure
                latest.update(
                    LastUpdateStatus="Failed", LastUpdateStatusReason=reason, LastUpdateStatusReasonCode=code
                )
                # A failed update leaves an Active function running what it ran before ("active").
                if creating:
                    latest.update(State="Failed", StateReason=reason, StateReasonCode=code)
            latest["RevisionId"] = _new_revision()
            self.store.put(FUNCTION_KIND, name, doc)
        self._changed(name)

    def _deploy_version(self, name: str, number: str) -> None:
        key = _version_key(name, number)
        version = self.store.get(VERSION_KIND, key)
        if version is None or version.get("State") != "Pending":
            return
        failure = self._check_code(version)
        with self.store.transaction():
            version = self.store.get(VERSION_KIND, key)
            if version is None or version.get("State") != "Pending":
                return
            for field in ("StateReason", "StateReasonCode"):
                version.pop(field, None)
            if failure is None:
                version["State"] = "Active"
            else:
                version.update(State="Failed", StateReasonCode=failure[0], StateReason=failure[1])
            version["RevisionId"] = _new_revision()
            self.store.put(VERSION_KIND, key, version)
        self._changed(name)

    def _collect_unused_code(self) -> None:
        """Delete zips and code directories no function or version uses any more."""
        used = {doc["latest"]["_code"] for _, doc in self.store.scan(FUNCTION_KIND)}
        used |= {(doc.get("active") or {}).get("_code") for _, doc in self.store.scan(FUNCTION_KIND)}
        used |= {doc["_code"] for _, doc in self.store.scan(VERSION_KIND)}
        for code_id, doc in self.store.scan(CODE_KIND):
            # A zip stored a moment ago may belong to a create or update that has not committed yet.
            if code_id not in used and time.time() - doc["stored"] > UNUSED_CODE_GRACE_S:
                with self.store.transaction():
                    self.store.delete(CODE_KIND, code_id)
                self.store.delete_blob(doc["blob"])
                shutil.rmtree(self.code_root / code_id, ignore_errors=True)
        for leftover in self.code_root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)


_UPDATING = {
    "LastUpdateStatus": "InProgress",
    # AWS's own wording, for updates too.
    "LastUpdateStatusReason": "The function is being created.",
    "LastUpdateStatusReasonCode": "Creating",
}


def _state_conflict(state: str) -> ServiceError:
    return _conflict(
        f"The operation cannot be performed at this time. The function is currently in the following state: {state}"
    )


def _alias_uses(alias: dict[str, Any], version: str) -> bool:
    weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    return alias["FunctionVersion"] == version or version in weights


def _entry_point_problem(code_dir: Path, handler: str) -> str | None:
    """Why the runtime client could not import the handler's module from `code_dir`; None if it can."""
    module, _, function = handler.rpartition(".")
    if not module or not function:
        return f"Bad handler '{handler}': expected <module>.<function>, e.g. handler.handler"
    path = module.replace(".", "/")
    try:
        candidates = [safe_join(code_dir, f"{path}.py"), safe_join(code_dir, f"{path}/__init__.py")]
        parent = safe_join(code_dir, path).parent
    except UnsafePath as error:
        return f"Bad handler '{handler}': {error}"
    stem = Path(path).name
    compiled = parent.is_dir() and any(
        entry.name.startswith(f"{stem}.") and entry.suffix in (".so", ".pyc") for entry in parent.iterdir()
    )
    if any(candidate.is_file() for candidate in candidates) or compiled:
        return None
    return (
        f"Unable to import module '{module}': the deployment package has no {path}.py "
        f"(Handler is {handler!r}; its module must be in the zip)"
    )


def _check_runtime(runtime: str) -> None:
    if not _PYTHON_RUNTIME.fullmatch(runtime):
        raise _invalid(
            f"localcloud runs Python functions only (python3.x runtimes, run with its own interpreter); "
            f"runtime {runtime!r} is not supported"
        )


def _check_role(role: str) -> None:
    if not _ROLE.fullmatch(role):
        raise _validation(
            role,
            "role",
            r"Member must satisfy regular expression pattern: arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+",
        )


def _checked_limits(timeout: int, memory: int) -> tuple[int, int]:
    if not 1 <= timeout <= 900:
        bound = "greater than or equal to 1" if timeout < 1 else "less than or equal to 900"
        raise _validation(timeout, "timeout", f"Member must have value {bound}")
    if not 128 <= memory <= 10240:
        bound = "greater than or equal to 128" if memory < 128 else "less than or equal to 10240"
        raise _validation(memory, "memorySize", f"Member must have value {bound}")
    return timeout, memory


def _checked_description(description: str) -> str:
    if len(description) > 256:
        raise _validation(
            description[:20] + "...", "description", "Member must have length less than or equal to 256"
        )
    return description


def _checked_environment(environment: dict[str, Any] | None) -> dict[str, str] | None:
    if environment is None:
        return None
    variables = environment.get("Variables") or {}
    for key in variables:
        if not _ENV_NAME.fullmatch(key):
            raise _validation(
                key,
                "environment.variables",
                "Map keys must satisfy constraint: [Member must satisfy regular expression pattern: [a-zA-Z]([a-zA-Z0-9_])+]",
            )
    reserved = sorted(set(variables) & RESERVED_ENVIRONMENT)
    if reserved:
        raise _invalid(
            "Lambda was unable to configure your environment variables because the environment variables you have "
            "provided contains reserved keys that are currently not supported for modification. "
            f"Reserved keys used in this request: {', '.join(reserved)}"
        )
    measured = json.dumps(variables, separators=(",", ":"))
    if len(measured.encode()) > MAX_ENVIRONMENT_BYTES:
        raise _invalid(
            "Lambda was unable to configure your environment variables because the environment variables you have "
            f"provided exceeded the 4KB limit. String measured: {measured[:200]}"
        )
    return {key: str(value) for key, value in variables.items()}


def _decoded_client_context(client_context: str) -> str:
    try:
        text = base64.b64decode(client_context, validate=True).decode()
        json.loads(text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _invalid("Client context must be a valid Base64-encoded JSON object.") from None
    return text


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


def _page(
    items: list[dict[str, Any]], marker: str | None, max_items: int | None, key: Callable[[dict], str]
) -> tuple[list[dict[str, Any]], str | None]:
    """One page after `marker` (the key of the last item of the previous page) and the next marker."""
    limit = max_items or DEFAULT_LIST_ITEMS
    start = 0
    if marker:
        keys = [key(item) for item in items]
        if marker not in keys:
            raise _invalid(f"Invalid marker {marker!r}; pass the NextMarker of the previous page.")
        start = keys.index(marker) + 1
    page = items[start : start + limit]
    more = start + limit < len(items)
    return page, key(page[-1]) if more and page else None


class LambdaService(Service):
    model_name = "lambda"
    validation_error_code = "ValidationException"
    internal_error_code = "ServiceException"
    unsigned_path_prefixes = ("/_localcloud/lambda/",)
    backend: LambdaBackend

    def body_limit(self, operation_name: str | None, request: Request) -> int:
        if operation_name == "Invoke":  # checked before the payload is read, as Lambda does
            event = request.headers.get("x-amz-invocation-type") == "Event"
            return MAX_EVENT_PAYLOAD_BYTES if event else MAX_INVOKE_PAYLOAD_BYTES
        if operation_name in ("CreateFunction", "UpdateFunctionCode"):
            return MAX_REQUEST_BYTES  # the zip travels base64-encoded in the JSON body
        return self.config.max_request_bytes

    def request_too_large(self, limit: int) -> ServiceError:
        return payload_too_large(limit)

    # --- functions -----------------------------------------------------------------------------------

    @operation("CreateFunction")
    def create_function(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.create_function(params)

    @operation("GetFunction")
    def get_function(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.get_function(params["FunctionName"], params.get("Qualifier"))

    @operation("GetFunctionConfiguration")
    def get_function_configuration(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.configuration(params["FunctionName"], params.get("Qualifier"))

    @operation("ListFunctions")
    def list_functions(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        functions = self.backend.list_functions()
        page, marker = _page(
            functions, params.get("Marker"), params.get("MaxItems"), lambda f: f["FunctionName"]
        )
        return {"Functions": page, "NextMarker": marker}

    @operation("UpdateFunctionCode")
    def update_function_code(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.update_function_code(params)

    @operation("UpdateFunctionConfiguration")
    def update_function_configuration(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.update_function_configuration(params)

    @operation("DeleteFunction")
    def delete_function(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_function(params["FunctionName"], params.get("Qualifier"))
        return {"StatusCode": 204}

    # --- versions and aliases -------------------------------------------------------------------------

    @operation("PublishVersion")
    def publish_version(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.publish_version(
            params["FunctionName"],
            params.get("CodeSha256"),
            params.get("Description"),
            params.get("RevisionId"),
        )

    @operation("ListVersionsByFunction")
    def list_versions_by_function(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        versions = self.backend.list_versions(params["FunctionName"])
        page, marker = _page(versions, params.get("Marker"), params.get("MaxItems"), lambda v: v["Version"])
        return {"Versions": page, "NextMarker": marker}

    @operation("CreateAlias")
    def create_alias(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.create_alias(
            params["FunctionName"],
            params["Name"],
            params["FunctionVersion"],
            params.get("Description", ""),
            params.get("RoutingConfig"),
        )

    @operation("GetAlias")
    def get_alias(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.alias(params["FunctionName"], params["Name"])

    @operation("UpdateAlias")
    def update_alias(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.update_alias(params["FunctionName"], params["Name"], params)

    @operation("DeleteAlias")
    def delete_alias(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_alias(params["FunctionName"], params["Name"])
        return {}

    @operation("ListAliases")
    def list_aliases(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        aliases = self.backend.list_aliases(params["FunctionName"], params.get("FunctionVersion"))
        page, marker = _page(aliases, params.get("Marker"), params.get("MaxItems"), lambda a: a["Name"])
        return {"Aliases": page, "NextMarker": marker}

    # --- permissions -----------------------------------------------------------------------------------

    @operation("AddPermission")
    def add_permission(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return {
            "Statement": self.backend.add_permission(params["FunctionName"], params.get("Qualifier"), params)
        }

    @operation("GetPolicy")
    def get_policy(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        name, _ = self.backend.parse_ref(params["FunctionName"])
        return {
            "Policy": self.backend.policy(params["FunctionName"]),
            "RevisionId": self.backend.function(name)["latest"]["RevisionId"],
        }

    @operation("RemovePermission")
    def remove_permission(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.remove_permission(params["FunctionName"], params["StatementId"])
        return {}

    # --- invoking ----------------------------------------------------------------------------------------

    @operation("Invoke")
    def invoke(self, params: dict[str, Any], request: Request) -> dict[str, Any] | Response:
        invocation_type = params.get("InvocationType", "RequestResponse")
        if invocation_type not in ("RequestResponse", "Event", "DryRun"):
            raise _validation(
                invocation_type,
                "invocationType",
                "Member must satisfy enum value set: [Event, RequestResponse, DryRun]",
            )
        payload = params.get("Payload") or b""
        if payload and invocation_type != "DryRun":
            _check_json(payload)
        result = self.backend.invoke(
            params["FunctionName"],
            params.get("Qualifier"),
            payload,
            invocation_type=invocation_type,
            tail=params.get("LogType") == "Tail",
            client_context=params.get("ClientContext"),
        )
        if result is None:
            return {"StatusCode": 204 if invocation_type == "DryRun" else 202}
        response = self.serialize(
            "Invoke",
            {
                "StatusCode": 200,
                "FunctionError": result.function_error,
                "LogResult": result.log_tail,
                "ExecutedVersion": result.executed_version,
                "Payload": result.payload,
            },
            request,
        )
        response.headers["Content-Type"] = "application/json"
        return response

    @route("GET", "/_localcloud/lambda/code/{CodeFile}")
    def download_code(self, params: dict[str, Any], request: Request) -> Response:
        """GetFunction's Code.Location: the deployment package as uploaded."""
        code_id = params["CodeFile"].removesuffix(".zip")
        file = self.backend.open_code(code_id)
        size = os.fstat(file.fileno()).st_size
        return Response(200, {"Content-Type": "application/zip"}, FileBody(file, 0, size))


def payload_too_large(limit: int, size: int | None = None) -> ServiceError:
    """Lambda's RequestEntityTooLargeException, in its words for Invoke and for other operations."""
    if limit == MAX_EVENT_PAYLOAD_BYTES:
        measured = f"{size} byte payload" if size is not None else "The payload"
        message = f"{measured} is too large for the Event invocation type (limit {limit} bytes)"
    elif limit == MAX_INVOKE_PAYLOAD_BYTES:
        message = f"Request must be smaller than {limit} bytes for the InvokeFunction operation"
    else:
        message = f"Request must be smaller than {limit} bytes"
    return ServiceError("RequestEntityTooLargeException", message, 413, Type="User")


def _check_json(payload: bytes) -> None:
    try:
        json.loads(payload)
    except ValueError as error:
        raise ServiceError(
            "InvalidRequestContentException",
            f"Could not parse request body into json: {error}",
            400,
            Type="User",
        ) from None
