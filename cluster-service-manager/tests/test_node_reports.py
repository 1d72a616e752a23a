"""Node messages beyond the running example: reports, odd queries, own results, a slow root."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from csm_helpers import X1, X1_ID, X3, X3_ID

from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("fail_on_log_exception")

NODE_A = "6630a0a0a0a0a0a0a0a0a0a0"
NODE_B = "6630b0b0b0b0b0b0b0b0b0b0"


def deploy(root, job_id: str, service: str, rr_ip: str, instances: int) -> list[dict]:
    root.deploy_service(job_id, service, rr_ip)
    return [root.deploy_instance(job_id, n) for n in range(instances)]


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.get_records("call") if r.levelno >= logging.WARNING]


def test_deployed_for_a_job_not_cached_fetches_it_first(root_server, cluster, make_node):
    deploy(root_server, X3_ID, "X3", "10.30.1.30", 1)
    a = make_node(NODE_A)
    a.deployed(X3, 0, "10.16.0.2", "fc00::2", "192.0.2.1", 50103)
    wait_until(lambda: root_server.instance(X3, 0).get("namespace_ip") == "10.16.0.2")
    instance = cluster.job(X3)["instance_list"][0]
    assert instance["worker_id"] == NODE_A and instance["host_port"] == 50103


def test_reports_on_instances_the_root_does_not_know_are_dropped(
    root_server, cluster, make_node, caplog
):
    deploy(root_server, X3_ID, "X3", "10.30.1.30", 1)
    a = make_node(NODE_A)
    a.deployed(X3, 7, "10.16.0.2", "fc00::2", "192.0.2.1", 50103)
    a.deployed("Nobody.default.X3.default", 0, "10.16.0.2", "fc00::2", "192.0.2.1", 50103)
    wait_until(
        lambda: warnings(caplog).count("report on an instance the root does not know dropped") == 2
    )
    cluster.idle()
    assert root_server.instance(X3, 0).get("namespace_ip") is None


def test_address_change_moves_the_nodes_instances(root_server, cluster, make_node, mqtt_recorder):
    deploy(root_server, X3_ID, "X3", "10.30.1.30", 2)
    a = make_node(NODE_A)
    a.deployed(X3, 0, "10.16.0.2", "fc00::2", "192.0.2.1", 50103)
    a.deployed(X3, 1, "10.16.0.3", "fc00::3", "192.0.2.1", 50103)
    wait_until(lambda: root_server.instance(X3, 1).get("namespace_ip") == "10.16.0.3")
    cluster.idle()
    updates = mqtt_recorder(f"jobs/{X3}/updates_available")
    a.address_changed(X3, 0, "198.51.100.7", 50104)
    for number in (0, 1):
        wait_until(lambda n=number: root_server.instance(X3, n)["host_ip"] == "198.51.100.7")
        assert root_server.instance(X3, number)["host_port"] == 50104
    assert updates.wait_for().payload == {"type": "DEPLOYMENT"}
    answer = a.query(sname=X3)
    assert {(i["host_ip"], i["host_port"]) for i in answer["instance_list"]} == {
        ("198.51.100.7", 50104)
    }


def test_queries_by_ipv6_echo_the_key_as_sent(root_server, cluster, make_node):
    deploy(root_server, X3_ID, "X3", "10.30.1.30", 1)
    rr_v6 = root_server.state.services.find_by_name(X3)["service_ip_list"][0]["Address_v6"]
    a = make_node(NODE_A)
    a.deployed(X3, 0, "10.16.0.2", "fc00::2", "192.0.2.1", 50103)
    spelled = rr_v6.replace("::", ":0:0::")  # not the canonical spelling
    answer = a.query(sip=spelled)
    assert answer["query_key"] == spelled and answer["app_name"] == X3
    assert len(answer["instance_list"]) == 1


def test_odd_queries_get_an_empty_answer_at_once(cluster, make_node):
    a = make_node(NODE_A)
    started = time.monotonic()
    answer = a.query(sname="not-a-job-name")
    assert answer == {"app_name": None, "query_key": "not-a-job-name", "instance_list": []}
    unknown = a.query(sip="10.30.77.77")
    assert unknown == {"app_name": None, "query_key": "10.30.77.77", "instance_list": []}
    assert time.monotonic() - started < 2


def test_interest_removal_of_a_service_ip_changes_nothing(root_server, cluster, make_node, caplog):
    deploy(root_server, X3_ID, "X3", "10.30.1.30", 0)
    a = make_node(NODE_A)
    a.query(sip="10.30.1.30")
    a.remove_interest("10.30.1.30")  # what upstream net managers send for IP pseudo-interests
    a.remove_interest("X.default.X3.default.extra")
    wait_until(lambda: "interest removal for an invalid job name" in warnings(caplog))
    assert cluster.interested(X3) == [NODE_A]
    assert warnings(caplog) == ["interest removal for an invalid job name"]


def test_cluster_receives_only_node_requests(cluster, make_node, caplog):
    """Its own answers and unknown kinds never reach it: it subscribes to requests only."""
    a = make_node(NODE_A)
    a.publish("tablequery/result", {"app_name": None, "query_key": "x", "instance_list": []})
    a.publish("subnetwork/result", b"not even json")
    a.publish("no/such/kind", {})
    assert a.query(sname="A.b.c.d")["instance_list"] == []  # handled after the three
    text = cluster.client.get("/metrics").get_data(as_text=True)
    assert 'kind="tablequery/request",outcome="handled"} 1.0' in text
    assert "tablequery/result" not in text and "subnetwork/result" not in text
    assert warnings(caplog) == []


class SlowFor:
    """WSGI middleware: requests whose path contains `needle` wait until released."""

    def __init__(self, app, needle: str) -> None:
        self.app = app
        self.needle = needle
        self.release = threading.Event()
        self.arrived = threading.Event()  # a matching request is being held
        self.held = 0  # matching requests held right now

    def __call__(self, environ, start_response):
        if self.needle in environ["PATH_INFO"]:
            self.held += 1
            self.arrived.set()
            self.release.wait(10)
            self.held -= 1
        return self.app(environ, start_response)


def test_a_slow_root_never_stops_other_queries(root_server, make_cluster, make_node):
    cluster = make_cluster(root_timeout=10.0)
    deploy(root_server, X1_ID, "X1", "10.30.0.1", 1)
    deploy(root_server, X3_ID, "X3", "10.30.1.30", 1)
    a, b = make_node(NODE_A), make_node(NODE_B)
    a.deployed(X1, 0, "10.16.0.2", "fc00::2", "192.0.2.1", 50103)
    wait_until(lambda: a.query(sname=X1)["instance_list"])
    slow = SlowFor(root_server.server.app, "X_default_X3_default")
    root_server.server.stop()
    root_server.server.app = slow
    root_server.server.start()

    mark = a.mark()
    a.publish("tablequery/request", {"sname": X3, "sip": ""})  # hangs at the root
    assert slow.arrived.wait(5), "the X3 query never reached the root"
    for node in (a, b):
        assert node.query(sip="10.30.0.1", timeout=2)["app_name"] == X1
        assert slow.held == 1  # answered while the X3 query still hangs at the root
    results = [body for _t, body in a.messages(f"nodes/{NODE_A}/net/tablequery/result")]
    assert X3 not in [r["query_key"] for r in results]
    slow.release.set()
    assert a.wait("tablequery/result", lambda r: r["query_key"] == X3, mark)["app_name"] == X3
    cluster.idle()
