"""Nodes must not keep entries of instances that are gone (two races found and fixed).

1. A change of a service right after a node starts using it must still reach that node.
The node used to subscribe to `jobs/<job>/updates_available` only when the table
result arrived, so an update published before that SUBSCRIBE reached the broker was
lost. Now one wildcard subscription is live from registration and results and updates
are handled in the order the cluster sent them. Here: X1.0 on w1 sends one datagram to a service
whose only instance runs on w2; as soon as w1's table query is seen, that instance is
undeployed (the cluster announces it at once). w1 must end up without entries for it.

2. A node whose refresh is answered after the service is gone must drop its entries.
The cluster answers a query for a job nobody knows any more with `app_name: null` and
an empty instance list (upstream's shape); the net manager used to ignore results
without `app_name`, so the node kept the removed service's entries, and every packet a
client still sent there counted as use, so they never expired. Made deterministic: w1's daemon
is paused (SIGSTOP) while the service is removed and the cluster service manager
restarts (forgetting it), then resumed to handle the updates that were announced.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from testbed.orchestrator import APP_PORT, Instance, Orchestrator
from testbed.run import preflight
from testbed.watch import TopicWatcher

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(preflight() is not None, reason=f"system test: {preflight()}"),
    pytest.mark.timeout(120),
]

ATTEMPTS = 10  # the window is a few tens of ms wide: about every second attempt hits it


def test_an_update_right_after_the_first_use_reaches_the_node(local_cluster) -> None:
    cluster, orch = local_cluster
    w1, w2 = cluster.workers
    client = orch.deploy_instance(orch.deploy_service("X", "X1"), w1)
    with TopicWatcher(cluster, ["nodes/+/net/tablequery/#"]) as watcher:
        for attempt in range(ATTEMPTS):
            service = orch.deploy_service("X", f"R{attempt}")
            instance = orch.deploy_instance(service, w2)
            orch.wait_all_know(instance)
            asked = threading.Event()
            trigger = threading.Thread(target=undeploy_when_asked, args=(watcher, instance, asked))
            trigger.start()
            with client.container.sockets.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"first use", (service.rr_ip, APP_PORT))
            trigger.join()
            assert asked.is_set(), f"attempt {attempt + 1}: w1 never asked for {service.rr_ip}"
            time.sleep(1.0)  # the update takes tens of ms when it is not lost
            entries = [e for e in w1.status()["table"] if e["job_name"] == service.job_name]
            assert not entries, f"attempt {attempt + 1}: w1 still has {entries}"
            forget(orch, instance)


def undeploy_when_asked(watcher: TopicWatcher, instance: Instance, asked: threading.Event):
    """When w1's table query for the service is seen: the node engine on w2 undeploys."""
    try:
        watcher.wait_for(
            lambda m: (
                m.topic.endswith("/net/tablequery/request")
                and m.payload.get("sip") == instance.service.rr_ip
            ),
            5,
        )
    except AssertionError:
        return
    asked.set()
    body = {"serviceName": instance.service.job_name, "instanceNumber": instance.number}
    instance.worker.call("POST", "/container/undeploy", body)


def forget(orch: Orchestrator, instance: Instance) -> None:
    """The rest of the removal, once the node has undeployed: container, root, service."""
    service = instance.service
    orch.stop_container(instance.container)
    orch.cluster.root_api("DELETE", f"/api/net/{service.job_id}/{instance.number}")
    orch.cluster.root_api("DELETE", f"/api/net/service/{service.job_id}")
    del orch.services[service.job_name]


def test_a_node_drops_a_removed_service_even_when_told_late(local_cluster) -> None:
    cluster, orch = local_cluster
    w1, w2 = cluster.workers
    x1 = next((s for s in orch.services.values() if s.name == "X1"), None)
    x1 = x1 or orch.deploy_service("X", "X1")
    client = x1.instances.get(0) or orch.deploy_instance(x1, w1)
    x7 = orch.deploy_service("X", "X7", rr_ip="10.30.7.7")
    orch.deploy_instance(x7, w2)
    assert client.container.http_get(x7.rr_ip)["instance"] == f"{x7.job_name}.0"
    time.sleep(0.5)  # w1's subscription to X7's updates is live (see the test above)
    daemon = w1.process.proc
    assert daemon is not None
    daemon.send_signal(signal.SIGSTOP)
    try:
        orch.remove_service(x7)  # the updates announcing it wait in w1's socket
        cluster.restart_cluster_manager()
    finally:
        daemon.send_signal(signal.SIGCONT)
    time.sleep(3)
    entries = [e for e in w1.status()["table"] if e["job_name"] == x7.job_name]
    assert not entries, f"w1 still sends X7's traffic to {[e['namespace_ip'] for e in entries]}"
