"""Prometheus text for the node daemon: data plane counters, MQTT, table and interests."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily


class _DaemonCollector:
    def __init__(self, status: Any) -> None:
        self._status = status

    def collect(self):
        status = self._status()
        counters = status["counters"]
        dataplane = GaugeMetricFamily(
            "oakestra_dataplane", "data plane counters and gauges", labels=["name"]
        )
        for name, value in sorted(counters.get("dataplane", {}).items()):
            if isinstance(value, int | float):  # bools too: running = 1
                dataplane.add_metric([name], float(value))
        yield dataplane
        mqtt = GaugeMetricFamily("oakestra_mqtt", "MQTT session counters", labels=["name"])
        for name, value in sorted(counters.get("mqtt", {}).items()):
            mqtt.add_metric([name], float(value))
        yield mqtt
        rtt = GaugeMetricFamily("oakestra_peer_rtt_ms", "tunnel RTT per peer", labels=["node"])
        for node, value in status.get("peer_rtt_ms", {}).items():
            rtt.add_metric([node], value)
        yield rtt
        yield GaugeMetricFamily(
            "oakestra_table_entries", "table entries", value=len(status["table"])
        )
        yield GaugeMetricFamily(
            "oakestra_interests", "jobs of interest", value=len(status["interests"])
        )
        yield GaugeMetricFamily(
            "oakestra_instances", "attached instances", value=len(status["instances"])
        )
        yield GaugeMetricFamily(
            "oakestra_reconciler_syncs",
            "successful reconciler syncs",
            value=counters.get("reconciler_syncs", 0),
        )


def metrics_text(status: Any) -> bytes:
    registry = CollectorRegistry()
    registry.register(_DaemonCollector(status))
    return generate_latest(registry)
