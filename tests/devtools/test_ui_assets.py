"""The audit page's chart library: fetched at the pinned version, refused unless its sha512 is the
pinned one, only the browser build and the licence taken out, and put where the plugin serves it.

Tarballs are built here, like the registry's (``package/...``), except for one test that fetches
the real pinned Chart.js from the npm registry (slow: it needs the network).
"""

import base64
import hashlib
import io
import json
import tarfile

import pytest

from devtools import ui_assets

CHART = b"/*! Chart.js stand-in */ window.Chart = function () {};\n"
LICENSE = b"The MIT License (MIT)\n"


def tarball(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


PACKAGE = {"package/dist/chart.umd.js": CHART, "package/LICENSE.md": LICENSE, "package/dist/chart.js": b"esm"}


def test_a_checked_tarball_installs_the_browser_build_and_its_licence(tmp_path):
    data = tarball(PACKAGE)

    chart = ui_assets.install_tarball(data, tmp_path, integrity=integrity(data))

    assert chart == tmp_path / "chart.umd.js" and chart.read_bytes() == CHART
    assert (tmp_path / "LICENSE.md").read_bytes() == LICENSE
    assert sorted(path.name for path in tmp_path.iterdir()) == ["LICENSE.md", "chart.js.json", "chart.umd.js"]
    record = json.loads((tmp_path / "chart.js.json").read_text())
    assert record["integrity"] == integrity(data) and record["version"] == ui_assets.VERSION
    assert ui_assets.installed(tmp_path, integrity=integrity(data))


def test_a_tarball_that_is_not_the_pinned_one_is_refused_and_nothing_is_written(tmp_path):
    data = tarball(PACKAGE)

    with pytest.raises(ui_assets.AssetError, match="not the pinned sha512-.*refusing it"):
        ui_assets.install_tarball(data, tmp_path)  # the pin is the real Chart.js's

    assert list(tmp_path.iterdir()) == []


def test_what_was_installed_is_checked_before_it_counts_as_there(tmp_path):
    data = tarball(PACKAGE)
    ui_assets.install_tarball(data, tmp_path, integrity=integrity(data))

    assert not ui_assets.installed(tmp_path)  # installed, but not the pinned version
    (tmp_path / "chart.umd.js").write_bytes(CHART + b"// changed\n")
    assert not ui_assets.installed(tmp_path, integrity=integrity(data))
    assert not ui_assets.installed(tmp_path / "empty", integrity=integrity(data))


@pytest.mark.parametrize(
    ("members", "links", "message"),
    [
        ({"package/LICENSE.md": LICENSE}, None, "has no package/dist/chart.umd.js"),
        ({"package/LICENSE.md": LICENSE}, {"package/dist/chart.umd.js": "/etc/passwd"}, "not a regular file"),
    ],
)
def test_a_tarball_without_a_regular_browser_build_is_refused(tmp_path, members, links, message):
    data = tarball(members, links)

    with pytest.raises(ui_assets.AssetError, match=message):
        ui_assets.install_tarball(data, tmp_path, integrity=integrity(data))
    assert not (tmp_path / "chart.umd.js").exists()


def test_an_integrity_that_is_not_sha512_is_refused():
    with pytest.raises(ui_assets.AssetError, match="not a sha512-<base64> value"):
        ui_assets.check_integrity(b"x", "sha1-abc")


def test_it_installs_where_the_plugin_serves_the_library():
    import mnist_audit_plugin

    assert mnist_audit_plugin.CHART_JS == ui_assets.DEST / "chart.umd.js"


@pytest.mark.slow
def test_the_pinned_chart_js_is_fetched_from_the_registry_once(tmp_path, capsys):
    """The network: npm pack (or the registry's tarball URL) for chart.js at the pinned version."""
    assert ui_assets.main(["--dest", str(tmp_path)]) == 0
    assert "fetched and checked (sha512)" in capsys.readouterr().out
    chart = (tmp_path / "chart.umd.js").read_text()
    assert chart.startswith(f"/*!\n * Chart.js v{ui_assets.VERSION}\n")

    assert ui_assets.main(["--dest", str(tmp_path)]) == 0
    assert "already there" in capsys.readouterr().out
