"""Attacks on a running local cluster (real broker, managers and net managers).

The broker-level attacks run against the shipped configuration in test_mosquitto_acl.py,
the API token and placement checks in the services' tests, and `make run`
(test_system_run.py) shows the secured cluster working end to end. Here: what the net
managers themselves do on a broker that is not ours.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from testbed.cluster import BROKER_PORT, LocalCluster
from testbed.orchestrator import Orchestrator
from testbed.processes import Progress
from testbed.run import preflight
from testsupport import wait_until

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(preflight() is not None, reason=f"system test: {preflight()}"),
]

POISON = {"address": "10.18.255.192", "addressv6": "fc00::ff00"}


def test_a_retained_poison_subnet_is_not_taken(tmp_path, dataplane_mode):
    """On upstream's anonymous broker, a subnet result left retained for a node before it
    registers is ignored: the node takes the one the cluster assigns."""
    options = {"progress": Progress(sys.stderr), "dataplane_mode": dataplane_mode}
    cluster = LocalCluster(run_dir=tmp_path / "run", open_broker=True, **options)
    orchestrator = Orchestrator(cluster)
    try:
        cluster.start()
        w1, w2 = cluster.workers
        topic = f"nodes/{w1.node_id}/net/subnetwork/result"
        argv = ["ip", "netns", "exec", cluster.infra_ns, "mosquitto_pub", "-h", "127.0.0.1"]
        argv += ["-p", str(BROKER_PORT), "-q", "1", "-r", "-t", topic, "-m", json.dumps(POISON)]
        subprocess.run(argv, check=True, timeout=10)
        orchestrator.bootstrap()
        first, second = w1.status(), w2.status()
        assert first["subnet"] != POISON["address"]
        assert first["subnet"] != second["subnet"]
        wait_until(lambda: w1.status()["counters"]["mqtt"]["retained_ignored"] == 1)
    finally:
        orchestrator.close()
        cluster.close()
