"""The running example of reference §8.3 from the cluster's side, end to end.

Real Mosquitto, the real root service manager on loopback (driven with the system
manager's payloads), the cluster service manager served on loopback, and two or three
worker nodes simulated as MQTT clients that publish what net managers publish.
"""

from __future__ import annotations

import ipaddress

import pytest
import requests
from csm_helpers import X1, X1_ID, X3, X3_ID, instances_by_number

from oakestra_net.messages import TableQueryResult
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("fail_on_log_exception")

NODE_A = "6630a0a0a0a0a0a0a0a0a0a0"
NODE_B = "6630b0b0b0b0b0b0b0b0b0b0"
NODE_C = "6630c0c0c0c0c0c0c0c0c0c0"
HOST_A, HOST_B = "192.0.2.1", "192.0.2.2"
PORT = 50103


def container(subnet: dict, n: int) -> tuple[str, str]:
    """The n-th container address of a node subnet (bridge = +1, containers from +2)."""
    v4 = ipaddress.ip_address(subnet["address"]) + n
    v6 = ipaddress.ip_address(subnet["addressv6"]) + n
    return str(v4), str(v6)


def deploy_example(root):
    root.deploy_service(X1_ID, "X1", "10.30.0.1")
    root.deploy_service(X3_ID, "X3", "10.30.1.30")
    return {
        (X1, 0): root.deploy_instance(X1_ID, 0),
        (X1, 1): root.deploy_instance(X1_ID, 1),
        (X3, 0): root.deploy_instance(X3_ID, 0),
    }


def test_nodes_get_distinct_subnets_and_the_same_one_again(cluster, make_node):
    a, b = make_node(NODE_A), make_node(NODE_B)
    subnet_a, subnet_b = a.request_subnet(), b.request_subnet()
    assert subnet_a != subnet_b
    for subnet in (subnet_a, subnet_b):
        assert ipaddress.ip_address(subnet["address"]).version == 4
        assert ipaddress.ip_address(subnet["addressv6"]).version == 6
    assert a.request_subnet() == subnet_a
    assert b.request_subnet() == subnet_b
    assert cluster.cache.node_subnet(NODE_A) == (subnet_a["address"], subnet_a["addressv6"])


def test_subnet_delete_releases_it(cluster, make_node, root_server):
    a = make_node(NODE_A)
    first = a.request_subnet()
    a.publish("subnet", {"METHOD": "DELETE"})
    wait_until(lambda: cluster.cache.node_subnet(NODE_A) is None, message="subnet not released")
    cluster.idle()
    second = a.request_subnet()
    assert second["address"] != first["address"]  # released to the root's pool, not reused yet
    from oakestra_net.addressing import Pool

    assert root_server.state.allocator.owner_of(Pool.SUBNET_V4, first["address"]) is None


def test_running_example(root_server, cluster, make_node, mqtt_recorder):
    root = root_server
    updates = mqtt_recorder("jobs/+/updates_available")
    instances = deploy_example(root)
    a, b, c = make_node(NODE_A), make_node(NODE_B), make_node(NODE_C)
    subnet_a, subnet_b = a.request_subnet(), b.request_subnet()

    # the cluster manager announces X3 before sending it to node B
    answer = requests.post(f"{cluster.url}/api/net/deployment", json={"job_name": X3}, timeout=5)
    assert answer.status_code == 200, answer.text
    assert cluster.job(X3)["instance_list"][0]["instance_ip"] == instances[(X3, 0)]["instance_ip"]
    assert X3 in root.interests()

    # node B deploys X3.0, the root learns where it runs
    x3_0 = container(subnet_b, 2)
    b.deployed(X3, 0, *x3_0, HOST_B, PORT)
    wait_until(lambda: root.instance(X3, 0).get("namespace_ip") == x3_0[0], message="no location")
    assert root.instance(X3, 0)["host_port"] == PORT
    assert root.instance(X3, 0)["host_ip"] == HOST_B
    b.watch(X3)
    by_name = TableQueryResult.from_json(b.query(sname=X3))
    assert by_name.app_name == X3 and by_name.query_key == X3
    assert [i.namespace_ip for i in by_name.instance_list] == [x3_0[0]]

    # X1: instance 0 on A, instance 1 on B; C asks for X1 by name
    x1_0, x1_1 = container(subnet_a, 2), container(subnet_b, 3)
    a.deployed(X1, 0, *x1_0, HOST_A, PORT)
    b.deployed(X1, 1, *x1_1, HOST_B, PORT)
    wait_until(lambda: root.instance(X1, 1).get("namespace_ip") == x1_1[0])
    wait_until(lambda: root.instance(X1, 0).get("namespace_ip") == x1_0[0])
    a.watch(X1)
    c.watch(X1)
    assert len(c.query(sname=X1)["instance_list"]) == 2

    # A's table miss on 10.30.1.30 (X3's RR IP)
    raw = a.query(sip="10.30.1.30")
    a.watch(X3)
    check_x3_answer(raw, instances[(X3, 0)], x3_0)
    assert cluster.interested(X3) == sorted([NODE_A, NODE_B])

    # B's reply path: a query by X1.0's instance IP
    reply_path = b.query(sip=instances[(X1, 0)]["instance_ip"])
    assert reply_path["app_name"] == X1
    assert {i["namespace_ip"] for i in reply_path["instance_list"]} == {x1_0[0], x1_1[0]}
    assert cluster.interested(X1) == sorted([NODE_B, NODE_C])

    scale_up_and_down(root, cluster, updates, a, b, c, subnet_a)
    interest_cascade(root, cluster, a, b)


