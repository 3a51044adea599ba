"""The MNIST audit page in the Airflow UI: past mnist_retraining runs, as the audit CLI shows them.

A FastAPI app mounted in the api-server at ``/mnist-audit`` (``/`` an HTML table, ``/runs`` the
same rows as JSON), and an entry "MNIST audit" in the UI's Browse menu that opens it. The rows
come from :func:`mnist_pipeline.audit_view.run_rows`, the code behind
``python -m mnist_pipeline.audit_view``.

Every Airflow component loads plugins (workers too, for macros and listeners), so this module
imports only FastAPI; AWS clients (through the ``aws_default`` connection, per request), the
settings and Airflow's security checks are loaded when a page is asked for. Who may read the
DAG's runs may read their audit: the same check as the runs list, with the same login.
"""

from __future__ import annotations

import html

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

URL_PREFIX = "/mnist-audit"
MAX_LIMIT = 500


async def can_read_runs(request: Request) -> None:
    """Airflow's own check: a logged-in user allowed to read mnist_retraining's runs (else 401/403)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, requires_access_dag

    from mnist_pipeline.audit_view import DAG_ID

    user = await get_user(request, None, await bearer_scheme(request))
    requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)(request, user)


def airflow_base_url() -> str:
    """``[api] base_url`` when set (the api-server may sit under a path); else root-relative links."""
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback="") or ""


def load_rows(limit: int) -> list[dict]:
    """The rows, or a 503 that says what to fix (a setting, the connection, the bucket)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from mnist_pipeline.audit_view import aws_clients, run_rows
    from mnist_pipeline.config import ConfigError, load_config

    try:
        config = load_config()
        s3, sm = aws_clients()
        return run_rows(s3, sm, config, airflow_url=airflow_base_url(), limit=limit)
    except (ConfigError, BotoCoreError, ClientError) as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"cannot read the audit: {error}") from error


app = FastAPI(title="MNIST audit", dependencies=[Depends(can_read_runs)])
Limit = Query(30, ge=1, le=MAX_LIMIT, description="the latest N runs")


@app.get("/runs")
async def runs(limit: int = Limit) -> list[dict]:
    """The rows as JSON (what ``python -m mnist_pipeline.audit_view --json`` prints)."""
    return await run_in_threadpool(load_rows, limit)


@app.get("/", response_class=HTMLResponse)
async def page(limit: int = Limit) -> str:
    """The rows as an HTML table; each run links to its Airflow run page."""
    return html_page(await run_in_threadpool(load_rows, limit))


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a202c; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #e2e8f0; padding: 0.35rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f7fafc; }
ul { margin: 0.2rem 0 0; padding-left: 1rem; color: #4a5568; }
.deployed { color: #276749; } .failed, .rolled_back { color: #c53030; } .rejected { color: #b7791f; }
"""


def html_page(rows: list[dict]) -> str:
    from mnist_pipeline.audit_view import cells, details

    escape = html.escape
    if not rows:
        body = "<p>No audited runs yet.</p>"
    else:
        titles = list(cells(rows[0]))
        lines = []
        for row in rows:
            texts = cells(row)
            tds = []
            for title in titles:
                text = escape(texts[title])
                if title == "Run":
                    text = f'<a href="{escape(row["run_url"])}" target="_top">{text}</a>'
                elif title == "Gate" and details(row):
                    text += "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in details(row)) + "</ul>"
                elif title == "Outcome":
                    text = f'<span class="{escape(row["outcome"])}">{text}</span>'
                tds.append(f"<td>{text}</td>")
            lines.append(f"<tr>{''.join(tds)}</tr>")
        header = "".join(f"<th>{escape(title)}</th>" for title in titles)
        body = f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>MNIST audit</title>'
        f"<style>{_STYLE}</style></head><body><h1>mnist_retraining: past runs</h1>{body}</body></html>"
    )


class MnistAuditPlugin(AirflowPlugin):
    name = "mnist_audit"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "MNIST audit"}]
    external_views = [
        {
            "name": "MNIST audit",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "mnist-audit",
        }
    ]
