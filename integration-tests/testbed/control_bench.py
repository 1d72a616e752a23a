"""Control-plane benchmark: a real root, cluster service manager and Mosquitto, many nodes.

    python -m testbed.control_bench [--quick] [--store embedded|secantus|both] [--only ROWS]
                                    [--mongo-url mongodb://host:port/]

`--mongo-url` adds a run against a MongoDB server of yours (the bench's own databases
`oakestra_bench_*` there are dropped first; retryable writes stay on, as in production):
`--store embedded --mongo-url ...` puts it beside the embedded baseline of the same run.

Everything listens on 127.0.0.1 ports this benchmark opened itself; no namespaces are
needed. The simulated nodes are real MQTT connections held by one process (`loadgen`,
aiomqtt). Phases, each printed as a row of one table:

- root deploys: services + one instance each from 8 HTTP clients; overall rate and the
  rate of the last 1,000 relative to the first 1,000 (flat costs give ~1.0);
- subnet allocations/s at the root;
- cached table queries by name and by service IP at a stepped offered rate: the best
  rate served (>= 90 % of offered) with its p50/p99, and up to which offered rate the
  p99 stayed within the target (50 ms; 100 ms for forwarded queries);
- queries the cluster must forward to the root (jobs the root knows, not yet cached);
- a scale change with 500 interested nodes: time until all fetched the new table,
  announcements per change, refetches per node;
- CPU seconds of the cluster service manager per 1,000 cached queries at a small and at
  the full cache size;
- with MongoDB (SecantusDB or `--mongo-url`) only: cached queries by name again, with the cluster
  service manager restarted as two processes sharing the nodes' topics; and the store's
  own floor (round trips/s of an insert and a find by `_id` from 8 clients, measured
  first), with each row's store operations per request (the server's `opcounters`) and
  so the rate the server's floor allows for that many operations.

Before the query phases the benchmark waits until the root has delivered its pushes and
the cluster has done its root work (each location report comes back as a push the
cluster answers with a fetch).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from testbed import loadgen

CLUSTER_ID = "6630c0000000000000000b01"
CLIENTS = 8
CACHED_P99 = 0.050  # the latency targets (seconds)
FORWARDED_P99 = 0.100
# Measured rows `--only` can select; root deploys and caching always run (later rows
# measure against the state they leave).
BENCH_DATABASE = "oakestra_bench_"  # root, cluster, floor: dropped before a --mongo-url run
ROWS = frozenset({"subnets", "cpu", "sname", "sip", "forwarded", "fanout", "shared"})


@dataclass
class Scale:
    nodes: int = 1000
    services: int = 2000  # cached in the cluster
    small: int = 100  # cache size of the first CPU measurement
    root_services: int = 10000  # deployed at the root (services + one instance each)
    subnets: int = 2000
    interested: int = 500
    step_seconds: float = 3.0
    rates: tuple[int, ...] = (250, 500, 1000, 1500, 2000, 2500, 3000)
    forward_rates: tuple[int, ...] = (50, 100, 250, 375, 500, 625, 750)
    only: frozenset[str] = ROWS  # the measured rows to run; setup phases always run

    @classmethod
    def quick(cls) -> Scale:
        return cls(
            nodes=20,
            services=30,
            small=10,
            root_services=60,
            subnets=20,
            interested=10,
            step_seconds=0.5,
            rates=(50,),
            forward_rates=(20,),
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _program(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


class Proc:
    """A child process of ours, in its own session; stopped by PID only."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
            )
        self.log = log

    def cpu_seconds(self) -> float:
        """utime + stime of the process and its gunicorn workers."""
        return sum(self.cpu_by_process().values())

    def cpu_by_process(self) -> dict[int, float]:
        """utime + stime of the process and of each gunicorn worker, by PID."""
        used = {}
        tick = os.sysconf("SC_CLK_TCK")
        for pid in [self.popen.pid, *_children(self.popen.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used[pid] = (int(fields[11]) + int(fields[12])) / tick
        return used

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, requests.RequestException):
            pass
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited; see {proc.log}")
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout} s")


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@dataclass
class Stack:
    """Mosquitto, root and cluster service manager (and optionally SecantusDB)."""

    workdir: Path
    mongo_url: str | None
    retry_writes: bool = False  # pymongo's default; off for SecantusDB (see _store)
    procs: list[Proc] = field(default_factory=list)
    broker_port: int = 0
    root_port: int = 0
    cluster_port: int = 0

    def start(self) -> Stack:
        self.broker_port, self.root_port, self.cluster_port = free_port(), free_port(), free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\n"
            "persistence false\nset_tcp_nodelay true\nmax_connections -1\n"
            "max_queued_messages 100000\n" + ("user root\n" if os.geteuid() == 0 else "")
        )
        broker = self._spawn("mosquitto", [_program("mosquitto"), "-c", str(conf)], {})
        wait_for(lambda: _accepts(self.broker_port), 10, "mosquitto", broker)
        quiet = {"LOG_LEVEL": "WARNING", "GUNICORN_WORKERS": "1"}
        root_env = {"MY_PORT": str(self.root_port), "BIND": f"127.0.0.1:{self.root_port}"}
        # A fresh store holds nothing to rebuild: allocate at once instead of waiting 3-30 s.
        root_env.update(ROOT_REBUILD_MIN_SECONDS="0", ROOT_REBUILD_MAX_SECONDS="0")
        root_env.update(self._store("root"))
        root = self._spawn("root", [_program("root-service-manager")], {**quiet, **root_env})
        self.root_proc = root
        wait_for(lambda: self._healthy(self.root_port), 30, "root", root)
        cluster_env = {
            "MY_PORT": str(self.cluster_port),
            "BIND": f"127.0.0.1:{self.cluster_port}",
            "MQTT_BROKER_URL": "127.0.0.1",
            "MQTT_BROKER_PORT": str(self.broker_port),
            "ROOT_SERVICE_MANAGER_URL": "127.0.0.1",
            "ROOT_SERVICE_MANAGER_PORT": str(self.root_port),
            "CLUSTER_ID": CLUSTER_ID,
            "CLUSTER_ADDRESS": "127.0.0.1",
            **self._store("cluster"),
        }
        self._cluster_env = {**quiet, **cluster_env}
        self.cluster = self._spawn(
            "cluster", [_program("cluster-service-manager")], self._cluster_env
        )
        wait_for(lambda: self._healthy(self.cluster_port), 30, "cluster", self.cluster)
        body = {"cluster_id": CLUSTER_ID, "cluster_address": "127.0.0.1"}
        body["cluster_port"] = self.cluster_port
        _ok(requests.post(self.root("/api/net/cluster"), json=body, timeout=10))
        # a root on a new store allocates only once its clusters told it what is in use
        wait_for(self._root_allocates, 60, "root rebuild (cluster state)", root)
        return self

    def restart_cluster(self, workers: int) -> None:
        """The cluster service manager again as `workers` gunicorn worker processes; with
        MongoDB they share the nodes' topics (`$share/cluster-sm/`) and the store."""
        self.cluster.stop()
        self.procs.remove(self.cluster)
        env = {**self._cluster_env, "GUNICORN_WORKERS": str(workers)}
        self.cluster = self._spawn("cluster", [_program("cluster-service-manager")], env)
        wait_for(lambda: self._healthy(self.cluster_port), 30, "cluster", self.cluster)

    def _root_allocates(self) -> bool:
        health = requests.get(self.root("/healthz"), timeout=2).json()
        return health.get("rebuilding") is False

    def _store(self, component: str) -> dict[str, str]:
        """Root and cluster keep their own databases (both have a `jobs` collection).

        Retryable writes are off for SecantusDB: it keeps their records (up to 10,000,
        30 min) in a dict it walks on every write, so with them on its writes slow down
        as the run goes on (measured: root deploys 22/s instead of 122/s over 2,000)."""
        if not self.mongo_url:
            return {}
        url = database_url(self.mongo_url, BENCH_DATABASE + component, self.retry_writes)
        return {"MONGO_URL": url}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, self.workdir / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    def _healthy(self, port: int) -> bool:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def root(self, path: str) -> str:
        return f"http://127.0.0.1:{self.root_port}{path}"

    def cluster_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.cluster_port}{path}"


