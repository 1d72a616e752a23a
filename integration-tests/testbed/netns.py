"""Build a Topology in network namespaces, run processes inside them, tear it all down.

Testbed(topology) creates one namespace per node and container plus one for the
underlay bridge (198.18.0.0/24); veth pairs are created with both ends directly in
their namespaces (`ip -n A link add … peer … netns B`), so nothing is ever created in,
or configured on, the namespace this process runs in. Node namespaces get a bridge at
subnet + 1 (what the net manager's kernel module would set up), forwarding on and
rp_filter off; containers get their namespace IPs and default routes via the bridge.

Processes are started inside a namespace with `ip netns exec` and remembered; close()
stops them by PID, then deletes the namespaces (their devices go with them). Use it as
a context manager: build() tears down what it made if it fails half-way. sweep.py
removes whatever a crashed run left behind.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Sequence

from testbed.topology import (
    CONTAINER_LINK,
    MTU,
    NODE_BRIDGE,
    UNDERLAY,
    UNDERLAY_BRIDGE,
    Container,
    Node,
    Topology,
)

COMMAND_TIMEOUT = 30.0


class TestbedError(RuntimeError):
    """A testbed step failed; the message names the namespace and the command."""

    __test__ = False


def run_command(argv: Sequence[str], what: str, *, timeout: float = COMMAND_TIMEOUT, **kw):
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise TestbedError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise TestbedError(f"{what}: {' '.join(argv)} took more than {timeout} s") from None
    return result


def stop_pid_process(proc: subprocess.Popen, timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, a process this testbed started (by its PID)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class Testbed:
    """A built Topology; see the module doc."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._created: list[str] = []  # namespaces, in creation order
        self._processes: list[subprocess.Popen] = []

    # ------------------------------------------------------------ life cycle

    def __enter__(self) -> Testbed:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        try:
            for name in self.topology.namespaces:
                self._add_netns(name)
            self.ip("ul", "link", "add", UNDERLAY_BRIDGE, "type", "bridge")
            self.ip("ul", "link", "set", UNDERLAY_BRIDGE, "up")
            for node in self.topology.nodes:
                self._build_node(node)
            for container in self.topology.containers:
                self._build_container(container)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every process started here, then delete every namespace created here."""
        errors = []
        for proc in reversed(self._processes):
            try:
                stop_pid_process(proc)
            except (OSError, subprocess.SubprocessError) as err:
                errors.append(f"process {proc.pid}: {err}")
        self._processes.clear()
        for name in reversed(self._created):
            result = run_command(["ip", "netns", "del", name], f"delete namespace {name}")
            if result.returncode != 0 and os.path.exists(f"/run/netns/{name}"):
                errors.append(f"namespace {name}: {result.stderr.strip()}")
        self._created.clear()
        if errors:
            raise TestbedError("testbed teardown incomplete: " + "; ".join(errors))

    def add_namespace(self, name: str) -> str:
        """One more namespace, `prefix + name` (e.g. a container's); close() removes it."""
        full = f"{self.topology.prefix}{name}"
        self._add_netns(full)
        return full

    def remove_namespace(self, full_name: str) -> None:
        """Delete a namespace made by add_namespace (stop its processes first)."""
        if full_name not in self._created:
            raise TestbedError(f"namespace {full_name} was not made by this testbed")
        result = run_command(["ip", "netns", "del", full_name], f"delete namespace {full_name}")
        if result.returncode != 0 and os.path.exists(f"/run/netns/{full_name}"):
            raise TestbedError(f"cannot delete namespace {full_name}: {result.stderr.strip()}")
        self._created.remove(full_name)

    # ------------------------------------------------------------ running things

    def netns_exec(self, where: str) -> list[str]:
        """The command prefix that runs a command inside the namespace of where."""
        return ["ip", "netns", "exec", self.topology.netns(where)]

    def run(
        self,
        where: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run argv inside where's namespace and wait; TestbedError if it fails and check."""
        what = f"in {self.topology.netns(where)}: {' '.join(argv)}"
        result = run_command([*self.netns_exec(where), *argv], what, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise TestbedError(f"{what} exited with {result.returncode}: {result.stderr.strip()}")
        return result

    def python(self, where: str, code: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a Python snippet inside where's namespace; its stdout."""
        return self.run(where, [sys.executable, "-c", code, *args], timeout=timeout).stdout

    def popen(self, where: str, argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
        """Start argv inside where's namespace; close() stops it."""
        proc = subprocess.Popen([*self.netns_exec(where), *argv], **popen_kwargs)
        self._processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        stop_pid_process(proc)
        if proc in self._processes:
            self._processes.remove(proc)

    def ip(self, where: str, *args: str) -> None:
        argv = ["ip", "-n", self.topology.netns(where), *args]
        result = run_command(argv, f"ip {' '.join(args)}")
        if result.returncode != 0:
            raise TestbedError(f"{' '.join(argv)} failed: {result.stderr.strip()}")

    def sysctl(self, where: str, values: dict[str, str]) -> None:
        script = "; ".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in values.items())
        self.run(where, ["sh", "-ec", script])

    # ------------------------------------------------------------ building

    def _add_netns(self, name: str) -> None:
        result = run_command(["ip", "netns", "add", name], f"create namespace {name}")
        if result.returncode != 0:
            raise TestbedError(f"cannot create namespace {name}: {result.stderr.strip()}")
        self._created.append(name)
        result = run_command(["ip", "-n", name, "link", "set", "lo", "up"], f"lo up in {name}")
        if result.returncode != 0:
            raise TestbedError(f"cannot set lo up in {name}: {result.stderr.strip()}")

    def _build_node(self, node: Node) -> None:
        where, port = node.name, Topology.uplink_peer(node)
        self.ip(where, "link", "add", node.uplink, "type", "veth", "peer", "name", port,
                "netns", self.topology.netns("ul"))  # fmt: skip
        self.ip("ul", "link", "set", port, "master", UNDERLAY_BRIDGE, "up")
        prefix = UNDERLAY.split("/")[1]
        self.ip(where, "addr", "add", f"{node.underlay_ip}/{prefix}", "dev", node.uplink)
        self.ip(where, "link", "set", node.uplink, "up")
        self.sysctl(where, {
            "net.ipv4.ip_forward": "1",
            "net.ipv6.conf.all.forwarding": "1",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
        })  # fmt: skip
        if not node.bridge:
            return
        self.ip(where, "link", "add", NODE_BRIDGE, "mtu", str(MTU), "type", "bridge")
        self.ip(where, "addr", "add", str(node.bridge_ip), "dev", NODE_BRIDGE)
        self.ip(where, "addr", "add", str(node.bridge_ip_v6), "dev", NODE_BRIDGE, "nodad")
        self.ip(where, "link", "set", NODE_BRIDGE, "up")

    def _build_container(self, container: Container) -> None:
        node = self.topology.node(container.node)
        port, where = Topology.container_port(container), container.name
        self.ip(node.name, "link", "add", port, "mtu", str(MTU), "type", "veth", "peer", "name",
                CONTAINER_LINK, "netns", self.topology.netns(where))  # fmt: skip
        self.ip(node.name, "link", "set", port, "master", NODE_BRIDGE, "up")
        v4_prefix = node.subnet.split("/")[1]
        v6_prefix = node.subnet_v6.split("/")[1]
        self.ip(where, "addr", "add", f"{container.ip}/{v4_prefix}", "dev", CONTAINER_LINK)
        self.ip(where, "addr", "add", f"{container.ip_v6}/{v6_prefix}", "dev", CONTAINER_LINK,
                "nodad")  # fmt: skip
        self.ip(where, "link", "set", CONTAINER_LINK, "up")
        self.ip(where, "route", "add", "default", "via", str(node.bridge_ip.ip))
        self.ip(where, "-6", "route", "add", "default", "via", str(node.bridge_ip_v6.ip))

    def wait_for_line(self, proc: subprocess.Popen, timeout: float = 10.0) -> str:
        """The next line proc prints (started with stdout=PIPE, text=True)."""
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], timeout)
        if not readable:
            raise TestbedError(f"process {proc.args} printed nothing within {timeout} s")
        line = proc.stdout.readline()
        if not line:
            raise TestbedError(f"process {proc.args} exited with {proc.wait(timeout)}")
        return line.strip()
