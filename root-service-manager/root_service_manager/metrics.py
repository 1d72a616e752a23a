"""Prometheus metrics of one app: requests, allocations, pool usage, outbox depth.

Pool usage and outbox depth are read from the store at scrape time, so every
gunicorn worker reports the same (shared) numbers. Request labels take bounded values
only: the route's endpoint name (never the path), a known HTTP method or "other".
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from oakestra_net import labels
from oakestra_net.addressing import Pool, pool_size


class _StoreCollector:
    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self):
        root = self.app.extensions["root"]
        used = GaugeMetricFamily("oakestra_pool_used", "addresses reserved", labels=["pool"])
        size = GaugeMetricFamily("oakestra_pool_size", "addresses in the pool", labels=["pool"])
        for pool in Pool:
            used.add_metric([str(pool)], root.allocator.used(pool))
            size.add_metric([str(pool)], pool_size(pool))
        made = CounterMetricFamily(
            "oakestra_allocations", "addresses reserved by this process", labels=["pool"]
        )
        for pool, count in root.allocator.reserved_total.items():
            made.add_metric([pool], count)
        yield used
        yield size
        yield made
        yield GaugeMetricFamily(
            "oakestra_outbox_depth",
            "cluster updates waiting for delivery",
            value=root.outbox.depth(),
        )


def init_metrics(app: Flask) -> None:
    registry = CollectorRegistry()
    requests_total = Counter(
        "oakestra_http_requests",
        "HTTP requests",
        ["endpoint", "method", "status"],
        registry=registry,
    )
    latency = Histogram(
        "oakestra_http_request_seconds", "HTTP request latency", ["endpoint"], registry=registry
    )
    registry.register(_StoreCollector(app))

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        endpoint = request.endpoint or "unknown"
        method, status = (
            labels.http_method(request.method),
            labels.http_status(response.status_code),
        )
        requests_total.labels(endpoint, method, status).inc()
        if hasattr(g, "started"):
            latency.labels(endpoint).observe(time.perf_counter() - g.started)
        return response

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
