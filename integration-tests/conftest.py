"""Makes the namespace testbed importable as `testbed` for the tests under this folder,
and gives the system tests their local cluster (one per module that asks for it)."""

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from testbed.orchestrator import oakestra_cluster  # noqa: E402
from testbed.processes import Progress  # noqa: E402


@pytest.fixture(scope="module")
def dataplane_mode() -> str | None:
    """The nodes' data-plane mode (None: LocalCluster's default, which
    $OAKESTRA_TEST_DATAPLANE_MODE sets); a module overrides this fixture to run over
    several."""
    return None


@pytest.fixture(scope="module")
def local_cluster(request, tmp_path_factory, dataplane_mode):
    """(LocalCluster, Orchestrator): started, cluster and nodes registered; module-wide."""
    run_dir = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    progress = Progress(sys.stderr)
    with oakestra_cluster(
        run_dir=run_dir, progress=progress, dataplane_mode=dataplane_mode
    ) as started:
        yield started
