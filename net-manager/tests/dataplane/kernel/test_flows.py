"""Use of served service IPs from conntrack's listing (flows.py)."""

from __future__ import annotations

from net_manager.dataplane.kernel.flows import FlowCount, parse_listing, used_destinations

# `conntrack -L -g -o id` of conntrack-tools 1.4.7 (Debian 12) with accounting on
LISTING = """\
tcp      6 431999 ESTABLISHED src=fd00::1 dst=fdff::7 sport=41040 dport=8080 packets=4 \
bytes=297 src=fd00::2 dst=fd00::1 sport=8080 dport=41040 packets=3 bytes=225 [ASSURED] \
mark=0 use=1 id=1857628996
udp      17 29 src=10.16.0.2 dst=10.30.1.30 sport=58981 dport=53 packets=1 bytes=49 \
[UNREPLIED] src=10.16.0.3 dst=10.30.0.5 sport=53 dport=58981 packets=0 bytes=0 mark=0 use=1 \
id=2586219510
tcp      6 119 FIN_WAIT src=192.0.2.1 dst=198.51.100.7 sport=36492 dport=8080 packets=4 \
bytes=217 src=192.0.2.2 dst=192.0.2.1 sport=8080 dport=36492 packets=4 bytes=217 [ASSURED] \
mark=0 use=1 id=1484506328
"""


def test_a_listing_gives_each_connection_its_service_ip_and_packets_both_ways() -> None:
    assert parse_listing(LISTING) == [
        FlowCount("1857628996", "fdff::7", 7),
        FlowCount("2586219510", "10.30.1.30", 1),
        FlowCount("1484506328", "198.51.100.7", 8),
    ]


def test_lines_without_counts_id_or_address_are_left_out() -> None:
    text = "\n".join(
        [
            # accounting was off when this connection began: no packets=
            "udp 17 29 src=10.16.0.2 dst=10.30.1.30 sport=1 dport=2 src=10.16.0.3 "
            "dst=10.16.0.2 sport=2 dport=1 mark=0 use=1 id=1",
            "udp 17 29 src=10.16.0.2 dst=10.30.1.30 sport=1 dport=2 packets=1 bytes=9 "
            "src=10.16.0.3 dst=10.16.0.2 sport=2 dport=1 packets=1 bytes=9 mark=0 use=1",
            "udp 17 29 src=10.16.0.2 dst=nonsense packets=1 bytes=9 src=10.16.0.3 dst=10.16.0.2 "
            "packets=1 bytes=9 id=3",
            "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.",
            "",
        ]
    )
    assert parse_listing(text) == []


def test_addresses_are_canonical() -> None:
    line = (
        "udp 17 29 src=fd00::1 dst=FDFF:0::7 sport=1 dport=2 packets=2 bytes=9 src=fc00::3 "
        "dst=fd00::1 sport=2 dport=1 packets=1 bytes=9 mark=0 use=1 id=5"
    )
    assert parse_listing(line) == [FlowCount("5", "fdff::7", 3)]


def test_new_and_changed_connections_count_as_use_and_quiet_ones_do_not() -> None:
    served = {"10.30.1.30", "10.30.1.31", "fdff::7"}
    first = [FlowCount("1", "10.30.1.30", 3), FlowCount("2", "fdff::7", 5)]
    used, counts = used_destinations({}, first, served)
    assert used == {"10.30.1.30", "fdff::7"}  # new since the last listing
    assert counts == {"1": 3, "2": 5}

    second = [
        FlowCount("1", "10.30.1.30", 3),  # quiet: an established flow sending nothing
        FlowCount("2", "fdff::7", 9),  # established and sending
        FlowCount("3", "10.30.1.31", 1),  # new
    ]
    used, counts = used_destinations(counts, second, served)
    assert used == {"fdff::7", "10.30.1.31"}
    assert counts == {"1": 3, "2": 9, "3": 1}


def test_connections_to_addresses_the_kernel_does_not_serve_are_ignored() -> None:
    flows = [FlowCount("1", "198.51.100.7", 3), FlowCount("2", "10.30.1.30", 1)]
    used, counts = used_destinations({}, flows, {"10.30.1.30"})
    assert used == {"10.30.1.30"}
    assert counts == {"2": 1}  # nothing is kept for the others


def test_a_connection_that_ended_is_forgotten() -> None:
    still_there = [FlowCount("2", "10.30.1.30", 4)]
    _, counts = used_destinations({"1": 3, "2": 4}, still_there, {"10.30.1.30"})
    assert counts == {"2": 4}
