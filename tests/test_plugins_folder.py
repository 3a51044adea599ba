"""What Airflow loads from ``plugins/``: the pipeline package and the UI plugin, nothing that runs
the project on this machine (``devtools``) or the local AWS (``localcloud``), and, through
Airflow's plugin manager, only the UI plugin's file.

Why ``plugins/.airflowignore`` lists ``mnist_pipeline/``: Airflow's plugin manager executes every
``.py`` file under the plugins folder as a top-level module named after the file's stem, in every
component (scheduler, dag-processor, api-server, triggerer, each task). Without the ignore file it
runs each pipeline module a second time as ``config``, ``data``, ``train``, ``audit``, ``__init__``...:
second copies whose classes are not ``mnist_pipeline``'s (an ``except ConfigError`` of one misses
the other's), bare names in ``sys.modules`` that shadow any other module called ``config`` or
``data``, and about 450 more modules (numpy among them) at every start (measured: 118 modules and
0.13 s with the ignore file, 567 and 0.45 s without). The package is importable as
``mnist_pipeline`` anyway: the plugins folder is on ``sys.path``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"

IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
sys.path[:0] = [sys.argv[1]]
import mnist_pipeline
names = ["mnist_audit_plugin"] + [
    f"mnist_pipeline.{info.name}" for info in pkgutil.iter_modules(mnist_pipeline.__path__)
]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""

LOAD_LIKE_AIRFLOW = """
import json, sys
from airflow._shared.plugins_manager.plugins_manager import _load_plugins_from_plugin_directory
folder = sys.argv[1]
before = set(sys.modules)
plugins, errors = _load_plugins_from_plugin_directory(plugins_folder=folder)
executed = sorted(
    name for name in set(sys.modules) - before
    if (getattr(sys.modules[name], "__file__", None) or "").startswith(folder)
)
print(json.dumps({"plugins": [p.name for p in plugins], "errors": errors, "executed": executed}))
"""


def run_python(code: str, *args: str, tmp_path: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": str(tmp_path / "airflow"), "PYTHONPATH": str(PLUGINS)}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_no_module_under_plugins_imports_localcloud_or_devtools(tmp_path):
    loaded = run_python(IMPORT_EVERY_MODULE, str(PLUGINS), tmp_path=tmp_path)

    assert len(loaded["imported"]) > 10  # every module of the package, not an empty walk
    leaked = [name for name in loaded["modules"] if name.split(".")[0] in ("localcloud", "devtools")]
    assert leaked == []


def test_airflows_plugin_manager_executes_only_the_ui_plugin(tmp_path):
    loaded = run_python(LOAD_LIKE_AIRFLOW, str(PLUGINS), tmp_path=tmp_path)

    assert loaded["errors"] == {}
    assert loaded["plugins"] == ["mnist_audit"]
    assert loaded["executed"] == ["mnist_audit_plugin"]


def test_without_the_ignore_file_every_pipeline_module_would_run_twice_under_a_bare_name(tmp_path):
    folder = tmp_path / "plugins"
    shutil.copytree(PLUGINS, folder, ignore=shutil.ignore_patterns("__pycache__", ".airflowignore"))

    loaded = run_python(LOAD_LIKE_AIRFLOW, str(folder), tmp_path=tmp_path)

    pipeline_files = sorted(path.stem for path in (folder / "mnist_pipeline").glob("*.py"))
    assert set(pipeline_files) <= set(loaded["executed"])  # config, data, train, __init__, ...
    assert "config" in loaded["executed"]
