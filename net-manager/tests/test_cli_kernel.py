"""`net-manager run | status | cleanup` as an operator runs them, inside a node namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from net_manager.cli import call, main
from testsupport import nstools, wait_until

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

SCRIPT = shutil.which("net-manager", path=os.path.dirname(sys.executable))


@pytest.fixture
def ns():
    with nstools.namespaces() as tracker:
        yield tracker


def test_run_inside_a_node_serves_its_socket_and_stops_on_sigterm(ns, tmp_path, capsys):
    node = ns.netns()
    # the node's uplink: with NodePublicAddress 0.0.0.0 the address comes from the default route
    nstools.run_in(
        node, ["ip", "link", "add", "oak-up0", "type", "veth", "peer", "name", "oak-up1"]
    )
    nstools.run_in(node, ["ip", "addr", "add", "198.18.0.33/24", "dev", "oak-up0"])
    nstools.run_in(node, ["ip", "link", "set", "oak-up0", "up"])
    nstools.run_in(node, ["ip", "route", "add", "default", "via", "198.18.0.1"])
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    netcfg = {
        "NodePublicAddress": "0.0.0.0",
        "ClusterUrl": "198.18.0.1",
        "ClusterMqttPort": "10003",
    }
    (config_dir / "netcfg.json").write_text(json.dumps(netcfg))
    socket_path = str(tmp_path / "netmanager.sock")
    argv = [
        SCRIPT,
        "--config-dir",
        str(config_dir),
        "--socket",
        socket_path,
        "run",
        "--state-file",
        str(tmp_path / "state.json"),
    ]
    process = ns.track(
        nstools.popen_in(
            node,
            argv,
            env={**os.environ, "LOG_FORMAT": "json"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    )
    try:
        wait_until(lambda: os.path.exists(socket_path), timeout=15, message="no API socket")
        # The file appears only once the daemon listens: the first connect must succeed.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(socket_path)
        status, body = call(socket_path, "GET", "/status")
        assert status == 200
        assert (body["registered"], body["node_ip"]) == (False, "198.18.0.33")
        assert main(["--socket", socket_path, "status"]) == 0
        assert "(not registered)" in capsys.readouterr().out
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0].decode()
    assert process.returncode == 0, output
    assert '"event": "net manager ready"' in output
    assert output.count('"event": "effective configuration"') == 1
    assert '"event": "cluster broker not reachable yet' in output  # a warning, not the end


def test_status_explains_an_unreachable_daemon(tmp_path, capsys):
    assert main(["--socket", str(tmp_path / "nothing.sock"), "status"]) == 1
    assert "cannot reach the daemon" in capsys.readouterr().err


def test_cleanup_all_removes_only_what_is_ours(ns, tmp_path):
    node = ns.netns()
    for name in ("oak-hdeadbeef", "other0"):
        nstools.run_in(
            node, ["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name[:9]}p"]
        )
    nstools.run_in(node, ["iptables", "-t", "nat", "-N", "OAKESTRA"])
    nstools.run_in(node, ["iptables", "-t", "nat", "-A", "PREROUTING", "-j", "OAKESTRA"])
    if shutil.which("nft"):  # the kernel data plane's table, and someone else's
        for table in ("oakestra_net", "someone_else"):
            nstools.run_in(node, ["nft", "add", "table", "inet", table])
    result = nstools.run_in(
        node,
        [
            SCRIPT,
            "--config-dir",
            str(tmp_path),
            "cleanup",
            "--all",
            "--state-file",
            str(tmp_path / "none.json"),
        ],
    )
    assert "oak-hdeadbeef" in result.stdout
    links = nstools.run_in(node, ["ip", "-o", "link"]).stdout
    assert "oak-hdeadbeef" not in links and "other0" in links
    assert "OAKESTRA" not in nstools.run_in(node, ["iptables-save", "-t", "nat"]).stdout
    if shutil.which("nft"):
        tables = nstools.run_in(node, ["nft", "list", "tables"]).stdout
        assert "oakestra_net" not in tables and "someone_else" in tables
