"""Reading nft's JSON listing of our table: DNAT counters per chain."""

from __future__ import annotations

import json

from net_manager.dataplane.kernel.nft import _objects, chain_packets

# `nft -j list table inet …` of nftables 1.0.6 (Debian 12), trimmed to what we read
LISTING = json.dumps(
    {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "oakestra_net", "handle": 1}},
            {
                "set": {
                    "family": "inet",
                    "name": "used_v4",
                    "table": "oakestra_net",
                    "type": "ipv4_addr",
                    "flags": ["timeout"],
                    "timeout": 2,
                    "elem": [
                        {"elem": {"val": "10.30.0.1", "timeout": 2, "expires": 1}},
                        "10.30.0.9",
                    ],
                }
            },
            {"set": {"family": "inet", "name": "used_v6", "table": "oakestra_net"}},
            {
                "rule": {
                    "chain": "service_0",
                    "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"dnat": {}}],
                }
            },
            {"rule": {"chain": "service_0", "expr": [{"counter": {"packets": 2, "bytes": 9}}]}},
            {"rule": {"chain": "prerouting", "expr": [{"accept": None}]}},
        ]
    }
)


def test_chain_packets_sums_the_counters_of_each_chain():
    assert chain_packets(_objects(LISTING)) == {"service_0": 5}
