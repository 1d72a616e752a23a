"""Chaos: a workload runs while the broker, the root, the cluster service manager and the
net managers are killed (SIGKILL) and restarted at random; nothing may be lost,
misrouted or leaked.

    CHAOS_SEED=1234 CHAOS_SECONDS=75 .venv/bin/pytest integration-tests/test_system_chaos.py
    CHAOS_TARGETS=broker,w1,w2 …      (only these crash; default: broker,root,cluster,w1,w2)

The seed (printed first; random unless CHAOS_SEED is set) decides every action: which
workload step (deploy a service, scale up on a worker, scale down, remove a service),
when a component crashes, which one, and how long it stays down (the workload goes on
meanwhile, its calls retried until answered). Each action is printed with its time,
and the whole log is in the failure message, so a failing run is replayed with its
seed. Traffic runs throughout: UDP requests from client containers (service C, one
instance per worker) to random RR, Closest and instance IPs.

Checked continuously: no address the root hands out is in use by another owner (the
ledger of its answers); no answer comes from an instance the address does not belong
to; the nodes' tables never give one address to two live owners. After the chaos
(after the last restart is ready and the last step is done): within 5 s every running
instance answers through its instance IPs and its service's RR IPs from every client
(and the Closest IPs answer); the root still knows every service as the workload
deployed it; then, with every service but the clients removed: the root's pools hold
exactly the clients' addresses, and the namespaces, links, routes and iptables rules
of the run, the processes in its namespaces and the components' open fds are as
before the chaos.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from testbed.chaos import ActionLog, ChaosMonkey
from testbed.leaks import diff, snapshot
from testbed.ledger import AddressLedger, table_conflicts
from testbed.nsnet import http_call
from testbed.run import preflight
from testbed.status import metric, parse_metrics
from testbed.workload import Traffic, Workload, WorkloadError, request, unreachable

pytestmark = [
    pytest.mark.system,
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.skipif(preflight() is not None, reason=f"system test: {preflight()}"),
    pytest.mark.timeout(420),
]

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "75"))
FAULT_CHANCE = 0.4  # per step: crash a component (when none is down) instead of a workload step
DOWN_FOR = (0.2, 3.0)  # seconds a crashed component stays down
REACHABLE_WITHIN = 5.0
LEAK_TIMEOUT = 20.0
MAX_LISTED = 10


def chaos_seed() -> int:
    text = os.environ.get("CHAOS_SEED", "")
    return int(text) if text else random.SystemRandom().randrange(1, 2**31)


def pools(cluster) -> dict[str, float]:
    samples = parse_metrics(cluster.root_api("GET", "/metrics").body)
    names = ("service_v4", "rr_v6", "closest_v6", "instance_v6", "subnet_v4")
    return {p: metric(samples, "oakestra_pool_used", pool=p) for p in names}


def root_view(cluster, job_name: str, timeout: float = 45.0):
    """The root's table answer for a job, asked as the registered cluster (its address);
    a root rebuilding its store (503, up to 30 s after a restart) is asked again."""
    url = f"http://{cluster.infra_ip}:10099/api/net/service/{job_name}/instances"
    deadline = time.monotonic() + timeout
    while True:
        reply = http_call(cluster.infra, "GET", url, headers=cluster._auth(True))
        if reply.status not in (502, 503) or time.monotonic() > deadline:
            return reply
        time.sleep(0.5)


def root_differences(cluster, workload: Workload, monkey: ChaosMonkey, log: ActionLog) -> list[str]:
    """Where the root's view differs from the workload's. An instance the root still
    holds after its undeploy was acknowledged is the documented in-memory window (see
    `forgotten_removals`) when the root crashed after that undeploy: noted, not a problem."""
    found = []
    for service in workload.snapshot():
        reply = root_view(cluster, service.job_name)
        if reply.status == 404 and not service.instances:
            continue  # nobody caches it: a root on a new store forgets it (documented)
        if reply.status != 200:
            found.append(f"root: {service.job_name} answered {reply.status} {reply.body}")
            continue
        ips = {e["IpType"]: (e["Address"], e["Address_v6"]) for e in reply.body["service_ip_list"]}
        if ips != service.service_ips:
            found.append(f"root: {service.job_name} has {ips}, deployed with {service.service_ips}")
        at_root = {i["instance_number"]: (i["instance_ip"], i["instance_ip_v6"])
                   for i in reply.body.get("instance_list", [])}  # fmt: skip
        ours = {n: (i.instance_ip, i.instance_ip_v6) for n, i in service.instances.items()}
        for number in set(at_root) - set(ours):
            undeployed = workload.undeployed_at.get((service.job_name, number))
            if undeployed is not None and monkey.crashed_after("root", undeployed):
                log.say(f"note: undeploy of {service.job_name}.{number} (log {undeployed:.1f} s) "
                        "lost in a root crash, the rebuild took it back")  # fmt: skip
                del at_root[number]
        if at_root != ours:
            found.append(f"root: {service.job_name} instances {at_root}, running {ours}")
    return found


def forgotten_removals(cluster, workload: Workload, monkey: ChaosMonkey, log: ActionLog):
    """Services removed at the root that it knows again, removed once more.

    The embedded root store lives in memory: a removal the root acknowledged and then
    lost in a crash, before its update reached the cluster, comes back with the
    cluster's cache when the root rebuilds (docs/ARCHITECTURE.md, chaos test). That is
    expected only if the root crashed after the removal; anything else is a problem.
    """
    problems = []
    for name, (service, removed_at) in sorted(workload.removed.items()):
        if name in workload.services or root_view(cluster, name).status == 404:
            continue
        text = f"{name} (removed at log {removed_at:.1f} s)"
        if monkey.crashed_after("root", removed_at):
            log.say(f"note: removal lost in a root crash, the rebuild took it back: {text}")
        else:
            problems.append(f"removed service back at the root without a root crash: {text}")
        workload.remove_at_root(service)
    return problems


def settle_kernel_tunnel(cluster, workload: Workload, timeout: float = 60.0) -> None:
    """In kernel mode, our nodes with instances on each other set up the VXLAN tunnel
    once their probes verified each other (about two probe rounds): wait for it, so
    its device routes and rules are part of the snapshot the leak check compares with."""
    workers = cluster.workers
    if any(w.status().get("dataplane_mode") != "kernel" for w in workers):
        return
    deadline = time.monotonic() + timeout
    while True:
        peers = [w.status()["counters"]["dataplane"].get("kernel_tunnel_peers", 0) for w in workers]
        if all(p >= len(workers) - 1 for p in peers):
            return
        assert time.monotonic() < deadline, f"kernel tunnel peers {peers} after {timeout:.0f} s"
        for client in workload.clients:  # the clients call each other across the nodes
            for other in workload.clients:
                if other is not client:
                    request(client, other.instance_ip, 1.0)
        time.sleep(0.5)


def node_tables(cluster) -> dict[str, list[dict]]:
    tables = {}
    for worker in cluster.workers:
        try:
            tables[worker.name] = worker.status()["table"]
        except (OSError, RuntimeError, ValueError):
            continue  # restarting
    return tables


def test_chaos(local_cluster) -> None:
    cluster, orch = local_cluster
    seed = chaos_seed()
    log = ActionLog(seed)
    log.say(f"CHAOS_SEED={seed} CHAOS_SECONDS={CHAOS_SECONDS:.0f} "
            f"CHAOS_TARGETS={os.environ.get('CHAOS_TARGETS', '')}")  # fmt: skip
    rng = random.Random(seed)
    ledger = AddressLedger()
    workload = Workload(cluster, orch, random.Random(rng.random()), log, ledger)
    targets = [t for t in os.environ.get("CHAOS_TARGETS", "").split(",") if t]
    monkey = ChaosMonkey(cluster, random.Random(rng.random()), log, targets or None)
    traffic = Traffic(workload, random.Random(rng.random()))
    problems: list[str] = []

    clients = workload.deploy_service("C")
    workload.clients = [workload.scale_up(clients, w) for w in cluster.workers]
    orch.services.clear()  # the workload keeps its own model
    settle_kernel_tunnel(cluster, workload)
    before = snapshot(cluster)
    pools_before = pools(cluster)
    log.say(f"before: pools {pools_before}, fds {before.fds}, processes {before.processes}")

    traffic.start()
    restart = None
    chaos_end = time.monotonic() + CHAOS_SECONDS
    try:
        while time.monotonic() < chaos_end:
            if (restart is None or not restart.is_alive()) and rng.random() < FAULT_CHANCE:
                target, down_for = monkey.pick(), rng.uniform(*DOWN_FOR)
                restart = monkey.crash_and_restart_later(target, down_for)
            else:
                workload.step()
            conflicts = table_conflicts(node_tables(cluster), workload.live_owners())
            for conflict in conflicts:
                if f"node tables: {conflict}" not in problems:
                    log.say(f"TABLE CONFLICT: {conflict}")
                    problems.append(f"node tables: {conflict}")
        if restart is not None:
            restart.join(timeout=90)
    except WorkloadError as err:
        problems.append(f"workload stuck: {err}")
    log.say(f"chaos over: restarts {monkey.restarts}")

    ready = max(monkey.last_ready, workload.last_done)
    deadline = log.started + ready + REACHABLE_WITHIN
    failures = unreachable(workload, deadline)
    if failures:
        later = unreachable(workload, time.monotonic() + 25)
        problems += [f"not reachable {REACHABLE_WITHIN:.0f} s after the last restart: {f}"
                     for f in failures]  # fmt: skip
        problems += [f"still not reachable 25 s later: {f}" for f in later]
    else:
        log.say(f"every instance reachable at {log.now():.1f} s (ready at {ready:.1f} s)")
    traffic.stop()
    answered, sent = traffic.success_ratio(0, log.now())
    log.say(f"traffic during the chaos: {answered}/{sent} answered")

    problems += [f"address handed out twice: {v}" for v in ledger.violations]
    problems += [f"misrouted: {m}" for m in traffic.misrouted[:MAX_LISTED]]
    if len(traffic.misrouted) > MAX_LISTED:
        problems.append(f"misrouted: {len(traffic.misrouted) - MAX_LISTED} more")
    problems += [f"state lost: {lost}" for lost in workload.lost]
    problems += [f"orphan process: {o}" for o in monkey.orphans()]
    problems += [f"late: {s}" for s in workload.slow]
    problems += root_differences(cluster, workload, monkey, log)
    conflicts = table_conflicts(node_tables(cluster), workload.live_owners())
    problems += [f"node tables after the chaos: {c}" for c in conflicts]
    for note in ledger.notes:
        log.say(f"note: {note}")

    try:
        for service in workload.snapshot():
            if service.name != "C":
                workload.remove_service(service)
    except WorkloadError as err:
        problems.append(f"workload stuck while removing everything: {err}")
    for text, first_undeploy in workload.resurrected:
        if monkey.crashed_after("root", first_undeploy):
            log.say(f"note: undeployed instances back after a root crash: {text}")
        else:
            problems.append(f"undeployed instances back at the root: {text}")
    try:
        problems += forgotten_removals(cluster, workload, monkey, log)
    except WorkloadError as err:
        problems.append(f"workload stuck while removing forgotten services: {err}")
    leaks = wait_for_no_difference(lambda: diff(before, snapshot(cluster)))
    problems += [f"leak: {leak}" for leak in leaks]
    pool_leaks = wait_for_no_difference(
        lambda: (
            [f"root pools {pools(cluster)}, before {pools_before}"]
            if pools(cluster) != pools_before
            else []
        )
    )
    problems += pool_leaks
    log.say(f"after: fds {snapshot(cluster).fds}")
    assert not problems, "\n".join(["", *problems, "", log.text()])


def wait_for_no_difference(check, timeout: float = LEAK_TIMEOUT) -> list[str]:
    """Poll `check` (a list of differences) until it is empty or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)
