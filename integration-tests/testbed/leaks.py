"""What a LocalCluster holds in the kernel and the process table, to compare before and
after: namespaces with the run's prefix, and per worker namespace its links, routes,
iptables rules (without counters) and processes, plus the open file descriptors of
every component (main process and children).

    before = snapshot(cluster)
    ...
    assert diff(before, snapshot(cluster)) == []

Only reads: `ip -n <ns> …` and `iptables-save` inside the run's own namespaces, /proc.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field

from testbed.chaos import open_fds
from testbed.cluster import LocalCluster
from testbed.sweep import our_namespaces

FD_SLACK = 6  # a fresh process and one that ran a while differ by a few fds (caches, pools)


@dataclass
class Snapshot:
    namespaces: set[str] = field(default_factory=set)
    links: dict[str, set[str]] = field(default_factory=dict)  # netns -> "name kind"
    routes: dict[str, set[str]] = field(default_factory=dict)
    rules: dict[str, set[str]] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)  # netns -> how many
    fds: dict[str, int] = field(default_factory=dict)  # component -> open fds


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def links(netns: str) -> set[str]:
    found = json.loads(_run(["ip", "-n", netns, "-j", "-d", "link", "show"]))
    return {f"{link['ifname']} {link.get('linkinfo', {}).get('info_kind', '')}" for link in found}


def routes(netns: str) -> set[str]:
    lines = set()
    for family in ("-4", "-6"):
        for line in _run(["ip", "-n", netns, family, "route", "show", "table", "all"]).splitlines():
            if line.startswith("local fe80:"):
                continue  # a re-created device's link-local address is random: not a leak
            lines.add(" ".join(w for w in line.split() if not w.startswith("expires")))
    return lines


def rules(netns: str) -> set[str]:
    """Every rule and chain of every table, both families (no counters, no comments)."""
    lines = set()
    for tool in ("iptables-save", "ip6tables-save"):
        text = _run(["ip", "netns", "exec", netns, tool])
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            if line.startswith(":"):
                line = line.split(" [", 1)[0]  # chain name and policy, not counters
            lines.add(f"{tool[:3]} {line}")
    return lines


def processes_in(netns: str) -> int:
    pids = _run(["ip", "netns", "pids", netns]).split()
    return sum(1 for pid in pids if int(pid) != os.getpid())


def snapshot(cluster: LocalCluster) -> Snapshot:
    shot = Snapshot(set(our_namespaces((cluster.prefix,))))
    for worker in cluster.workers:
        shot.links[worker.netns] = links(worker.netns)
        shot.routes[worker.netns] = routes(worker.netns)
        shot.rules[worker.netns] = rules(worker.netns)
    for netns in (cluster.infra_ns, *(w.netns for w in cluster.workers)):
        shot.processes[netns] = processes_in(netns)
    named = {"broker": cluster.broker, "root": cluster.root, "cluster": cluster.cluster}
    named.update({w.name: w.process for w in cluster.workers})
    for name, process in named.items():
        if process.pid is not None:
            shot.fds[name] = open_fds(process.pid)
    return shot


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    """What `after` holds more (or less) than `before`, one line per difference."""
    problems = []
    if after.namespaces != before.namespaces:
        problems.append(
            f"namespaces: extra {sorted(after.namespaces - before.namespaces)}, "
            f"missing {sorted(before.namespaces - after.namespaces)}"
        )
    for kind in ("links", "routes", "rules"):
        old, new = getattr(before, kind), getattr(after, kind)
        for netns in sorted(old):
            now = new.get(netns, set())
            extra, missing = sorted(now - old[netns]), sorted(old[netns] - now)
            if extra or missing:
                problems.append(f"{kind} in {netns}: extra {extra}, missing {missing}")
    for netns, count in before.processes.items():
        if after.processes.get(netns) != count:
            problems.append(f"processes in {netns}: {count} before, {after.processes.get(netns)}")
    for name, count in before.fds.items():
        if after.fds.get(name, 0) > count + FD_SLACK:
            problems.append(f"open fds of {name}: {count} before, {after.fds.get(name)} after")
    return problems
