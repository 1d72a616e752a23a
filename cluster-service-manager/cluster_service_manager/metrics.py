"""Prometheus metrics of one app (its own registry): node messages, root calls, queues.

Counters are per process (with several gunicorn workers, each reports its own);
gauges are read at scrape time from callables the app registers. A counter's labelled
child is looked up once per label set and kept (prometheus' `labels()` validates the
labels under a lock on every call, and node messages count on every message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Gauges:
    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, Callable[[], float]]] = {}

    def collect(self):
        for name, (help_text, read) in self.sources.items():
            try:
                value = float(read())
            except Exception:  # noqa: BLE001 - a scrape must not fail on one gauge
                continue
            yield GaugeMetricFamily(name, help_text, value=value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._messages = Counter(
            "oakestra_cluster_node_messages",
            "node messages received, by topic kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self._root_calls = Counter(
            "oakestra_cluster_root_calls",
            "calls to the root service manager, by call and outcome",
            ["call", "outcome"],
            registry=self.registry,
        )
        self._table_queries = Counter(
            "oakestra_cluster_table_queries",
            "table queries answered, by where the answer came from",
            ["source"],
            registry=self.registry,
        )
        self._gauges = _Gauges()
        self.registry.register(self._gauges)
        self._children: dict[tuple[Counter, tuple[str, ...]], Any] = {}

    def _inc(self, counter: Counter, *labels: str) -> None:
        key = (counter, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, counter.labels(*labels))
        child.inc()

    def message(self, kind: str, outcome: str) -> None:
        self._inc(self._messages, kind, outcome)

    def root_call(self, call: str, outcome: str) -> None:
        self._inc(self._root_calls, call, outcome)

    def table_query(self, source: str) -> None:
        self._inc(self._table_queries, source)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._gauges.sources[name] = (help_text, read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
