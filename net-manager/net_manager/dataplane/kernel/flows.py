"""Which served service IPs carried packets, from conntrack's listing (pure, no I/O).

The kernel backend learns use from conntrack itself instead of a rule every packet
walks: with accounting on (`nf_conntrack_acct`), each connection counts its packets,
and `conntrack -L -g -o id` lists the DNATed ones, one per line:

    udp 17 29 src=10.16.0.2 dst=10.30.1.30 sport=40000 dport=80 packets=5 bytes=145
    [UNREPLIED] src=10.16.0.3 dst=10.30.0.7 sport=80 dport=40000 packets=0 bytes=0
    mark=0 use=1 id=705435072

(on one line). The first `dst=` is the original destination, the service IP; `id=`
names the connection. A connection carried packets since the last listing when it is
new or its packet counts (both directions) changed, so an established flow counts as
use for as long as it sends, and a quiet one does not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address

# One connection a line: the first dst= (original destination), the packets= of both
# directions, and the id (one pass of the regex engine over the whole listing).
_FLOW = re.compile(
    r"^[^\n]*? dst=(\S+) [^\n]*?packets=(\d+) [^\n]*?packets=(\d+) [^\n]*?id=(\d+)",
    re.MULTILINE,
)


@dataclass(frozen=True)
class FlowCount:
    """One connection of a listing: its original destination and packets so far."""

    flow_id: str
    original_destination: str
    packets: int


def parse_listing(text: str) -> list[FlowCount]:
    """The connections of a `conntrack -L -o id` listing; lines without an id, a valid
    destination or packet counts (accounting off when the connection began) are left out."""
    flows = []
    canonical: dict[str, str] = {}  # a listing names few destinations, many times each
    for destination, sent, received, flow_id in _FLOW.findall(text):
        if destination not in canonical:
            try:
                canonical[destination] = str(ip_address(destination))
            except ValueError:
                canonical[destination] = ""
        if canonical[destination]:
            flows.append(FlowCount(flow_id, canonical[destination], int(sent) + int(received)))
    return flows


def used_destinations(
    previous: Mapping[str, int], flows: Iterable[FlowCount], served: set[str]
) -> tuple[set[str], dict[str, int]]:
    """(served destinations whose connections carried packets since `previous`, the
    packet counts to compare the next listing with). `previous`: flow id -> packets."""
    used: set[str] = set()
    counts: dict[str, int] = {}
    for flow in flows:
        if flow.original_destination not in served:
            continue
        counts[flow.flow_id] = flow.packets
        if previous.get(flow.flow_id) != flow.packets:
            used.add(flow.original_destination)
    return used, counts
