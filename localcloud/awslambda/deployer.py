"""The deployer thread: what moves functions and versions out of Pending and InProgress.

States move as on AWS, because the work behind them is real: CreateFunction answers Pending, and the
deployer unpacks the zip (safely, within Lambda's 250 MB limit) and checks that the handler's module is
in it before the function turns Active (or Failed, with a StateReason); an update answers
LastUpdateStatus InProgress until the same work is done; a published version is Pending until its code
is ready. Until an update succeeds, $LATEST keeps running the code and settings it had ("active").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from localcloud.awslambda.code_store import CodeStore
from localcloud.awslambda.state import (
    FUNCTION_KIND,
    PUBLISHED_SETTINGS,
    VERSION_KIND,
    new_revision,
    version_key,
)
from localcloud.store import Store

logger = logging.getLogger("localcloud")


class Deployer:
    """Runs deployment steps one at a time, in the order asked, on one thread.

    :param changed: called with a function's name after each step changed its state in the store.
    """

    def __init__(self, store: Store, code: CodeStore, changed: Callable[[str], None]) -> None:
        self.store = store
        self.code = code
        self.changed = changed
        self._jobs: list[tuple[Callable[..., None], tuple[str, ...]] | None] = []
        self._jobs_ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lambda-deployer", daemon=True)
        self._thread.start()
        # Work a previous run left unfinished (the server stopped while a function was Pending).
        for name, doc in self.store.scan(FUNCTION_KIND):
            latest = doc["latest"]
            if latest.get("State") == "Pending" or latest.get("LastUpdateStatus") == "InProgress":
                self.deploy_latest(name)
        for _, version in self.store.scan(VERSION_KIND):
            if version.get("State") == "Pending":
                self.deploy_version(version["FunctionName"], version["Version"])
        self.collect_unused_code()

    def stop(self) -> None:
        with self._jobs_ready:
            self._jobs.append(None)
            self._jobs_ready.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- what the backend asks for -------------------------------------------------------------------

    def deploy_latest(self, name: str) -> None:
        """Make $LATEST of `name` Active (or Failed) once its pending code is checked."""
        self._schedule(self._deploy_latest, name)

    def deploy_version(self, name: str, number: str) -> None:
        """Make a published version Active (or Failed) once its code is checked."""
        self._schedule(self._deploy_version, name, number)

    def collect_unused_code(self) -> None:
        """Delete zips and code directories no function or version uses any more."""
        self._schedule(self._collect_unused_code)

    # --- the thread --------------------------------------------------------------------------------

    def _schedule(self, step: Callable[..., None], *args: str) -> None:
        """Run `step(*args)` on the deployer thread, after the steps scheduled before it."""
        with self._jobs_ready:
            self._jobs.append((step, args))
            self._jobs_ready.notify()

    def _run(self) -> None:
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
        failure = self.code.check(latest)
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
                    key: latest.get(key) for key in (*PUBLISHED_SETTINGS, "_code", "FunctionName")
                }
            else:
                code, reason = failure
                latest.update(
                    LastUpdateStatus="Failed", LastUpdateStatusReason=reason, LastUpdateStatusReasonCode=code
                )
                # A failed update leaves an Active function running what it ran before ("active").
                if creating:
                    latest.update(State="Failed", StateReason=reason, StateReasonCode=code)
            latest["RevisionId"] = new_revision()
            self.store.put(FUNCTION_KIND, name, doc)
        self.changed(name)

    def _deploy_version(self, name: str, number: str) -> None:
        key = version_key(name, number)
        version = self.store.get(VERSION_KIND, key)
        if version is None or version.get("State") != "Pending":
            return
        failure = self.code.check(version)
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
            version["RevisionId"] = new_revision()
            self.store.put(VERSION_KIND, key, version)
        self.changed(name)

    def _collect_unused_code(self) -> None:
        used = {doc["latest"]["_code"] for _, doc in self.store.scan(FUNCTION_KIND)}
        used |= {(doc.get("active") or {}).get("_code") for _, doc in self.store.scan(FUNCTION_KIND)}
        used |= {doc["_code"] for _, doc in self.store.scan(VERSION_KIND)}
        self.code.collect_unused(used)