def job_name(index: int) -> str:
    return f"bench.default.s{index:05d}.default"


def job_id(index: int) -> str:
    return f"6630{index:020x}"


class Http:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1 (`http.client`).

    The benchmark's client threads share one interpreter (and the cores) with the
    servers they measure: requests' per-call work cost them about as much CPU as the
    root spent answering.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> dict:
        return self.call("GET", path)

    def post(self, path: str, body: dict) -> dict:
        return self.call("POST", path, body)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in range(2):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self._conn.request(method, path, data, headers)
                reply = self._conn.getresponse()
                text = reply.read()
            except (http.client.HTTPException, OSError):
                self._conn.close()
                self._conn = None
                if attempt or not reused:  # only a kept-alive connection the server closed
                    raise
                continue
            if reply.status != 200:
                raise RuntimeError(f"{method} :{self.port}{path}: {reply.status} {text[:200]!r}")
            return json.loads(text)
        raise AssertionError("unreachable")


def _parallel(count: int, port: int, work: Callable[[Http, int], None]) -> list[float]:
    """Run work(http, i) for i in range(count) from CLIENTS threads; completion times."""
    done: list[float] = []
    local = threading.local()

    def run(index: int) -> None:
        if not hasattr(local, "http"):
            local.http = Http(port)
        work(local.http, index)
        done.append(time.monotonic())

    with ThreadPoolExecutor(CLIENTS) as pool:
        for result in pool.map(run, range(count)):
            del result
    return sorted(done)


