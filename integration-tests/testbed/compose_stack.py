"""The repository's docker-compose.yml run by Docker Compose v2 against a test engine.

`ComposeStack` is `docker compose -p <project> -f docker-compose.yml …` with the
engine's environment plus the image parameters; `up()` builds and waits for every
healthcheck, `down()` removes containers, networks and (with volumes=True) volumes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from testbed.docker_engine import DockerEngine

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
UP_TIMEOUT = 420


class ComposeStack:
    def __init__(
        self, engine: DockerEngine, compose: Path, project: str, env: Mapping[str, str]
    ) -> None:
        self.engine = engine
        self.compose = compose
        self.project = project
        self.env = dict(env)

    def run(self, *args: str, timeout: float = UP_TIMEOUT, check: bool = True):
        argv = [str(self.compose), "-p", self.project, "-f", str(COMPOSE_FILE)]
        argv += ["--project-directory", str(REPO), *args]
        return self.engine.run(argv, timeout=timeout, check=check, env=self.env)

    def up(self) -> None:
        self.run("up", "--build", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT - 60))

    def down(self, volumes: bool = True) -> None:
        self.run("down", "--timeout", "20", *(["--volumes"] if volumes else []))

    def services(self) -> dict[str, dict[str, Any]]:
        """`docker compose ps --all` by service name (State, Health, …)."""
        out = self.run("ps", "--all", "--format", "json").stdout.strip()
        if out.startswith("["):
            rows = json.loads(out)
        else:
            rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {row["Service"]: row for row in rows}

    def logs(self, service: str, tail: int = 40) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), service, check=False).stdout

    def container_ip(self, service: str) -> str:
        """The service's address on the project network (what its peers see)."""
        container = self.run("ps", "--quiet", service).stdout.strip()
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return self.engine.docker("inspect", "--format", template, container).stdout.strip()

    def volume_path(self, volume: str) -> Path:
        """Where a named volume of this project lives on disk (visible from outside)."""
        name = f"{self.project}_{volume}"
        out = self.engine.docker("volume", "inspect", "--format", "{{.Mountpoint}}", name)
        return Path(out.stdout.strip())
