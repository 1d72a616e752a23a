"""Faults on purpose: a seeded ChaosMonkey that crashes (SIGKILL) and restarts the
components of a LocalCluster, and the ActionLog that says what happened when.

    log = ActionLog(seed)
    monkey = ChaosMonkey(cluster, random.Random(seed), log)
    monkey.crash("root")          # kill -9 by PID
    monkey.restart("root")        # started again, waits until it is ready

Every action is printed as it happens with the seconds since the log started
("[chaos  12.34 s] crash root (pid 4242)"), so a failing run can be replayed with the
same seed and read side by side with the components' logs. The monkey only ever
signals processes the LocalCluster started, by their PID; a crash kills the
component's main process only (as the kernel's OOM killer would); the children it had
(gunicorn workers, the data plane process) must notice and exit: `monkey.orphans()`
lists those alive more than `ORPHAN_TIMEOUT` after their parent's crash (a leak).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from testbed.cluster import LocalCluster, Worker
from testbed.processes import Process

ORPHAN_TIMEOUT = 35.0  # gunicorn's graceful timeout (30 s) plus a margin
RESTART_TIMEOUT = 60.0
SERVICES = ("broker", "root", "cluster")


@dataclass(frozen=True)
class Action:
    at: float  # seconds since the log started
    text: str


@dataclass
class ActionLog:
    """Timestamped, printed record of a chaos run (thread-safe)."""

    seed: int
    out: TextIO | None = sys.stderr
    started: float = field(default_factory=time.monotonic)
    actions: list[Action] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> Action:
        action = Action(self.now(), text)
        with self._lock:
            self.actions.append(action)
        if self.out is not None:
            print(f"[chaos {action.at:7.2f} s] {text}", file=self.out, flush=True)
        return action

    def text(self) -> str:
        with self._lock:
            lines = [f"{a.at:7.2f} s  {a.text}" for a in self.actions]
        return f"chaos seed {self.seed}\n" + "\n".join(lines)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def open_fds(pid: int) -> int:
    """How many file descriptors `pid` and its descendants hold."""
    total = 0
    for member in process_tree(pid):
        try:
            total += len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue  # gone meanwhile
    return total


class ChaosMonkey:
    """Crashes and restarts the LocalCluster's components; see the module doc."""

    def __init__(
        self,
        cluster: LocalCluster,
        rng: random.Random,
        log: ActionLog,
        targets: list[str] | None = None,
    ) -> None:
        """`targets`: the components that may crash (default: all, see `all_targets`)."""
        self.cluster = cluster
        self.targets = targets or self.all_targets
        unknown = set(self.targets) - set(self.all_targets)
        if unknown:
            raise ValueError(f"chaos: unknown targets {sorted(unknown)}; known: {self.all_targets}")
        self.rng = rng
        self.log = log
        self._children: list[tuple[str, int, list[int], float]] = []
        self.restarts: dict[str, int] = {}
        self.crashes: list[tuple[str, float]] = []  # (target, log time of the kill)
        self.last_ready = 0.0  # log time the last restarted component was ready again
        self._lock = threading.Lock()  # one crash/restart at a time

    @property
    def all_targets(self) -> list[str]:
        return [*SERVICES, *(w.name for w in self.cluster.workers)]

    def pick(self, weights: dict[str, float] | None = None) -> str:
        names = self.targets
        chosen = self.rng.choices(names, [(weights or {}).get(n, 1.0) for n in names])
        return chosen[0]

    def process(self, target: str) -> Process:
        if target == "broker":
            return self.cluster.broker
        if target == "root":
            return self.cluster.root
        if target == "cluster":
            return self.cluster.cluster
        return self.cluster.worker(target).process

    def crash(self, target: str) -> None:
        """SIGKILL the component's main process by PID; wait for its children to exit."""
        with self._lock:
            process = self.process(target)
            pid = process.pid
            if pid is None:
                raise RuntimeError(f"chaos: {target} is not running")
            children = process_tree(pid)[1:]
            self.log.say(f"crash {target} (kill -9 {pid}; children {children})")
            process.kill()
            self.crashes.append((target, self.log.now()))
            self._children.append((target, pid, children, time.monotonic() + ORPHAN_TIMEOUT))

    def crashed_after(self, target: str, when: float) -> bool:
        """Whether `target` was killed after log time `when`."""
        return any(t == target and at > when for t, at in self.crashes)

    def orphans(self) -> list[str]:
        """Children of crashed processes still alive `ORPHAN_TIMEOUT` after the crash
        (waits for that moment)."""
        found = []
        for target, pid, children, deadline in self._children:
            while time.monotonic() < deadline and any(alive(c) for c in children):
                time.sleep(0.1)
            left = [c for c in children if alive(c)]
            if left:
                found.append(f"children {left} of {target} (pid {pid}) outlived it")
        return found

    def restart(self, target: str) -> float:
        """Start the component again and wait until it is ready; the seconds it took."""
        with self._lock:
            started = time.monotonic()
            self.log.say(f"restart {target}")
            self._starter(target)()
            took = time.monotonic() - started
            self.restarts[target] = self.restarts.get(target, 0) + 1
            self.last_ready = self.log.now()
            pid = self.process(target).pid
            self.log.say(f"{target} ready again after {took:.1f} s (pid {pid})")
            return took

    def _starter(self, target: str) -> Callable[[], None]:
        cluster = self.cluster
        if target == "broker":
            return cluster.start_broker
        if target == "root":
            return cluster.start_root
        if target == "cluster":
            return cluster.start_cluster_manager
        worker = cluster.worker(target)
        return lambda: self._start_net_manager(worker)

    def _start_net_manager(self, worker: Worker) -> None:
        self.cluster.start_net_manager(worker)
        worker.process.wait_until(
            lambda: net_manager_back(worker.status()),
            RESTART_TIMEOUT,
            "registered, connected, data plane up",
        )

    def crash_and_restart_later(self, target: str, down_for: float) -> threading.Thread:
        """Crash now; restart after `down_for` seconds in a thread (join it)."""
        self.crash(target)

        def later() -> None:
            time.sleep(down_for)
            try:
                self.restart(target)
            except Exception as err:  # noqa: BLE001 - reported by the log and the checks
                self.log.say(f"RESTART FAILED {target}: {err}")

        thread = threading.Thread(target=later, name=f"restart-{target}", daemon=True)
        thread.start()
        return thread


def net_manager_back(status: dict) -> bool:
    return bool(
        status.get("registered")
        and status.get("broker_connected")
        and status["counters"]["dataplane"].get("running")
    )
