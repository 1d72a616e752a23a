"""The narrow typed channel between the control plane and the data-plane process.

Both ends of a socketpair(AF_UNIX, SOCK_STREAM) exchange frames: a 4-byte big-endian
length, then one JSON object whose "type" names the message. Each message is a frozen
dataclass with to_wire()/from_wire() that validate (flannel's SET_ROUTE/DEL_ROUTE/STOP
idea, with a whole table snapshot instead of route deltas):

- control -> data: Snapshot (the translation table and the local instances), Resolved
  (the answer to a Resolve), Stop.
- data -> control: Ready, Resolve (a table miss), Used (jobs seen in traffic), Counters.

encode() makes a frame; FrameDecoder cuts a byte stream back into messages (partial
reads, several frames per read); a bad frame raises ChannelError and is skipped, an
impossible length breaks the stream. Endpoint is the non-blocking end the packet loop
uses; the control side reads with a FrameDecoder in its own thread. No policy here.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from net_manager.dataplane.core.translate import Endpoint, ServiceEntry

MAX_FRAME = 64 * 1024 * 1024  # a snapshot of a very large table still fits
_LENGTH = struct.Struct("!I")
# Counters that are levels, not totals: not summed across process restarts.
GAUGES = frozenset({"flows", "fragments", "queued_packets", "queued_service_ips", "peers"})


class ChannelError(ValueError):
    """A frame that is not a valid message (the message names what is wrong)."""


class ChannelClosed(ConnectionError):
    """The other end closed the channel."""


# ---------------------------------------------------------------- table entries as dicts

_ENDPOINT_FIELDS = {f.name: f.type for f in fields(Endpoint)}


def endpoint_to_wire(endpoint: Endpoint) -> dict[str, Any]:
    return {name: getattr(endpoint, name) for name in _ENDPOINT_FIELDS}


def endpoint_from_wire(data: Any, what: str = "endpoint") -> Endpoint:
    if not isinstance(data, dict):
        raise ChannelError(f"{what} is not an object: {data!r:.80}")
    values = {}
    for name, kind in _ENDPOINT_FIELDS.items():
        value = data.get(name)
        if kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ChannelError(f"{what}: {name} must be an integer, got {value!r:.40}")
        elif not isinstance(value, str):
            raise ChannelError(f"{what}: {name} must be a string, got {value!r:.40}")
        values[name] = value
    return Endpoint(**values)


def service_to_wire(entry: ServiceEntry) -> dict[str, Any]:
    return {
        "service_ip": entry.service_ip,
        "service_ip_v6": entry.service_ip_v6,
        "ip_type": entry.ip_type,
        "endpoints": [endpoint_to_wire(e) for e in entry.endpoints],
    }


def service_from_wire(data: Any) -> ServiceEntry:
    if not isinstance(data, dict):
        raise ChannelError(f"service entry is not an object: {data!r:.80}")
    what = f"service entry {data.get('service_ip')!r}"
    for name in ("service_ip", "service_ip_v6", "ip_type"):
        if not isinstance(data.get(name), str):
            raise ChannelError(f"{what}: {name} must be a string")
    endpoints = data.get("endpoints")
    if not isinstance(endpoints, list):
        raise ChannelError(f"{what}: endpoints must be a list")
    return ServiceEntry(
        data["service_ip"],
        data["service_ip_v6"],
        data["ip_type"],
        tuple(endpoint_from_wire(e, f"{what} endpoint") for e in endpoints),
    )


# ---------------------------------------------------------------- messages


class Message:
    """Base of every message: to_wire() is the JSON object, from_wire() validates one."""

    TYPE: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Message:
        return cls()


def _string(data: dict[str, Any], name: str, what: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ChannelError(f"{what}: {name} must be a string, got {value!r:.40}")
    return value


def _list(data: dict[str, Any], name: str, what: str) -> list[Any]:
    value = data.get(name)
    if not isinstance(value, list):
        raise ChannelError(f"{what}: {name} must be a list, got {value!r:.40}")
    return value


@dataclass(frozen=True)
class Snapshot(Message):
    """The whole translation table: service entries and this node's instances, as dicts."""

    TYPE: ClassVar[str] = "snapshot"
    services: tuple[dict[str, Any], ...]
    local_instances: tuple[dict[str, Any], ...]
    node_ip: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", tuple(self.services))
        object.__setattr__(self, "local_instances", tuple(self.local_instances))

    @classmethod
    def of(
        cls, services: Iterable[ServiceEntry], local_instances: Iterable[Endpoint], node_ip: str
    ) -> Snapshot:
        return cls(
            tuple(service_to_wire(s) for s in services),
            tuple(endpoint_to_wire(e) for e in local_instances),
            node_ip,
        )

    def entries(self) -> tuple[list[ServiceEntry], list[Endpoint]]:
        """The table as translate.py's types; ChannelError if an entry is malformed."""
        services = [service_from_wire(s) for s in self.services]
        instances = [endpoint_from_wire(e, "local instance") for e in self.local_instances]
        return services, instances

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "services": list(self.services),
            "local_instances": list(self.local_instances),
            "node_ip": self.node_ip,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Snapshot:
        message = cls(
            tuple(_list(data, "services", "snapshot")),
            tuple(_list(data, "local_instances", "snapshot")),
            _string(data, "node_ip", "snapshot"),
        )
        message.entries()  # validate now, not in the packet loop's face
        return message


