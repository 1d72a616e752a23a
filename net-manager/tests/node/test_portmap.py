"""The port-mapping grammar of container deployments, valid and invalid strings."""

from __future__ import annotations

import pytest

from net_manager.node.portmap import InvalidPortMapping, PortMapping, parse_port_mappings

TCP, UDP = "tcp", "udp"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("80", ((80, 80, TCP),)),
        ("8080:80", ((8080, 80, TCP),)),
        ("9000/udp", ((9000, 9000, UDP),)),
        ("9000/tcp", ((9000, 9000, TCP),)),
        ("8080:80;9000/udp", ((8080, 80, TCP), (9000, 9000, UDP))),
        ("53:5353/udp;53:5353/tcp", ((53, 5353, UDP), (53, 5353, TCP))),
        ("1:65535", ((1, 65535, TCP),)),
        ("65535/UDP", ((65535, 65535, UDP),)),
        ("08080:00080", ((8080, 80, TCP),)),
        ("80:8080;81:8080", ((80, 8080, TCP), (81, 8080, TCP))),
    ],
)
def test_valid_strings(text: str, expected: tuple[tuple[int, int, str], ...]) -> None:
    assert parse_port_mappings(text) == tuple(PortMapping(*triple) for triple in expected)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # upstream's own invalid examples
        ("80:80-80", "container port '80-80' is not a port number"),
        (" ", "host port ' ' is not a port number"),
        ("hello", "host port 'hello' is not a port number"),
        # the grammar's edges
        ("8080:", "container port is empty"),
        (":80", "host port is empty"),
        ("80/sctp", "protocol 'sctp' is not tcp or udp"),
        ("80/", "protocol '' is not tcp or udp"),
        ("80/udp/tcp", "protocol 'udp/tcp' is not tcp or udp"),
        ("80:90:100", "expected host[:container], got 3 ports"),
        ("99999", "host port 99999 is outside 1-65535"),
        ("65536", "host port 65536 is outside 1-65535"),
        ("80:0", "container port 0 is outside 1-65535"),
        ("0", "host port 0 is outside 1-65535"),
        ("123456", "host port '123456' is not a port number"),
        ("-80", "host port '-80' is not a port number"),
        ("+80", "host port '+80' is not a port number"),
        (" 80", "host port ' 80' is not a port number"),
        ("80 ", "host port '80 ' is not a port number"),
        ("80;", "empty entry"),
        (";80", "empty entry"),
        ("80;;81", "empty entry"),
        ("٨٠", "is not a port number"),  # Arabic-Indic digits are not ASCII digits
    ],
)
def test_invalid_strings_name_the_entry(text: str, reason: str) -> None:
    with pytest.raises(InvalidPortMapping) as caught:
        parse_port_mappings(text)
    assert reason in str(caught.value)


def test_error_quotes_the_offending_entry_of_a_list() -> None:
    with pytest.raises(InvalidPortMapping, match=r"invalid port mapping '90:x/udp'"):
        parse_port_mappings("80:8080;90:x/udp;100")


def test_same_host_port_and_protocol_twice_is_invalid() -> None:
    with pytest.raises(InvalidPortMapping) as caught:
        parse_port_mappings("80:8080;80:9090")
    assert str(caught.value) == (
        "invalid port mapping '80:9090': host port 80/tcp is already mapped by '80:8080'"
    )


def test_same_host_port_on_both_protocols_is_valid() -> None:
    assert parse_port_mappings("80;80/udp") == (PortMapping(80, 80, TCP), PortMapping(80, 80, UDP))


def test_default_protocol_counts_as_tcp_for_duplicates() -> None:
    with pytest.raises(InvalidPortMapping, match="already mapped"):
        parse_port_mappings("80;80/tcp")


@pytest.mark.parametrize("value", [None, 80, b"80", ["80"]])
def test_non_string_is_rejected(value: object) -> None:
    with pytest.raises(InvalidPortMapping, match="port mappings must be a string"):
        parse_port_mappings(value)  # type: ignore[arg-type]


def test_invalid_port_mapping_is_a_value_error() -> None:
    assert issubclass(InvalidPortMapping, ValueError)


def test_str_of_a_mapping() -> None:
    assert str(PortMapping(8080, 80, UDP)) == "8080:80/udp"
