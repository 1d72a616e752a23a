"""The data plane's pure core: service-IP translation of packets, bytes in, bytes out.

packet parses headers and fixes checksums, flows keeps the flow table and the fragment
map, policies picks endpoints, translate ties them into a Translator working on a table
Snapshot. No I/O: the TUN/UDP loop that feeds it is in `dataplane.io`; microbench
measures it alone.
"""

from net_manager.dataplane.core.translate import (
    DELIVER,
    DROP_REASONS,
    LOCAL,
    Action,
    Endpoint,
    ServiceEntry,
    Snapshot,
    Translator,
    Verdict,
    build_snapshot,
)

__all__ = [
    "DELIVER",
    "DROP_REASONS",
    "LOCAL",
    "Action",
    "Endpoint",
    "ServiceEntry",
    "Snapshot",
    "Translator",
    "Verdict",
    "build_snapshot",
]
