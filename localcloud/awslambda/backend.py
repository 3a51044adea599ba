"""LambdaBackend: functions, versions, aliases and permissions, behind one in-process API.

Its parts: the deployment packages (code_store.py), the deployer thread that turns what it creates
Active or Failed (deployer.py), the Invoker that routes invocations to the runtime's pools (invoke.py),
and the runtime itself (runtime/). How its state sits in the store: state.py.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any, BinaryIO

from localcloud.awslambda.code_store import CodeSource, CodeStore
from localcloud.awslambda.deployer import Deployer
from localcloud.awslambda.exceptions import conflict, invalid_parameter, not_found, revision_mismatch
from localcloud.awslambda.invoke import Invoker
from localcloud.awslambda.runtime.pool import InvocationResult, LambdaRuntime
from localcloud.awslambda.state import (
    ALIAS_KIND,
    FUNCTION_KIND,
    PUBLISHED_SETTINGS,
    VERSION_KIND,
    new_revision,
    public,
    version_key,
)
from localcloud.awslambda.validation import (
    LATEST,
    VERSION_NUMBER,
    check_alias_name,
    check_role,
    check_runtime,
    check_version_name,
    checked_description,
    checked_environment,
    checked_limits,
    checked_routing_weights,
    parse_function_ref,
)
from localcloud.chaos import FaultRules
from localcloud.config import Config
from localcloud.processes import ProcessGroups
from localcloud.service import Backend
from localcloud.store import Store

if TYPE_CHECKING:
    from localcloud.app import LocalCloud
    from localcloud.logs import LogsBackend
    from localcloud.s3 import S3Backend

_CONFIGURABLE = ("Role", "Handler", "Description", "Timeout", "MemorySize", "Runtime", "TracingConfig")
_UPDATING = {
    "LastUpdateStatus": "InProgress",
    # AWS's own wording, for updates too.
    "LastUpdateStatusReason": "The function is being created.",
    "LastUpdateStatusReasonCode": "Creating",
}


def _last_modified() -> str:
    """Lambda's LastModified format: 2026-11-25T12:00:00.000+0000."""
    moment = dt.datetime.now(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def _alias_uses(alias: dict[str, Any], version: str) -> bool:
    weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    return alias["FunctionVersion"] == version or version in weights


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
        self.code = CodeStore(store, s3, self.root / "code")
        self.runtime = LambdaRuntime(
            logs,
            self.root / "bytecode",
            ProcessGroups(store),
            workers_per_version=workers_per_version or config.lambda_workers_per_version,
            queue_per_version=config.lambda_queue_per_version
            if queue_per_version is None
            else queue_per_version,
        )
        self.invoker = Invoker(self)
        self.deployer = Deployer(store, self.code, self.invoker.changed)
        self.endpoint_url = ""

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, cloud: LocalCloud) -> None:
        self.endpoint_url = cloud.endpoint_url
        self.runtime.start(cloud)
        self.deployer.start()

    def stop(self) -> None:
        self.deployer.stop()
        self.invoker.stop()
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
        return parse_function_ref(function_name, qualifier)

    def _unqualified(self, function_name: str) -> str:
        name, qualifier = self.parse_ref(function_name)
        if qualifier:
            raise invalid_parameter(
                f"Remove the qualifier {qualifier!r} from the function name {function_name!r}."
            )
        return name

    # --- reading state -----------------------------------------------------------------------------

    def function(self, name: str) -> dict[str, Any]:
        doc = self.store.get(FUNCTION_KIND, name)
        if doc is None:
            raise not_found(f"Function not found: {self.arn(name)}")
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
        if VERSION_NUMBER.fullmatch(qualifier):
            return public(self.version(name, qualifier))
        alias = self.alias_or_none(name, qualifier)
        if alias is None:
            raise not_found(f"Function not found: {self.arn(name, qualifier)}")
        target = alias["FunctionVersion"]
        config = public(doc["latest"] if target == LATEST else self.version(name, target))
        config["FunctionArn"] = self.arn(name, qualifier)
        return config

    def version(self, name: str, version: str) -> dict[str, Any]:
        found = self.store.get(VERSION_KIND, version_key(name, version))
        if found is None:
            self.function(name)
            raise not_found(f"Function not found: {self.arn(name, version)}")
        return found

    def alias_or_none(self, name: str, alias: str) -> dict[str, Any] | None:
        return self.store.get(ALIAS_KIND, f"{name}:{alias}")

    def get_function(self, function_name: str, qualifier: str | None = None) -> dict[str, Any]:
        """GetFunction: the configuration, where to download the code, and the tags."""
        name, qualifier = self.parse_ref(function_name, qualifier)
        config = self.configuration(name, qualifier)
        doc = self.function(name)
        stored = doc["latest"] if config["Version"] == LATEST else self.version(name, config["Version"])
        location = f"{self.endpoint_url}/_localcloud/lambda/code/{stored['_code']}.zip"
        return {
            "Configuration": config,
            "Code": {"RepositoryType": "S3", "Location": location},
            "Tags": doc["tags"] or None,
        }

    def open_code(self, code_id: str) -> BinaryIO:
        return self.code.open(code_id)

    def list_functions(self) -> list[dict[str, Any]]:
        return [public(doc["latest"]) for _, doc in self.store.scan(FUNCTION_KIND)]

    # --- functions ---------------------------------------------------------------------------------

    def create_function(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._unqualified(params["FunctionName"])
        if params.get("PackageType", "Zip") != "Zip":
            raise invalid_parameter("localcloud runs zip packages only; PackageType Image is not supported")
        runtime, handler = params.get("Runtime"), params.get("Handler")
        if not runtime or not handler:
            raise invalid_parameter(
                "Runtime and Handler are mandatory parameters for functions created with deployment packages."
            )
        check_runtime(runtime)
        check_role(params["Role"])
        timeout, memory = checked_limits(params.get("Timeout", 3), params.get("MemorySize", 128))
        variables = checked_environment(params.get("Environment"))
        description = checked_description(params.get("Description", ""))
        code = self.code.put(CodeSource.from_params(params["Code"]))
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
            "RevisionId": new_revision(),
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
                raise conflict(f"Function already exist: {name}")
            result = self._publish_in_transaction(name, None) if params.get("Publish") else config
        self.invoker.changed(name)
        self.deployer.deploy_latest(name)
        if params.get("Publish"):
            self.deployer.deploy_version(name, result["Version"])
        return public(result)

    def update_function_code(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._unqualified(params["FunctionName"])
        source = CodeSource.from_params(params)
        code = self.code.put(source)
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
                RevisionId=new_revision(),
                **_UPDATING,
            )
            self.store.put(FUNCTION_KIND, name, doc)
            result = self._publish_in_transaction(name, None) if params.get("Publish") else latest
        self.invoker.changed(name)
        self.deployer.deploy_latest(name)
        if params.get("Publish"):
            self.deployer.deploy_version(name, result["Version"])
        return public(result)

    def update_function_configuration(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._unqualified(params["FunctionName"])
        changes = {key: params[key] for key in _CONFIGURABLE if key in params}
        if "Runtime" in changes:
            check_runtime(changes["Runtime"])
        if "Role" in changes:
            check_role(changes["Role"])
        if "Description" in changes:
            checked_description(changes["Description"])
        if "Environment" in params:
            variables = checked_environment(params["Environment"])
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
            checked_limits(
                changes.get("Timeout", latest["Timeout"]), changes.get("MemorySize", latest["MemorySize"])
            )
            latest.update(changes, LastModified=_last_modified(), RevisionId=new_revision(), **_UPDATING)
            self.store.put(FUNCTION_KIND, name, doc)
        self.invoker.changed(name)
        self.deployer.deploy_latest(name)
        return public(latest)

    def _check_updatable(self, latest: dict[str, Any], revision_id: str | None) -> None:
        if revision_id and revision_id != latest["RevisionId"]:
            raise revision_mismatch()
        if latest.get("State") == "Pending":
            raise conflict(
                "The operation cannot be performed at this time. "
                "The function is currently in the following state: Pending"
            )
        if latest.get("LastUpdateStatus") == "InProgress":
            raise conflict(
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
            self.invoker.changed(name)
            self.runtime.retire(name)
            self.deployer.collect_unused_code()  # its code, unless something else uses it
            return
        if qualifier == LATEST:
            raise invalid_parameter(
                "$LATEST version cannot be deleted without deleting all versions and aliases."
            )
        if not VERSION_NUMBER.fullmatch(qualifier):
            raise invalid_parameter(
                f"Deletion of aliases is not supported through DeleteFunction; use DeleteAlias for {qualifier}."
            )
        with self.store.transaction():
            self.version(name, qualifier)
            using = [alias["Name"] for alias in self._aliases(name) if _alias_uses(alias, qualifier)]
            if using:
                raise conflict(
                    f"Unable to delete version because the following aliases reference it: {using}"
                )
            self.store.delete(VERSION_KIND, version_key(name, qualifier))
        self.invoker.changed(name)
        self.runtime.retire(name, qualifier)
        self.deployer.collect_unused_code()

    # --- versions ----------------------------------------------------------------------------------

    def publish_version(
        self, function_name: str, code_sha256: str | None, description: str | None, revision_id: str | None
    ) -> dict[str, Any]:
        name = self._unqualified(function_name)
        with self.store.transaction():
            latest = self.function(name)["latest"]
            if code_sha256 and code_sha256 != latest["CodeSha256"]:
                raise invalid_parameter(
                    f"CodeSHA256 ({code_sha256}) is different from current CodeSHA256 in $LATEST "
                    f"({latest['CodeSha256']}). Please try again with the CodeSHA256 in $LATEST."
                )
            if revision_id and revision_id != latest["RevisionId"]:
                raise revision_mismatch()
            if latest.get("State") != "Active" or latest.get("LastUpdateStatus") == "InProgress":
                state = (
                    latest.get("LastUpdateStatus") if latest.get("State") == "Active" else latest.get("State")
                )
                raise conflict(
                    "The operation cannot be performed at this time. "
                    f"The function is currently in the following state: {state}"
                )
            version = self._publish_in_transaction(
                name, checked_description(description) if description is not None else None
            )
        self.invoker.changed(name)
        self.deployer.deploy_version(name, version["Version"])
        return public(version)

    def _publish_in_transaction(self, name: str, description: str | None) -> dict[str, Any]:
        """Snapshot $LATEST as the next version, or return the last one if nothing changed since."""
        doc = self.function(name)
        latest = doc["latest"]
        settings = {key: latest.get(key) for key in PUBLISHED_SETTINGS}
        published = doc.get("published")
        if published and published["settings"] == settings:
            existing = self.store.get(VERSION_KIND, version_key(name, published["version"]))
            if existing is not None:
                return existing  # as on AWS: an unchanged function gets its last version back
        number = str(doc["next_version"])
        version = {
            **latest,
            "FunctionArn": self.arn(name, number),
            "Version": number,
            "Description": latest.get("Description", "") if description is None else description,
            "RevisionId": new_revision(),
            "State": "Pending",
            "StateReason": "The function is being created.",
            "StateReasonCode": "Creating",
        }
        for key in ("LastUpdateStatus", "LastUpdateStatusReason", "LastUpdateStatusReasonCode"):
            version.pop(key, None)  # versions have no update status
        doc["next_version"] += 1
        doc["published"] = {"version": number, "settings": settings}
        latest["RevisionId"] = new_revision()  # publishing counts as a change of $LATEST's revision
        self.store.put(FUNCTION_KIND, name, doc)
        self.store.put(VERSION_KIND, version_key(name, number), version)
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
        found = self.alias_or_none(name, alias)
        if found is None:
            self.function(name)
            raise not_found(f"Alias not found: {self.arn(name, alias)}")
        return found

    def create_alias(
        self, function_name: str, alias: str, version: str, description: str, routing: dict[str, Any] | None
    ) -> dict[str, Any]:
        name = self._unqualified(function_name)
        check_alias_name(alias)
        with self.store.transaction():
            self._check_version_exists(name, version)
            weights = self._checked_routing(name, version, routing)
            doc = {
                "AliasArn": self.arn(name, alias),
                "Name": alias,
                "FunctionVersion": version,
                "Description": checked_description(description or ""),
                "RoutingConfig": {"AdditionalVersionWeights": weights} if weights else None,
                "RevisionId": new_revision(),
            }
            doc = {key: value for key, value in doc.items() if value is not None}
            if not self.store.insert(ALIAS_KIND, f"{name}:{alias}", doc):
                raise conflict(f"Alias already exists: {self.arn(name, alias)}")
        self.invoker.changed(name)
        return doc

    def update_alias(self, function_name: str, alias: str, params: dict[str, Any]) -> dict[str, Any]:
        name = self._unqualified(function_name)
        with self.store.transaction():
            doc = self.alias(name, alias)
            if params.get("RevisionId") and params["RevisionId"] != doc["RevisionId"]:
                raise revision_mismatch()
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
                doc["Description"] = checked_description(params["Description"])
            doc.update(FunctionVersion=version, RevisionId=new_revision())
            self.store.put(ALIAS_KIND, f"{name}:{alias}", doc)
        self.invoker.changed(name)
        return doc

    def delete_alias(self, function_name: str, alias: str) -> None:
        name = self._unqualified(function_name)
        with self.store.transaction():
            self.alias(name, alias)
            self.store.delete(ALIAS_KIND, f"{name}:{alias}")
        self.invoker.changed(name)

    def list_aliases(self, function_name: str, version: str | None) -> list[dict[str, Any]]:
        name = self._unqualified(function_name)
        self.function(name)
        return [alias for alias in self._aliases(name) if version in (None, alias["FunctionVersion"])]

    def _check_version_exists(self, name: str, version: str) -> None:
        check_version_name(version)
        if version == LATEST:
            self.function(name)
        else:
            self.version(name, version)

    def _checked_routing(self, name: str, version: str, routing: dict[str, Any] | None) -> dict[str, float]:
        weights = checked_routing_weights(version, routing)
        for extra in weights:
            self.version(name, extra)
        return weights

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
                raise conflict(
                    f"The statement id ({sid}) provided already exists. Please provide a new statement id, or remove the existing statement."
                )
            doc["policy"][sid] = statement
            self.store.put(FUNCTION_KIND, name, doc)
        return json.dumps(statement)

    def policy(self, function_name: str) -> str:
        name, _ = self.parse_ref(function_name)
        statements = list(self.function(name)["policy"].values())
        if not statements:
            raise not_found("The resource you requested does not exist.")
        return json.dumps({"Version": "2012-10-17", "Id": "default", "Statement": statements})

    def remove_permission(self, function_name: str, sid: str) -> None:
        name, _ = self.parse_ref(function_name)
        with self.store.transaction():
            doc = self.function(name)
            if doc["policy"].pop(sid, None) is None:
                raise not_found(f"Statement {sid} is not found in resource policy.")
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
        return self.invoker.invoke(
            function_name,
            qualifier,
            payload,
            invocation_type=invocation_type,
            tail=tail,
            client_context=client_context,
        )
