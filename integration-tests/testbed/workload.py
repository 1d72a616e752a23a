"""The chaos test's workload: Oakestra's calls that keep going while components crash,
and traffic that checks every answer comes from the right instance.

`Workload` plays the system manager, the cluster manager and the node engines like
`Orchestrator` does, but every call is retried until it is answered (a component may
be down, the root may be rebuilding: 502/503, connection refused) within
`OP_TIMEOUT`; the calls it retries are idempotent (same `_id`, same instance number,
same pid). Each step is chosen by the seeded RNG from what the model holds: deploy a
service, scale one up (on a random worker), scale one down, remove a service. Every
address the root answers goes into the `AddressLedger`.

`Traffic` sends UDP requests from the client containers to random service IPs and
instance IPs of the model, one new socket (a new flow) each, and records the outcome;
an answer from an instance the address does not belong to is *misrouted*.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId

from testbed.chaos import ActionLog
from testbed.cluster import CLUSTER_ID, LocalCluster, Worker
from testbed.ledger import AddressLedger
from testbed.nsnet import Reply
from testbed.orchestrator import (
    APP_PORT,
    Instance,
    Orchestrator,
    Service,
    deployment_descriptor,
)

OP_TIMEOUT = 45.0  # a root on a new store waits up to 30 s for the clusters' state
KNOWN_TIMEOUT = 15.0
RETRY_PAUSE = 0.2
MAX_SERVICES = 4
MAX_INSTANCES = 8


class WorkloadError(RuntimeError):
    """A call that was not answered as it must be within OP_TIMEOUT."""


@dataclass
class Workload:
    cluster: LocalCluster
    orch: Orchestrator
    rng: random.Random
    log: ActionLog
    ledger: AddressLedger
    services: dict[str, Service] = field(default_factory=dict)
    clients: list[Instance] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # services the root forgot while running
    slow: list[str] = field(default_factory=list)  # instances a node learned late
    # undeployed, yet back at the root: (what, log time of the first undeploy at the root)
    resurrected: list[tuple[str, float]] = field(default_factory=list)
    removed: dict[str, tuple[Service, float]] = field(default_factory=dict)  # name -> (, when)
    _first_undeploy: dict[str, float] = field(default_factory=dict)  # job name -> log time
    # (job name, instance number) -> log time its undeploy was acknowledged by the root
    undeployed_at: dict[tuple[str, int], float] = field(default_factory=dict)
    last_done: float = 0.0  # log time the last step finished
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------ retried calls

    def _retry(self, what: str, call: Callable[[], Reply], done: tuple[int, ...] = (200,)) -> Reply:
        deadline = time.monotonic() + OP_TIMEOUT
        last: object = None
        while time.monotonic() < deadline:
            try:
                reply = call()
            except OSError as err:  # down, or not listening yet
                last = err
            else:
                if reply.status in done:
                    return reply
                last = reply
            time.sleep(RETRY_PAUSE)
        raise WorkloadError(f"{what}: not answered within {OP_TIMEOUT:.0f} s (last: {last})")

    def _node_call(self, worker: Worker, what: str, path: str, body: dict) -> dict:
        def call() -> Reply:
            return Reply(*worker.call("POST", path, body))

        return self._retry(f"{what} on {worker.name}", call).body

    # ------------------------------------------------------------ model

    def snapshot(self) -> list[Service]:
        with self._lock:
            return [s for s in self.services.values()]

    def instances(self) -> list[Instance]:
        with self._lock:
            return [i for s in self.services.values() for i in s.instances.values()]

    def live_owners(self) -> set[str]:
        with self._lock:
            owners = set()
            for service in self.services.values():
                if service.instances:
                    owners.add(service.job_name)
                owners.update(i.name for i in service.instances.values())
            return owners

    # ------------------------------------------------------------ operations

    def deploy_service(self, name: str | None = None) -> Service:
        if name is None:
            self._count += 1
            name = f"S{self._count}"
        job_id, app_id = str(ObjectId()), self.orch.app_ids.setdefault("X", str(ObjectId()))
        descriptor = deployment_descriptor("X", name, job_id, app_id, None)
        service = Service("X", name, job_id, descriptor["job_name"], {})
        self.log.say(f"deploy service {service.job_name} (_id {job_id})")
        self._deploy_at_root(service)
        with self._lock:
            self.services[service.job_name] = service
        return service

    def _deploy_at_root(self, service: Service) -> None:
        descriptor = deployment_descriptor("X", service.name, service.job_id,
                                           self.orch.app_ids["X"], None)  # fmt: skip
        body = {"deployment_descriptor": descriptor, "_id": service.job_id}
        answer = self._retry(
            f"deploy {service.job_name}",
            lambda: self.cluster.root_api("POST", "/api/net/service/deploy", body),
        ).body
        ips = {e["IpType"]: (e["Address"], e["Address_v6"]) for e in answer["service_ip_list"]}
        service.service_ips = ips
        self.ledger.claim([a for pair in ips.values() for a in pair], service.job_name,
                          service.job_name, f"deploy {service.job_name}")  # fmt: skip
        self.log.say(f"  {service.job_name}: RR {service.rr_ip}, Closest {service.closest_ip}")

    def scale_up(self, service: Service, worker: Worker) -> Instance:
        number = service.next_number
        service.next_number += 1
        name = f"{service.job_name}.{number}"
        self.log.say(f"scale up: {name} on {worker.name}")
        body = {"instance_number": number, "cluster_id": CLUSTER_ID, "_id": service.job_id}
        path = "/api/net/instance/deploy"
        while True:
            reply = self._retry(
                f"deploy {name} at the root",
                lambda: self.cluster.root_api("POST", path, body),
                done=(200, 404),
            )
            if reply.status == 200:
                break
            self._forgotten(service)
        answer = reply.body["instance"]
        ips = [answer["instance_ip"], answer["instance_ip_v6"]]
        self.ledger.claim(ips, name, service.job_name, f"deploy {name}")
        self.log.say(f"  {name}: instance IPs {ips[0]} {ips[1]}")
        placement = {"job_name": service.job_name, "instance_number": number,
                     "worker_id": worker.node_id}  # fmt: skip
        self._retry(
            f"placement of {name} at the cluster",
            lambda: self.cluster.cluster_api("POST", "/api/net/deployment", placement),
        )
        container = self.orch.start_container(name, worker)
        instance = Instance(service, number, worker, ips[0], ips[1], container)
        deploy = {"pid": container.pid, "serviceName": service.job_name,
                  "instanceNumber": number, "portMappings": ""}  # fmt: skip
        attached = self._node_call(worker, f"/container/deploy {name}", "/container/deploy",
                                   deploy)  # fmt: skip
        instance.namespace_ip, instance.namespace_ip_v6 = (
            attached["nsAddress"],
            attached["nsAddressv6"],
        )
        with self._lock:
            service.instances[number] = instance
        self.ledger.run(name)
        self._wait_known(worker, instance)
        return instance

    def _wait_known(self, worker: Worker, instance: Instance) -> None:
        deadline = time.monotonic() + KNOWN_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if Orchestrator.node_knows(worker, instance):
                    return
            except (OSError, RuntimeError, ValueError):
                pass  # the net manager is restarting
            time.sleep(0.05)
        self.slow.append(f"{instance.name} not in {worker.name}'s table {KNOWN_TIMEOUT:.0f} s "
                         f"after its deploy (log {self.log.now():.1f} s)")  # fmt: skip
        self.log.say(f"  SLOW: {instance.name} not in {worker.name}'s table yet")

    def scale_down(self, instance: Instance) -> None:
        service, worker = instance.service, instance.worker
        self.log.say(f"scale down: {instance.name} on {worker.name}")
        body = {"serviceName": service.job_name, "instanceNumber": instance.number,
                "pid": -1, "portMappings": ""}  # fmt: skip
        self._node_call(worker, f"/container/undeploy {instance.name}", "/container/undeploy",
                        body)  # fmt: skip
        self.orch.stop_container(instance.container)
        path = f"/api/net/{service.job_id}/{instance.number}"
        self._retry(f"DELETE {path}", lambda: self.cluster.root_api("DELETE", path),
                    done=(200, 404))  # fmt: skip
        self._first_undeploy.setdefault(service.job_name, self.log.now())
        with self._lock:
            self.undeployed_at[(service.job_name, instance.number)] = self.log.now()
            service.instances.pop(instance.number, None)
        self.ledger.release(instance.name)

    def remove_service(self, service: Service) -> None:
        for instance in list(service.instances.values()):
            self.scale_down(instance)
        self.log.say(f"remove service {service.job_name}")
        path = f"/api/net/service/{service.job_id}"
        reply = self._retry(f"DELETE {path}", lambda: self.cluster.root_api("DELETE", path),
                            done=(200, 400, 404))  # fmt: skip
        if reply.status == 400:  # the root holds instances we undeployed
            when = f"log {self.log.now():.1f} s"
            first = self._first_undeploy.get(service.job_name, self.log.now())
            self.resurrected.append((f"{service.job_name}: {reply.body} ({when})", first))
            self.log.say(f"  RESURRECTED: the root still has instances of {service.job_name}")
            self.remove_at_root(service)
        with self._lock:
            self.services.pop(service.job_name, None)
            self.removed[service.job_name] = (service, self.log.now())
        self.ledger.release(service.job_name)

    def remove_at_root(self, service: Service) -> None:
        """Every instance of `service` at the root, then the service (404s are fine)."""
        every = f"/api/net/{service.job_id}/-1"
        self._retry(f"DELETE {every}", lambda: self.cluster.root_api("DELETE", every),
                    done=(200, 404))  # fmt: skip
        path = f"/api/net/service/{service.job_id}"
        self._retry(f"DELETE {path}", lambda: self.cluster.root_api("DELETE", path),
                    done=(200, 404))  # fmt: skip

    def _forgotten(self, service: Service) -> None:
        """The root answered 404 for a service we deployed: it forgot it (a new store)."""
        running = [i.name for i in service.instances.values()]
        text = f"the root forgot {service.job_name}"
        if running:
            self.lost.append(f"{text} while {running} ran (log {self.log.now():.1f} s)")
            self.log.say(f"  LOST: {text} with running instances {running}")
        else:
            self.log.say(f"  {text} (no instance: nobody caches it, documented); deploy again")
        self.ledger.release(service.job_name)
        self._deploy_at_root(service)

    # ------------------------------------------------------------ the seeded step

    def step(self) -> None:
        """One operation, chosen by the RNG from what the model holds."""
        services = [s for s in self.snapshot() if s.name != "C"]
        instances = [i for s in services for i in s.instances.values()]
        choices: list[tuple[str, float]] = []
        if len(services) < MAX_SERVICES:
            choices.append(("deploy", 0.2))
        if services and len(instances) < MAX_INSTANCES:
            choices.append(("up", 0.45))
        if instances:
            choices.append(("down", 0.25))
        if services:
            choices.append(("remove", 0.1))
        kind = self.rng.choices([c[0] for c in choices], [c[1] for c in choices])[0]
        if kind == "deploy":
            self.deploy_service()
        elif kind == "up":
            self.scale_up(self.rng.choice(services), self.rng.choice(self.cluster.workers))
        elif kind == "down":
            self.scale_down(self.rng.choice(instances))
        else:
            self.remove_service(self.rng.choice(services))
        self.last_done = self.log.now()


@dataclass
class Outcome:
    at: float
    client: str
    target: str
    expected: str  # owner: job (service IP) or job.n (instance IP)
    answer: str | None  # the instance that answered, None: no answer


def belongs(answer: str, owner: str) -> bool:
    """Whether `answer` (an instance name job.n) may answer for `owner`."""
    return answer == owner or answer.rsplit(".", 1)[0] == owner


@dataclass
class Traffic:
    """UDP requests to random addresses of the workload's model (see the module doc)."""

    workload: Workload
    rng: random.Random
    interval: float = 0.05
    outcomes: list[Outcome] = field(default_factory=list)
    misrouted: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def targets(self) -> list[tuple[str, str]]:
        found = []
        for service in self.workload.snapshot():
            if not service.instances:
                continue
            for kind in ("RR", "Closest"):
                found += [(a, service.job_name) for a in service.service_ips.get(kind, ()) if a]
            for instance in list(service.instances.values()):
                found += [(instance.instance_ip, instance.name)]
                found += [(instance.instance_ip_v6, instance.name)]
        return found

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            targets = self.targets()
            if targets:
                client = self.rng.choice(self.workload.clients)
                address, owner = self.rng.choice(targets)
                self.outcomes.append(self.exchange(client, address, owner, timeout=1.0))
            self._stop.wait(self.interval)

    def exchange(self, client: Instance, address: str, owner: str, timeout: float) -> Outcome:
        """One request over a new socket; a misrouted answer is recorded."""
        at = self.workload.log.now()
        answer = request(client, address, timeout)
        outcome = Outcome(at, client.name, address, owner, answer)
        if answer is not None and not belongs(answer, owner):
            now_owner = self.workload.ledger.owner_of(address)
            if now_owner is None or not belongs(answer, now_owner):
                text = (f"{address} (of {owner}) answered by {answer}, from {client.name} at "
                        f"{at:.2f} s")  # fmt: skip
                self.misrouted.append(text)
                if len(self.misrouted) <= 10:  # the first ones say enough
                    self.workload.log.say(f"MISROUTED: {text}")
        return outcome

    def success_ratio(self, start: float, end: float) -> tuple[int, int]:
        window = [o for o in list(self.outcomes) if start <= o.at <= end]
        return sum(1 for o in window if o.answer is not None), len(window)