@dataclass(frozen=True)
class Resolved(Message):
    """The control side's answer to Resolve: found means a new snapshot has the IP."""

    TYPE: ClassVar[str] = "resolved"
    service_ip: str
    found: bool

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "service_ip": self.service_ip, "found": self.found}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Resolved:
        found = data.get("found")
        if not isinstance(found, bool):
            raise ChannelError(f"resolved: found must be true or false, got {found!r:.40}")
        return cls(_string(data, "service_ip", "resolved"), found)


@dataclass(frozen=True)
class Stop(Message):
    TYPE: ClassVar[str] = "stop"


@dataclass(frozen=True)
class Ready(Message):
    """The data plane is up: its TUN exists and its tunnel socket listens on port."""

    TYPE: ClassVar[str] = "ready"
    port: int = 0
    pid: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "port": self.port, "pid": self.pid}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Ready:
        values = [data.get("port", 0), data.get("pid", 0)]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ChannelError(f"ready: port and pid must be integers, got {values!r:.60}")
        return cls(*values)


@dataclass(frozen=True)
class Resolve(Message):
    """A packet went to a service IP the table does not know: please look it up."""

    TYPE: ClassVar[str] = "resolve"
    service_ip: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "service_ip": self.service_ip}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Resolve:
        return cls(_string(data, "service_ip", "resolve"))


@dataclass(frozen=True)
class Used(Message):
    """Jobs whose service IPs carried traffic since the last Used (keeps interests alive)."""

    TYPE: ClassVar[str] = "used"
    job_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "job_names", tuple(self.job_names))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "job_names": list(self.job_names)}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Used:
        names = _list(data, "job_names", "used")
        if not all(isinstance(n, str) for n in names):
            raise ChannelError(f"used: job_names must be strings, got {names!r:.60}")
        return cls(tuple(names))


@dataclass(frozen=True)
class Counters(Message):
    """The data plane's counters (totals since it started; GAUGES are levels) and RTTs."""

    TYPE: ClassVar[str] = "counters"
    values: Mapping[str, int | float]
    rtt: Mapping[str, float] = field(default_factory=dict)  # peer node_ip -> seconds
    # peer node_ip -> the capabilities of its last echo (probes.CAP_*)
    capabilities: Mapping[str, int] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "values": dict(self.values),
            "rtt": dict(self.rtt),
            "capabilities": dict(self.capabilities),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Counters:
        maps = [data.get("values"), data.get("rtt", {}), data.get("capabilities", {})]
        for name, value in zip(("values", "rtt", "capabilities"), maps, strict=True):
            if not isinstance(value, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
            ):
                raise ChannelError(f"counters: {name} must map names to numbers")
        return cls(*maps)


