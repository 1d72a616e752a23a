"""Cluster pushes through the outbox, against a real HTTP server standing in for a cluster."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rsm_payloads import X1_ID, service_payload

from testsupport import wait_until

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


class HangingCluster:
    """Takes each push and answers only once `release` is set."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.answered = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.arrived.set()
                outer.release.wait(60)
                outer.answered += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def deploy_and_report(client, number: int) -> int:
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
    return response.status_code


def test_deploys_are_answered_while_the_cluster_holds_a_push_unanswered(client, root):
    """The caller never waits on the cluster: with a push in flight that the cluster does
    not answer, further deploys and reports are answered."""
    hanging = HangingCluster()
    try:
        client.post(
            "/api/net/cluster",
            json={"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": hanging.port},
        )
        client.post("/api/net/service/deploy", json=service_payload(X1_ID, "X1"))
        client.get("/api/net/service/X_default_X1_default/instances")  # interest
        root.outbox.start(interval=0.05)
        assert deploy_and_report(client, 0) == 200
        wait_until(hanging.arrived.is_set, timeout=10, message="no push reached the cluster")
        assert [deploy_and_report(client, n) for n in range(1, 4)] == [200, 200, 200]
        assert hanging.answered == 0  # all answered while the cluster still held its push
    finally:
        hanging.close()


def test_the_latest_state_arrives_once_after_the_cluster_recovers(client, root, cluster):
    client.post(
        "/api/net/cluster",
        json={"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": cluster.port},
    )
    client.post("/api/net/service/deploy", json=service_payload(X1_ID, "X1"))
    client.get("/api/net/service/X_default_X1_default/instances")  # interest
    root.outbox.start(interval=0.05)
    expected = []
    for number in range(5):
        assert deploy_and_report(client, number) == 200
        expected.append(
            {"job_name": "X.default.X1.default", "instance_number": number, "type": "DEPLOYMENT"}
        )
    client.delete(f"/api/net/{X1_ID}/-1")
    expected.append(
        {"job_name": "X.default.X1.default", "instance_number": -1, "type": "UNDEPLOYMENT"}
    )

    expected = expected[-1:]  # coalesced: only the job's latest state is pending
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


def test_removing_a_service_tells_the_interested_clusters(client, root, cluster):
    """They must drop the job: its service IPs go back to the pool."""
    cluster.healthy.set()
    client.post(
        "/api/net/cluster",
        json={"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": cluster.port},
    )
    client.post("/api/net/service/deploy", json=service_payload(X1_ID, "X1"))
    client.get("/api/net/service/X_default_X1_default/instances")  # interest
    root.outbox.start(interval=0.05)
    assert client.delete(f"/api/net/service/{X1_ID}").status_code == 200
    expected = {"job_name": "X.default.X1.default", "instance_number": -1, "type": "UNDEPLOYMENT"}
    wait_until(lambda: cluster.received == [expected], timeout=20, message=f"{cluster.received}")
    # the outbox deletes the message once the cluster's answer is back
    wait_until(lambda: root.outbox.depth() == 0, timeout=20, message="update still pending")
    assert cluster.received == [expected]


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
        root.outbox.notify(clusters, f"X.default.X{number}.default", number, "DEPLOYMENT")
    other = Outbox(db)
    threads = [threading.Thread(target=o.deliver_pending) for o in (root.outbox, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    root.outbox.deliver_pending()
    assert [m["instance_number"] for m in cluster.received] == list(range(30))


def test_a_dead_cluster_costs_one_pending_update_per_job(client, root, cluster):
    """1,000 changes to 10 jobs while the cluster is down: 10 pending, each job's latest."""
    client.post(
        "/api/net/cluster",
        json={"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": cluster.port},
    )
    clusters = [root.clusters.by_id("c1")]
    latest = {}
    for change in range(1000):
        job, number = f"X.default.X{change % 10}.default", change // 10
        kind = "UNDEPLOYMENT" if change % 3 == 0 else "DEPLOYMENT"
        root.outbox.notify(clusters, job, number, kind)
        if change % 7 == 0:
            root.outbox.deliver_pending()  # refused: the cluster is down
        latest[job] = number
    assert cluster.refused >= 1
    assert root.outbox.depth() == 10
    cluster.healthy.set()
    root.db["outbox"].update_many({}, {"$set": {"next_attempt_at": 0.0}})  # skip the backoff
    root.outbox.deliver_pending()
    assert root.outbox.depth() == 0
    assert {m["job_name"]: m["instance_number"] for m in cluster.received} == latest
    assert len(cluster.received) == 10
    assert {m["type"] for m in cluster.received} == {"DEPLOYMENT"}


@pytest.mark.parametrize(
    ("pending", "new", "sent"),
    [
        (("DEPLOYMENT", 1), ("DEPLOYMENT", 2), ("DEPLOYMENT", 2)),
        (("DEPLOYMENT", 1), ("UNDEPLOYMENT", 2), ("DEPLOYMENT", 2)),
        (("UNDEPLOYMENT", 1), ("DEPLOYMENT", 2), ("DEPLOYMENT", 2)),
        (("UNDEPLOYMENT", 1), ("UNDEPLOYMENT", 1), ("UNDEPLOYMENT", 1)),
        (("DEPLOYMENT", 1), ("UNDEPLOYMENT", -1), ("UNDEPLOYMENT", -1)),
        (("DEPLOYMENT", 1), ("UNDEPLOYMENT", 1), ("UNDEPLOYMENT", 1)),
        (("DEPLOYMENT", 1, "merged"), ("UNDEPLOYMENT", 1), ("DEPLOYMENT", 1)),
    ],
)
def test_coalescing_keeps_what_the_cluster_must_do(pending, new, sent):
    from root_service_manager.outbox import coalesce

    def body(kind_number):
        return {"job_name": "a.b.c.d", "type": kind_number[0], "instance_number": kind_number[1]}

    merged = len(pending) == 3
    assert coalesce(body(pending), body(new), pending_merged=merged) == body(sent)