def _within(rate: int, p99: float) -> str:
    """The highest offered rate (a step of the ladder) served with the target's p99."""
    target = f"p99 <= {p99 * 1000:.0f} ms"
    return (
        f"; {target} at {rate}/s offered (highest such step)" if rate else f"; {target} at no step"
    )


def _ok(reply: requests.Response) -> dict:
    if reply.status_code != 200:
        raise RuntimeError(f"{reply.request.method} {reply.url}: {reply.status_code} {reply.text}")
    return reply.json()


class StoreOps:
    """Operations a MongoDB-wire server has served (`serverStatus.opcounters`, summed),
    and its floor: round trips/s of the simplest requests the managers make."""

    KINDS = ("insert", "query", "update", "delete", "getmore", "command")

    def __init__(self, mongo_url: str) -> None:
        self.client: MongoClient = MongoClient(database_url(mongo_url, "", retry_writes=False))
        self.counting = True

    def count(self) -> dict[str, int] | None:
        """None once the server refused (serverStatus needs the clusterMonitor role)."""
        if not self.counting:
            return None
        try:
            counters = self.client.admin.command("serverStatus")["opcounters"]
        except OperationFailure as err:
            print(f"  store operations not counted: {err}", file=sys.stderr, flush=True)
            self.counting = False
            return None
        return {kind: int(counters.get(kind, 0)) for kind in self.KINDS}

    def floor(self, pairs: int) -> float:
        """Round trips/s of insert_one + find_one by `_id` from CLIENTS threads."""
        collection = self.client[f"{BENCH_DATABASE}floor"]["floor"]
        collection.drop()

        def pair(index: int) -> None:
            collection.insert_one({"_id": index, "job_name": job_name(index)})
            collection.find_one({"_id": index})

        start = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            for result in pool.map(pair, range(pairs)):
                del result
        seconds = time.monotonic() - start
        collection.drop()
        return 2 * pairs / seconds

    def close(self) -> None:
        self.client.close()


