"""Fixtures: the real root on loopback, cluster service managers, simulated nodes."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from oakestra_net import store
from root_service_manager.app import create_app as create_root_app
from root_service_manager.jwt_keys import KeyProvider

sys.path.insert(0, os.path.dirname(__file__))  # csm_helpers

from csm_helpers import LiveServer, RootHarness, SimNode, make_settings  # noqa: E402

from cluster_service_manager.app import create_app  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.WARNING)


def cluster_db(component: str = "cluster"):
    """The embedded store, or a fresh database on the real MongoDB when MONGO_URL is set."""
    if os.environ.get("MONGO_URL", "").startswith("mongodb"):
        return store.connect(component, database=f"test_{component}_{uuid.uuid4().hex[:12]}")
    return store.connect(component, env={})


@pytest.fixture
def db():
    database = cluster_db()
    yield database
    if not store.is_embedded(database):
        database.client.drop_database(database.name)


@pytest.fixture
def root_server() -> Iterator[RootHarness]:
    """The real root service manager (its own embedded store), served on 127.0.0.1."""
    app = create_root_app(
        {"DB": cluster_db("root"), "KEYS": KeyProvider(), "OUTBOX_AUTOSTART": True}
    )
    server = LiveServer(app).start()
    try:
        yield RootHarness(app, server)
    finally:
        server.stop()
        app.extensions["root"].outbox.stop()


class ClusterHarness:
    """A cluster service manager served on loopback and registered at the root."""

    def __init__(self, app, server: LiveServer) -> None:
        self.app = app
        self.server = server
        self.parts = app.extensions["cluster_service_manager"]
        self.cache = self.parts.cache
        self.client = app.test_client()

    @property
    def url(self) -> str:
        return self.server.url

    def job(self, job_name: str) -> dict | None:
        """The cached job as the store holds it (a document, easy to assert on)."""
        job = self.cache.get(job_name)
        return None if job is None else job.to_store()

    def interested(self, job_name: str) -> list[str]:
        job = self.cache.get(job_name)
        return sorted(job.interested_nodes) if job else []

    def idle(self, timeout: float = 10) -> None:
        assert self.parts.lanes.wait_idle(timeout), "root work still pending"

    def stop(self) -> None:
        self.server.stop()
        self.parts.stop()


@pytest.fixture
def make_cluster(mosquitto, root_server, db) -> Iterator[Callable[..., ClusterHarness]]:
    clusters: list[ClusterHarness] = []

    def make(*, register: bool = True, cluster_id: str = "c1", **overrides) -> ClusterHarness:
        settings = make_settings(mosquitto, root_server.url, **overrides)
        app = create_app({"DB": db, "SETTINGS": settings})
        harness = ClusterHarness(app, LiveServer(app).start())
        clusters.append(harness)
        endpoint = harness.parts.endpoint
        assert endpoint.wait_subscribed(5), "cluster not subscribed"
        if register:
            root_server.register_cluster(cluster_id, harness.server.port)
        return harness

    try:
        yield make
    finally:
        for harness in clusters:
            harness.stop()


@pytest.fixture
def cluster(make_cluster) -> ClusterHarness:
    return make_cluster()


@pytest.fixture
def make_node(mosquitto) -> Iterator[Callable[..., SimNode]]:
    nodes: list[SimNode] = []

    def make(node_id: str | None = None) -> SimNode:
        node = SimNode(mosquitto.host, mosquitto.port, node_id).start()
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for node in nodes:
            node.stop()
