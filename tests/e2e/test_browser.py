"""The Airflow UI in a real browser (headless Chromium): log in, trigger mnist_retraining through the
Params form with changed values, see the run succeed, find it on the MNIST audit page, with its
point on the accuracy chart (Chart.js, served by the plugin), its confusion matrix and a report
link that answers.

Runs against ``make demo``'s stack in a temporary root (``demo_stack``, shared with the fault suite);
skips when chromium is not installed. Screenshots in test-artifacts/: browser-audit-charts.png (the
charts), browser-audit-confusion.png (the run's matrix) and browser-audit.png (the last page).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from devtools import ui_assets
from devtools.airflow_api import Airflow
from devtools.airflow_env import admin_password
from devtools.cli import run_page
from devtools.layout import DAG_ID, FINISHED

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(420)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# A quick run that still deploys: a few images, one epoch, a gate a small model passes.
# (2000 images, one epoch reach about 0.58 here: the gate sits well below that.)
QUICK_PARAMS = {"max_train_samples": "2000", "epochs": "1", "min_accuracy": "0.3"}
RUN_TIMEOUT_S = 240


def log_in(page, layout) -> None:
    page.goto(layout.airflow_url + "/")
    page.type_into("input[name=username]", "admin")
    page.type_into("input[name=password]", admin_password(layout))
    page.click("button[type=submit]")
    page.wait_for("!location.pathname.startsWith('/auth/')", what="the login to finish")


def set_param(page, name: str, value: str) -> None:
    """Type into the Params form's field for ``name`` (a number field; its +/- buttons name it)."""
    increment = json.dumps(f"number-input:element_{name}:inc")
    field_id = page.wait_for(
        f"document.getElementById({increment})?.getAttribute('aria-controls')", what=f"the field {name}"
    )
    page.type_into(f'[id="{field_id}"]', value)
    page.evaluate(f"document.getElementById({json.dumps(field_id)}).blur()")  # the widget commits on blur
    assert page.evaluate(f"document.getElementById({json.dumps(field_id)}).value") == value


