"""Test helpers: HTTP servers on loopback, the real root as Oakestra drives it, simulated nodes.

A `SimNode` is an MQTT client with the node's id as client id, publishing under
`nodes/<id>/net/` exactly what a net manager publishes (reference §3), and subscribing
`jobs/<job>/updates_available` for the jobs it is interested in, as net managers do.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import requests
from werkzeug.serving import make_server

from cluster_service_manager.config import Settings
from oakestra_net.mqtt import MqttClient, MqttConfig, topic_matches
from testsupport import Broker, free_port

X1_ID = "6630f0f0f0f0f0f0f0f0f001"
X3_ID = "6630f0f0f0f0f0f0f0f0f003"
X1 = "X.default.X1.default"
X3 = "X.default.X3.default"


class LiveServer:
    """A WSGI app served by werkzeug on 127.0.0.1 in a thread; can stop and start again."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app = app
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LiveServer:
        self._server = make_server(self.host, self.port, self.app, threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(5)


def make_settings(broker: Broker, root_url: str, **overrides) -> Settings:
    values = {
        "root_url": root_url,
        "root_timeout": 2.0,
        "root_attempts": 2,
        "root_backoff": 0.05,
        "root_workers": 4,
        "mqtt_host": broker.host,
        "mqtt_port": broker.port,
        "mqtt_client_id": f"csm-test-{uuid.uuid4().hex[:8]}",
        "mqtt_workers": 4,
        **overrides,
    }
    return Settings(**values)


class RootHarness:
    """The real root service manager on loopback, driven as Oakestra's system manager does."""

    def __init__(self, app: Any, server: LiveServer) -> None:
        self.app = app
        self.server = server
        self.state = app.extensions["root"]

    @property
    def url(self) -> str:
        return self.server.url

    def _call(self, method: str, path: str, **kw) -> dict:
        response = requests.request(method, f"{self.url}{path}", timeout=5, **kw)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def register_cluster(self, cluster_id: str, port: int, address: str = "127.0.0.1") -> None:
        body = {"cluster_id": cluster_id, "cluster_address": address, "cluster_port": port}
        self._call("POST", "/api/net/cluster", json=body)

    def deploy_service(self, job_id: str, service: str, rr_ip: str | None = None) -> dict:
        body = service_payload(job_id, service, rr_ip)
        return self._call("POST", "/api/net/service/deploy", json=body)

    def deploy_instance(self, job_id: str, number: int, cluster_id: str = "c1") -> dict:
        body = {"_id": job_id, "instance_number": number, "cluster_id": cluster_id}
        return self._call("POST", "/api/net/instance/deploy", json=body)["instance"]

    def undeploy_instance(self, job_id: str, number: int) -> None:
        self._call("DELETE", f"/api/net/{job_id}/{number}")

    def interests(self, cluster_id: str = "c1") -> list[str]:
        return self.state.clusters.by_id(cluster_id)["interests"]

    def instance(self, job_name: str, number: int) -> dict:
        job = self.state.services.find_by_name(job_name)
        return next(i for i in job["instance_list"] if i["instance_number"] == number)


def service_payload(job_id: str, service: str, rr_ip: str | None = None) -> dict:
    """`POST /api/net/service/deploy` as Oakestra's root system manager sends it."""
    descriptor = {
        "app_name": "X",
        "app_ns": "default",
        "service_name": service,
        "service_ns": "default",
        "microservice_name": service,
        "microservice_namespace": "default",
        "virtualization": "container",
        "RR_ip": rr_ip,
        "RR_ip_v6": None,
    }
    return {"_id": job_id, "deployment_descriptor": descriptor}


class SimNode:
    """A worker node's MQTT side, as the net manager behaves on the wire."""

    def __init__(self, host: str, port: int, node_id: str | None = None, **mqtt_options) -> None:
        self.node_id = node_id or uuid.uuid4().hex[:24]
        config = MqttConfig(
            host=host, port=port, client_id=self.node_id, max_reconnect_delay=1, **mqtt_options
        )
        self.client = MqttClient(config, workers=1, name=f"node-{self.node_id[:8]}")
        self._messages: list[tuple[str, Any]] = []
        self._changed = threading.Condition()
        own = f"nodes/{self.node_id}/net/+/result"
        self.client.subscribe(own, self._record)

    def start(self) -> SimNode:
        self.client.start()
        assert self.client.wait_subscribed(f"nodes/{self.node_id}/net/+/result", 5)
        return self

    def stop(self) -> None:
        self.client.stop()

    def _record(self, topic: str, payload: bytes) -> None:
        try:
            body: Any = json.loads(payload)
        except ValueError:
            body = payload
        with self._changed:
            self._messages.append((topic, body))
            self._changed.notify_all()

    # -- what a net manager publishes -----------------------------------------------

    def publish(self, kind: str, payload: Any) -> None:
        data = payload if isinstance(payload, bytes | str) else json.dumps(payload)
        self.client.publish(f"nodes/{self.node_id}/net/{kind}", data)

    def request_subnet(self, timeout: float = 5) -> dict:
        mark = self.mark()
        self.publish("subnet", {"METHOD": "GET"})
        return self.wait("subnetwork/result", after=mark, timeout=timeout)

    def query(self, sname: str = "", sip: str = "", timeout: float = 5) -> dict:
        mark = self.mark()
        self.publish("tablequery/request", {"sname": sname, "sip": sip})
        key = sip or sname
        return self.wait("tablequery/result", lambda b: b.get("query_key") == key, mark, timeout)

    def deployed(self, job: str, number: int, nsip: str, nsipv6: str, host_ip: str, port: int):
        self.publish("service/deployed", report(job, number, nsip, nsipv6, host_ip, port))

    def undeployed(self, job: str, number: int) -> None:
        self.publish("service/undeployed", report(job, number, "", "", "", 0, status=""))

    def address_changed(self, job: str, number: int, host_ip: str, port: int) -> None:
        body = report(job, number, "", "", host_ip, port, status="")
        self.publish("service/address-changed", body)

    def remove_interest(self, name: str) -> None:
        self.unwatch(name)
        self.publish("interest/remove", {"appname": name})

    # -- interests: updates of a job ---------------------------------------------------

    def watch(self, job: str) -> None:
        topic = f"jobs/{job}/updates_available"
        self.client.subscribe(topic, self._record)
        assert self.client.wait_subscribed(topic, 5)

    def unwatch(self, job: str) -> None:
        self.client.unsubscribe(f"jobs/{job}/updates_available")

    def updates(self, job: str) -> list[dict]:
        return [body for _t, body in self.messages(f"jobs/{job}/updates_available")]

    # -- waiting ---------------------------------------------------------------------

    def mark(self) -> int:
        with self._changed:
            return len(self._messages)

    def messages(self, topic_filter: str) -> list[tuple[str, Any]]:
        with self._changed:
            return [(t, b) for t, b in self._messages if topic_matches(topic_filter, t)]

    def wait(
        self,
        kind: str,
        predicate: Callable[[Any], bool] = lambda _b: True,
        after: int = 0,
        timeout: float = 5,
    ) -> Any:
        """The first message on `nodes/<id>/net/<kind>` (from index `after`) matching."""
        topic = f"nodes/{self.node_id}/net/{kind}"

        def found():
            return next((b for t, b in self._messages[after:] if t == topic and predicate(b)), None)

        with self._changed:
            body = self._changed.wait_for(found, timeout)
        assert body is not None, f"node {self.node_id}: no {kind} within {timeout} s"
        return body


def report(job, number, nsip, nsipv6, host_ip, port, status="DEPLOYED") -> dict:
    """`service/deployed` as the net manager sends it: host_port a string."""
    return {
        "appname": job,
        "status": status,
        "instance_number": number,
        "nsip": nsip,
        "nsipv6": nsipv6,
        "host_ip": host_ip,
        "host_port": str(port),
    }


def instances_by_number(result: dict) -> dict[int, dict]:
    return {i["instance_number"]: i for i in result["instance_list"]}
