"""A real MQTT subscriber on the local cluster's broker: `mosquitto_sub` in the infra namespace,
on the broker's console listener (127.0.0.1 there, no credentials needed).

    with TopicWatcher(cluster, ["jobs/#", "nodes/+/net/interest/#"]) as watcher:
        message = watcher.wait_for(lambda m: m.topic.endswith("/interest/remove"), 15)

Every message is recorded with the wall-clock time mosquitto_sub stamped on it (`%U`)
and the time we read it (time.monotonic()), in arrival order. start() returns once the
subscription is live: it publishes probes on a topic of its own until one comes back.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from testbed.cluster import LocalCluster
from testbed.credentials import CONSOLE_PORT

PROBE_TOPIC = "oakestra-testbed/probe"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: Any  # decoded JSON, else the text
    wall: float  # when mosquitto_sub received it (unix time)
    seen: float  # time.monotonic() when we read it

    @property
    def node_id(self) -> str | None:
        parts = self.topic.split("/")
        return parts[1] if len(parts) > 2 and parts[0] == "nodes" else None


class TopicWatcher:
    def __init__(self, cluster: LocalCluster, patterns: Sequence[str]) -> None:
        self.cluster = cluster
        self.patterns = list(patterns)
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> TopicWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _infra(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.cluster.infra_ns, *argv], **kwargs)

    def start(self, timeout: float = 10.0) -> TopicWatcher:
        argv = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(CONSOLE_PORT), "-q", "1"]
        argv += ["-F", "%U %t %p"]
        for pattern in [*self.patterns, PROBE_TOPIC]:
            argv += ["-t", pattern]
        self._proc = self._infra(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        self._reader = threading.Thread(target=self._read, name="topic-watcher", daemon=True)
        self._reader.start()
        token = f"probe-{secrets.token_hex(4)}"  # never valid JSON: stays a string
        deadline = time.monotonic() + timeout
        while not any(m.payload == token for m in self.messages if m.topic == PROBE_TOPIC):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.close()
                raise RuntimeError(f"mosquitto_sub on {self.patterns} did not come up")
            self.publish(PROBE_TOPIC, token)
            time.sleep(0.1)
        return self

    def publish(self, topic: str, payload: str) -> None:
        argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(CONSOLE_PORT), "-t", topic]
        self._infra([*argv, "-m", payload], stdout=subprocess.DEVNULL).wait(5)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            stamp, _, rest = line.rstrip("\n").partition(" ")
            topic, _, text = rest.partition(" ")
            try:
                payload: Any = json.loads(text)
            except ValueError:
                payload = text
            with self._changed:
                self.messages.append(Message(topic, payload, float(stamp), time.monotonic()))
                self._changed.notify_all()

    def select(self, predicate: Callable[[Message], bool]) -> list[Message]:
        with self._changed:
            return [m for m in self.messages if m.topic != PROBE_TOPIC and predicate(m)]

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float) -> Message:
        """The first message (seen already or yet to come) matching; AssertionError if none."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((m for m in self.messages if predicate(m)), None), timeout
            )
        if found is None:
            topics = [m.topic for m in self.messages if m.topic != PROBE_TOPIC]
            raise AssertionError(f"no matching message within {timeout} s; seen: {topics}")
        return found

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