class Bench:
    def __init__(self, stack: Stack, scale: Scale) -> None:
        self.stack = stack
        self.scale = scale
        self.rows: list[tuple[str, str]] = []
        self.service_ips: dict[int, str] = {}
        self.store = StoreOps(stack.mongo_url) if stack.mongo_url else None
        self.floor = 0.0  # the store's round trips/s

    def measured(self, phase: Callable[[], int]) -> None:
        """Run a phase that writes one row and returns how many requests it made; with a
        MongoDB-wire store, append the store operations per request and the rate the
        store's floor allows for that many."""
        before = self.store.count() if self.store else None
        made = phase()
        if not self.store or before is None or not self.floor or not made:
            return
        after = self.store.count()
        if after is None:
            return
        each = {kind: (after[kind] - before[kind]) / made for kind in after}
        per_request = sum(each.values())
        name, value = self.rows[-1]
        value += f"; store ops each {per_request:.1f}"
        kinds = [f"{kind} {count:.1f}" for kind, count in each.items() if count >= 0.05]
        if kinds:
            value += f" ({', '.join(kinds)})"
        if per_request:
            value += f", floor allows {self.floor / per_request:.0f}/s"
        self.rows[-1] = (name, value)

    def store_floor(self) -> None:
        pairs = max(200, self.scale.subnets)
        self.floor = self.store.floor(pairs) if self.store else 0.0
        self.row(
            f"store floor (insert + find by _id, {CLIENTS} clients)",
            f"{self.floor:.0f} round trips/s",
        )

    def row(self, name: str, value: str) -> None:
        print(f"  {name}: {value}", file=sys.stderr, flush=True)
        self.rows.append((name, value))

    # -- root ------------------------------------------------------------------------

    def root_deploys(self) -> int:
        start = time.monotonic()

        def deploy(http: Http, i: int) -> None:
            descriptor = {
                "app_name": "bench",
                "app_ns": "default",
                "service_name": f"s{i:05d}",
                "service_ns": "default",
            }
            body = {"_id": job_id(i), "deployment_descriptor": descriptor}
            answer = http.post("/api/net/service/deploy", body)
            self.service_ips[i] = answer["service_ip_list"][0]["Address"]
            instance = {"_id": job_id(i), "instance_number": 0, "cluster_id": CLUSTER_ID}
            http.post("/api/net/instance/deploy", instance)

        done = _parallel(self.scale.root_services, self.stack.root_port, deploy)
        total = done[-1] - start
        ops = 2 * len(done)
        window = min(1000, len(done) // 4)
        first = window / (done[window - 1] - start)
        last = window / (done[-1] - done[-window - 1])
        self.row(
            f"root deploys ({len(done)} services + {len(done)} instances, {CLIENTS} clients)",
            f"{ops / total:.0f}/s; last {window} / first {window} rate = {last / first:.2f}",
        )
        return ops

    def subnets(self) -> int:
        start = time.monotonic()
        cpu = self.stack.root_proc.cpu_seconds()
        done = _parallel(
            self.scale.subnets, self.stack.root_port, lambda http, i: http.get("/api/net/subnet")
        )
        used = self.stack.root_proc.cpu_seconds() - cpu
        self.row(
            "subnet allocations",
            f"{len(done) / (done[-1] - start):.0f}/s; "
            f"root CPU {1000 * used / len(done):.2f} ms each",
        )
        return len(done)

    # -- cluster cache ---------------------------------------------------------------

    def cache_jobs(self, first: int, last: int, nodes: loadgen.Nodes) -> None:
        """Cache jobs [first, last) in the cluster, each with its instance located."""

        def deploy(http: Http, i: int) -> None:
            http.post("/api/net/deployment", {"job_name": job_name(first + i)})

        _parallel(last - first, self.stack.cluster_port, deploy)
        nodes.run(nodes.report_deployed([job_name(i) for i in range(first, last)]))
        self.settle()

    def settle(self, timeout: float = 300) -> None:
        """Wait until the root has no push left to deliver and the cluster no root work.

        Every location report comes back from the root as a push the cluster answers
        with a fetch (~10 s of work after caching 2,000 jobs); the measured queries
        should not share the cores with that.
        """

        def quiet() -> bool:
            root = requests.get(self.stack.root("/healthz"), timeout=5).json()
            cluster = requests.get(self.stack.cluster_url("/healthz"), timeout=5).json()
            return root.get("outbox_depth") == 0 and cluster.get("pending_root_work") == 0

        wait_for(quiet, timeout, "root pushes and the cluster's root work")

    def cpu_per_1000(self, nodes: loadgen.Nodes, cached: int, label: str) -> None:
        keys = [("sname", job_name(i)) for i in range(cached)]
        before = self.stack.cluster.cpu_seconds()
        result = nodes.run(nodes.closed_loop(keys, count=max(200, 5 * len(nodes.ids))))
        used = self.stack.cluster.cpu_seconds() - before
        self.row(
            f"CPU s per 1,000 cached queries at {label} services",
            f"{1000 * used / result.answered:.2f} ({result.answered / result.seconds:.0f}/s)",
        )

    def query_rates(self, nodes: loadgen.Nodes, kind: str, cached: int, processes: str = "") -> int:
        if kind == "sname":
            keys = [("sname", job_name(i)) for i in range(cached)]
        else:
            keys = [("sip", self.service_ips[i]) for i in range(cached)]
        best, first, within, answered = None, None, 0, 0
        for rate in self.scale.rates:
            result = nodes.run(nodes.open_loop(keys, rate, self.scale.step_seconds))
            answered += result.answered
            print(f"    offered {rate}/s: {result.describe()}", file=sys.stderr, flush=True)
            first = first or f"short of {rate}/s offered: {result.describe()}"
            if not result.kept_up(rate):
                break
            best = result
            if result.percentile(0.99) <= CACHED_P99:
                within = rate
        label = "by name" if kind == "sname" else "by service IP"
        self.row(
            f"cached table queries {label} ({cached} services, {len(nodes.ids)} nodes{processes})",
            (best.describe() if best else str(first)) + _within(within, CACHED_P99),
        )
        return answered

    def forwarded(self, nodes: loadgen.Nodes, first: int) -> int:
        """Queries by name for jobs the root knows and the cluster has not cached."""
        best, shortfall, within = None, "no forwarded queries left to send", 0
        index = first
        answered = 0
        cpu = self.stack.root_proc.cpu_seconds(), self.stack.cluster.cpu_seconds()
        for rate in self.scale.forward_rates:
            count = int(rate * self.scale.step_seconds)
            if index + count > self.scale.root_services:
                break
            keys = [("sname", job_name(i)) for i in range(index, index + count)]
            index += count
            result = nodes.run(nodes.open_loop(keys, rate, self.scale.step_seconds, once=True))
            answered += result.answered
            print(f"    forwarded, offered {rate}/s: {result.describe()}", file=sys.stderr)
            if not result.kept_up(rate):
                shortfall = f"short of {rate}/s offered: {result.describe()}"
                break
            best = result
            if result.percentile(0.99) <= FORWARDED_P99:
                within = rate
        root_cpu = self.stack.root_proc.cpu_seconds() - cpu[0]
        cluster_cpu = self.stack.cluster.cpu_seconds() - cpu[1]
        per_query = (
            f"; CPU per query: root {1000 * root_cpu / answered:.2f} ms, "
            f"cluster {1000 * cluster_cpu / answered:.2f} ms"
            if answered
            else ""
        )
        self.row(
            "queries forwarded to the root",
            (best.describe() if best else shortfall) + _within(within, FORWARDED_P99) + per_query,
        )
        return answered

    def fan_out(self, nodes: loadgen.Nodes, target: int) -> None:
        name = job_name(target)
        result = nodes.run(
            nodes.fan_out(
                name,
                self.scale.interested,
                lambda: self._scale_up(target),
            )
        )
        self.row(
            f"scale change fan-out ({self.scale.interested} interested nodes)",
            f"all fetched after {result['seconds'] * 1000:.0f} ms; "
            f"{result['announcements']:.1f} announcements per change; "
            f"{result['refetches']:.2f} refetches per node",
        )

    def _scale_up(self, target: int) -> None:
        body = {"_id": job_id(target), "instance_number": 1, "cluster_id": CLUSTER_ID}
        _ok(requests.post(self.stack.root("/api/net/instance/deploy"), json=body))
        body = {"job_name": job_name(target)}
        _ok(requests.post(self.stack.cluster_url("/api/net/deployment"), json=body))

    def shared_cluster(self, nodes: loadgen.Nodes, cached: int) -> None:
        """Cached queries by name again, served by two cluster service manager processes
        sharing the subscription (MongoDB only: the embedded store is one process's)."""
        self.stack.restart_cluster(2)
        keys = [("sname", job_name(i)) for i in range(cached)]
        nodes.run(nodes.closed_loop(keys, count=4 * len(nodes.ids)))  # both up and answering
        before = self.stack.cluster.cpu_by_process()
        self.query_rates(nodes, "sname", cached, ", 2 cluster processes")
        after = self.stack.cluster.cpu_by_process()
        workers = [
            after[p] - before.get(p, 0.0) for p in after if p != self.stack.cluster.popen.pid
        ]
        split = " / ".join(f"{100 * w / max(sum(workers), 1e-9):.0f}" for w in workers)
        name, value = self.rows[-1]
        self.rows[-1] = (name, f"{value}; CPU split between the processes {split} %")

    def run(self) -> list[tuple[str, str]]:
        scale = self.scale
        only = scale.only
        if self.store:
            self.store_floor()
        self.measured(self.root_deploys)
        if "subnets" in only:
            self.measured(self.subnets)
        if not only - {"subnets"}:
            return self.rows
        nodes = loadgen.Nodes("127.0.0.1", self.stack.broker_port, scale.nodes)
        nodes.run(nodes.connect())
        try:
            self.cache_jobs(0, scale.small, nodes)
            if "cpu" in only:
                self.cpu_per_1000(nodes, scale.small, str(scale.small))
            self.cache_jobs(scale.small, scale.services, nodes)
            if "cpu" in only:
                self.cpu_per_1000(nodes, scale.services, str(scale.services))
            if "sname" in only:
                self.measured(lambda: self.query_rates(nodes, "sname", scale.services))
            if "sip" in only:
                self.measured(lambda: self.query_rates(nodes, "sip", scale.services))
            if "forwarded" in only:
                self.measured(lambda: self.forwarded(nodes, scale.services))
            if "fanout" in only:
                try:
                    self.fan_out(nodes, 0)
                except TimeoutError:
                    label = f"scale change fan-out ({scale.interested} interested nodes)"
                    self.row(label, "not every node had the new table within 30 s")
            if self.stack.mongo_url is not None and "shared" in only:
                self.shared_cluster(nodes, scale.services)
        finally:
            nodes.stop()
        return self.rows

    def close(self) -> None:
        if self.store:
            self.store.close()


@contextmanager
def secantus(workdir: Path) -> Iterator[str]:
    port = free_port()
    proc = Proc(
        "secantusdb",
        [
            _program("secantusd-py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(workdir / "secantus-data"),
            "--log-level",
            "WARNING",
        ],
        workdir / "secantusdb.log",
        {},
    )
    try:
        wait_for(lambda: _accepts(port), 60, "secantusdb", proc)
        yield f"mongodb://127.0.0.1:{port}/"
    finally:
        proc.stop()


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_once(
    scale: Scale, mongo_url: str | None, workdir: Path, *, retry_writes: bool = False
) -> list[tuple[str, str]]:
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir, mongo_url, retry_writes).start()
    bench = Bench(stack, scale)
    try:
        return bench.run()
    finally:
        bench.close()
        stack.stop()


def server_url(url: str) -> str:
    """`mongodb://[user:password@]host[:port][/][?options]`, checked; a user without an
    `authSource` is looked up in `admin` (the URL will name the bench's databases)."""
    parts = urlsplit(url)
    if parts.scheme != "mongodb" or not parts.hostname or parts.fragment:
        raise ValueError(
            f"--mongo-url must be mongodb://[user:password@]host[:port]/[?options], got {url!r}"
        )
    if parts.path not in ("", "/"):
        raise ValueError(f"--mongo-url names no database (the bench uses its own), got {url!r}")
    options = [option for option in parts.query.split("&") if option]
    if parts.username and not any(o.lower().startswith("authsource=") for o in options):
        options.append("authSource=admin")
    return urlunsplit(("mongodb", parts.netloc, "/", "&".join(options), ""))


def database_url(server: str, database: str, retry_writes: bool) -> str:
    """The server's URL naming `database`, retryable writes off unless `retry_writes`."""
    parts = urlsplit(server)
    options = [option for option in parts.query.split("&") if option]
    if not retry_writes:
        options.append("retryWrites=false")
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", "&".join(options), ""))


def fresh_bench_databases(url: str) -> None:
    """Drop what an earlier run left in the bench's own databases (and only those)."""
    client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=10_000)
    try:
        for name in client.list_database_names():
            if name.startswith(BENCH_DATABASE):
                client.drop_database(name)
    finally:
        client.close()


