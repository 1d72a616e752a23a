"""Namespace testbed: topologies as data (topology), a builder (netns), a leftover sweep
(sweep) and the data-path benchmark (bench). Importable as `testbed` once
integration-tests/ is on sys.path (integration-tests/conftest.py puts it there).
"""

from testbed.netns import Testbed, TestbedError
from testbed.topology import Container, Node, Topology, two_nodes, unique_prefix

__all__ = ["Container", "Node", "Testbed", "TestbedError", "Topology", "two_nodes", "unique_prefix"]
