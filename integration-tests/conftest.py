"""Makes the namespace testbed importable as `testbed` for the tests under this folder,
and gives the system tests their local cluster (one per module that asks for it)."""

import os
import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from testbed.cluster import DATAPLANE_MODE_VARIABLE  # noqa: E402
from testbed.orchestrator import oakestra_cluster  # noqa: E402
from testbed.processes import Progress  # noqa: E402


def _dataplane_modes() -> list[str]:
    chosen = os.environ.get(DATAPLANE_MODE_VARIABLE, "")
    return [chosen] if chosen else ["tun", "kernel"]


@pytest.fixture(scope="module", params=_dataplane_modes())
def dataplane_mode(request) -> str:
    """The nodes' data-plane mode: every system test runs against both backends (one
    cluster per module and mode), or only against $OAKESTRA_TEST_DATAPLANE_MODE when
    it is set."""
    return request.param


@pytest.fixture(scope="module")
def local_cluster(request, tmp_path_factory, dataplane_mode):
    """(LocalCluster, Orchestrator): started, cluster and nodes registered; module-wide."""
    run_dir = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    progress = Progress(sys.stderr)
    with oakestra_cluster(
        run_dir=run_dir, progress=progress, dataplane_mode=dataplane_mode
    ) as started:
        yield started
