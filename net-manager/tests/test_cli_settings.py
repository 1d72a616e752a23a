"""`net-manager` as an operator first meets it: help, version, bad arguments, bad values.

Every run is the real console script in a network namespace of its own, so even a
command that wrongly went on to start could touch nothing but that namespace. After
each refusal, no API socket, no state file and no device of ours may exist.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from net_manager.config import SETTINGS
from testsupport import nstools, wait_until
from testsupport.broker import Broker, mosquitto_password_file

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

SCRIPT = shutil.which("net-manager", path=os.path.dirname(sys.executable))
OUR_VARIABLES = {row.env for row in SETTINGS.rows} | {"MQTT_CA", "MQTT_CERT", "DEBUG"}


class Node:
    """A namespace, a config directory and the paths `run` would create."""

    def __init__(self, ns: nstools.Namespaces, tmp_path: Path) -> None:
        self.netns = ns.netns()
        self.config_dir = tmp_path / "etc"
        self.config_dir.mkdir()
        self.socket = tmp_path / "run" / "netmanager.sock"
        self.state_file = tmp_path / "state" / "state.json"
        self.netcfg({"NodePublicAddress": "198.18.0.40"})

    def netcfg(self, values: dict) -> None:
        (self.config_dir / "netcfg.json").write_text(json.dumps(values))

    def run(self, argv: list[str], **env: str) -> subprocess.CompletedProcess:
        environment = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
        environment.update(
            NETMANAGER_CONFIG_DIR=str(self.config_dir),
            NETMANAGER_SOCKET=str(self.socket),
            NETMANAGER_STATE_FILE=str(self.state_file),
            STARTUP_TIMEOUT="2",
        )
        environment.update(env)
        process = nstools.popen_in(
            self.netns,
            [SCRIPT, *argv],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = process.communicate(timeout=60)
        finally:
            nstools.stop_process(process)
        return subprocess.CompletedProcess(argv, process.returncode, out, err)

    def assert_nothing_started(self) -> None:
        assert not self.socket.exists(), "the API socket was created"
        assert not self.state_file.exists(), "the state file was written"
        links = nstools.run_in(self.netns, ["ip", "-o", "link"]).stdout
        assert "oak-" not in links, links


@pytest.fixture
def node(tmp_path) -> Node:
    with nstools.namespaces() as ns:
        yield Node(ns, tmp_path)


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if "ERROR" in line or "error" in line]


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["status", "-h"]])
def test_help_lists_every_setting_and_starts_nothing(node, argv):
    result = node.run(argv, NETMANAGER_PORT="18123")
    assert result.returncode == 0, result.stderr
    for row in SETTINGS.rows:
        assert row.env in result.stdout and row.flag in result.stdout, row.env
    assert "(default: netcfg.json NodePublicPort, else 50103)" in " ".join(result.stdout.split())
    node.assert_nothing_started()


def test_version_prints_the_version_and_starts_nothing(node):
    result = node.run(["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"net-manager {metadata.version('oakestra-net-manager')}"
    node.assert_nothing_started()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--bogus"], "--bogus"),
        (["run", "--bogus"], "--bogus"),
        (["run", "extra"], "extra"),
        (["--node-public-por", "1", "run"], "--node-public-por"),  # no abbreviations
        (["nonsense"], "nonsense"),
        ([], "a command is required"),
    ],
)
def test_an_unknown_argument_exits_2_naming_it(node, argv, named):
    result = node.run(argv)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert named in result.stderr
    node.assert_nothing_started()


@pytest.mark.parametrize(
    ("argv", "env", "netcfg", "named"),
    [
        (["run"], {"NODE_PUBLIC_PORT": "abc"}, None, "NODE_PUBLIC_PORT='abc' must be a port"),
        (["run", "--cluster-mqtt-port", "0"], {}, None, "--cluster-mqtt-port='0' must be a port"),
        (["--port", "http", "run"], {}, None, "--port='http'"),
        (["run"], {"TUN_MTU_SIZE": "100"}, None, "TUN_MTU_SIZE='100' must be an MTU"),
        (["run"], {}, {"NodePublicPort": "x"}, "netcfg.json: NodePublicPort must be a port"),
        (["run"], {}, {"MqttCa": "/nonexistent/ca.crt"}, "MqttCa: /nonexistent/ca.crt is not"),
        (["run", "--mqtt-cert", "/nonexistent/c.crt"], {}, None, "MQTT_CERT_FILE"),
        (["run"], {"LOG_LEVEL": "loud"}, None, "LOG_LEVEL='loud'"),
    ],
)
def test_a_bad_value_exits_2_with_one_line_naming_it(node, argv, env, netcfg, named):
    if netcfg is not None:
        node.netcfg(netcfg)
    result = node.run(argv, **env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and named in errors[0], result.stderr
    node.assert_nothing_started()


def test_flags_win_over_the_environment_and_secrets_are_masked(node, tmp_path):
    node.netcfg({"NodePublicAddress": "198.18.0.40", "MqttCa": "/nonexistent/ca.crt"})
    result = node.run(
        ["--node-public-port", "50300", "run", "--mqtt-username", "node-1"],
        NODE_PUBLIC_PORT="50200",
        MQTT_USERNAME="someone-else",
        MQTT_PASSWORD="hunter2",
        LOG_FORMAT="json",
    )
    assert result.returncode == 2  # stopped by the missing CA file, after the log line
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    effective = [line for line in lines if line.get("event") == "effective configuration"]
    assert len(effective) == 1
    shown = effective[0]
    assert (shown["NODE_PUBLIC_PORT"], shown["MQTT_USERNAME"]) == (50300, "node-1")
    assert shown["MQTT_PASSWORD"] == "***" and "hunter2" not in result.stderr
    assert shown["NODE_PUBLIC_ADDRESS"] == "198.18.0.40"  # from netcfg.json
    node.assert_nothing_started()

    other = tmp_path / "other.sock"
    result = node.run(["status", "--socket", str(other)])
    assert result.returncode == 1
    assert f"cannot reach the daemon at {other}" in result.stderr


def test_a_broker_refusing_the_credentials_stops_the_start(node, tmp_path):
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    passwords = mosquitto_password_file(broker_dir / "passwords", {"node-1": "right"})
    broker = Broker(broker_dir, allow_anonymous=False, extra_config=[f"password_file {passwords}"])
    (broker_dir / "mosquitto.conf").write_text(broker.config_text())
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = nstools.popen_in(node.netns, [mosquitto, "-c", str(broker_dir / "mosquitto.conf")])
    try:
        wait_until(
            lambda: f"127.0.0.1:{broker.port}" in nstools.run_in(node.netns, ["ss", "-ltn"]).stdout,
            message="broker listening",
        )
        node.netcfg(
            {
                "NodePublicAddress": "198.18.0.40",
                "ClusterUrl": "127.0.0.1",
                "ClusterMqttPort": broker.port,
                "MqttUsername": "node-1",
                "MqttPassword": "not-the-s3cret",
            }
        )
        result = node.run(["run"])
        assert result.returncode == 1, (result.stdout, result.stderr)
        errors = _error_lines(result.stderr)
        assert len(errors) == 1, result.stderr
        assert "MQTT_USERNAME / MQTT_PASSWORD" in errors[0]
        assert f"127.0.0.1:{broker.port}" in errors[0]
        assert "not-the-s3cret" not in result.stderr
        node.assert_nothing_started()
    finally:
        nstools.stop_process(process)


def test_an_api_port_in_use_exits_1_and_leaves_no_socket(node):
    holder = nstools.popen_in(
        node.netns,
        [
            sys.executable,
            "-c",
            "import socket, time; s = socket.create_server(('127.0.0.1', 18124)); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        result = node.run(["run", "--port", "18124"])
    finally:
        nstools.stop_process(holder)
    assert result.returncode == 1, (result.stdout, result.stderr)
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "NETMANAGER_PORT 18124" in errors[0], result.stderr
    node.assert_nothing_started()


def test_a_socket_another_daemon_serves_is_not_taken_over(node):
    node.socket.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(node.socket))
        other.listen()
        result = node.run(["run"])
        assert node.socket.exists()
    assert result.returncode == 1, (result.stdout, result.stderr)
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "another net manager already serves" in errors[0]
    assert not node.state_file.exists()
