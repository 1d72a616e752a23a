"""Pytest plugin (loaded by the root conftest): the fixtures every component's tests share.

`mosquitto` (a fresh broker per test), `mqtt_recorder` (records what is published on a
pattern) and `fail_on_log_exception` (fails a test whose code swallowed an exception);
the test tiers (`tiers`: markers set from fixtures, pure tests kept pure). Component-
specific fixtures live in each component's tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testsupport.broker import Broker, MqttRecorder
from testsupport.tiers import _pure_guard, mark_process_tests

__all__ = ["_pure_guard", "fail_on_log_exception", "mosquitto", "mqtt_recorder"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_process_tests(items)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A fresh Mosquitto for this test on a free loopback port (anonymous access)."""
    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mqtt_recorder(mosquitto: Broker) -> Iterator[Callable[[str], MqttRecorder]]:
    """Factory: `mqtt_recorder("jobs/+/updates_available")` -> a subscribed MqttRecorder."""
    recorders: list[MqttRecorder] = []

    def make(pattern: str) -> MqttRecorder:
        recorder = MqttRecorder(mosquitto.host, mosquitto.port, pattern)
        recorders.append(recorder)
        return recorder.start()

    try:
        yield make
    finally:
        for recorder in recorders:
            recorder.stop()


@pytest.fixture
def fail_on_log_exception(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if anything logged an ERROR with a traceback (a swallowed exception)."""
    yield
    records = [
        record
        for phase in ("setup", "call")
        for record in caplog.get_records(phase)
        if record.levelno >= logging.ERROR and record.exc_info
    ]
    if records:
        details = "; ".join(
            f"{r.name}: {r.getMessage()} ({r.exc_info[1]!r})" for r in records if r.exc_info
        )
        pytest.fail(f"{len(records)} exception(s) logged: {details}", pytrace=False)
