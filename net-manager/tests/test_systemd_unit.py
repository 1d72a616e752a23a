"""The shipped systemd unit: starts the daemon the way the CLI expects, with room for fds."""

from __future__ import annotations

import configparser
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "config" / "netmanager.service"


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_the_unit_raises_the_file_descriptor_limit():
    limit = _service()["LimitNOFILE"]
    soft = int(limit.split(":")[0])
    assert soft >= 65536  # far above the 1024 default soft limit


def test_the_unit_runs_the_daemon_subcommand():
    assert _service()["ExecStart"].split()[-1] == "run"
