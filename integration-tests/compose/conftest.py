"""The compose tier's engine and stand-in images, once per session.

`docker_engine` starts a dockerd of the test's own in a network namespace of its own
(testbed.docker_engine) and stops it, its containers, namespace and files at the end,
whatever happened. Its data root (images, layers: the build cache) is kept in
.cache/compose/engine so a later run rebuilds only what changed. When Docker cannot
run here (not root, packages not installable, dockerd refuses to start) every test of
the tier is skipped with that reason, which `pytest -ra` prints; never silently.
"""

from __future__ import annotations

import sys

import pytest

from testbed import docker_cache
from testbed.docker_engine import DockerEngine, DockerUnavailable
from testbed.docker_images import StandIns, build_standins
from testbed.processes import Progress


@pytest.fixture(scope="session")
def progress() -> Progress:
    return Progress(sys.stderr)


@pytest.fixture(scope="session")
def docker_engine(progress):
    # images and layers are kept between runs (the build cache); the rest is temporary
    engine = DockerEngine(progress, data_root=docker_cache.CACHE / "engine")
    try:
        engine.start()
    except DockerUnavailable as why:
        engine.close()
        pytest.skip(f"Docker cannot run on this machine: {why}")
    except BaseException:
        engine.close()
        raise
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="session")
def standins(docker_engine, progress) -> StandIns:
    return build_standins(docker_engine, progress)


@pytest.fixture(scope="session")
def compose_binary(progress):
    return docker_cache.compose_binary(progress)
