"""The MNIST audit page in the Airflow UI: past mnist_retraining runs, as the audit CLI shows them.

A FastAPI app mounted in the api-server at ``/mnist-audit``, and an entry "MNIST audit" in the UI's
Browse menu that opens it:

- ``/``: the page. Charts of holdout accuracy per run (candidate, champion, the gate's
  ``min_accuracy``) and of the live-traffic drift score, the table, and each run's confusion matrix
  with links to its evaluation report;
- ``/runs``: the same rows as JSON;
- ``/evaluation/report.md?run=<id>`` and ``/evaluation/evaluation.json?run=<id>``: the run's
  evaluation files, read from S3 with the page's own access (so the links work wherever the page
  does, localcloud or AWS, with no presigned URL for the browser to reach);
- ``/static/<file>``: the page's script and Chart.js, served from ``mnist_audit_static/`` beside
  this file, so the UI needs no CDN. Chart.js is not committed: ``make install`` (``make
  ui-assets``, ``devtools/ui_assets.py``) fetches it from the npm registry at a pinned version and
  checks its sha512. Without it the page keeps its tables and says how to get the charts.

The rows come from :func:`mnist_pipeline.audit_view.run_rows`, the code behind
``python -m mnist_pipeline.audit_view``.

Every Airflow component loads plugins (workers too, for macros and listeners), so this module
imports only FastAPI; AWS clients (through the ``aws_default`` connection, per request), the
settings and Airflow's security checks are loaded when a page is asked for. Who may read the
DAG's runs may read their audit: the same check as the runs list, with the same login.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

URL_PREFIX = "/mnist-audit"
MAX_LIMIT = 500
STATIC_DIR = Path(__file__).resolve().parent / "mnist_audit_static"
# Fetched by `make install` (devtools/ui_assets.py), gitignored: never committed.
CHART_JS = STATIC_DIR / "vendor" / "chart.umd.js"
EVALUATION_MEDIA_TYPES = {"report.md": "text/plain; charset=utf-8", "evaluation.json": "application/json"}


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


def read_audit(read):
    """``read(s3, sm, config)`` with the settings and the connection, or a 503 that says what to fix
    (a setting, the connection, the bucket)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from mnist_pipeline.audit_view import aws_clients
    from mnist_pipeline.config import ConfigError, load_config

    try:
        config = load_config()
        s3, sm = aws_clients()
        return read(s3, sm, config)
    except (ConfigError, BotoCoreError, ClientError) as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"cannot read the audit: {error}") from error


def load_rows(limit: int) -> list[dict]:
    from mnist_pipeline.audit_view import run_rows

    return read_audit(
        lambda s3, sm, config: run_rows(s3, sm, config, airflow_url=airflow_base_url(), limit=limit)
    )


def load_page(limit: int) -> str:
    """The page: the rows, what the charts draw and each run's confusion matrix."""
    from mnist_pipeline.audit_view import chart_data, evaluation_summaries, run_rows

    def read(s3, sm, config):
        rows = run_rows(s3, sm, config, airflow_url=airflow_base_url(), limit=limit)
        return rows, evaluation_summaries(s3, config, rows)

    rows, evaluations = read_audit(read)
    return html_page(rows, chart_data(rows), evaluations, charts_installed=CHART_JS.is_file())


def load_evaluation_file(run_id: str, name: str) -> bytes:
    from mnist_pipeline.audit_view import EvaluationNotFound, evaluation_file

    try:
        return read_audit(lambda s3, sm, config: evaluation_file(s3, config, run_id, name))
    except EvaluationNotFound as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from error


app = FastAPI(title="MNIST audit", dependencies=[Depends(can_read_runs)])
Limit = Query(30, ge=1, le=MAX_LIMIT, description="the latest N runs")


@app.get("/runs")
async def runs(limit: int = Limit) -> list[dict]:
    """The rows as JSON (what ``python -m mnist_pipeline.audit_view --json`` prints)."""
    return await run_in_threadpool(load_rows, limit)


@app.get("/", response_class=HTMLResponse)
async def page(limit: int = Limit) -> str:
    """The charts, the rows as an HTML table (each run links to its Airflow run page), the
    confusion matrices."""
    return await run_in_threadpool(load_page, limit)


