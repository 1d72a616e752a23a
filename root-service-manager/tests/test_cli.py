"""The `root-service-manager` command line as an operator meets it (a subprocess each)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from root_service_manager.config import SETTINGS
from testsupport import free_port, wait_until

pytestmark = pytest.mark.process  # real broker / server / subprocess

COMMAND = shutil.which("root-service-manager", path=os.path.dirname(sys.executable))
QUICK = 20  # seconds: far more than a process that does not serve needs


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "MONGO" not in k and k not in ("BIND",)}
    env.update(LOG_FORMAT="human", JWT_GENERATOR_URL="127.0.0.1", JWT_GENERATOR_PORT="9")
    env.update(extra)
    return env


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    assert COMMAND, "console script root-service-manager is not installed"
    return subprocess.run(
        [COMMAND, *args], env=_env(**env), capture_output=True, text=True, timeout=QUICK
    )


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("args", "code"), [(["--help"], 0), (["--version"], 0), (["--bogus"], 2), (["-x", "1"], 2)]
)
def test_informational_and_unknown_arguments_never_serve(args, code):
    port = free_port()
    result = _run(*args, MY_PORT=str(port))
    assert result.returncode == code, result.stderr
    assert not _accepts(port)
    assert "effective configuration" not in result.stderr  # nothing was started
    assert "Traceback" not in result.stderr


def test_help_lists_every_setting_with_variable_and_default():
    out = _run("--help").stdout
    assert out.startswith("usage: root-service-manager")
    flat = " ".join(out.split())
    for row in SETTINGS.rows:
        assert row.env in flat and row.flag in flat, row.env
    assert "MY_PORT: port of the HTTP API (default: 10099)" in flat
    assert "ROOT_MONGO_URL" in flat and "JWT_GENERATOR_PORT" in flat
    assert flat.index("MY_PORT") < flat.index("GUNICORN_WORKERS")  # Oakestra's names first


def test_version_and_unknown_argument_messages():
    version = metadata.version("oakestra-root-service-manager")
    assert _run("--version").stdout.strip() == f"root-service-manager {version}"
    unknown = _run("--bogus")
    assert unknown.stderr.strip().endswith("error: unrecognized arguments: --bogus")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {"MY_PORT": "http"}, "MY_PORT='http' is not a TCP port (1-65535)"),
        (("--port", "70000"), {}, "--port='70000' is not a TCP port (1-65535)"),
        (
            ("--jwt-public-key", "/nonexistent/jwt.pem"),
            {},
            "--jwt-public-key='/nonexistent/jwt.pem' is not an existing file",
        ),
        ((), {"ROOT_MONGO_PORT": "27017"}, "ROOT_MONGO_PORT='27017' is set but ROOT_MONGO_URL"),
        ((), {"GUNICORN_WORKERS": "many"}, "GUNICORN_WORKERS='many' is not a whole number"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(args, env, message):
    result = _run(*args, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "ERROR" in lines[0] and "bad configuration" in lines[0] and message in lines[0]


def test_unreachable_mongodb_fails_fast_with_the_password_masked():
    closed = free_port()
    result = _run(
        "--startup-timeout",
        "1",
        MONGO_URL=f"mongodb://oak:hunter2@127.0.0.1:{closed}/net",
        MY_PORT=str(closed),
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot start" in last
    assert f"cannot reach MongoDB at mongodb://oak:***@127.0.0.1:{closed}/net within 1 s" in last
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_flag_wins_over_environment(tmp_path: Path):
    env_port, flag_port = free_port(), free_port()
    log_path = tmp_path / "rsm.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [COMMAND, "--bind", f"127.0.0.1:{flag_port}", "--log-format=json"],
            env=_env(BIND=f"127.0.0.1:{env_port}", LOG_FORMAT="human"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: _accepts(flag_port), timeout=20, message="flag's port not served")
        assert not _accepts(env_port)
    finally:
        process.send_signal(signal.SIGTERM)  # our own child, by its pid
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    lines = log_path.read_text().splitlines()
    effective = [line for line in lines if "effective configuration" in line]
    assert len(effective) == 1, lines
    assert f'"BIND": "127.0.0.1:{flag_port}"' in effective[0]  # JSON: --log-format won too
    assert '"MY_PORT": 10099' in effective[0]


def test_every_variable_the_code_reads_is_a_setting():
    """A variable read without a row would be missing from --help and have no flag."""
    package = Path(__file__).resolve().parent.parent / "root_service_manager"
    shared = Path(__file__).resolve().parents[2] / "shared" / "oakestra_net"
    sources = [*package.rglob("*.py"), shared / "store.py", shared / "log.py"]
    pattern = re.compile(r'(?:environ|env)(?:\.get\(|\[)\s*"([A-Z][A-Z0-9_]*)"')
    read = {name for path in sources for name in pattern.findall(path.read_text())}
    assert read, "the pattern no longer finds environment reads"
    assert read <= {row.env for row in SETTINGS.rows}, read - {row.env for row in SETTINGS.rows}


def test_bad_value_line_follows_the_log_format_flag():
    result = _run("--log-format", "json", MY_PORT="http", LOG_FORMAT="human")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["event"] == "bad configuration" and record["level"] == "ERROR"
    assert record["reason"] == "MY_PORT='http' is not a TCP port (1-65535)"