def print_table(results: dict[str, list[tuple[str, str]]]) -> None:
    width = max(len(name) for rows in results.values() for name, _ in rows)
    for store, rows in results.items():
        print(f"\n== control plane, store: {store}")
        for name, value in rows:
            print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (smoke test)")
    parser.add_argument("--store", choices=("embedded", "secantus", "both"), default="both")
    parser.add_argument("--nodes", type=int, help="simulated nodes (MQTT connections)")
    parser.add_argument("--services", type=int, help="jobs cached in the cluster")
    parser.add_argument("--root-services", type=int, help="services deployed at the root")
    parser.add_argument("--subnets", type=int, help="subnet allocations measured")
    parser.add_argument(
        "--mongo-url",
        help="also run against this MongoDB server (mongodb://[user:password@]host[:port]/); "
        f"it uses and first drops the databases named {BENCH_DATABASE}*",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated measured rows to run, of: {', '.join(sorted(ROWS))}",
    )
    args = parser.parse_args(argv)
    mongo_url = None
    if args.mongo_url:
        try:
            mongo_url = server_url(args.mongo_url)
        except ValueError as err:
            parser.error(str(err))
    scale = Scale.quick() if args.quick else Scale()
    if args.only:
        chosen = frozenset(args.only.split(","))
        if chosen - ROWS:
            parser.error(f"unknown rows {', '.join(sorted(chosen - ROWS))}; known: {sorted(ROWS)}")
        scale.only = chosen
    for name in ("nodes", "services", "root_services", "subnets"):
        if getattr(args, name) is not None:
            setattr(scale, name, getattr(args, name))
    raise_file_limit()
    results: dict[str, list[tuple[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="oak-control-bench-") as tmp:
        base = Path(tmp)
        if args.store in ("embedded", "both"):
            print("== embedded store", file=sys.stderr)
            results["embedded"] = run_once(scale, None, base / "embedded")
        if args.store in ("secantus", "both"):
            print("== SecantusDB", file=sys.stderr)
            with secantus(base) as url:
                results["SecantusDB"] = run_once(scale, url, base / "secantus")
        if mongo_url:
            where = urlsplit(mongo_url).hostname
            print(f"== MongoDB at {where}", file=sys.stderr)
            fresh_bench_databases(mongo_url)
            results[f"MongoDB at {where}"] = run_once(
                scale, mongo_url, base / "mongodb", retry_writes=True
            )
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
