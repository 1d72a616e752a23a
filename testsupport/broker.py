"""A private Mosquitto for tests (killed by PID, never by name) and a recorder of its traffic."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from oakestra_net.mqtt import MqttClient, MqttConfig, topic_matches
from testsupport.waiting import free_port, wait_until

# wait_until and free_port come along: a test needing a broker usually waits on it.
__all__ = [
    "Broker",
    "MqttRecorder",
    "RecordedMessage",
    "decode_payload",
    "free_port",
    "mosquitto_password_file",
    "wait_until",
]

BROKER_START_TIMEOUT = 5.0


def _executable(name: str, fallback: str) -> str:
    path = shutil.which(name) or fallback
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{name} not found (apt install mosquitto mosquitto-clients)")
    return path


def mosquitto_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """Write a Mosquitto password file for `users` (name -> password) with mosquitto_passwd."""
    tool = _executable("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    path.write_text("")
    path.chmod(0o600)
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
    return path


class Broker:
    """A Mosquitto of our own on a loopback port; only the process we started is ever killed."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        allow_anonymous: bool = True,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port(host)
        self.allow_anonymous = allow_anonymous
        self.extra_config = list(extra_config)
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence false",
            "set_tcp_nodelay true",
            f"log_dest file {self.workdir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            *(["user root"] if os.geteuid() == 0 else []),
            *self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"broker on port {self.port} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        mosquitto = _executable("mosquitto", "/usr/sbin/mosquitto")
        with open(self.workdir / "mosquitto.out", "ab") as out:
            self._process = subprocess.Popen(
                [mosquitto, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"mosquitto on port {self.port} exited: {self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto on port {self.port} not listening: {self.log_text()}")

    def stop(self) -> None:
        """Terminate our mosquitto (kill after 3 s) and wait for it; idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        parts = []
        for name in ("mosquitto.out", "mosquitto.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts).strip()

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Broker({self.host}:{self.port}, pid={self.pid})"


class RecordedMessage(NamedTuple):
    topic: str
    payload: dict | bytes  # a JSON object decoded, anything else the raw bytes


def decode_payload(payload: bytes) -> dict | bytes:
    try:
        value = json.loads(payload)
    except ValueError:
        return payload
    return value if isinstance(value, dict) else payload


class MqttRecorder:
    """Subscribes to `pattern` on a broker and records every message, in arrival order."""

    def __init__(self, host: str, port: int, pattern: str) -> None:
        self.pattern = pattern
        self._messages: list[RecordedMessage] = []
        self._changed = threading.Condition()
        config = MqttConfig(
            host=host,
            port=port,
            client_id=f"recorder-{uuid.uuid4().hex[:12]}",
            min_reconnect_delay=0.1,
            max_reconnect_delay=1,
        )
        self._client = MqttClient(config, workers=1, name=f"recorder[{pattern}]")
        self._client.subscribe(pattern, self._record)

    def start(self, timeout: float = 5.0) -> MqttRecorder:
        """Connect and return once the broker has acknowledged the subscription."""
        self._client.start()
        if not self._client.wait_subscribed(self.pattern, timeout):
            raise RuntimeError(f"recorder for {self.pattern} not subscribed within {timeout} s")
        return self

    def stop(self) -> None:
        self._client.stop()

    def _record(self, topic: str, payload: bytes) -> None:
        with self._changed:
            self._messages.append(RecordedMessage(topic, decode_payload(payload)))
            self._changed.notify_all()

    def messages(self, topic_filter: str | None = None) -> list[RecordedMessage]:
        with self._changed:
            return [
                m
                for m in self._messages
                if topic_filter is None or topic_matches(topic_filter, m.topic)
            ]

    def clear(self) -> None:
        with self._changed:
            self._messages.clear()

    def wait_for(
        self,
        predicate: Callable[[RecordedMessage], bool] | str | None = None,
        timeout: float = 5.0,
    ) -> RecordedMessage:
        """The first recorded message (already seen or yet to come) that satisfies `predicate`.

        `predicate` may be a topic filter string; None takes any message.
        """
        if isinstance(predicate, str):
            topic_filter = predicate
            predicate = lambda m: topic_matches(topic_filter, m.topic)  # noqa: E731
        check = predicate or (lambda _m: True)
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((m for m in self._messages if check(m)), None), timeout
            )
            if found is None:
                seen = [m.topic for m in self._messages]
                raise AssertionError(
                    f"no matching message on {self.pattern} within {timeout} s; seen {seen}"
                )
            return found


class SlowClients:
    """`count` TCP connections to a server this test started, each sending only the start
    of a request (`head`) and then nothing: the slow or idle clients a server must not let
    starve the others. Closed on exit; bounded by `count` and by the caller's timeouts."""

    def __init__(
        self, host: str, port: int, count: int, head: bytes = b"GET /healthz HTTP/1.1\r\nHost"
    ) -> None:
        self.address = (host, port)
        self.count = count
        self.head = head
        self.sockets: list[socket.socket] = []

    def __enter__(self) -> SlowClients:
        for n in range(self.count):
            sock = socket.create_connection(self.address, timeout=5)
            if n % 5:  # every fifth one stays idle: connected, nothing sent
                sock.sendall(self.head)
            self.sockets.append(sock)
        return self

    def open_count(self) -> int:
        """How many of the connections the server has not closed yet."""
        still_open = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                still_open += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
        return still_open

    def __exit__(self, *_exc: object) -> None:
        for sock in self.sockets:
            sock.close()
