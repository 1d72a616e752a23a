"""Namespace testbed: topologies as data (topology), a builder (netns), a leftover sweep
(sweep), the data-path benchmark (bench), and the local cluster of `make run` and the
system tests: the components in namespaces (cluster, processes), Oakestra's part
(orchestrator, echo_server), reaching into namespaces (nsnet), an MQTT watcher (watch),
the status table (status) and the command itself (run). Importable as `testbed` once
integration-tests/ is on sys.path (integration-tests/conftest.py puts it there).
"""

from testbed.netns import Testbed, TestbedError
from testbed.topology import Container, Node, Topology, two_nodes, unique_prefix

__all__ = ["Container", "Node", "Testbed", "TestbedError", "Topology", "two_nodes", "unique_prefix"]
