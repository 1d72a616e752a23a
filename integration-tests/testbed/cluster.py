"""The local cluster: the real components, each in its place, in namespaces of our own.

    with LocalCluster(workers=2) as cluster:   # or cluster.start() ... cluster.close()
        ...

Built from `topology.local_cluster`: an underlay bridge (198.18.0.0/24), an infra
namespace at 198.18.0.254 running Mosquitto (10003, the repository's secured
mosquitto/mosquitto.conf with a password file, ACL and TLS certificates made for this
run, see credentials.py), the root service manager (10099) and the cluster service manager
(10110), each with its embedded store and the run's API token; and workers w1, w2, …
at 198.18.0.1, … each running `net-manager run` with its own config directory (its
broker credential in netcfg.json), socket and state file.
Every program runs as a `Process` with its log in the run directory. Starting prints
progress ("starting mosquitto… ok (0.2 s)"); every step waits for real readiness
(the broker accepts connections, `/healthz` says ok, the net manager's socket answers).
close() stops everything by PID in reverse order and deletes the namespaces, which
takes their devices, addresses, routes and iptables rules with them. Registering the
cluster and the nodes is Oakestra's part: see orchestrator.py.

This process never joins a namespace: it reaches the managers through sockets made in
the infra namespace (nsnet) and the net managers through their unix sockets.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from net_manager.cli import call
from oakestra_net import api_token
from testbed.credentials import CONSOLE_PORT, RunSecrets
from testbed.netns import Testbed
from testbed.nsnet import NetnsSockets, Reply, http_call
from testbed.processes import Process, Progress, child_env
from testbed.topology import INFRA_IP, RUN_PREFIX, local_cluster, unique_prefix

REPO = Path(__file__).resolve().parents[2]
BROKER_PORT, ROOT_PORT, CLUSTER_PORT, TUNNEL_PORT = 10003, 10099, 10110, 50103
CLUSTER_ID = "6630c0000000000000000001"
START_TIMEOUT = 30.0
DATAPLANE_MODE_VARIABLE = "OAKESTRA_TEST_DATAPLANE_MODE"


def node_id_of(index: int) -> str:
    """The node id (an ObjectId, like Oakestra's) of worker number `index` (1, 2, …)."""
    return f"6630{index:020x}"


def _program(name: str) -> str:
    """A console script of the virtualenv this Python runs in, else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found (make setup installs it)")
    return found


@dataclass
class Worker:
    name: str  # "w1"
    index: int
    netns: str
    address: str  # on the underlay
    node_id: str
    config_dir: Path
    socket_path: str
    state_file: str
    process: Process

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        """The net manager's API over its unix socket, as the node engine calls it."""
        return call(self.socket_path, method, path, body)

    def status(self) -> dict:
        code, body = self.call("GET", "/status")
        if code != 200:
            raise RuntimeError(f"net manager on {self.name}: GET /status answered {code}: {body}")
        return body


class LocalCluster:
    def __init__(
        self,
        workers: int = 2,
        *,
        prefix: str | None = None,
        run_dir: Path | str | None = None,
        progress: Progress | None = None,
        open_broker: bool = False,
        dataplane_mode: str | None = None,
    ) -> None:
        """`open_broker`: upstream Oakestra's default broker (anonymous, no ACL, retained
        messages kept) instead of ours; the API token stays. `dataplane_mode`: the
        nodes' DataplaneMode (tun, kernel, auto); None: $OAKESTRA_TEST_DATAPLANE_MODE,
        else the net manager's default (so a whole tier can run against one backend)."""
        self.dataplane_mode = dataplane_mode or os.environ.get(DATAPLANE_MODE_VARIABLE, "")
        self.topology = local_cluster(prefix or unique_prefix(RUN_PREFIX), workers)
        self.prefix = self.topology.prefix
        name = f"oakestra-net-{self.prefix.rstrip('-')}-"
        self.run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix=name))
        self.progress = progress or Progress(None)
        self.bed = Testbed(self.topology)
        self.infra_ns = self.topology.netns("infra")
        self.infra_ip = INFRA_IP
        self._infra: NetnsSockets | None = None
        self.processes: list[Process] = []  # in start order
        node_ids = [node_id_of(i) for i in range(1, workers + 1)]
        self.credentials = RunSecrets.create(
            self.run_dir / "secrets",
            node_ids,
            [self.infra_ip, "127.0.0.1"],
            open_broker=open_broker,
        )
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = str(self.credentials.broker_config)
        self.broker = self._infra_process("mosquitto", [mosquitto, "-c", conf])
        self.root = self._infra_process("root-service-manager", [_program("root-service-manager")])
        self.cluster = self._infra_process(
            "cluster-service-manager", [_program("cluster-service-manager")]
        )
        self.workers = [self._worker(i) for i in range(1, workers + 1)]

    # ------------------------------------------------------------------ set-up

    def _infra_process(self, name: str, argv: list[str]) -> Process:
        token = self.credentials.api_token
        env = {
            "root-service-manager": {"MY_PORT": str(ROOT_PORT), api_token.ENV_VAR: token},
            "cluster-service-manager": {
                api_token.ENV_VAR: token,
                **self._cluster_broker_login(),
                "MY_PORT": str(CLUSTER_PORT),
                "MQTT_BROKER_URL": self.infra_ip,
                "MQTT_BROKER_PORT": str(BROKER_PORT),
                "ROOT_SERVICE_MANAGER_URL": self.infra_ip,
                "ROOT_SERVICE_MANAGER_PORT": str(ROOT_PORT),
            },
        }.get(name, {})
        return Process(name, self.infra_ns, argv, self.run_dir / f"{name}.log", child_env(env))

    def _cluster_broker_login(self) -> dict[str, str]:
        if self.credentials.open_broker:
            return {}
        return {
            "MQTT_USERNAME": self.credentials.cluster_user,
            "MQTT_PASSWORD": self.credentials.cluster_password,
            "MQTT_CERT": str(self.credentials.directory),  # ca.crt, cluster_net.crt/.key
        }

    def _worker(self, index: int) -> Worker:
        name = f"w{index}"
        home = self.run_dir / name
        socket_path, state_file = str(home / "netmanager.sock"), str(home / "state.json")
        argv = [_program("net-manager"), "--config-dir", str(home), "--socket", socket_path]
        argv += ["run", "--state-file", state_file]
        process = Process(
            f"net-manager {name}",
            self.topology.netns(name),
            argv,
            self.run_dir / f"net-manager-{name}.log",
            child_env({}),
        )
        node = self.topology.node(name)
        return Worker(
            name,
            index,
            self.topology.netns(name),
            node.underlay_ip,
            node_id_of(index),
            home,
            socket_path,
            state_file,
            process,
        )

    def _write_worker_config(self, worker: Worker) -> None:
        worker.config_dir.mkdir(parents=True, exist_ok=True)
        netcfg = {
            "NodePublicAddress": worker.address,
            "NodePublicPort": str(TUNNEL_PORT),
            "ClusterUrl": self.infra_ip,
            "ClusterMqttPort": str(BROKER_PORT),
            "DefaultInterface": "",
            "Debug": False,
            "MqttCert": "",
            "MqttKey": "",
        }
        if self.dataplane_mode:
            netcfg["DataplaneMode"] = self.dataplane_mode
        if not self.credentials.open_broker:
            netcfg["MqttCa"] = str(self.credentials.ca_file)
            netcfg["MqttUsername"] = worker.node_id
            netcfg["MqttPassword"] = self.credentials.node_passwords[worker.node_id]
        path = worker.config_dir / "netcfg.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(netcfg, indent=2) + "\n")
        shutil.copy(REPO / "net-manager" / "config" / "tuncfg.json", worker.config_dir)

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> LocalCluster:
        """Namespaces, broker, managers, net managers; each step waits until it is ready."""
        try:
            names = ", ".join(n.name for n in self.topology.nodes)
            with self.progress.step(f"creating namespaces {self.prefix}{{{names}}}"):
                self.bed.build()
                self._infra = NetnsSockets(f"/run/netns/{self.infra_ns}")
            self.start_broker()
            self.start_root()
            self.start_cluster_manager()
            for worker in self.workers:
                self.start_net_manager(worker)
        except BaseException:
            self.close()
            raise
        return self

    def _launch(self, process: Process) -> None:
        process.start()
        if process not in self.processes:
            self.processes.append(process)

    def start_broker(self) -> None:
        with self.progress.step(f"starting mosquitto on {self.infra_ip}:{BROKER_PORT}"):
            self._launch(self.broker)
            self.broker.wait_until(self.broker_listening, START_TIMEOUT, "listening")

    def broker_listening(self) -> bool:
        try:
            self.infra.connect("127.0.0.1", BROKER_PORT, timeout=1).close()
        except OSError:
            return False
        return True

    def start_root(self) -> None:
        with self.progress.step(f"starting the root service manager on :{ROOT_PORT}"):
            self._launch(self.root)
            self.root.wait_until(lambda: self._healthy(ROOT_PORT), START_TIMEOUT, "healthy")

    def start_cluster_manager(self) -> None:
        with self.progress.step(f"starting the cluster service manager on :{CLUSTER_PORT}"):
            self._launch(self.cluster)
            self.cluster.wait_until(lambda: self._healthy(CLUSTER_PORT), START_TIMEOUT, "healthy")

    def _healthy(self, port: int) -> bool:
        return self.infra_http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200

    def start_net_manager(self, worker: Worker) -> None:
        with self.progress.step(f"starting the net manager on {worker.name} ({worker.address})"):
            self._write_worker_config(worker)
            self._launch(worker.process)
            worker.process.wait_until(worker.status, START_TIMEOUT, "answering on its socket")

    def close(self) -> None:
        """Stop every process (all at once, the broker last), then delete every namespace.
        Never raises before it has tried everything; the run directory stays (logs)."""
        errors = []
        others = [p for p in self.processes if p is not self.broker]
        for group in (others, [self.broker]):  # the broker last: clients leave cleanly
            for process in group:
                process.terminate()
            for process in group:
                try:
                    process.stop()
                except Exception as err:  # noqa: BLE001 - go on with the rest
                    errors.append(f"{process.name}: {err}")
        self.processes.clear()
        if self._infra is not None:
            self._infra.close()
            self._infra = None
        try:
            self.bed.close()
        except Exception as err:  # noqa: BLE001
            errors.append(str(err))
        if errors:
            raise RuntimeError("local cluster teardown incomplete: " + "; ".join(errors))

    # ------------------------------------------------------------------ restarts (faults)

    def restart_broker(self) -> None:
        self.broker.stop()
        self.start_broker()

    def restart_cluster_manager(self) -> None:
        self.cluster.stop()
        self.start_cluster_manager()

    def restart_net_manager(self, worker: Worker, *, crash: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with crash) and start again; waits until it is back
        on the broker with its data plane."""
        worker.process.kill() if crash else worker.process.stop()
        self.start_net_manager(worker)
        worker.process.wait_until(
            lambda: _back(worker.status()), START_TIMEOUT, "registered, connected, data plane up"
        )

    # ------------------------------------------------------------------ reaching things

    @property
    def infra(self) -> NetnsSockets:
        if self._infra is None:
            raise RuntimeError("the local cluster is not started")
        return self._infra

    def infra_http(
        self,
        method: str,
        url: str,
        body: Any = None,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """An HTTP call made from inside the infra namespace (from 127.0.0.1 there)."""
        return http_call(self.infra, method, url, body, timeout, headers)

    def root_api(self, method: str, path: str, body: Any = None, *, token: bool = True) -> Reply:
        """The root's API as Oakestra's system manager calls it (with the run's token)."""
        url = f"http://127.0.0.1:{ROOT_PORT}{path}"
        return self.infra_http(method, url, body, headers=self._auth(token))

    def cluster_api(self, method: str, path: str, body: Any = None, *, token: bool = True) -> Reply:
        """The cluster's API as Oakestra's cluster manager calls it (with the run's token)."""
        url = f"http://127.0.0.1:{CLUSTER_PORT}{path}"
        return self.infra_http(method, url, body, headers=self._auth(token))

    def _auth(self, token: bool) -> dict[str, str]:
        return api_token.auth_header(self.credentials.api_token) if token else {}

    def worker(self, name: str) -> Worker:
        for worker in self.workers:
            if worker.name == name:
                return worker
        raise KeyError(f"the local cluster has no worker {name!r}")

    def spawn(self, name: str, netns: str, argv: list[str]) -> Process:
        """Start a process of ours (e.g. a container's program); close() stops it."""
        process = Process(name, netns, argv, self.run_dir / f"{name}.log", child_env({}))
        self._launch(process)
        return process

    def forget(self, process: Process) -> None:
        process.stop()
        if process in self.processes:
            self.processes.remove(process)

    def mosquitto_sub_command(self, topics: str = "nodes/+/net/#") -> str:
        """What a user runs to watch the cluster's topics (the broker's console listener)."""
        return (
            f"ip netns exec {self.infra_ns} mosquitto_sub -h 127.0.0.1 -p {CONSOLE_PORT} "
            f"-v -t '{topics}'"
        )


def _back(status: dict) -> bool:
    return bool(
        status.get("registered")
        and status.get("broker_connected")
        and status["counters"]["dataplane"].get("running")
    )
