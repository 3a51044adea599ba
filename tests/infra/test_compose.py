"""docker-compose.yaml, checked without a Docker engine: what `docker compose up` would need to
be true of the file and of the repository it mounts and builds from."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from localcloud.config import split_list
from mnist_pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
EXPECTED_SERVICES = AIRFLOW_SERVICES | {"postgres", "localcloud"}
# The documented ports (DESIGN.md): service → (the variable that overrides it, its default).
DOCUMENTED_PORTS = {"airflow-apiserver": ("AIRFLOW_PORT", 8080), "localcloud": ("LOCALCLOUD_PORT", 4566)}
PUBLISHED_PORT = re.compile(r"^127\.0\.0\.1:\$\{(?P<var>[A-Z_]+):-(?P<default>\d+)\}:(?P<container>\d+)$")
IMPORTED_PACKAGES = ("mnist_pipeline", "data_checks", "model_code", "lambda_package")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def one_shot_services(services: dict) -> set[str]:
    """Services others wait on to finish (they exit; a healthcheck makes no sense for them)."""
    return {
        name
        for service in services.values()
        for name, rule in (service.get("depends_on") or {}).items()
        if rule.get("condition") == "service_completed_successfully"
    }


def dockerfile(service: dict) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    return ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def is_pinned(image: str) -> bool:
    """A tag other than latest, or a digest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_the_services_are_airflow_postgres_and_localcloud(services):
    assert set(services) == EXPECTED_SERVICES


def test_every_image_is_pinned(services):
    for name, service in services.items():
        assert "image" in service, f"{name} has no image name (give built images a versioned tag too)"
        assert is_pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned to a version"
        path = dockerfile(service)
        if path is None:
            continue
        assert path.is_file(), f"{name} builds from {path}, which does not exist"
        bases = re.findall(r"^FROM\s+(\S+)", path.read_text(), flags=re.M)
        assert bases, f"{path.name} has no FROM line"
        for base in bases:
            assert is_pinned(base), f"{path.name}: base image {base!r} is not pinned to a version"


def test_what_the_dockerfiles_copy_exists_in_the_repo(services):
    for path in {dockerfile(service) for service in services.values()} - {None}:
        for sources in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", path.read_text(), flags=re.M):
            for source in sources.split():
                assert (ROOT / source).exists(), (
                    f"{path.name} copies {source}, which is not in the repository"
                )


def test_every_long_running_service_has_a_healthcheck(services):
    one_shot = one_shot_services(services)
    assert "airflow-init" in one_shot
    for name, service in services.items():
        if name in one_shot:
            assert service.get("restart") == "no", f"{name} runs once; it must not be restarted"
            continue
        test = (service.get("healthcheck") or {}).get("test")
        assert test and not service["healthcheck"].get("disable"), f"{name} has no healthcheck"


def test_ports_are_loopback_only_and_the_documented_ones(services):
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            match = PUBLISHED_PORT.match(str(port))
            assert match, f"{name} publishes {port!r}: bind 127.0.0.1 with an overridable host port"
            published[name] = (match["var"], int(match["default"]), int(match["container"]))
    assert published == {name: (var, port, port) for name, (var, port) in DOCUMENTED_PORTS.items()}


def test_depends_on_names_existing_services_with_a_valid_condition(services):
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on {dependency!r}, which is not a service"
            assert dependency != name, f"{name} depends on itself"
            assert rule.get("condition") in conditions, f"{name} → {dependency}: condition {rule!r}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency} to be healthy, which it never reports"
                )


def test_every_mounted_host_path_exists_and_named_volumes_are_declared(compose, services):
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in (compose.get("volumes") or {}), (
                    f"{name} uses volume {source!r}, never declared"
                )


def test_airflow_reaches_localcloud_through_aws_default(services):
    localcloud_port = int(PUBLISHED_PORT.match(services["localcloud"]["ports"][0])["container"])
    for name in AIRFLOW_SERVICES:
        connection = json.loads(services[name]["environment"]["AIRFLOW_CONN_AWS_DEFAULT"])
        assert connection["conn_type"] == "aws"
        extra = connection["extra"]
        endpoint = urlsplit(extra["endpoint_url"])
        assert (endpoint.hostname, endpoint.port) == ("localcloud", localcloud_port), name
        assert extra["region_name"] == services[name]["environment"]["AIRFLOW_VAR_MNIST_REGION"]
        # Virtual-hosted S3 would ask DNS for <bucket>.localcloud.
        assert extra["config_kwargs"]["s3"]["addressing_style"] == "path"
        # localcloud refuses host names it was not given (DNS rebinding): this one must be allowed.
        allowed = split_list(services["localcloud"]["environment"].get("LOCALCLOUD_ALLOWED_HOSTS", ""))
        assert endpoint.hostname in allowed, f"{name} calls {endpoint.hostname}, not in {allowed}"


def test_the_variables_are_settings_config_py_accepts(services):
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        variables = {
            key.removeprefix("AIRFLOW_VAR_").lower(): value
            for key, value in environment.items()
            if key.startswith("AIRFLOW_VAR_")
        }
        assert variables, f"{name} sets no AIRFLOW_VAR_MNIST_* settings"
        config = load_config(variables, environ={})  # raises, naming each bad or missing setting
        assert {f"mnist_{key}" for key in config.as_dict()} >= set(variables), (
            f"{name} sets Variables config.py does not read: {sorted(set(variables) - {f'mnist_{k}' for k in config.as_dict()})}"
        )


def importable(package: str, python_path: list[str], mounts: dict[str, str]) -> bool:
    """True when some PYTHONPATH entry holds the repo's package: mounted as entry/package, or
    inside a folder mounted at entry."""
    for entry in python_path:
        package_dir = mounts.get(f"{entry}/{package}")
        if package_dir and (ROOT / package_dir / "__init__.py").is_file():
            return True
        folder = mounts.get(entry)
        if folder and (ROOT / folder / package / "__init__.py").is_file():
            return True
    return False


def test_the_project_packages_are_importable_in_the_airflow_containers(services):
    for name in AIRFLOW_SERVICES:
        service = services[name]
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
        python_path = service["environment"]["PYTHONPATH"].split(":")
        for package in IMPORTED_PACKAGES:
            assert importable(package, python_path, mounts), (
                f"{name}: {package} is in no mounted folder on PYTHONPATH {python_path}"
            )
        assert mounts.get("/opt/airflow/dags") == "./dags", f"{name} does not mount the DAG folder"


@pytest.mark.skipif(shutil.which("docker") is None, reason="the docker client is not installed")
def test_docker_compose_accepts_the_file():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
