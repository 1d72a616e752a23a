"""Parsing the port-mapping string of a container deployment.

The node engine sends `portMappings` as entries separated by `;`, each
`host[:container][/tcp|/udp]`: `"8080:80;9000/udp"` is tcp 8080->80 and udp 9000->9000.
This module turns the string into PortMapping values or raises InvalidPortMapping naming
the offending entry; writing the DNAT rules is the kernel module's job.

Choices (stricter than upstream on some of these):
- the empty string is no mapping; any other empty entry (`"80;"`, `";"`) is invalid;
- no whitespace anywhere (upstream rejects `" "`; we also reject `" 80"`, `"80 "`);
- ports are 1-65535 written with 1-5 ASCII digits: port 0 is rejected (a DNAT to or
  from port 0 is meaningless), and so are signs and longer zero-padded numbers;
- the protocol is `tcp` or `udp`, case-insensitive, default tcp;
- the same (host port, protocol) twice is invalid: only one container can own it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROTOCOLS = ("tcp", "udp")
MIN_PORT, MAX_PORT = 1, 65_535
_PORT_TEXT = re.compile(r"[0-9]{1,5}")


class InvalidPortMapping(ValueError):
    """A port-mapping string that breaks the grammar; the message names the entry."""


@dataclass(frozen=True)
class PortMapping:
    """Traffic to `host_port`/`protocol` on the node goes to `container_port` in the container."""

    host_port: int
    container_port: int
    protocol: str  # "tcp" | "udp"

    def __str__(self) -> str:
        return f"{self.host_port}:{self.container_port}/{self.protocol}"


def parse_port_mappings(text: str) -> tuple[PortMapping, ...]:
    """All mappings of `text` in order; InvalidPortMapping if any entry is invalid."""
    if not isinstance(text, str):
        raise InvalidPortMapping(f"port mappings must be a string, got {type(text).__name__}")
    if text == "":
        return ()
    mappings: list[PortMapping] = []
    seen: dict[tuple[int, str], str] = {}
    for entry in text.split(";"):
        mapping = _parse_entry(entry)
        key = (mapping.host_port, mapping.protocol)
        if key in seen:
            raise InvalidPortMapping(
                f"invalid port mapping {entry!r}: host port {mapping.host_port}/"
                f"{mapping.protocol} is already mapped by {seen[key]!r}"
            )
        seen[key] = entry
        mappings.append(mapping)
    return tuple(mappings)


def _parse_entry(entry: str) -> PortMapping:
    if entry == "":
        raise InvalidPortMapping("invalid port mapping '': empty entry (stray ';')")
    ports, slash, protocol = entry.partition("/")
    protocol = protocol.lower() if slash else "tcp"
    if protocol not in PROTOCOLS:
        raise InvalidPortMapping(
            f"invalid port mapping {entry!r}: protocol {protocol!r} is not tcp or udp"
        )
    parts = ports.split(":")
    if len(parts) > 2:
        raise InvalidPortMapping(
            f"invalid port mapping {entry!r}: expected host[:container], got {len(parts)} ports"
        )
    host_port = _port(parts[0], "host", entry)
    container_port = _port(parts[1], "container", entry) if len(parts) == 2 else host_port
    return PortMapping(host_port, container_port, protocol)


def _port(text: str, which: str, entry: str) -> int:
    if not _PORT_TEXT.fullmatch(text):
        shown = "is empty" if text == "" else f"{text!r} is not a port number"
        raise InvalidPortMapping(f"invalid port mapping {entry!r}: {which} port {shown}")
    port = int(text)
    if not MIN_PORT <= port <= MAX_PORT:
        raise InvalidPortMapping(
            f"invalid port mapping {entry!r}: {which} port {port} is outside {MIN_PORT}-{MAX_PORT}"
        )
    return port