MESSAGES: dict[str, type[Message]] = {
    m.TYPE: m for m in (Snapshot, Resolved, Stop, Ready, Resolve, Used, Counters)
}


# ---------------------------------------------------------------- framing


def encode(message: Message) -> bytes:
    """One frame: length prefix + JSON body."""
    body = json.dumps(message.to_wire(), separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ChannelError(f"{message.TYPE} message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


def decode_body(body: bytes | bytearray | memoryview) -> Message:
    """The message in one frame body; ChannelError if it is not a valid message."""
    try:
        data = json.loads(bytes(body))
    except (UnicodeDecodeError, ValueError) as err:
        raise ChannelError(f"frame of {len(body)} bytes is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ChannelError(f"frame is not a JSON object: {data!r:.80}")
    kind = MESSAGES.get(data.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise ChannelError(f"unknown message type {data.get('type')!r:.40}")
    return kind.from_wire(data)


class FrameDecoder:
    """Cuts a byte stream into messages; feed() what was read, then pop() until None."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame
        self.broken: str = ""  # why the stream cannot be read any further

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    def pop(self) -> Message | None:
        """The next complete message, or None; ChannelError for a bad frame (skipped)."""
        if self.broken:
            raise ChannelError(self.broken)
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        (length,) = _LENGTH.unpack_from(buffer)
        if length > self._max_frame:
            self.broken = f"frame length {length} exceeds {self._max_frame}: stream out of sync"
            raise ChannelError(self.broken)
        if len(buffer) < 4 + length:
            return None
        body = bytes(buffer[4 : 4 + length])
        del buffer[: 4 + length]
        return decode_body(body)


class ChannelEndpoint:
    """A non-blocking end of the channel, for the packet loop.

    receive() reads what is there and returns the messages (bad frames are counted in
    errors and skipped); send() queues a frame and writes what the socket takes; a
    peer that does not read makes send() drop messages beyond max_pending bytes rather
    than block the loop.
    """

    def __init__(self, sock: socket.socket, *, max_pending: int = 8 * 1024 * 1024) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._decoder = FrameDecoder()
        self._out = bytearray()
        self._max_pending = max_pending
        self.errors: list[str] = []  # bad frames seen (the loop logs and clears them)
        self.dropped = 0  # messages not sent because the peer did not read

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def pending(self) -> bool:
        return bool(self._out)

    def receive(self, limit: int = 1 << 20) -> list[Message]:
        """Messages that arrived; ChannelClosed when the peer closed (or broke) the stream."""
        got = 0
        while got < limit:
            try:
                data = self.sock.recv(256 * 1024)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                data = b""
            if not data:
                raise ChannelClosed("control channel closed by the control plane")
            self._decoder.feed(data)
            got += len(data)
        return self._pop_all()

    def _pop_all(self) -> list[Message]:
        messages: list[Message] = []
        while True:
            try:
                message = self._decoder.pop()
            except ChannelError as err:
                if self._decoder.broken:
                    raise ChannelClosed(f"control channel unusable: {err}") from None
                self.errors.append(str(err))
                continue
            if message is None:
                return messages
            messages.append(message)

    def send(self, message: Message) -> bool:
        """Queue message and write what the socket takes; False if it had to be dropped."""
        frame = encode(message)
        if self._out and len(self._out) + len(frame) > self._max_pending:
            self.dropped += 1
            return False
        self._out += frame
        self.flush()
        return True

    def flush(self) -> bool:
        """Write queued frames; True when nothing is left. ChannelClosed if the peer left."""
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return False
            except (BrokenPipeError, ConnectionResetError):
                raise ChannelClosed("control channel closed by the control plane") from None
            del self._out[:sent]
        return True
