"""Test support for every component's tests and the testbed; a dev-only package, never shipped.

`waiting` (wait_until, free_port), `broker` (a private Mosquitto, MqttRecorder), `netns`
(namespaces, commands and reachability checks for kernel tests) and `plugin` (the shared
pytest fixtures, registered by the root conftest).
"""

from testsupport.broker import (
    Broker,
    MqttRecorder,
    RecordedMessage,
    SlowClients,
    mosquitto_password_file,
)
from testsupport.waiting import free_port, wait_until

__all__ = [
    "Broker",
    "MqttRecorder",
    "RecordedMessage",
    "SlowClients",
    "free_port",
    "mosquitto_password_file",
    "wait_until",
]
