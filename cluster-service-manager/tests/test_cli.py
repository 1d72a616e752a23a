"""The `cluster-service-manager` command: gunicorn, one worker, MQTT in the worker only."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import requests

from cluster_service_manager.config import SETTINGS
from testsupport import Broker, free_port, mosquitto_password_file, wait_until

pytestmark = pytest.mark.process  # real broker / server / subprocess

COMMAND = str(Path(sys.executable).with_name("cluster-service-manager"))


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if "MONGO" not in k and "MQTT" not in k}
    env["LOG_FORMAT"] = "json"
    env.update(extra)
    return env


def test_bad_configuration_exits_at_once():
    result = subprocess.run(
        [COMMAND], env=_env(MY_PORT="http"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "bad configuration" in result.stderr and "MY_PORT" in result.stderr


def test_serves_with_one_worker_and_registers_itself(mosquitto, root_server, make_node, tmp_path):
    port = free_port()
    env = _env(
        MY_PORT=str(port),
        BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS="3",  # ignored: the embedded store allows one worker only
        MQTT_BROKER_URL=mosquitto.host,
        MQTT_BROKER_PORT=str(mosquitto.port),
        ROOT_SERVICE_MANAGER_URL="127.0.0.1",
        ROOT_SERVICE_MANAGER_PORT=str(root_server.server.port),
        CLUSTER_ID="standalone",
        CLUSTER_ADDRESS="127.0.0.1",
    )
    with open(tmp_path / "csm.log", "wb") as log:
        process = subprocess.Popen([COMMAND], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: _status(url) == 200, timeout=20, message="not healthy")
        assert requests.get(url, timeout=2).json()["broker"] == "connected"
        registered = wait_until(lambda: root_server.state.clusters.by_id("standalone"))
        assert (registered["cluster_address"], registered["cluster_port"]) == ("127.0.0.1", port)
        assert make_node().request_subnet(timeout=10)["address"]
        wait_until(lambda: "as cluster-service-manager-" in mosquitto.log_text())
        connections = mosquitto.log_text().count("as cluster-service-manager-")
        assert connections == 1, mosquitto.log_text()
        assert len(_children(process.pid)) == 1
    finally:
        process.send_signal(signal.SIGTERM)  # our own child, by its pid
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = (tmp_path / "csm.log").read_text()
    assert process.returncode == 0, output
    assert "mqtt stopped" in output, output  # the worker disconnected cleanly


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.RequestException:
        return None


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [COMMAND, *args], env=_env(**env), capture_output=True, text=True, timeout=30
    )


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("args", "code"), [(["--help"], 0), (["--version"], 0), (["--bogus"], 2), (["extra"], 2)]
)
def test_informational_and_unknown_arguments_never_serve(args, code):
    port = free_port()
    result = _run(*args, MY_PORT=str(port), LOG_FORMAT="human")
    assert result.returncode == code, result.stderr
    assert not _accepts(port)
    assert "effective configuration" not in result.stderr  # nothing was started
    assert "Traceback" not in result.stderr


def test_help_version_and_unknown_argument_output():
    flat = " ".join(_run("--help").stdout.split())
    assert flat.startswith("usage: cluster-service-manager")
    for row in SETTINGS.rows:
        assert row.env in flat and row.flag in flat, row.env
    assert "MQTT_BROKER_PORT: MQTT broker port (default: 10003)" in flat
    assert "MY_PORT: port of the HTTP API (default: 10110)" in flat
    version = metadata.version("oakestra-cluster-service-manager")
    assert _run("--version").stdout.strip() == f"cluster-service-manager {version}"
    assert _run("--bogus").stderr.strip().endswith("error: unrecognized arguments: --bogus")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--mqtt-port", "x"), {}, "--mqtt-port='x' is not a TCP port (1-65535)"),
        ((), {"MQTT_CERT": "{tmp}"}, "MQTT_CERT='{tmp}' lacks ca.crt, cluster_net.crt,"),
        ((), {"MQTT_PASSWORD": "pw"}, "MQTT_PASSWORD is set but MQTT_USERNAME is not"),
        ((), {"CLUSTER_MONGO_PORT": "1"}, "CLUSTER_MONGO_PORT='1' is set but CLUSTER_MONGO_URL"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(args, env, message, tmp_path):
    env = {name: value.format(tmp=tmp_path) for name, value in env.items()}
    result = _run(*args, LOG_FORMAT="human", **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bad configuration" in lines[0] and message.format(tmp=tmp_path) in lines[0]


def test_broker_refusing_the_credentials_fails_fast(tmp_path):
    passwords = mosquitto_password_file(tmp_path / "passwd", {"cluster": "s3cret"})
    broker = Broker(
        tmp_path / "broker", allow_anonymous=False, extra_config=[f"password_file {passwords}"]
    )
    port = free_port()
    with broker:
        result = _run(
            "--mqtt-password",
            "wrong-one",
            MY_PORT=str(port),
            MQTT_BROKER_URL=broker.host,
            MQTT_BROKER_PORT=str(broker.port),
            MQTT_USERNAME="cluster",
            MQTT_PASSWORD="s3cret",  # the flag wins: the wrong password is used
            LOG_FORMAT="human",
        )
    assert result.returncode == 1, result.stderr
    assert not _accepts(port)
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot start" in last and "MQTT_USERNAME / MQTT_PASSWORD" in last
    assert f"MQTT broker {broker.host}:{broker.port}" in last
    assert "not authorized" in last or "user name or password" in last
    assert "MQTT_PASSWORD=***" in result.stderr
    assert "s3cret" not in result.stderr and "wrong-one" not in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_mongodb_fails_fast(mosquitto):
    closed = free_port()
    result = _run(
        CLUSTER_MONGO_URL="127.0.0.1",
        CLUSTER_MONGO_PORT=str(closed),
        STARTUP_TIMEOUT="1",
        MQTT_BROKER_URL=mosquitto.host,
        MQTT_BROKER_PORT=str(mosquitto.port),
        LOG_FORMAT="human",
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "CLUSTER_MONGO_URL / CLUSTER_MONGO_PORT: cannot reach MongoDB at" in last
    assert f"127.0.0.1:{closed}" in last and "within 1 s" in last


def test_flags_win_over_the_environment(mosquitto, tmp_path):
    env_port, flag_port = free_port(), free_port()
    closed = free_port()
    env = _env(
        BIND=f"127.0.0.1:{env_port}",
        MQTT_BROKER_URL=mosquitto.host,
        MQTT_BROKER_PORT=str(closed),  # would fail the start-up check
        ACCESS_LOG="false",
    )
    args = ["--bind", f"127.0.0.1:{flag_port}", "--mqtt-port", str(mosquitto.port), "--access-log"]
    with open(tmp_path / "csm.log", "wb") as log:
        process = subprocess.Popen([COMMAND, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{flag_port}/healthz"
        wait_until(lambda: _status(url) == 200, timeout=20, message="flag's port not served")
        assert not _accepts(env_port)
        # the worker (the app, after the fork) uses the flag's broker port as well
        broker = lambda: requests.get(url, timeout=2).json()["broker"] == "connected"  # noqa: E731
        wait_until(broker, timeout=10, message="worker not connected to the flag's broker")
        wait_until(lambda: "GET /healthz" in (tmp_path / "csm.log").read_text())  # access log
    finally:
        process.send_signal(signal.SIGTERM)  # our own child, by its pid
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = (tmp_path / "csm.log").read_text()
    effective = [line for line in output.splitlines() if "effective configuration" in line]
    assert len(effective) == 1, output
    assert f'"MQTT_BROKER_PORT": {mosquitto.port}' in effective[0]
    assert f'"BIND": "127.0.0.1:{flag_port}"' in effective[0]


def test_every_variable_the_code_reads_is_a_setting():
    """A variable read without a row would be missing from --help and have no flag."""
    package = Path(__file__).resolve().parent.parent / "cluster_service_manager"
    shared = Path(__file__).resolve().parents[2] / "shared" / "oakestra_net"
    sources = [*package.rglob("*.py"), shared / "store.py", shared / "log.py"]
    pattern = re.compile(r'(?:environ|env)(?:\.get\(|\[)\s*"([A-Z][A-Z0-9_]*)"')
    read = {name for path in sources for name in pattern.findall(path.read_text())}
    assert read, "the pattern no longer finds environment reads"
    assert read <= {row.env for row in SETTINGS.rows}, read - {row.env for row in SETTINGS.rows}
