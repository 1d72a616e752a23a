"""The microbenchmark runs and prints packets/s.

(python -m net_manager.dataplane.core.microbench)
"""

from __future__ import annotations

import pytest

from net_manager.dataplane.core import microbench


@pytest.mark.slow
def test_microbench_prints_packets_per_second(capsys: pytest.CaptureFixture[str]) -> None:
    microbench.main(["20000"])
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + out)
    assert "outgoing v4 tcp" in out and "incoming v6 udp (reply)" in out
    assert "from the tunnel v4 udp (reply, admission)" in out