def request(client: Instance, address: str, timeout: float) -> str | None:
    """A UDP exchange from `client`'s container; the answering instance, None if none."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        sock = client.container.sockets.socket(family, socket.SOCK_DGRAM)
    except (OSError, RuntimeError):
        return None
    try:
        sock.settimeout(timeout)
        sock.sendto(b"chaos", (address, APP_PORT))
        data: Any = json.loads(sock.recv(4096))
        return str(data["instance"])
    except (OSError, ValueError, KeyError):
        return None
    finally:
        sock.close()


ANY = "any instance of the service"


def unreachable(workload: Workload, deadline: float) -> list[str]:
    """Polls until, from every client, every running instance answers through its
    instance IPs, the RR IPs reach each instance of the service and the Closest IPs
    one of them; what still fails at `deadline` (time.monotonic()), and every answer
    from an instance the address does not belong to."""
    pending: dict[tuple[str, str, str], set[str]] = {}
    for service in workload.snapshot():
        names = {i.name for i in service.instances.values()}
        if not names:
            continue
        for client in workload.clients:
            for instance in service.instances.values():
                for address in (instance.instance_ip, instance.instance_ip_v6):
                    pending[(client.name, address, instance.name)] = {instance.name}
            for address in service.service_ips["RR"]:
                pending[(client.name, address, service.job_name)] = set(names)
            for address in service.service_ips["Closest"]:
                pending[(client.name, address, service.job_name)] = {ANY}
    clients = {c.name: c for c in workload.clients}
    wrong = []
    with ThreadPoolExecutor(max_workers=16) as pool:  # one lost answer must not delay the rest
        while pending and time.monotonic() < deadline:
            keys = list(pending)
            answers = pool.map(lambda k: request(clients[k[0]], k[1], timeout=0.5), keys)
            for (name, address, owner), answer in zip(keys, answers, strict=True):
                if answer is None:
                    continue
                if not belongs(answer, owner):
                    wrong.append(f"from {name}: {address} ({owner}) answered by {answer}")
                    continue
                key = (name, address, owner)
                pending[key] -= {answer, ANY}
                if not pending[key]:
                    del pending[key]
    failed = [
        f"from {c}: {a} ({o}) never reached {sorted(m)}"
        + (" (the client itself: hairpin)" if m == {c} or (m == {ANY} and c.startswith(o)) else "")
        for (c, a, o), m in pending.items()
    ]
    return wrong + failed
