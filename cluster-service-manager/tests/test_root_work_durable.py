"""Work waiting for the root survives a restart of the cluster service manager.

The root is down; nodes report deployments and drop interests; the cluster is stopped
and a new instance starts on the same store; the root comes back: every report and
interest removal arrives, in the node's order.
"""

from __future__ import annotations

import pytest
from csm_helpers import X1, X1_ID, X3, X3_ID

from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("fail_on_log_exception")

NODE_A = "6630a0a0a0a0a0a0a0a0a0a0"
NODE_B = "6630b0b0b0b0b0b0b0b0b0b0"


def test_pending_root_work_survives_a_cluster_restart(root_server, make_cluster, make_node, db):
    root = root_server
    root.deploy_service(X1_ID, "X1")
    root.deploy_service(X3_ID, "X3")
    root.deploy_instance(X1_ID, 0)
    root.deploy_instance(X1_ID, 1)
    first = make_cluster()
    a, b = make_node(NODE_A), make_node(NODE_B)
    assert a.query(sname=X1)["app_name"] == X1
    assert b.query(sname=X3)["app_name"] == X3
    first.idle()
    assert X3 in root.interests()

    root.server.stop()
    a.deployed(X1, 0, "10.16.0.2", "fc00::2", "192.0.2.1", 50103)
    a.deployed(X1, 1, "10.16.0.3", "fc00::3", "192.0.2.1", 50104)  # queued behind the first
    b.remove_interest(X3)  # nobody here needs X3 any more: the root must hear it
    journal = first.parts.journal
    wait_until(lambda: journal.count() == 3, timeout=10, message="work not journaled")
    first.stop()  # pending work in memory is gone with it

    second = make_cluster(register=False)  # a new process on the same store
    assert second.parts.journal.count() >= 2
    root.server.start()
    wait_until(lambda: root.instance(X1, 0).get("namespace_ip") == "10.16.0.2", timeout=60)
    wait_until(lambda: root.instance(X1, 1).get("namespace_ip") == "10.16.0.3", timeout=60)
    wait_until(lambda: X3 not in root.interests(), timeout=60)
    second.idle(15)
    assert second.parts.journal.count() == 0
    assert root.instance(X1, 1).get("host_port") == 50104