def check_x3_answer(raw: dict, x3_instance: dict, location: tuple[str, str]) -> None:
    assert set(raw) == {"app_name", "query_key", "instance_list"}
    assert raw["app_name"] == X3 and raw["query_key"] == "10.30.1.30"
    (instance,) = raw["instance_list"]
    assert instance["host_port"] == PORT and isinstance(instance["host_port"], int)
    assert instance["host_ip"] == HOST_B
    assert (instance["namespace_ip"], instance["namespace_ip_v6"]) == location
    assert instance["instance_ip"] == x3_instance["instance_ip"]
    assert instance["worker_id"] == NODE_B
    kinds = [entry["IpType"] for entry in instance["service_ip"]]
    assert kinds == ["RR", "Closest", "instance_ip"]
    rr, _closest, own = instance["service_ip"]
    assert rr["Address"] == "10.30.1.30" and rr["Address_v6"].startswith("fdff:2000:")
    assert own == {
        "IpType": "instance_ip",
        "Address": x3_instance["instance_ip"],
        "Address_v6": x3_instance["instance_ip_v6"],
    }
    TableQueryResult.from_json(raw)  # the schema the net managers validate with


def scale_up_and_down(root, cluster, updates, a, b, c, subnet_a):
    """Scaling X3 reaches exactly the nodes interested in X3 (A and B), not C."""
    updates.clear()
    marks = {node: len(node.updates(X3)) for node in (a, b, c)}
    root.deploy_instance(X3_ID, 1)
    x3_1 = container(subnet_a, 3)
    a.deployed(X3, 1, *x3_1, HOST_A, PORT)
    for node in (a, b):
        wait_until(lambda n=node: len(n.updates(X3)) > marks[n], message="no scale-up update")
    assert {"type": "DEPLOYMENT"} in a.updates(X3)
    assert len(c.updates(X3)) == 0
    x3_updates = updates.messages(f"jobs/{X3}/updates_available")
    assert x3_updates and all(m.payload == {"type": "DEPLOYMENT"} for m in x3_updates)
    wait_until(lambda: len(a.query(sname=X3)["instance_list"]) == 2, message="X3.1 not served")

    updates.clear()
    marks = {node: len(node.updates(X3)) for node in (a, b)}
    root.undeploy_instance(X3_ID, 1)
    for node in (a, b):
        wait_until(lambda n=node: {"type": "UNDEPLOYMENT"} in n.updates(X3)[marks[n] :])
    a.undeployed(X3, 1)  # the node's own report comes after the root's update
    assert list(instances_by_number(a.query(sname=X3))) == [0]
    assert {"type": "UNDEPLOYMENT"} in [m.payload for m in updates.messages()]
    assert len(c.updates(X3)) == 0
    cluster.idle()


def interest_cascade(root, cluster, a, b):
    """The root interest stays while a node is interested or an instance runs here."""
    a.remove_interest(X3)
    wait_until(lambda: cluster.interested(X3) == [NODE_B])
    b.remove_interest(X3)
    wait_until(lambda: cluster.interested(X3) == [])
    cluster.idle()
    assert cluster.job(X3) is not None, "X3.0 runs on B: the job must stay cached"
    assert X3 in root.interests()

    a.watch(X3)
    assert len(a.query(sname=X3)["instance_list"]) == 1
    mark = len(a.updates(X3))
    b.undeployed(X3, 0)
    wait_until(lambda: {"type": "UNDEPLOYMENT"} in a.updates(X3)[mark:])
    assert a.query(sname=X3)["instance_list"] == []  # no location known: left out
    assert cluster.job(X3) is not None  # A is still interested

    a.remove_interest(X3)
    wait_until(lambda: cluster.job(X3) is None, message="X3 not forgotten")
    wait_until(lambda: X3 not in root.interests(), message="root interest kept")
    assert X1 in root.interests()
