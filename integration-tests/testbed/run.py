"""`make run`: a local cluster in network namespaces with the seed's example app.

    python -m testbed.run [--once | --duration SECONDS] [--keep-logs]

Starts the local cluster (cluster.py: Mosquitto, root and cluster service managers in
an infra namespace, a net manager in each of two worker namespaces), plays Oakestra's
part (orchestrator.py) to deploy app X: X1 × 2 (w1, w2), X3 × 1 (w2) with the RR IP
10.30.1.30 and X2 × 2 (w1, w2) to show balancing; then shows X1 calling
http://10.30.1.30:30443/api/hello (v4 and v6), the round-robin spread and the closest
preference, that an anonymous MQTT client and a caller without the API token are
refused, and a status table refreshed every 2 s until Ctrl-C (--once: one table;
--duration: that many seconds). Everything is removed on exit; `make clean` removes
what a killed run left. Nothing touches this machine's own network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from testbed.cluster import BROKER_PORT, CLUSTER_ID, LocalCluster
from testbed.orchestrator import APP_PORT, Instance, Orchestrator, Service
from testbed.processes import Progress
from testbed.status import collect, render
from testbed.sweep import our_namespaces
from testbed.topology import RUN_PREFIX

REFRESH_SECONDS = 2.0
BALANCE_REQUESTS = 20


@dataclass
class Example:
    x1: Service
    x3: Service
    x2: Service

    @property
    def clients(self) -> list[Instance]:
        return [self.x1.instances[0], self.x1.instances[1]]


def deploy_example(orchestrator: Orchestrator) -> Example:
    w1, w2 = orchestrator.cluster.workers[:2]
    x1 = orchestrator.deploy_service("X", "X1", rr_ip="10.30.0.1", rr_ip_v6="fdff:2000::1")
    x3 = orchestrator.deploy_service("X", "X3", rr_ip="10.30.1.30", rr_ip_v6="fdff:2000::30")
    x2 = orchestrator.deploy_service("X", "X2")
    for service, worker in ((x1, w1), (x1, w2), (x3, w2), (x2, w1), (x2, w2)):
        orchestrator.deploy_instance(service, worker)
    return Example(x1, x3, x2)


def url(host: str, path: str = "/api/hello") -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{APP_PORT}{path}"


def show_request(client: Instance, service_ip: str, label: str) -> None:
    v6 = ":" in service_ip
    own = client.instance_ip_v6 if v6 else client.instance_ip
    print(f"{label}: {client.name} on {client.worker.name} -> GET {url(service_ip)}")
    started = time.monotonic()
    answer = client.container.http_get(service_ip)
    took = (time.monotonic() - started) * 1000
    whose = "" if answer["client"] == own else "NOT "
    print(f"  answered by {answer['instance']} in {took:.0f} ms")
    print(f"  the server saw the request come from {answer['client']} "
          f"({whose}the instance IP of {short_name(client)})")  # fmt: skip
    reply, source = client.container.udp(service_ip)
    print(f"  a UDP request to {service_ip} was answered by {short_name(reply['instance'])} "
          f"from {source}")  # fmt: skip


def short_name(thing: Instance | str) -> str:
    """X.default.X1.default.0 -> X1.0"""
    name = thing.name if isinstance(thing, Instance) else thing
    parts = name.split(".")
    return f"{parts[2]}.{parts[4]}" if len(parts) == 5 else name


def spread(client: Instance, service_ip: str, count: int) -> Counter:
    """`count` new connections from `client` to `service_ip`: answers per instance."""
    return Counter(client.container.http_get(service_ip)["instance"] for _ in range(count))


def show_balancing(example: Example) -> None:
    x2, first, second = example.x2, *example.clients
    counts = spread(first, x2.rr_ip, BALANCE_REQUESTS)
    print(f"Round robin: {BALANCE_REQUESTS} new connections from {short_name(first)} to X2's "
          f"RR IP {x2.rr_ip}: " + _counts(counts))  # fmt: skip
    for client in (first, second):
        counts = spread(client, x2.closest_ip, 10)
        print(f"Closest: 10 new connections from {short_name(client)} on {client.worker.name} "
              f"to X2's Closest IP {x2.closest_ip}: " + _counts(counts))  # fmt: skip


def _counts(counts: Counter) -> str:
    return ", ".join(f"{short_name(name)} x{n}" for name, n in sorted(counts.items()))


def show_hints(cluster: LocalCluster, example: Example) -> None:
    client = example.clients[0]
    fetch = (
        f"curl -s {url('10.30.1.30')}"
        if shutil.which("curl")
        else f"python3 -c \"import urllib.request as u; print(u.urlopen('{url('10.30.1.30')}')"
        '.read().decode())"'
    )
    print()
    print("Watch the nodes and the cluster talk (in another terminal, as root):")
    print(f"  {cluster.mosquitto_sub_command()}")
    print(f"Make a request as {short_name(client)} yourself:")
    print(f"  ip netns exec {client.container.netns} {fetch}")
    worker = cluster.workers[0]
    print(f"A net manager's own view: net-manager --socket {worker.socket_path} status")
    print(f"Logs: {cluster.run_dir}")


def show_security(cluster: LocalCluster) -> None:
    """Two attacks from the issue, tried live: they are refused."""
    worker = cluster.workers[0]
    argv = ["ip", "netns", "exec", worker.netns, "mosquitto_sub", "-h", cluster.infra_ip]
    argv += ["-p", str(BROKER_PORT), "--cafile", str(cluster.credentials.ca_file)]
    argv += ["-t", "#", "-C", "1", "-W", "3"]
    tried = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    answer = (tried.stderr or tried.stdout).strip().splitlines()
    mqtt = answer[-1] if answer and tried.returncode else "NOT REFUSED"
    fake = {"cluster_id": CLUSTER_ID, "cluster_address": worker.address, "cluster_port": 10110}
    reply = cluster.root_api("POST", "/api/net/cluster", fake, token=False)
    reason = reply.body.get("reason", "") if isinstance(reply.body, dict) else reply.body
    print("Secured by default (TLS, one broker user per node, an ACL, an API token; see")
    print(f"docs/SECURITY.md; this run's secrets: {cluster.credentials.directory}):")
    print(f"  anonymous mosquitto_sub '#' from {worker.name} ({worker.address}): {mqtt}")
    print(f"  POST /api/net/cluster {CLUSTER_ID} without the token: {reply.status} {reason}")


def live_status(cluster: LocalCluster, duration: float | None, once: bool) -> None:
    tty = sys.stdout.isatty()
    ends = None if duration is None else time.monotonic() + duration
    title = "Live status, every 2 s" + ("" if once or ends else " (Ctrl-C stops and removes all)")
    if once:
        time.sleep(1.5)  # the data planes report their counters every second
    while True:
        table = render(collect(cluster))
        if tty and not once:
            print("\033[H\033[J", end="")
        print(f"\n{title} - {time.strftime('%H:%M:%S')}\n{table}", flush=True)
        if once or (ends is not None and time.monotonic() >= ends):
            return
        time.sleep(
            REFRESH_SECONDS if ends is None else min(REFRESH_SECONDS, ends - time.monotonic())
        )


def _stop_on_sigterm() -> None:
    def stop(*_args: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def preflight() -> str | None:
    """Why this machine cannot run the local cluster, or None."""
    if os.geteuid() != 0:
        return "make run needs root: it creates network namespaces (try: sudo make run)"
    for tool in ("ip", "iptables", "mosquitto", "mosquitto_sub"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup installs it)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: the net managers need TUN devices"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.run", description=__doc__)
    parser.add_argument("--once", action="store_true", help="show the status once, then stop")
    parser.add_argument("--duration", type=float, help="show the status this long, then stop")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run directory")
    args = parser.parse_args(argv)
    problem = preflight()
    if problem:
        print(f"make run: {problem}", file=sys.stderr)
        return 2
    _stop_on_sigterm()
    print("Oakestra Net: a local cluster in network namespaces (this takes a few seconds)")
    leftovers = our_namespaces((RUN_PREFIX,))
    if leftovers:
        print(f"(an earlier run left {len(leftovers)} namespace(s); `make clean` removes them)")
    progress = Progress(sys.stdout)
    cluster = LocalCluster(progress=progress)  # the default data plane: the best available
    orchestrator = Orchestrator(cluster)
    failed = True
    try:
        cluster.start()
        orchestrator.bootstrap()
        example = deploy_example(orchestrator)
        print()
        show_request(example.clients[0], example.x3.rr_ip, "The seed's example")
        show_request(example.clients[0], example.x3.rr_ip_v6, "The same over IPv6")
        show_request(example.clients[1], example.x3.rr_ip, "From the node X3 runs on")
        print()
        show_balancing(example)
        print()
        show_security(cluster)
        show_hints(cluster, example)
        live_status(cluster, args.duration, args.once)
        failed = False
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
        failed = False
    except Exception as err:  # noqa: BLE001 - said plainly, then everything is removed
        print(f"\nmake run failed: {err}", file=sys.stderr, flush=True)
    finally:
        orchestrator.close()
        with progress.step("removing namespaces, processes and everything else"):
            cluster.close()
        _logs(cluster.run_dir, keep=args.keep_logs or failed)
    return 1 if failed else 0


def _logs(run_dir: Path, *, keep: bool) -> None:
    if keep:
        print(f"logs kept in {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
