"""The namespace testbed: topology checks (no root) and build, teardown, sweep (root)."""

from __future__ import annotations

import os
import sys

import pytest

from testbed import Testbed, TestbedError, two_nodes, unique_prefix
from testbed.sweep import our_namespaces, sweep
from testbed.topology import Container, Node, Topology

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces")


def test_names_are_prefixed_and_fit_device_names() -> None:
    topology = two_nodes("oakt-ab12-", extra_container_on_n1=True)
    assert topology.namespaces == [f"oakt-ab12-{n}" for n in ("ul", "n1", "n2", "c1", "c2", "c3")]
    assert str(topology.node("n2").bridge_ip) == "10.16.0.65/26"
    assert str(topology.node("n2").bridge_ip_v6) == "fc00::101/120"
    assert [c.name for c in topology.containers_of("n1")] == ["c1", "c3"]


@pytest.mark.parametrize(
    "prefix, nodes, containers, complaint",
    [
        ("mine-", None, (), "must start with"),
        ("oakt-x-", (Node("n1", "192.0.2.1", "10.16.0.0/26", "fc00::/120"),), (), "198.18"),
        ("oakt-x-", None, (Container("c9", "n1", "10.16.0.70", "fc00::2"),), "not in"),
        ("oakt-x-", (Node("a-very-long-name", "198.18.0.1", "10.16.0.0/26", "fc00::/120"),),
         (), "too long"),
    ],
)  # fmt: skip
def test_bad_topologies_are_refused(prefix, nodes, containers, complaint) -> None:
    nodes = nodes or two_nodes("oakt-x-").nodes
    with pytest.raises(ValueError, match=complaint):
        Topology(prefix, nodes, containers)


@ROOT
@pytest.mark.kernel
def test_build_connects_containers_through_their_bridges_and_close_removes_all() -> None:
    topology = two_nodes(unique_prefix())
    with Testbed(topology) as bed:
        code = "import socket; socket.create_connection(('10.16.0.1', 9), timeout=2)"
        result = bed.run("c1", [sys.executable, "-c", code], check=False)
        assert "ConnectionRefusedError" in result.stderr  # the bridge answered (RST)
        with pytest.raises(TestbedError, match="exited with"):
            bed.run("c1", ["false"])
    assert not [n for n in our_namespaces() if n.startswith(topology.prefix)]


@ROOT
@pytest.mark.kernel
def test_sweep_removes_what_a_crashed_run_left() -> None:
    topology = two_nodes(unique_prefix())
    bed = Testbed(topology)
    bed.build()
    sleeper = bed.popen("c1", ["sleep", "60"])  # a run that died without close()
    try:
        swept = [n for n in sweep((topology.prefix,)) if n.startswith(topology.prefix)]
        assert sorted(swept) == sorted(topology.namespaces)
        assert sleeper.wait(5) is not None
        assert not [n for n in our_namespaces() if n.startswith(topology.prefix)]
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        bed.close()  # nothing left to do after the sweep; must not fail either
