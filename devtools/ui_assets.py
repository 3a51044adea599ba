"""The audit page's chart library: Chart.js from the npm registry, at a pinned version, checked.

The Airflow UI plugin (``plugins/mnist_audit_plugin.py``) serves Chart.js itself, so the page
needs no CDN and works offline. The project never commits build outputs, so the library's built
file is fetched here, by ``make install`` (``make ui-assets``), into the gitignored
``plugins/mnist_audit_static/vendor/``:

- ``npm pack chart.js@<VERSION>`` downloads the package's tarball (npm's own registry, proxy and
  certificate settings apply; npm checks the tarball against the registry's metadata); without
  npm, the tarball is downloaded from the registry directly;
- its sha512 must be :data:`INTEGRITY`, the ``dist.integrity`` the registry's metadata gave for
  that version when it was pinned: a registry or mirror serving other bytes is refused;
- only ``package/dist/chart.umd.js`` (the browser build) and the licence are taken out of it, as
  regular files, and written atomically; ``chart.js.json`` beside them records what was installed.

Running it again does nothing while that record matches the pin and the file's sha256. To move
to another version: ``npm view chart.js@<version> dist.integrity``, then change both constants.

    python -m devtools.ui_assets [--force] [--dest DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

PACKAGE = "chart.js"
VERSION = "4.6.1"
# `npm view chart.js@4.6.1 dist.integrity`
INTEGRITY = "sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g=="
# tarball member → file name in the destination (the plugin serves chart.umd.js).
MEMBERS = {"package/dist/chart.umd.js": "chart.umd.js", "package/LICENSE.md": "LICENSE.md"}
RECORD = "chart.js.json"
DEST = Path(__file__).resolve().parents[1] / "plugins" / "mnist_audit_static" / "vendor"
DEFAULT_REGISTRY = "https://registry.npmjs.org/"
MAX_MEMBER_BYTES = 8 << 20  # chart.umd.js is about 200 kB
FETCH_TIMEOUT_S = 300


class AssetError(RuntimeError):
    """The library could not be fetched or did not check out; the message says which and why."""


def check_integrity(data: bytes, integrity: str = INTEGRITY, what: str = f"{PACKAGE}@{VERSION}") -> None:
    """Refuse ``data`` unless its sha512 is the one ``integrity`` (``sha512-<base64>``) names."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512" or not expected:
        raise AssetError(f"integrity {integrity!r} is not a sha512-<base64> value")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise AssetError(
            f"the tarball of {what} has sha512-{actual}, not the pinned {integrity}: refusing it "
            "(a registry or mirror serving other bytes, or a pin to update in devtools/ui_assets.py)"
        )


def extract(data: bytes, dest: Path, members: dict[str, str] = MEMBERS) -> dict[str, str]:
    """Write the ``members`` of the tarball ``data`` into ``dest``; return file name → sha256."""
    written = {}
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tarball:
        for member_name, file_name in members.items():
            try:
                member = tarball.getmember(member_name)
            except KeyError as error:
                raise AssetError(f"the tarball has no {member_name}") from error
            if not member.isfile() or member.size > MAX_MEMBER_BYTES:
                raise AssetError(
                    f"{member_name} in the tarball is not a regular file under {MAX_MEMBER_BYTES} bytes"
                )
            content = tarball.extractfile(member).read()
            partial = dest / f".{file_name}.partial"
            partial.write_bytes(content)
            os.replace(partial, dest / file_name)
            written[file_name] = hashlib.sha256(content).hexdigest()
    return written


def install_tarball(
    data: bytes, dest: Path = DEST, *, integrity: str = INTEGRITY, version: str = VERSION
) -> Path:
    """Check the tarball, extract what the page serves and record it; return the chart file's path."""
    check_integrity(data, integrity, f"{PACKAGE}@{version}")
    files = extract(data, dest)
    record = {"package": PACKAGE, "version": version, "integrity": integrity, "sha256": files}
    (dest / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return dest / MEMBERS["package/dist/chart.umd.js"]


def installed(dest: Path = DEST, *, integrity: str = INTEGRITY) -> bool:
    """Whether ``dest`` holds the pinned version, with every file as it was written."""
    try:
        record = json.loads((dest / RECORD).read_text())
    except (OSError, ValueError):
        return False
    if record.get("integrity") != integrity:
        return False
    for file_name in MEMBERS.values():
        path = dest / file_name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != record["sha256"].get(
            file_name
        ):
            return False
    return True


def registry_url() -> str:
    """The registry npm would use, as its environment names it (npm reads either spelling)."""
    lower = os.environ.get("npm_config_registry")  # noqa: SIM112 (npm's own spelling)
    return lower or os.environ.get("NPM_CONFIG_REGISTRY") or DEFAULT_REGISTRY


def download(workdir: Path) -> bytes:
    """The tarball of ``PACKAGE@VERSION``: through ``npm pack``, else straight from the registry."""
    spec = f"{PACKAGE}@{VERSION}"
    npm = shutil.which("npm")
    if npm:
        command = [npm, "pack", spec, "--json", "--pack-destination", str(workdir)]
        try:
            result = subprocess.run(
                command, cwd=workdir, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise AssetError(f"`npm pack {spec}` took over {FETCH_TIMEOUT_S} s") from error
        if result.returncode != 0:
            raise AssetError(
                f"`npm pack {spec}` failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        try:
            packed = json.loads(result.stdout)[0]
        except (ValueError, IndexError, KeyError) as error:
            raise AssetError(
                f"`npm pack {spec} --json` printed no package: {result.stdout[-500:]!r}"
            ) from error
        return (workdir / packed["filename"]).read_bytes()
    url = f"{registry_url().rstrip('/')}/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"
    if not url.startswith(("https://", "http://")):
        raise AssetError(f"the npm registry {registry_url()!r} is not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 (checked above)
            return response.read()
    except OSError as error:
        raise AssetError(f"could not download {url} (npm is not installed): {error}") from error


def ensure(dest: Path = DEST, *, force: bool = False) -> tuple[Path, bool]:
    """The pinned Chart.js in ``dest``, fetched only when it is not there already.

    :return: the chart file's path and whether it was fetched now.
    """
    chart = dest / MEMBERS["package/dist/chart.umd.js"]
    if not force and installed(dest):
        chart.touch()  # for make: up to date with the pin
        return chart, False
    with tempfile.TemporaryDirectory(prefix="ui-assets-") as workdir:
        data = download(Path(workdir))
    return install_tarball(data, dest), True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.ui_assets",
        description=f"Fetch the audit page's chart library ({PACKAGE}@{VERSION}) from the npm registry.",
    )
    parser.add_argument(
        "--dest", type=Path, default=DEST, help="where the plugin serves it (default %(default)s)"
    )
    parser.add_argument(
        "--force", action="store_true", help="fetch again even if the pinned version is there"
    )
    args = parser.parse_args(argv)
    try:
        chart, fetched = ensure(args.dest, force=args.force)
    except (AssetError, OSError, tarfile.TarError) as error:
        print(f"ui-assets: {error}", file=sys.stderr)
        print("The audit page works without it (tables only); the charts need it.", file=sys.stderr)
        return 1
    state = "fetched and checked (sha512)" if fetched else "already there"
    print(f"{PACKAGE}@{VERSION} {state}: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