def wait_for_run_end(api: Airflow, run_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = api.run(DAG_ID, run_id)
        if run["state"] in FINISHED:
            return run
        time.sleep(3)
    states = api.task_states(DAG_ID, run_id)
    raise AssertionError(f"run {run_id} did not finish within {timeout_s:.0f} s; tasks: {states}")


def audit_cells(run_id: str) -> str:
    """JavaScript: the run's row in the audit page's frame, column title → the cell's first line (the
    notes under it left out), or null while it is not there."""
    return (
        "(() => { const doc = document.querySelector('iframe')?.contentDocument;"
        " const titles = [...(doc?.querySelectorAll('#runs thead th') || [])].map(th => th.innerText.trim());"
        " const rows = doc?.querySelectorAll('#runs tbody tr');"
        f" const row = [...(rows || [])].find(tr => tr.cells[1]?.innerText.trim() === {json.dumps(run_id)});"
        " return row ? Object.fromEntries([...row.cells].map((td, i) =>"
        " [titles[i], td.innerText.trim().split('\\n')[0].trim()])) : null; })()"
    )


# JavaScript, in the audit page's frame: what the page's charts drew (null until Chart.js drew them),
# the page's own /runs JSON, the run's confusion matrix and what its evaluation links answer.
AUDIT_PAGE = """
(async () => {
  const win = document.querySelector('iframe')?.contentWindow, doc = win?.document;
  const canvas = doc?.getElementById('accuracy-chart');
  if (!win?.Chart || !canvas || !win.Chart.getChart(canvas)) return null;
  const drawn = (id) => {
    const element = doc.getElementById(id), chart = element && win.Chart.getChart(element);
    if (!chart) return null;
    return {
      width: element.width, height: element.height,
      datasets: chart.data.datasets.map((set, i) => ({label: set.label, data: set.data,
                                                     points: chart.getDatasetMeta(i).data.length})),
    };
  };
  const get = async (href) => {
    const response = await win.fetch(new URL(href, doc.baseURI), {credentials: 'same-origin'});
    return {status: response.status, type: response.headers.get('content-type'), text: await response.text()};
  };
  const row = [...doc.querySelectorAll('#runs tbody tr')].find(tr => tr.cells[1]?.innerText.trim() === RUN_ID);
  const links = Object.fromEntries([...(row?.querySelectorAll('a.evaluation-link') || [])]
    .map(a => [a.innerText.trim(), a.getAttribute('href')]));
  const matrix = doc.querySelector(`table.confusion[data-run="${RUN_ID}"]`);
  return {
    charts: JSON.parse(doc.getElementById('audit-data').textContent),
    accuracy: drawn('accuracy-chart'),
    drift: drawn('drift-chart'),
    missingNoteShown: !doc.getElementById('charts-missing')?.hidden,
    rows: JSON.parse((await get('runs')).text),
    matrix: matrix && [...matrix.querySelectorAll('tbody tr')].map(tr =>
      [...tr.querySelectorAll('td')].map(td => Number(td.innerText))),
    report: links['report.md'] && await get(links['report.md']),
    evaluation: links['evaluation.json'] && await get(links['evaluation.json']),
  };
})()
"""


@pytest.fixture(scope="module")
def chart_library() -> None:
    """The page's Chart.js where the plugin serves it, as ``make install`` fetches it (``make test``
    installs the environment only)."""
    ui_assets.ensure()


def check_audit_page(page, run_id: str) -> None:
    """The run's point on the accuracy chart, every evaluated run on it, the drift chart, the run's
    confusion matrix and its report links, against the page's own rows."""
    seen = page.wait_for(AUDIT_PAGE.replace("RUN_ID", json.dumps(run_id)), what="the audit page's charts")
    rows = seen["rows"]
    assert not seen["missingNoteShown"], "the page says Chart.js is missing"

    evaluated = [row for row in reversed(rows) if row["accuracy"] is not None]  # oldest first
    accuracy = seen["accuracy"]
    assert accuracy["width"] > 0 and accuracy["height"] > 0
    assert [dataset["label"] for dataset in accuracy["datasets"]] == [
        "candidate",
        "champion",
        "gate: min_accuracy",
    ]
    assert [dataset["points"] for dataset in accuracy["datasets"]] == [len(evaluated)] * 3
    assert seen["charts"]["accuracy"]["runs"] == [row["run_id"] for row in evaluated]
    ours = seen["charts"]["accuracy"]["runs"].index(run_id)
    ours_row = next(row for row in rows if row["run_id"] == run_id)
    assert accuracy["datasets"][0]["data"][ours] == ours_row["accuracy"]
    assert accuracy["datasets"][2]["data"][ours] == 0.3  # the gate's threshold: the form's min_accuracy

    scored = [row for row in rows if (row.get("monitoring") or {}).get("drift_score") is not None]
    if scored:
        assert seen["drift"]["datasets"][0]["points"] == len(scored)
    else:  # no run has scored live traffic: no chart, a sentence instead
        assert seen["drift"] is None

    evaluation = seen["evaluation"]
    assert evaluation["status"] == 200, evaluation
    confusion = json.loads(evaluation["text"])["candidate"]["confusion_matrix"]
    assert seen["matrix"] == confusion and len(confusion) == 10
    assert sum(map(sum, confusion)) == json.loads(evaluation["text"])["holdout"]["rows"]
    report = seen["report"]
    assert report["status"] == 200 and report["text"].startswith("# Evaluation of"), report


def test_a_run_triggered_through_the_params_form_succeeds_and_shows_on_the_audit_page(
    chromium, chart_library, demo_stack, browser
):
    layout, api = demo_stack.layout, demo_stack.api
    page = browser
    run_id = f"browser-{uuid.uuid4().hex[:8]}"
    try:
        log_in(page, layout)

        page.goto(f"{layout.airflow_url}/dags/{DAG_ID}")
        page.click("[data-testid=trigger-dag-button]")
        for name, value in QUICK_PARAMS.items():
            set_param(page, name, value)
        page.click('[id$="trigger:advancedOptions"]')
        page.type_into("input[name=dagRunId]", run_id)
        page.click("[data-testid=trigger-dag-submit]")
        page.wait_for(f"location.pathname.endsWith('/runs/{run_id}')", what="the new run's page")

        run = wait_for_run_end(api, run_id, RUN_TIMEOUT_S)
        assert run["state"] == "success", api.task_states(DAG_ID, run_id)
        # The form's values, not the defaults, reached the run.
        assert {name: run["conf"][name] for name in QUICK_PARAMS} == {
            "max_train_samples": 2000,
            "epochs": 1,
            "min_accuracy": 0.3,
        }
        page.goto(run_page(layout, run_id))
        page.wait_for(
            "document.body.innerText.toLowerCase().includes('success')", what="the run page's state"
        )

        page.click("[aria-label=Browse]")
        page.click('[role=menuitem][data-value="MNIST audit"]')
        row = page.wait_for(audit_cells(run_id), what=f"{run_id} on the audit page")
        assert row["Trigger"] == "manual by admin", row  # our login
        assert row["Outcome"] == "deployed", row
        assert row["Drift"] and row["Alert"], row  # "-" at the least

        check_audit_page(page, run_id)
        page.screenshot(ARTIFACTS / "browser-audit-charts.png")
        page.evaluate(
            "document.querySelector('iframe').contentDocument"
            f".querySelector('table.confusion[data-run={json.dumps(run_id)}]').scrollIntoView()"
        )
        page.screenshot(ARTIFACTS / "browser-audit-confusion.png")
    finally:
        page.screenshot(ARTIFACTS / "browser-audit.png")
