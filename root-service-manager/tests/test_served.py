"""The console script serves the app with gunicorn: the way operators run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import requests

from testsupport import free_port, wait_until

pytestmark = pytest.mark.process  # real broker / server / subprocess


def test_console_script_serves_the_api():
    port = free_port()
    script = shutil.which("root-service-manager", path=os.path.dirname(sys.executable))
    assert script, "console script root-service-manager is not installed"
    env = {
        **os.environ,
        "BIND": f"127.0.0.1:{port}",
        "JWT_GENERATOR_URL": "127.0.0.1",
        "JWT_GENERATOR_PORT": "9",
    }
    env.pop("MONGO_URL", None)
    process = subprocess.Popen([script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy():
            try:
                return requests.get(f"{base}/healthz", timeout=2).status_code == 200
            except requests.RequestException:  # not listening yet, or busy starting
                return False

        wait_until(healthy, timeout=20, message="root service manager did not come up")
        assert requests.get(f"{base}/healthz").json()["store"] == "embedded"
        # a new store: no allocation until the clusters could report (none here: 3 s)
        wait_until(lambda: not requests.get(f"{base}/healthz").json()["rebuilding"], timeout=20)
        first = requests.get(f"{base}/api/net/subnet").json()
        second = requests.get(f"{base}/api/net/subnet").json()
        assert first["subnet_addr"] != second["subnet_addr"]
        refused = requests.post(f"{base}/api/net/cluster", data="nope")
        assert refused.status_code == 400 and refused.json()["reason"]
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert "NOT PERSISTENT" in output
