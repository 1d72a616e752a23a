"""`make run` end to end: its module runs for ~10 s, says what it showed, leaves nothing.

Runs `python -m testbed.run` (what the Makefile's run target runs) as a user would,
then checks its output and that no namespace or process of that run is left.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cluster import DATAPLANE_MODE_VARIABLE
from testbed.run import preflight
from testbed.sweep import our_namespaces
from testbed.topology import RUN_PREFIX

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(preflight() is not None, reason=f"system test: {preflight()}"),
    pytest.mark.timeout(120),
]

HERE = Path(__file__).resolve().parent


def start_run(*args: str, dataplane_mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(HERE), DATAPLANE_MODE_VARIABLE: dataplane_mode}
    return subprocess.Popen(
        [sys.executable, "-m", "testbed.run", *args],
        cwd=HERE.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def prefix_of(output: str) -> str:
    match = re.search(rf"creating namespaces ({RUN_PREFIX}[0-9a-f]+-)", output)
    assert match, output
    return match.group(1)


PROGRAMS = ("mosquitto", "root-service-manager", "cluster-service-manager", "net-manager",
            "net_manager", "echo_server.py")  # fmt: skip


class RunWatch:
    """Output and network namespaces of one run, so leftover checks count only its own.

    Every process of a run lives in one of the run's namespaces; a leftover process keeps
    its namespace alive (same inode) after the name is gone, so a process whose namespace
    is one seen during this run is this run's, whatever else runs on the machine.
    """

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.inodes: set[int] = set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def read_until(self, done) -> None:
        """Read output lines (sampling the run's namespaces after each) until done(line)."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            self.lines.append(line)
            self.sample()
            if not line or done(line):
                return

    def sample(self) -> None:
        prefix = re.search(rf"creating namespaces ({RUN_PREFIX}[0-9a-f]+-)", self.output)
        if prefix is None:
            return
        for name in our_namespaces((RUN_PREFIX,)):
            if name.startswith(prefix.group(1)):
                try:
                    self.inodes.add(os.stat(f"/run/netns/{name}").st_ino)
                except OSError:
                    continue


def our_programs(inodes: set[int]) -> set[int]:
    """PIDs of processes running one of the local cluster's programs in one of `inodes`."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                netns = os.stat(entry / "ns" / "net").st_ino
            except OSError:
                continue
            if netns in inodes and any(program in cmdline for program in PROGRAMS):
                pids.add(int(entry.name))
    return pids


def leftovers(prefix: str, run: RunWatch) -> tuple[list[str], set[int]]:
    """Namespaces named `prefix…`, and processes of our programs in this run's namespaces."""
    namespaces = [n for n in our_namespaces((RUN_PREFIX,)) if n.startswith(prefix)]
    return namespaces, our_programs(run.inodes)


def test_make_run_shows_the_example_then_removes_everything(dataplane_mode) -> None:
    run = RunWatch(start_run("--duration", "10", dataplane_mode=dataplane_mode))
    run.read_until(lambda _line: False)
    assert run.proc.wait(timeout=100) == 0, run.output
    output = run.output
    prefix = prefix_of(output)
    for expected in [
        "this takes a few seconds",
        "starting mosquitto on 198.18.0.254:10003… ok",
        "starting the net manager on w2 (198.18.0.2)… ok",
        "X.default.X1.default.0 on w1 -> GET http://10.30.1.30:30443/api/hello",
        "answered by X.default.X3.default.0",
        "(the instance IP of X1.0)",
        "a UDP request to 10.30.1.30 was answered by X3.0 from 10.30.1.30",
        "-> GET http://[fdff:2000::30]:30443/api/hello",
        "Round robin: 20 new connections from X1.0 to X2's RR IP",
        "X2.0 x10, X2.1 x10",
        "Closest: 10 new connections from X1.0 on w1 to X2's Closest IP",
        "X2.0 x10",
        "anonymous mosquitto_sub '#' from w1 (198.18.0.1): Connection error: Connection Refused",
        "POST /api/net/cluster 6630c0000000000000000001 without the token: 401 missing header",
        f"ip netns exec {prefix}infra mosquitto_sub -h 127.0.0.1 -p 10004 -v -t 'nodes/+/net/#'",
        "Live status, every 2 s",
        "removing namespaces, processes and everything else… ok",
    ]:
        assert expected in output, f"{expected!r} missing from:\n{output}"
    assert "X2.1 x10" in output.split("Closest:")[2]  # from X1.1 on w2: its own node's X2
    assert output.count("Live status") >= 4  # refreshed every 2 s for 10 s
    rows = [line.split() for line in output.splitlines() if line.startswith(("w1 ", "w2 "))]
    assert rows and all(row[4] == dataplane_mode for row in rows), rows  # "data plane"
    assert leftovers(prefix, run) == ([], set())


def test_ctrl_c_removes_everything(dataplane_mode) -> None:
    proc = start_run(dataplane_mode=dataplane_mode)
    run = RunWatch(proc)
    run.read_until(lambda line: line.startswith("Live status"))
    lines = run.lines
    assert any("(Ctrl-C stops and removes all)" in line for line in lines), "".join(lines)
    prefix = prefix_of("".join(lines))
    running = leftovers(prefix, run)
    assert len(running[0]) >= 5 and len(running[1]) >= 8, running  # the check can see them
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "removing namespaces, processes and everything else… ok" in rest
    assert leftovers(prefix, run) == ([], set())
