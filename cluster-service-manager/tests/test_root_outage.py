"""The root goes away for a while: cached jobs keep being served, the rest waits, nothing is lost.

During the outage the cluster answers table queries for cached jobs at once, and keeps
node reports in its cache. What needs the root (a job it does not cache, a new subnet,
the location report) waits in the node's lane and completes once the root is back.
"""

from __future__ import annotations

import time

import pytest
from csm_helpers import X1, X1_ID, X3, X3_ID

from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("fail_on_log_exception")

NODE_A = "6630a0a0a0a0a0a0a0a0a0a0"
NODE_B = "6630b0b0b0b0b0b0b0b0b0b0"
NODE_C = "6630c0c0c0c0c0c0c0c0c0c0"


@pytest.mark.parametrize(
    "outage",
    [pytest.param(3.0, id="3s"), pytest.param(30.0, id="30s", marks=pytest.mark.slow)],
)
def test_root_unavailable(outage, root_server, cluster, make_node):
    root = root_server
    root.deploy_service(X1_ID, "X1", "10.30.0.1")
    root.deploy_service(X3_ID, "X3", "10.30.1.30")
    x1_0 = root.deploy_instance(X1_ID, 0)
    root.deploy_instance(X1_ID, 1)
    root.deploy_instance(X3_ID, 0)
    a, b, c = make_node(NODE_A), make_node(NODE_B), make_node(NODE_C)
    a.request_subnet()
    a.deployed(X1, 0, "10.16.0.2", "fc00::2", "192.0.2.1", 50103)
    wait_until(lambda: len(a.query(sname=X1)["instance_list"]) == 1)
    cluster.idle()

    root.server.stop()
    down_since = time.monotonic()
    mark_b, mark_c = b.mark(), c.mark()
    b.publish("tablequery/request", {"sname": X3, "sip": ""})  # not cached: must wait
    c.publish("subnet", {"METHOD": "GET"})  # a new node: must wait
    b.deployed(X1, 1, "10.16.0.66", "fc00::102", "192.0.2.2", 50103)  # cached job

    served = 0
    while time.monotonic() - down_since < outage:
        asked = time.monotonic()
        answer = a.query(sip=x1_0["instance_ip"], timeout=2)
        assert time.monotonic() - asked < 1.0, "cached query slow during the outage"
        assert answer["app_name"] == X1
        served += 1
        time.sleep(0.25)
    located = {i["instance_number"] for i in a.query(sname=X1)["instance_list"]}
    assert located == {0, 1}, "B's report during the outage is served from the cache"
    assert not b.messages(f"nodes/{NODE_B}/net/tablequery/result")[mark_b:]
    assert not c.messages(f"nodes/{NODE_C}/net/subnetwork/result")[mark_c:]
    assert cluster.parts.lanes.pending() >= 3
    assert root.instance(X1, 1).get("namespace_ip") is None

    root.server.start()
    x3 = b.wait("tablequery/result", lambda r: r["query_key"] == X3, mark_b, timeout=15)
    assert x3["app_name"] == X3
    assert c.wait("subnetwork/result", after=mark_c, timeout=15)["address"]
    wait_until(lambda: root.instance(X1, 1).get("namespace_ip") == "10.16.0.66", timeout=15)
    cluster.idle(15)
    assert cluster.interested(X3) == [NODE_B]
    assert X3 in root.interests()
    assert served >= outage  # about four answers a second, all the time
