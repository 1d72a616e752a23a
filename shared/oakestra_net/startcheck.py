"""Checks a console script runs once at start, before it serves: is MongoDB / the broker usable?

Each check returns None when the dependency answered, or one sentence a person can act on
(what failed, where, and which settings to look at). A dependency that is still starting
is waited for until the timeout; a definite refusal (bad credentials, a TLS handshake that
fails) is reported at once.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
import pymongo
import pymongo.errors
from paho.mqtt.enums import CallbackAPIVersion

from oakestra_net.mqtt import MqttConfig
from oakestra_net.settings import mask_url

RETRY_INTERVAL = 0.2

# CONNACK reason codes (paho reports MQTT 3.1.1 return codes in MQTT 5 numbering)
_REFUSALS = {
    132: "does not accept MQTT 3.1.1",
    133: "rejected the client id",
    134: "refused the user name or password",
    135: "refused the connection as not authorized (wrong or missing credentials, or an ACL)",
    136: "is unavailable",
    137: "is busy",
    138: "has banned this client",
}


def mongo_problem(url: str, timeout: float, *, names: str = "MONGO_URL") -> str | None:
    """Ping MongoDB at `url`, waiting at most `timeout` seconds for a server."""
    shown = mask_url(url)
    try:
        client: Any = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=int(timeout * 1000), connect=False
        )
    except pymongo.errors.PyMongoError as err:
        return f"{names}: {shown} is not a usable MongoDB URL: {err}"
    try:
        client.admin.command("ping")
    except pymongo.errors.OperationFailure as err:
        reason = (err.details or {}).get("errmsg") or str(err)
        return f"{names}: MongoDB at {shown} refused: {reason}; check the credentials in {names}"
    except pymongo.errors.PyMongoError as err:
        return (
            f"{names}: cannot reach MongoDB at {shown} within {timeout:g} s "
            f"({_first_reason(str(err))}); check the address and that MongoDB runs"
        )
    finally:
        client.close()
    return None


def _first_reason(message: str) -> str:
    reason = message.split(", Timeout:")[0]
    return re.sub(r"\s*\(configured timeouts:[^)]*\)", "", reason).strip()


def mqtt_problem(
    config: MqttConfig,
    timeout: float,
    *,
    address_names: str = "MQTT_BROKER_URL / MQTT_BROKER_PORT",
    credential_names: str = "MQTT_USERNAME / MQTT_PASSWORD",
    tls_names: str = "MQTT_CERT / CLUSTER_SERVICE_KEYFILE_PASSWORD",
) -> str | None:
    """Connect to the broker once (as a throw-away client) and disconnect again.

    The `*_names` start the sentence for each kind of problem: the settings to look at
    (the defaults are the cluster service manager's variables).
    """
    broker = config.broker
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"startcheck-{uuid.uuid4().hex[:12]}",
        clean_session=True,
        protocol=paho.MQTTv311,
    )
    client.connect_timeout = max(timeout, 0.1)
    if config.username is not None:
        client.username_pw_set(config.username, config.password)
    if config.ca_file or config.cert_file:  # same TLS set-up as the service's own client
        try:
            client.tls_set(
                ca_certs=config.ca_file,
                certfile=config.cert_file,
                keyfile=config.key_file,
                keyfile_password=config.key_password,
            )
        except (OSError, ValueError, ssl.SSLError) as err:
            return f"{tls_names}: the TLS files cannot be used: {err}"
    answer: dict[str, Any] = {}
    answered = threading.Event()

    def on_connect(
        _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _props: Any
    ) -> None:
        answer["reason"] = reason_code
        answered.set()

    client.on_connect = on_connect
    deadline = time.monotonic() + timeout
    tls = bool(config.ca_file or config.cert_file)
    unreachable = _connect_until(client, config, deadline)
    if isinstance(unreachable, ssl.SSLError):
        return (
            f"{tls_names}: TLS handshake with the MQTT broker {broker} failed "
            f"({unreachable.reason or unreachable}); check the certificates"
        )
    if tls and isinstance(unreachable, ConnectionResetError):
        return (
            f"{tls_names}: TLS handshake with the MQTT broker {broker} failed (the broker "
            "closed the connection); check that it speaks TLS on this port and the certificates"
        )
    if unreachable is not None:
        return (
            f"{address_names}: cannot reach the MQTT broker {broker} within {timeout:g} s "
            f"({unreachable.strerror or unreachable}); check the address and that it runs"
        )
    try:
        while not answered.is_set() and time.monotonic() < deadline:
            client.loop(timeout=0.05)
    finally:
        client.disconnect()
        client.loop(timeout=0.05)
    reason = answer.get("reason")
    if reason is None:
        return f"{address_names}: the MQTT broker {broker} did not answer within {timeout:g} s"
    if not reason.is_failure:
        return None
    what = _REFUSALS.get(reason.value, f"refused the connection ({reason})")
    return f"{credential_names}: the MQTT broker {broker} {what}"


def _connect_until(client: Any, config: MqttConfig, deadline: float) -> OSError | None:
    """Open the connection, retrying while the broker is not listening yet."""
    while True:
        try:
            client.connect(config.host.strip("[]"), config.port, keepalive=10)
            return None
        except (ssl.SSLError, ConnectionResetError) as err:
            return err  # a definite answer, not a broker that is still starting
        except OSError as err:
            if time.monotonic() + RETRY_INTERVAL >= deadline:
                return err
            time.sleep(RETRY_INTERVAL)
