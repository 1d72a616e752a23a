"""The shared pytest plugin: waiting, the private broker, the recorder, fail_on_log_exception."""

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from testsupport import Broker, free_port, wait_until

pytestmark = pytest.mark.process  # real broker / server / subprocess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_wait_until_returns_the_truthy_value():
    calls = []

    def eventually():
        calls.append(1)
        assert len(calls) >= 3, "not yet"
        return {"ready": len(calls)}

    assert wait_until(eventually, timeout=2, interval=0.001) == {"ready": 3}


def test_wait_until_times_out_with_message_and_last_value():
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"route present within 0.1 s \(last value: \[\]\)"):
        wait_until(lambda: [], timeout=0.1, message="route present")
    assert time.monotonic() - started < 1


def test_broker_stop_and_restart(tmp_path):
    broker = Broker(tmp_path)
    broker.start()
    pid = broker.pid
    assert "persistence false" in (tmp_path / "mosquitto.conf").read_text()
    broker.restart()
    assert broker.pid != pid and broker.running
    socket.create_connection((broker.host, broker.port), timeout=1).close()
    old = broker.pid
    broker.stop()
    broker.stop()
    assert broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)
    with pytest.raises(OSError):
        socket.create_connection((broker.host, broker.port), timeout=1)


def test_broker_with_bad_config_reports_the_log(tmp_path):
    broker = Broker(tmp_path, extra_config=["no_such_option 1"])
    with pytest.raises(RuntimeError, match="exited"):
        broker.start()
    assert not broker.running


def test_recorder_decodes_json_objects_and_waits(mosquitto, mqtt_recorder):
    recorder = mqtt_recorder("jobs/+/updates_available")
    for topic, payload in [
        ("jobs/a/updates_available", '{"type": "DEPLOYMENT"}'),
        ("jobs/b/updates_available", "not json"),
        ("jobs/c/updates_available", "[1, 2]"),
    ]:
        subprocess.run(
            ["mosquitto_pub", "-p", str(mosquitto.port), "-q", "1", "-t", topic, "-m", payload],
            check=True,
        )
    last = recorder.wait_for("jobs/c/#")
    assert last.payload == b"[1, 2]"
    assert recorder.wait_for(lambda m: m.payload == {"type": "DEPLOYMENT"}).topic == (
        "jobs/a/updates_available"
    )
    assert [m.payload for m in recorder.messages("jobs/b/+")] == [b"not json"]
    assert len(recorder.messages()) == 3
    with pytest.raises(AssertionError, match="no matching message"):
        recorder.wait_for("jobs/d/#", timeout=0.1)


def run_pytest(tmp_path, source):
    test_file = tmp_path / "test_sample.py"
    test_file.write_text(textwrap.dedent(source))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "testsupport.plugin",
            str(test_file),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )


def test_fail_on_log_exception_fails_a_test_that_swallowed_an_exception(tmp_path):
    result = run_pytest(
        tmp_path,
        """
        import logging

        def test_swallows(fail_on_log_exception):
            try:
                raise KeyError("job")
            except KeyError:
                logging.getLogger("x").exception("handler failed")

        def test_plain_error_without_traceback_is_fine(fail_on_log_exception):
            logging.getLogger("x").error("just an error")
        """,
    )
    assert result.returncode == 1, result.stdout
    assert "1 exception(s) logged: x: handler failed (KeyError('job'))" in result.stdout
    # Both calls pass; the swallowed exception fails test_swallows at teardown, as in HA.
    assert "ERROR test_sample.py::test_swallows" in result.stdout
    assert "2 passed, 1 error" in result.stdout
