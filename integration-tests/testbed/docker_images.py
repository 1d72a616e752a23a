"""The test-only stand-in images, built in a test engine from the cached artefacts.

Local names under `oakestra-net-test/`, never an upstream name: the compose file gets
them through its parameters (PYTHON_IMAGE, MONGO_IMAGE, MOSQUITTO_IMAGE).
- debian: the debootstrapped rootfs, `docker import`ed;
- python: debian + the wheelhouse, pip pointed at it (for python:3.11-slim);
- mongo: python + SecantusDB behind `mongod`/`mongosh` shims (for mongo:8.0);
- mosquitto: debian's Mosquitto laid out like eclipse-mosquitto.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from testbed import docker_cache
from testbed.docker_engine import DockerEngine
from testbed.processes import Progress

STANDINS = Path(__file__).resolve().parents[1] / "compose" / "standins"
DEBIAN = "oakestra-net-test/debian:bookworm"
PYTHON = "oakestra-net-test/python:3.11-bookworm"
MONGO = "oakestra-net-test/mongo:secantusdb"
MOSQUITTO = "oakestra-net-test/mosquitto:debian"


@dataclass(frozen=True)
class StandIns:
    python: str = PYTHON
    mongo: str = MONGO
    mosquitto: str = MOSQUITTO

    def compose_env(self) -> dict[str, str]:
        """The compose file's image parameters pointing at the stand-ins."""
        return {
            "PYTHON_IMAGE": self.python,
            "MONGO_IMAGE": self.mongo,
            "MOSQUITTO_IMAGE": self.mosquitto,
        }


def build_standins(engine: DockerEngine, progress: Progress) -> StandIns:
    rootfs = docker_cache.base_rootfs(progress)
    wheels = docker_cache.wheelhouse(progress)
    label = '{{index .Config.Labels "org.oakestra-net.rootfs"}}'
    present = engine.docker("image", "inspect", "--format", label, DEBIAN, check=False)
    # importing again would give a new image id and void every build cache on top
    if present.returncode != 0 or present.stdout.strip() != rootfs.name:
        with progress.step(f"docker import {DEBIAN}"):
            engine.docker(
                "import",
                "--change", "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change", "ENV LANG=C.UTF-8",
                "--change", f"LABEL org.oakestra-net.rootfs={rootfs.name}",
                "--change", 'CMD ["bash"]',
                str(rootfs), DEBIAN,
            )  # fmt: skip
    builds = [
        (PYTHON, "python.Dockerfile", wheels, {"BASE": DEBIAN}),
        (MONGO, "mongo.Dockerfile", STANDINS, {"PYTHON_IMAGE": PYTHON}),
        (MOSQUITTO, "mosquitto.Dockerfile", STANDINS, {"BASE": DEBIAN}),
    ]
    for tag, dockerfile, context, args in builds:
        with progress.step(f"docker build {tag}"):
            build_args = [a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")]
            engine.docker(
                "build", "--quiet", "-t", tag, "-f", str(STANDINS / dockerfile),
                *build_args, str(context),
            )  # fmt: skip
    return StandIns()
