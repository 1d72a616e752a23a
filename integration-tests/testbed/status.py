"""The live status table of `make run`: collected from the components, rendered as text.

`collect(cluster)` asks every net manager for `GET /status` and the two managers for
`/healthz` and `/metrics`; `render(snapshot)` turns that into the table (pure, so it is
tested without a cluster). Job names are shortened to the service name (X.default.X3.
default -> X3) to fit a terminal.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from testbed.cluster import CLUSTER_PORT, ROOT_PORT, LocalCluster

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format -> {(name, frozenset of (label, value)): value}."""
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = number
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def short(job_name: str) -> str:
    parts = job_name.split(".")
    return parts[2] if len(parts) == 4 else job_name


@dataclass
class Snapshot:
    taken: float
    nodes: list[dict[str, Any]] = field(default_factory=list)  # name, address, status|error
    root: dict[str, Any] = field(default_factory=dict)  # health, metrics | error
    cluster: dict[str, Any] = field(default_factory=dict)


def collect(cluster: LocalCluster) -> Snapshot:
    snapshot = Snapshot(time.time())
    for worker in cluster.workers:
        row: dict[str, Any] = {"name": worker.name, "address": worker.address}
        try:
            row["status"] = worker.status()
        except Exception as err:  # noqa: BLE001 - a down daemon is a row, not a crash
            row["error"] = str(err) or type(err).__name__
        snapshot.nodes.append(row)
    snapshot.root = _manager(cluster, ROOT_PORT)
    snapshot.cluster = _manager(cluster, CLUSTER_PORT)
    return snapshot


def _manager(cluster: LocalCluster, port: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    try:
        health = cluster.infra_http("GET", f"{base}/healthz", timeout=2)
        metrics = cluster.infra_http("GET", f"{base}/metrics", timeout=2)
    except OSError as err:
        return {"error": f"not answering ({err.strerror or err})"}
    return {"health": health.body, "metrics": parse_metrics(str(metrics.body))}


# ------------------------------------------------------------------ rendering

NODE_HEADER = ("node", "address", "subnet", "broker", "data plane", "instances", "table",
               "interests", "flows", "pkts in/out", "tunnel out/in", "misses")  # fmt: skip


def node_cells(row: dict[str, Any]) -> tuple[str, ...]:
    if "error" in row:
        return (row["name"], row["address"], "-", "-", f"DOWN: {row['error'][:40]}")
    status = row["status"]
    plane = status["counters"].get("dataplane", {})
    interests = [
        short(job) + ("*" if info.get("local") else f"({info.get('idle_seconds', 0):.0f}s)")
        for job, info in status["interests"].items()
    ]
    # with TUN offload, datagrams to a peer that takes them are counted as GSO frames
    tunnel_out = plane.get("tunnel_packets_sent", 0) + plane.get("gso_frames_sent", 0)
    instances = [short(i["instance"].rsplit(".", 1)[0]) + "." + i["instance"].rsplit(".", 1)[1]
                 for i in status["instances"]]  # fmt: skip
    return (
        row["name"],
        row["address"],
        f"{status['subnet']}/26" if status["subnet"] else "-",
        "up" if status["broker_connected"] else "DOWN",
        status.get("dataplane_mode") or "-",
        " ".join(instances) or "-",
        str(len(status["table"])),
        " ".join(interests) or "-",
        str(plane.get("flows", 0)),
        f"{plane.get('packets_in', 0)}/{plane.get('packets_out', 0)}",
        f"{tunnel_out}/{plane.get('tunnel_packets_received', 0)}",
        str(plane.get("misses", 0)),
    )


POOLS = ("service_v4", "subnet_v4")


def root_line(root: dict[str, Any]) -> str:
    if "error" in root:
        return f"root service manager     {root['error']}"
    samples = root["metrics"]
    used = {p: int(metric(samples, "oakestra_pool_used", pool=p)) for p in POOLS}
    requests = "oakestra_http_requests_total"
    by_name = metric(samples, requests, endpoint="net.table_query_by_name")
    by_ip = metric(samples, requests, endpoint="net.table_query_by_ip")
    return (
        f"root service manager     {root['health'].get('status')}, "
        f"service IPs in use {used['service_v4']}, node subnets {used['subnet_v4']}, "
        f"outbox {root['health'].get('outbox_depth')}, "
        f"table queries by name/IP {by_name:.0f}/{by_ip:.0f}"
    )


def cluster_line(cluster: dict[str, Any]) -> str:
    if "error" in cluster:
        return f"cluster service manager  {cluster['error']}"
    samples, health = cluster["metrics"], cluster["health"]
    queries = "oakestra_cluster_table_queries_total"
    return (
        f"cluster service manager  {health.get('status')}, broker {health.get('broker')}, "
        f"node messages {metric(samples, 'oakestra_cluster_node_messages_total'):.0f}, "
        f"table queries from cache/root {metric(samples, queries, source='cache'):.0f}/"
        f"{metric(samples, queries, source='root'):.0f}, "
        f"pending root work {health.get('pending_root_work')}"
    )


def render(snapshot: Snapshot) -> str:
    rows = [NODE_HEADER, *(node_cells(row) for row in snapshot.nodes)]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(NODE_HEADER))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(root_line(snapshot.root))
    lines.append(cluster_line(snapshot.cluster))
    lines.append("interests: * = local instances (kept), (Ns) = idle for N s (dropped at 10 s)")
    return "\n".join(lines)
