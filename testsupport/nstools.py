"""Network-namespace helpers for tests and the testbed: namespaces, commands, "containers".

`create_netns`/`delete_netns` manage named namespaces under /run/netns (`ip netns`),
`run_in`/`popen_in` run a command inside a namespace given by name or path (`nsenter`,
so the calling process never switches namespace), `spawn_container` starts a sleeping
process in a fresh namespace of its own (what a container runtime gives the net
manager: a PID), `veth_between` wires two named namespaces, and `tcp_echo_server` /
`tcp_request` check reachability with plain Python sockets (no ping needed).
`Namespaces` tracks everything it created and removes it on `close()`, for fixtures.
Nothing here touches the namespace the caller runs in; configuring the net manager's
own devices is left to `kernel`.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

NETNS_RUN_DIR = "/run/netns"
TEST_PREFIX = "oakt-"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
COMMAND_TIMEOUT = 15.0

_ECHO_SERVER = r"""
import socket, sys
host, port, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
server = socket.socket(family, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
server.bind((host, port))
server.listen(16)
print("listening", flush=True)
while True:
    conn, peer = server.accept()
    with conn:
        conn.recv(1024)
        peer_ip = peer[0].removeprefix("::ffff:")
        conn.sendall(f"{tag} {peer_ip}".encode())
"""

_CLIENT = r"""
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with socket.create_connection((host, port), timeout=timeout) as conn:
    conn.sendall(b"hello")
    conn.shutdown(socket.SHUT_WR)
    print(conn.recv(1024).decode(), end="")
"""


class NsToolsError(RuntimeError):
    """A namespace helper failed; the message names the namespace, process or command."""


def unique_name(prefix: str = TEST_PREFIX) -> str:
    """A fresh namespace name: `prefix` plus 8 random hex digits."""
    return f"{prefix}{secrets.token_hex(4)}"


def netns_path(netns: str) -> str:
    """The file of a namespace given by name (under /run/netns) or by path."""
    if "/" in netns:
        return netns
    _check_name(netns)
    return os.path.join(NETNS_RUN_DIR, netns)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid namespace name {name!r}")


def _run(argv: Sequence[str], what: str, *, timeout: float = COMMAND_TIMEOUT, **kwargs):
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, **kwargs
        )
    except FileNotFoundError:
        raise NsToolsError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise NsToolsError(f"{what}: {' '.join(argv)} took longer than {timeout} s") from None
    return result


def create_netns(name: str) -> str:
    """Create the named namespace with its loopback up; return its path."""
    _check_name(name)
    result = _run(["ip", "netns", "add", name], f"cannot create namespace {name}")
    if result.returncode != 0:
        raise NsToolsError(f"cannot create namespace {name}: {result.stderr.strip()}")
    run_in(name, ["ip", "link", "set", "lo", "up"])
    return netns_path(name)


def delete_netns(name: str) -> None:
    """Delete the named namespace; a namespace that does not exist is fine."""
    _check_name(name)
    if not os.path.exists(netns_path(name)):
        return
    result = _run(["ip", "netns", "delete", name], f"cannot delete namespace {name}")
    if result.returncode != 0 and os.path.exists(netns_path(name)):
        raise NsToolsError(f"cannot delete namespace {name}: {result.stderr.strip()}")


def _nsenter(netns: str, argv: Sequence[str]) -> list[str]:
    """The command running `argv` in `netns`; never in the caller's own namespace (a dead
    container's /proc/<pid>/ns/net could by then belong to an unrelated process)."""
    path = netns_path(netns)
    try:
        if _same_netns(path, "/proc/self/ns/net"):
            raise NsToolsError(f"refusing to run {argv[0]} in our own namespace via {netns}")
    except OSError:
        raise NsToolsError(f"namespace {netns} does not exist") from None
    return ["nsenter", f"--net={path}", "--", *argv]


def run_in(
    netns: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run `argv` inside `netns` (name or path) and wait; text output captured.

    With `check`, a non-zero exit raises NsToolsError carrying the command and stderr.
    """
    where = f"in namespace {netns}"
    result = _run(
        _nsenter(netns, argv), f"cannot run {argv[0]} {where}", timeout=timeout, input=input
    )
    if check and result.returncode != 0:
        raise NsToolsError(
            f"{' '.join(argv)} {where} exited with {result.returncode}: {result.stderr.strip()}"
        )
    return result


def popen_in(netns: str, argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
    """Start `argv` inside `netns` without waiting; the caller stops it (`stop_process`)."""
    return subprocess.Popen(_nsenter(netns, argv), **popen_kwargs)


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate a process this module started (by its PID), then kill it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@dataclass
class Container:
    """A process sleeping in a network namespace of its own, standing in for a container."""

    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def netns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def stop(self) -> None:
        stop_process(self.proc)


def _same_netns(path_a: str, path_b: str) -> bool:
    a, b = os.stat(path_a), os.stat(path_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def spawn_container(timeout: float = 5.0) -> Container:
    """Start a process in a fresh network namespace and return once it is inside it.

    The namespace is checked to differ from the caller's, so nothing configured through
    `container.netns_path` can land in the caller's namespace.
    """
    argv = [
        "unshare",
        "--net",
        "--",
        "sh",
        "-c",
        "ip link set lo up; echo ready; exec sleep infinity",
    ]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except FileNotFoundError:
        raise NsToolsError("cannot start a container process: unshare is not installed") from None
    container = Container(proc)
    try:
        _wait_ready(proc, timeout, "container process")
        if _same_netns(container.netns_path, "/proc/self/ns/net"):
            raise NsToolsError(f"container process {proc.pid} did not get its own namespace")
    except BaseException:
        container.stop()
        raise
    return container


def _wait_ready(proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Wait for the first output line of `proc`, which it prints once it is ready."""
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if readable else ""
    if line:
        return
    if proc.poll() is not None:
        raise NsToolsError(f"{what} {proc.pid} exited with {proc.returncode} before ready")
    raise NsToolsError(f"{what} {proc.pid} not ready within {timeout} s")


def veth_between(
    ns_a: str,
    name_a: str,
    ns_b: str,
    name_b: str,
    *,
    addresses_a: Sequence[str] = (),
    addresses_b: Sequence[str] = (),
) -> None:
    """Create a veth pair `name_a` in named namespace `ns_a`, `name_b` in `ns_b`, both up."""
    _check_name(ns_b)
    run_in(
        ns_a, ["ip", "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b]
    )
    for netns, name, addresses in ((ns_a, name_a, addresses_a), (ns_b, name_b, addresses_b)):
        for address in addresses:
            run_in(netns, ["ip", "addr", "add", address, "dev", name, "nodad"])
        run_in(netns, ["ip", "link", "set", name, "up"])


def tcp_echo_server(netns: str, host: str, port: int, tag: str) -> subprocess.Popen:
    """Start a TCP server in `netns` answering each connection with "<tag> <peer ip>".

    `host` "::" listens on IPv4 and IPv6. Returns once it listens; stop it with
    `stop_process`.
    """
    argv = [sys.executable, "-c", _ECHO_SERVER, host, str(port), tag]
    proc = popen_in(netns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(proc, 5.0, f"echo server {tag} on {host}:{port} in {netns}")
    except BaseException:
        stop_process(proc)
        raise
    return proc


def tcp_request(netns: str, host: str, port: int, timeout: float = 2.0) -> str:
    """Connect from `netns` to host:port and return the answer; NsToolsError if unreachable."""
    argv = [sys.executable, "-c", _CLIENT, host, str(port), str(timeout)]
    result = run_in(netns, argv, check=False, timeout=timeout + 10)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise NsToolsError(f"{host}:{port} unreachable from {netns}: {reason[0]}")
    return result.stdout


@dataclass
class Namespaces:
    """Creates namespaces, containers and processes, and removes all of them on close()."""

    prefix: str = TEST_PREFIX
    names: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def netns(self) -> str:
        name = unique_name(self.prefix)
        self.names.append(name)
        create_netns(name)
        return name

    def container(self) -> Container:
        container = spawn_container()
        self.processes.append(container.proc)
        return container

    def track(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        errors = []
        for proc in reversed(self.processes):
            try:
                stop_process(proc)
            except Exception as err:  # keep cleaning up the rest
                errors.append(f"process {proc.pid}: {err}")
        for name in reversed(self.names):
            try:
                delete_netns(name)
            except Exception as err:
                errors.append(f"namespace {name}: {err}")
        self.processes.clear()
        self.names.clear()
        if errors:
            raise NsToolsError("cleanup incomplete: " + "; ".join(errors))


@contextmanager
def namespaces(prefix: str = TEST_PREFIX) -> Iterator[Namespaces]:
    """`Namespaces` as a context manager: everything created inside is removed on exit."""
    tracker = Namespaces(prefix)
    try:
        yield tracker
    finally:
        tracker.close()
