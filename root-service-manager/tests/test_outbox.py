"""Cluster pushes through the outbox, against a real HTTP server standing in for a cluster."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rsm_payloads import X1_ID, service_payload

from oakestra_net.testing import wait_until

pytestmark = pytest.mark.process  # real broker / server / subprocess


class FlakyCluster:
    """Answers 503 (or drops the connection) until `healthy` is set; records what arrived."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.refused = 0
        self.healthy = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if not outer.healthy.is_set():
                    outer.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                assert self.path == "/api/net/job/update"
                outer.received.append(body)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"update notification received")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def client(app):
    """Here the cluster lives on loopback, so its queries come from 127.0.0.1."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.0.1"
    return client


@pytest.fixture
def cluster():
    flaky = FlakyCluster()
    yield flaky
    flaky.close()


def test_updates_arrive_once_in_order_after_the_cluster_recovers(client, root, cluster):
    client.post(
        "/api/net/cluster",
        json={"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": cluster.port},
    )
    client.post("/api/net/service/deploy", json=service_payload(X1_ID, "X1"))
    client.get("/api/net/service/X_default_X1_default/instances")  # interest
    root.outbox.start(interval=0.05)
    expected = []
    for number in range(5):
        started = time.perf_counter()
        client.post(
            "/api/net/instance/deploy",
            json={"_id": X1_ID, "instance_number": number, "cluster_id": "c1"},
        )
        report = {
            "instance_number": number,
            "namespace_ip": f"10.16.0.{number + 2}",
            "namespace_ip_v6": f"fc00::{number + 2}",
            "host_ip": "127.0.0.1",
            "host_port": 50103,
        }
        response = client.post(
            "/api/net/service/net_deploy_status", json={"job_id": X1_ID, "instances": [report]}
        )
        assert response.status_code == 200
        assert time.perf_counter() - started < 0.5  # the caller never waits on the cluster
        expected.append(
            {"job_name": "X.default.X1.default", "instance_number": number, "type": "DEPLOYMENT"}
        )
    client.delete(f"/api/net/{X1_ID}/-1")
    expected.append(
        {"job_name": "X.default.X1.default", "instance_number": -1, "type": "UNDEPLOYMENT"}
    )

    wait_until(lambda: cluster.refused >= 2, timeout=10, message="cluster never tried")
    assert root.clusters.by_id("c1")["status"] == "ERROR"
    assert cluster.received == []
    cluster.healthy.set()
    wait_until(
        lambda: len(cluster.received) == len(expected),
        timeout=40,
        message=f"delivered {cluster.received}",
    )
    time.sleep(0.3)  # nothing more may arrive
    assert cluster.received == expected
    assert root.clusters.by_id("c1")["status"] == "ACTIVE"
    assert root.outbox.depth() == 0


def test_an_unreachable_cluster_does_not_fail_the_caller(client, root):
    client.post(
        "/api/net/cluster",
        json={"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": 9},
    )  # discard port: refused
    client.post("/api/net/service/deploy", json=service_payload(X1_ID, "X1"))
    client.get("/api/net/service/X_default_X1_default/instances")
    client.post(
        "/api/net/instance/deploy", json={"_id": X1_ID, "instance_number": 0, "cluster_id": "c1"}
    )
    assert client.delete(f"/api/net/{X1_ID}/0").status_code == 200
    root.outbox.deliver_pending()
    assert root.clusters.by_id("c1")["status"] == "ERROR"
    message = root.db["outbox"].find_one()
    assert message["attempts"] == 1 and message["next_attempt_at"] > time.time()


def test_two_deliverers_never_send_the_same_update_twice(client, root, cluster, db):
    from root_service_manager.outbox import Outbox

    cluster.healthy.set()
    client.post(
        "/api/net/cluster",
        json={"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": cluster.port},
    )
    clusters = [root.clusters.by_id("c1")]
    for number in range(30):
        root.outbox.notify(clusters, "X.default.X1.default", number, "DEPLOYMENT")
    other = Outbox(db)
    threads = [threading.Thread(target=o.deliver_pending) for o in (root.outbox, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    root.outbox.deliver_pending()
    assert [m["instance_number"] for m in cluster.received] == list(range(30))