@app.get("/evaluation/{name}")
async def evaluation(
    name: Literal["report.md", "evaluation.json"],
    run: str = Query(..., min_length=1, max_length=250, description="the run id"),
) -> Response:
    """The run's evaluation report (Markdown, shown as text) or its evaluation.json."""
    content = await run_in_threadpool(load_evaluation_file, run, name)
    return Response(
        content,
        media_type=EVALUATION_MEDIA_TYPES[name],
        headers={"Content-Disposition": f'inline; filename="{name}"'},
    )


@app.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    """The page's script and the chart library (only these files)."""
    path = {"audit_charts.js": STATIC_DIR / "audit_charts.js", "chart.umd.js": CHART_JS}.get(name)
    if path is None or not path.is_file():
        hint = " (not installed: run `make install` or `make ui-assets`)" if path == CHART_JS else ""
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no static file {name!r}{hint}")
    return FileResponse(path, media_type="text/javascript")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a202c; }
h2 { font-size: 1.05rem; margin: 1.2rem 0 0.4rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #e2e8f0; padding: 0.35rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f7fafc; }
ul { margin: 0.2rem 0 0; padding-left: 1rem; color: #4a5568; }
.deployed, .sent { color: #276749; } .failed, .rolled_back { color: #c53030; } .rejected { color: #b7791f; }
.drift { color: #c53030; font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 1.5rem; }
.chart { width: 560px; height: 260px; position: relative; }
.note { color: #4a5568; background: #fffaf0; border: 1px solid #fbd38d; padding: 0.5rem 0.8rem; }
.evaluations { display: flex; flex-wrap: wrap; gap: 1rem 2rem; }
.evaluations summary { cursor: pointer; font-size: 0.85rem; }
table.confusion { font-size: 0.7rem; margin-top: 0.3rem; }
table.confusion th, table.confusion td { border: 1px solid #edf2f7; padding: 0.1rem 0.3rem; text-align: right; }
"""

_CHARTS_MISSING = (
    "The charts need Chart.js, which the plugin serves from "
    "<code>plugins/mnist_audit_static/vendor/chart.umd.js</code>; it is not there. "
    "Run <code>make install</code> (or <code>make ui-assets</code>): it fetches the pinned version from "
    "the npm registry and checks its sha512. The tables below do not need it."
)


def evaluation_link(run_id: str, name: str) -> str:
    """Relative to the page (``/mnist-audit/``), so it holds under any api-server base path."""
    return f"evaluation/{name}?run={quote(run_id, safe='')}"


def _links(run_id: str) -> str:
    escape = html.escape
    return " ".join(
        f'<a class="evaluation-link" href="{escape(evaluation_link(run_id, name))}">{name}</a>'
        for name in ("report.md", "evaluation.json")
    )


def _notes(lines: list[str]) -> str:
    if not lines:
        return ""
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def table_html(rows: list[dict]) -> str:
    from mnist_pipeline.audit_view import cells, notes

    escape = html.escape
    titles = list(cells(rows[0]))
    lines = []
    for row in rows:
        texts, by_column = cells(row), notes(row)
        tds = []
        for title in titles:
            text = escape(texts[title])
            if title == "Run":
                text = f'<a href="{escape(row["run_url"])}" target="_top">{text}</a>'
            elif title == "Outcome":
                text = f'<span class="{escape(row["outcome"])}">{text}</span>'
            elif title == "Drift" and (row.get("monitoring") or {}).get("drift"):
                text = f'<span class="drift">{text}</span>'
            elif title == "Alert":
                text = f'<span class="{escape(texts[title].replace(" ", "_"))}">{text}</span>'
            elif title == "Accuracy" and row.get("report_uri"):
                text += f"<br>{_links(row['run_id'])}"
            tds.append(f"<td>{text}{_notes(by_column.get(title, []))}</td>")
        lines.append(f"<tr>{''.join(tds)}</tr>")
    header = "".join(f"<th>{escape(title)}</th>" for title in titles)
    return f'<table id="runs"><thead><tr>{header}</tr></thead><tbody>{"".join(lines)}</tbody></table>'


def _heat(count: int, total: int, diagonal: bool) -> str:
    """A cell's colour: green by the share of the row it holds on the diagonal, red (made visible
    at a few percent) off it."""
    share = count / total if total else 0.0
    if diagonal:
        return f"rgba(56, 161, 105, {0.15 + 0.75 * share:.2f})"
    return f"rgba(229, 62, 62, {min(1.0, share * 5):.2f})" if count else "transparent"


def confusion_html(run_id: str, matrix: list[list[int]]) -> str:
    """A 10×10 heat-map table (rows: true digit, columns: predicted)."""
    escape = html.escape
    header = '<th title="rows: true digit, columns: predicted digit">true↓</th>' + "".join(
        f"<th>{digit}</th>" for digit in range(len(matrix))
    )
    body = []
    for digit, counts in enumerate(matrix):
        total = sum(counts)
        tds = "".join(
            f'<td style="background:{_heat(count, total, digit == predicted)}" '
            f'title="true {digit}, predicted {predicted}: {count}">{count}</td>'
            for predicted, count in enumerate(counts)
        )
        body.append(f"<tr><th>{digit}</th>{tds}</tr>")
    return (
        f'<table class="confusion" data-run="{escape(run_id)}"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def evaluations_html(rows: list[dict], evaluations: dict[str, dict]) -> str:
    escape = html.escape
    blocks = []
    for row in rows:
        summary = evaluations.get(row["run_id"])
        if summary is None:
            continue
        inner = (
            f'<p class="note">{escape(summary["error"])}</p>'
            if "error" in summary
            else confusion_html(row["run_id"], summary["confusion_matrix"])
        )
        accuracy = "" if row["accuracy"] is None else f" — accuracy {row['accuracy']:.4f}"
        open_attribute = "" if blocks else " open"  # the newest open, the others a click away
        blocks.append(
            f'<details class="evaluation"{open_attribute}><summary>{escape(row["run_id"])}{accuracy} · '
            f"{_links(row['run_id'])}</summary>{inner}</details>"
        )
    if not blocks:
        return "<p>No evaluated runs yet.</p>"
    return f'<div class="evaluations">{"".join(blocks)}</div>'


def _json_script(document) -> str:
    """JSON inside a ``<script type="application/json">``: nothing in it can close the tag."""
    text = json.dumps(document).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="audit-data">{text}</script>'


def charts_html(charts: dict, charts_installed: bool) -> str:
    missing = f'<p class="note" id="charts-missing"{"" if not charts_installed else " hidden"}>{_CHARTS_MISSING}</p>'
    accuracy = (
        '<canvas id="accuracy-chart" aria-label="holdout accuracy per run"></canvas>'
        if charts["accuracy"]["runs"]
        else "<p>No evaluated runs yet.</p>"
    )
    drift = (
        '<canvas id="drift-chart" aria-label="drift score per run"></canvas>'
        if charts["drift"]["runs"]
        else "<p>No run has scored live traffic yet.</p>"
    )
    scripts = '<script src="static/chart.umd.js"></script>' if charts_installed else ""
    return (
        f'{missing}<div class="charts">'
        f'<div><h2>Holdout accuracy: candidate, champion, the gate\'s min_accuracy</h2><div class="chart">{accuracy}</div></div>'
        f'<div><h2>Drift score of live traffic</h2><div class="chart">{drift}</div></div></div>'
        f'{_json_script(charts)}{scripts}<script src="static/audit_charts.js"></script>'
    )


def html_page(
    rows: list[dict],
    charts: dict | None = None,
    evaluations: dict[str, dict] | None = None,
    *,
    charts_installed: bool = False,
) -> str:
    if not rows:
        body = "<p>No audited runs yet.</p>"
    else:
        body = table_html(rows)
        if charts is not None:
            body = charts_html(charts, charts_installed) + "<h2>Runs</h2>" + body
        if evaluations is not None:
            body += "<h2>Confusion matrices (candidate; rows: true digit, columns: predicted)</h2>"
            body += evaluations_html(rows, evaluations)
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
