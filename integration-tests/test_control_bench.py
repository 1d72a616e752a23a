"""The control-plane benchmark still runs end to end (tiny counts, both stores)."""

from __future__ import annotations

import pytest

from testbed import control_bench

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROWS = (
    "root deploys",
    "subnet allocations",
    "CPU s per 1,000 cached queries at 10 services",
    "CPU s per 1,000 cached queries at 30 services",
    "cached table queries by name",
    "cached table queries by service IP",
    "queries forwarded to the root",
    "scale change fan-out",
)


def test_quick_bench_prints_every_row_for_both_stores(capsys):
    assert control_bench.main(["--quick", "--store", "both"]) == 0
    table = capsys.readouterr().out
    for store in ("embedded", "SecantusDB"):
        section = table.split(f"store: {store}")[1].split("== ")[0]
        lines = section.strip().splitlines()
        for row in ROWS:
            assert any(line.startswith(row) for line in lines), (store, row, section)
        fan_out = next(line for line in lines if line.startswith("scale change fan-out"))
        assert "1.0 announcements per change" in fan_out, fan_out
    shared = "cached table queries by name (30 services, 20 nodes, 2 cluster processes)"
    assert shared in table.split("store: SecantusDB")[1], table
