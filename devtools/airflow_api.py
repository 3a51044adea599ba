"""The few calls of Airflow's public REST API v2 the demo and the tests need."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from devtools.layout import DemoError


class Airflow:
    """The few calls of Airflow's public REST API the demo needs, with a JWT from /auth/token."""

    def __init__(self, base_url: str, username: str, password: str):
        self.base_url = base_url.rstrip("/")
        self.token = self._request(
            "POST", "/auth/token", {"username": username, "password": password}, auth=False
        )["access_token"]

    def _request(self, method: str, path: str, body: dict | None = None, *, auth: bool = True) -> dict:
        request = urllib.request.Request(  # noqa: S310 (the loopback api-server's URL)
            self.base_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise DemoError(f"Airflow {method} {path}: HTTP {error.code} {error.read()[:500]!r}") from None

    def dag(self, dag_id: str) -> dict | None:
        try:
            return self._request("GET", f"/api/v2/dags/{dag_id}")
        except DemoError as error:
            if "HTTP 404" in str(error):
                return None
            raise

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, note: str) -> dict:
        return self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "note": note})

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}")

    def active_runs(self, dag_id: str) -> list[dict]:
        runs = self._request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns?state=queued&state=running&order_by=run_after"
        )
        return runs["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        listed = self._request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}/taskInstances?limit=100"
        )
        return {ti["task_id"]: ti["state"] for ti in listed["task_instances"]}


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")
