"""Static checks of docker-compose.yml and the Dockerfiles (no Docker engine here).

They read the files as Docker would and check what a `docker compose up` would trip
over: schema, build contexts, copied paths, mounted files, ports and environment
variables that the code does not read.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
import yaml

from cluster_service_manager.config import SETTINGS as CLUSTER_SETTINGS
from root_service_manager.config import SETTINGS as ROOT_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# compose service -> (component directory, python package)
BUILT = {
    "root_service_manager": ("root-service-manager", "root_service_manager"),
    "cluster_service_manager": ("cluster-service-manager", "cluster_service_manager"),
    "net_manager": ("net-manager", "net_manager"),
}
# variables read by the shared package on behalf of every component
SHARED_SOURCES = ["store.py", "log.py", "api_token.py"]


def test_compose_file_matches_the_compose_schema():
    # docker-compose 1.x is installed (without its dependencies) only for this schema
    path = metadata.distribution("docker-compose").locate_file("compose/config/compose_spec.json")
    schema = json.loads(Path(path).read_text())
    jsonschema.Draft201909Validator(schema).validate(COMPOSE)


def _dockerfile(service: str) -> tuple[Path, Path, str]:
    build = SERVICES[service]["build"]
    context = (ROOT / build["context"]).resolve()
    dockerfile = context / build["dockerfile"]
    return context, dockerfile, dockerfile.read_text()


@pytest.mark.parametrize("service", BUILT)
def test_build_context_and_copied_paths_exist(service):
    context, dockerfile, text = _dockerfile(service)
    assert dockerfile.is_file(), dockerfile
    for line in text.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _target = line.split()[1:]
            for source in sources:
                assert (context / source).exists(), f"{dockerfile.name}: COPY {source} missing"


@pytest.mark.parametrize("service", BUILT)
def test_images_are_multi_stage_pinned_and_run_the_console_script(service):
    directory, _package = BUILT[service]
    _context, _dockerfile_path, text = _dockerfile(service)
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(bases) >= 2, "multi-stage build expected"
    for base in bases:
        base = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), base)
        assert re.search(r":\d", base), f"base image {base} is not pinned to a version"
    scripts = tomllib.loads((ROOT / directory / "pyproject.toml").read_text())["project"]["scripts"]
    command = _started_program(text)
    assert any(script in command for script in scripts), command
    if service != "net_manager":  # the node daemon must be root; the managers must not
        user = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert user and user[-1] not in ("root", "0"), "managers run as non-root"


def _started_program(dockerfile: str) -> str:
    """The CMD, or the text of the entry point script the image copies in."""
    entrypoint = re.findall(r"^ENTRYPOINT\s+\[\"([^\"]+)\"", dockerfile, re.M)
    if entrypoint:
        copies = re.findall(r"^COPY\s+(\S+)\s+(\S+)$", dockerfile, re.M)
        script = next(src for src, dest in copies if dest.endswith("/" + entrypoint[-1]))
        return (ROOT / script).read_text()
    return re.findall(r"^CMD\s+(.+)$", dockerfile, re.M)[-1]


def test_mounted_files_exist():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} missing"


def _code(directory: str, package: str) -> str:
    files = list((ROOT / directory / package).rglob("*.py"))
    files += [ROOT / "shared" / "oakestra_net" / f for f in SHARED_SOURCES]
    files += list((ROOT / directory).glob("*.sh"))  # entry point scripts
    return "\n".join(f.read_text() for f in files)


@pytest.mark.parametrize("service", BUILT)
def test_every_environment_variable_is_read_by_the_code(service):
    directory, package = BUILT[service]
    code = _code(directory, package)
    for variable in SERVICES[service].get("environment", {}):
        read = f'"{variable}"' in code or f"${{{variable}" in code  # Python or shell
        assert read, f"{service}: {variable} is set but never read"


def test_ports_agree_with_the_code_defaults():
    assert SERVICES["root_service_manager"]["environment"]["MY_PORT"] == "10099"
    assert ROOT_SETTINGS.row("MY_PORT").default == "10099"
    assert SERVICES["cluster_service_manager"]["environment"]["MY_PORT"] == "10110"
    assert CLUSTER_SETTINGS.row("MY_PORT").default == "10110"
    broker = (ROOT / "mosquitto" / "mosquitto.conf").read_text()
    assert re.search(r"^listener 10003$", broker, re.M)
    assert SERVICES["mqtt"]["ports"] == ["10003:10003"]
    assert SERVICES["cluster_service_manager"]["environment"]["MQTT_BROKER_PORT"] == "10003"
    assert SERVICES["net_manager"]["environment"]["CLUSTER_MQTT_PORT"] == "10003"
    root_env = SERVICES["cluster_service_manager"]["environment"]
    assert root_env["ROOT_SERVICE_MANAGER_PORT"] == "10099"
    for service, port in (("root_service_manager", 10099), ("cluster_service_manager", 10110)):
        assert SERVICES[service]["ports"] == [f"{port}:{port}"]


def test_mongo_urls_point_at_compose_services():
    root = SERVICES["root_service_manager"]["environment"]
    cluster = SERVICES["cluster_service_manager"]["environment"]
    assert root["ROOT_MONGO_URL"] in SERVICES
    assert cluster["CLUSTER_MONGO_URL"] in SERVICES
    assert root["ROOT_MONGO_PORT"] in SERVICES[root["ROOT_MONGO_URL"]]["command"]
    assert cluster["CLUSTER_MONGO_PORT"] in SERVICES[cluster["CLUSTER_MONGO_URL"]]["command"]
