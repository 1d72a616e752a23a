"""Simulated worker nodes for the control-plane benchmark: many real MQTT connections.

`Nodes(host, port, count)` holds `count` aiomqtt clients in one process, on one event
loop in a thread of its own (so the synchronous benchmark can call `run(coro)` many
times). Each node subscribes to its own `nodes/<id>/net/#` answers; a table query is
matched to its answer by (node, query key), first in first out. The load shapes:

- `open_loop`: queries sent at a fixed offered rate, round robin over the nodes,
  whatever the answers do (latency includes any queueing at the server);
- `closed_loop`: every node keeps one query outstanding (for CPU per query);
- `fan_out`: interested nodes refetch a job's table on every announcement.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import statistics
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiomqtt

T = TypeVar("T")
Key = tuple[str, str]  # ("sname" | "sip", value)
ANSWER_TIMEOUT = 10.0


def node_id(index: int) -> str:
    return f"bench-node-{index:04d}"


@dataclass
class Result:
    sent: int
    answered: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def kept_up(self, offered: float) -> bool:
        return self.answered >= 0.99 * self.sent and self.rate >= 0.9 * offered

    def describe(self) -> str:
        return (
            f"{self.rate:.0f}/s, p50 {self.percentile(0.5) * 1000:.1f} ms, "
            f"p99 {self.percentile(0.99) * 1000:.1f} ms ({self.answered}/{self.sent} answered)"
        )


class Nodes:
    def __init__(self, host: str, port: int, count: int) -> None:
        self.host, self.port = host, port
        self.ids = [node_id(i) for i in range(count)]
        self.clients: dict[str, aiomqtt.Client] = {}
        self._pending: dict[tuple[str, str], deque[asyncio.Future]] = defaultdict(deque)
        self._on_update: dict[str, Callable[[str, str], None]] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    # -- connections ------------------------------------------------------------------

    async def connect(self) -> None:
        limit = asyncio.Semaphore(50)

        async def one(node: str) -> None:
            async with limit:
                client = aiomqtt.Client(
                    self.host, self.port, identifier=node, keepalive=120, timeout=30
                )
                await client.__aenter__()
                # Answers go straight from paho's callback (on this loop's thread) to the
                # waiting futures: aiomqtt's message queue and a reader task per node
                # cost the load generator a task switch per answer.
                client._client.on_message = lambda _c, _u, m, node=node: self._on_message(node, m)
                await client.subscribe(f"nodes/{node}/net/#", qos=1)
                self.clients[node] = client

        await asyncio.gather(*(one(node) for node in self.ids))

    async def close(self) -> None:
        for client in self.clients.values():
            try:
                await client.__aexit__(None, None, None)
            except Exception:  # noqa: BLE001 - best effort at the end of a benchmark
                pass

    def stop(self) -> None:
        self.run(self.close(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _on_message(self, node: str, message: Any) -> None:
        topic = message.topic
        if topic.endswith("/tablequery/result"):
            answer = json.loads(message.payload)
            queue = self._pending.get((node, answer.get("query_key", "")))
            if queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(answer)
        elif topic.endswith("/updates_available"):
            callback = self._on_update.get(node)
            if callback is not None:
                callback(topic, json.loads(message.payload).get("type", ""))

    # -- requests ---------------------------------------------------------------------

    def query(self, node: str, key: Key) -> asyncio.Future:
        future = self.loop.create_future()
        self._pending[(node, key[1])].append(future)
        body = {
            "sname": key[1] if key[0] == "sname" else "",
            "sip": key[1] if key[0] == "sip" else "",
        }
        self._fire(node, "tablequery/request", body)
        return future

    def _fire(self, node: str, kind: str, body: dict[str, Any]) -> None:
        """Publish (QoS 1) without waiting for the PUBACK.

        Straight to aiomqtt's paho client (on the loop's thread, where aiomqtt calls it
        too): a task and a future per query would cost the load generator as much CPU
        as the cluster spends answering, on the same cores.
        """
        client = self.clients[node]
        client._client.publish(f"nodes/{node}/net/{kind}", json.dumps(body), qos=1)

    def deployed(self, node: str, job_name: str, number: int, nsip: str) -> None:
        body = {
            "appname": job_name,
            "status": "DEPLOYED",
            "instance_number": number,
            "nsip": nsip,
            "nsipv6": "",
            "host_ip": "127.0.0.1",
            "host_port": "50103",
        }
        self._fire(node, "service/deployed", body)

    # -- load shapes ------------------------------------------------------------------

    async def report_deployed(self, job_names: Sequence[str], number: int = 0) -> None:
        """Every job's instance `number` reported deployed; returns once all are located."""
        for i, name in enumerate(job_names):
            self.deployed(self.ids[i % len(self.ids)], name, number, _nsip(i, number))
            if i % 200 == 199:
                await asyncio.sleep(0)
        waiting = list(job_names)
        deadline = time.monotonic() + 600
        while waiting and time.monotonic() < deadline:
            answers = await self._query_all([("sname", n) for n in waiting])
            waiting = [
                n
                for n, answer in zip(waiting, answers, strict=True)
                if answer is None or not _has_instance(answer, number)
            ]
            if waiting:
                await asyncio.sleep(1.0)
        if waiting:
            raise TimeoutError(f"{len(waiting)} jobs not located, e.g. {waiting[0]}")

    async def _query_all(self, keys: Sequence[Key]) -> list[dict | None]:
        limit = asyncio.Semaphore(len(self.ids))
        nodes = itertools.cycle(self.ids)

        async def one(key: Key) -> dict | None:
            async with limit:
                try:
                    return await asyncio.wait_for(self.query(next(nodes), key), ANSWER_TIMEOUT)
                except TimeoutError:
                    return None

        return await asyncio.gather(*(one(k) for k in keys))

    async def open_loop(
        self, keys: Sequence[Key], rate: float, seconds: float, *, once: bool = False
    ) -> Result:
        total = len(keys) if once else int(rate * seconds)
        latencies: list[float] = []
        futures: list[asyncio.Future] = []
        last_answer = [0.0]

        def answered(sent_at: float, future: asyncio.Future) -> None:
            # a callback, not a task per query: the load generator shares the cores
            if future.cancelled():
                return
            now = time.monotonic()
            latencies.append(now - sent_at)
            last_answer[0] = max(last_answer[0], now)

        start = time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                node = self.ids[sent % len(self.ids)]
                key = keys[sent % len(keys)]
                future = self.query(node, key)
                future.add_done_callback(functools.partial(answered, time.monotonic()))
                futures.append(future)
                sent += 1
            await asyncio.sleep(0.001)
        if futures:
            # every query gets ANSWER_TIMEOUT after the last one was sent (or more)
            _done, late = await asyncio.wait(futures, timeout=ANSWER_TIMEOUT)
            for future in late:
                future.cancel()
        end = last_answer[0] if latencies else time.monotonic()
        return Result(sent, len(latencies), end - start, latencies)

    async def closed_loop(self, keys: Sequence[Key], count: int) -> Result:
        latencies: list[float] = []
        counter = itertools.count()

        async def worker(node: str) -> None:
            while (n := next(counter)) < count:
                sent_at = time.monotonic()
                try:
                    await asyncio.wait_for(self.query(node, keys[n % len(keys)]), ANSWER_TIMEOUT)
                except TimeoutError:
                    continue
                latencies.append(time.monotonic() - sent_at)

        start = time.monotonic()
        await asyncio.gather(*(worker(node) for node in self.ids))
        return Result(count, len(latencies), time.monotonic() - start, latencies)

    async def fan_out(
        self, job_name: str, interested: int, trigger: Callable[[], None]
    ) -> dict[str, float]:
        """Announcements and refetches at `interested` nodes when a second instance appears."""
        nodes = self.ids[:interested]
        topic = f"jobs/{job_name}/updates_available"
        await asyncio.gather(*(self.clients[n].subscribe(topic, qos=1) for n in nodes))
        first = await asyncio.gather(
            *(asyncio.wait_for(self.query(n, ("sname", job_name)), ANSWER_TIMEOUT) for n in nodes)
        )
        before = min(len(a["instance_list"]) for a in first)
        announcements: dict[str, int] = defaultdict(int)
        refetches: dict[str, int] = defaultdict(int)
        seen_at: dict[str, float] = {}
        all_seen = asyncio.Event()

        async def refetch(node: str) -> None:
            refetches[node] += 1
            answer = await asyncio.wait_for(self.query(node, ("sname", job_name)), ANSWER_TIMEOUT)
            if len(answer["instance_list"]) > before and node not in seen_at:
                seen_at[node] = time.monotonic()
                if len(seen_at) == len(nodes):
                    all_seen.set()

        def on_update(_topic: str, _kind: str, node: str) -> None:
            announcements[node] += 1
            self.loop.create_task(refetch(node))

        for n in nodes:
            self._on_update[n] = lambda t, k, n=n: on_update(t, k, n)
        start = time.monotonic()
        await asyncio.to_thread(trigger)
        self.deployed(nodes[0], job_name, 1, _nsip(0, 1))
        await asyncio.wait_for(all_seen.wait(), 30)
        seconds = max(seen_at.values()) - start
        await asyncio.sleep(1.0)  # late announcements still count against the change
        self._on_update.clear()
        return {
            "seconds": seconds,
            "announcements": sum(announcements.values()) / len(nodes),
            "refetches": sum(refetches.values()) / len(nodes),
        }


def _nsip(index: int, number: int) -> str:
    return f"10.18.{(index >> 6) % 256}.{(index % 64) * 4 + number + 1}"


def _has_instance(answer: dict, number: int) -> bool:
    return any(i.get("instance_number") == number for i in answer.get("instance_list", []))


def summary(latencies: list[float]) -> str:
    return f"median {statistics.median(latencies) * 1000:.1f} ms" if latencies else "no answers"
