"""MQTT payloads of the component as frozen dataclasses that validate what they read.

One class per MQTT payload between node and cluster, with the upstream JSON field names. `from_json`
accepts the raw payload (str or bytes) or an already decoded dict, checks keys, types,
ranges, address families and sizes, and raises `InvalidMessage` naming the payload and
the field. Unknown extra keys are ignored so newer senders stay readable. Constructors do
not validate: `from_json` is the boundary for data from outside the process. Topics live
in `oakestra_net.topics`; sending, receiving and logging dropped messages belong to the
MQTT wrapper and its callers.

Address strings are kept exactly as received (never re-canonicalised): the net manager
correlates table query answers with its requests by string equality.
"""

from __future__ import annotations

import ipaddress
import json
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn, Self, TypeVar

from oakestra_net import services

__all__ = [
    "MAX_INSTANCES",
    "MAX_PAYLOAD_BYTES",
    "MAX_REJECTION_REASONS",
    "MAX_SERVICE_IPS",
    "MAX_STRING_LENGTH",
    "NIL_ADDRESS",
    "AddressChanged",
    "InterestRemove",
    "InvalidMessage",
    "Message",
    "ServiceDeployed",
    "ServiceIp",
    "ServiceUndeployed",
    "SubnetRequest",
    "SubnetResult",
    "TableQueryInstance",
    "TableQueryRequest",
    "TableQueryResult",
    "UpdatesAvailable",
]

MAX_STRING_LENGTH = 256
MAX_INSTANCES = 10_000
MAX_SERVICE_IPS = 64
# 10 000 instances take about 6 MB of JSON; anything far larger is not a real payload.
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
MAX_INSTANCE_NUMBER = 2**63 - 1  # Go's int on the net manager side
MAX_PORT = 65_535
MAX_REJECTION_REASONS = 10
# What upstream unikernel deployments send as nsipv6 (Go's String() of a nil net.IP).
NIL_ADDRESS = "<nil>"

_PORT_TEXT = re.compile(r"[0-9]{1,5}")
_FAMILY_NAMES = {4: "an IPv4 address", 6: "an IPv6 address", None: "an IP address"}
_ABSENT: Any = object()
_T = TypeVar("_T")


class InvalidMessage(ValueError):
    """A payload that breaks its schema; the message names the payload and the field."""


def _type_name(value: object) -> str:
    names = {type(None): "null", bool: "bool", str: "string", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    """Short repr of received data, so a huge value cannot flood an error message."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<{value.bit_length()}-bit integer>"  # repr() fails beyond 4300 digits
    return reprlib.repr(value)


def _is_ip(text: str, family: int | None) -> bool:
    if "%" in text:  # a scoped IPv6 address names a local link, never a peer of ours
        return False
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return family is None or address.version == family


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, which JSON's \u escapes can produce
        return False
    return True


def _payload_text(data: object, label: str) -> str:
    """The JSON text of a raw payload (UTF-8 if bytes), bounded in size."""
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_PAYLOAD_BYTES:
            raise InvalidMessage(f"{label}: payload too large ({len(data)} bytes)")
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            problem = f"payload is not valid UTF-8 (byte {err.start})"
            raise InvalidMessage(f"{label}: {problem}") from None
    if not isinstance(data, str):
        kind = _type_name(data)
        raise InvalidMessage(f"{label}: payload must be JSON text or a dict, got {kind}")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise InvalidMessage(f"{label}: payload too large ({len(data)} characters)")
    return data


def _load_object(data: object, label: str) -> dict[str, Any]:
    """Decode a raw payload into a JSON object, or raise InvalidMessage."""
    if isinstance(data, dict):
        return data
    text = _payload_text(data, label)
    try:
        decoded = json.loads(text)
    except RecursionError:
        raise InvalidMessage(f"{label}: payload is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, and ints beyond the digit limit
        raise InvalidMessage(f"{label}: payload is not valid JSON: {err}") from None
    if not isinstance(decoded, dict):
        raise InvalidMessage(f"{label}: payload must be a JSON object, got {_type_name(decoded)}")
    return decoded


def _alternatives(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


class _Reader:
    """Typed access to the fields of one JSON object; every failure names the field."""

    def __init__(self, obj: dict[str, Any], label: str, prefix: str = "") -> None:
        self._obj = obj
        self._label = label
        self._prefix = prefix

    def fail(self, problem: str) -> NoReturn:
        raise InvalidMessage(f"{self._label}: {problem}")

    def _fail_field(self, key: str, problem: str) -> NoReturn:
        self.fail(f"field '{self._prefix}{key}' {problem}")

    def _required(self, key: str) -> Any:
        value = self._obj.get(key, _ABSENT)
        if value is _ABSENT:
            self._fail_field(key, "is missing")
        return value

    def _checked_string(self, key: str, value: object, non_empty: bool) -> str:
        if not isinstance(value, str):
            self._fail_field(key, f"must be a string, got {_type_name(value)}")
        if len(value) > MAX_STRING_LENGTH:
            limit = MAX_STRING_LENGTH
            self._fail_field(key, f"is too long ({len(value)} characters, at most {limit})")
        if non_empty and not value:
            self._fail_field(key, "must not be empty")
        if not value.isascii() and not _is_encodable(value):
            self._fail_field(key, "is not valid Unicode (lone surrogate)")
        return value

    def string(self, key: str, *, non_empty: bool = False) -> str:
        return self._checked_string(key, self._required(key), non_empty)

    def nullable_string(self, key: str) -> str | None:
        """A string or null; the key must be present."""
        value = self._required(key)
        return None if value is None else self._checked_string(key, value, False)

    def optional_string(self, key: str) -> str | None:
        """A string that may be null or absent (absent reads as None)."""
        value = self._obj.get(key)
        return None if value is None else self._checked_string(key, value, False)

    def string_or_int(self, key: str) -> str:
        """A non-empty string, or an integer converted to its decimal string."""
        value = self._required(key)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_INSTANCE_NUMBER:
                self._fail_field(key, f"is out of range, got {_show(value)}")
            value = str(value)
        elif not isinstance(value, str):
            self._fail_field(key, f"must be a string or an integer, got {_type_name(value)}")
        return self._checked_string(key, value, True)

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.string(key)
        if value not in options:
            self._fail_field(key, f"must be {_alternatives(list(options))}, got {_show(value)}")
        return value

    def integer(self, key: str) -> int:
        """A non-negative integer (an instance number); a JSON bool or float is not one."""
        value = self._required(key)
        if isinstance(value, bool) or not isinstance(value, int):
            self._fail_field(key, f"must be an integer, got {_type_name(value)}")
        return self._in_range(key, value, MAX_INSTANCE_NUMBER)

    def _in_range(self, key: str, value: int, high: int) -> int:
        if not 0 <= value <= high:
            self._fail_field(key, f"must be between 0 and {high}, got {_show(value)}")
        return value

    def port(self, key: str, *, missing_ok: bool = False) -> int:
        """A port given as integer or decimal string; null/absent reads as 0 if `missing_ok`."""
        value = self._obj.get(key, _ABSENT)
        if missing_ok and (value is _ABSENT or value is None):
            return 0
        value = self._required(key)
        if isinstance(value, str) and _PORT_TEXT.fullmatch(value):
            value = int(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            got = _show(value) if isinstance(value, str) else _type_name(value)
            self._fail_field(key, f"must be a port number (integer or digits), got {got}")
        return self._in_range(key, value, MAX_PORT)

    def ip(
        self,
        key: str,
        family: int | None,
        *,
        non_empty: bool = False,
        missing_ok: bool = False,
        also: tuple[str, ...] = (),
    ) -> str:
        """An address of `family` (4, 6, None = either) or ""; `also` lists accepted oddities.

        With `missing_ok`, null or absent reads as "".
        """
        value = self._obj.get(key, _ABSENT)
        if missing_ok and (value is _ABSENT or value is None):
            return ""
        text = self.string(key, non_empty=non_empty)
        if text == "" or text in also or _is_ip(text, family):
            return text
        expected = [_FAMILY_NAMES[family], *(repr(extra) for extra in also)]
        if not non_empty:
            expected.append("empty")
        self._fail_field(key, f"must be {_alternatives(expected)}, got {_show(text)}")

    def objects(
        self, key: str, parse: Callable[[_Reader], _T], *, max_items: int
    ) -> tuple[_T, ...]:
        """A list of JSON objects, each parsed by `parse` with a reader for that item."""
        items = []
        for index, item in enumerate(self._object_list(key, max_items)):
            items.append(parse(self._item_reader(key, index, item)))
        return tuple(items)

    def objects_keeping_valid(
        self, key: str, parse: Callable[[_Reader], _T], *, max_items: int
    ) -> tuple[tuple[_T, ...], int, tuple[str, ...]]:
        """Like `objects`, but an invalid item is skipped instead of failing the list:
        (valid items, number skipped, the first reasons)."""
        items: list[_T] = []
        reasons: list[str] = []
        skipped = 0
        for index, item in enumerate(self._object_list(key, max_items)):
            try:
                items.append(parse(self._item_reader(key, index, item)))
            except InvalidMessage as err:
                skipped += 1
                if len(reasons) < MAX_REJECTION_REASONS:
                    reasons.append(str(err))
        return tuple(items), skipped, tuple(reasons)

    def _object_list(self, key: str, max_items: int) -> list[Any]:
        value = self._required(key)
        if not isinstance(value, list):
            self._fail_field(key, f"must be a list, got {_type_name(value)}")
        if len(value) > max_items:
            self._fail_field(key, f"has too many items ({len(value)}, at most {max_items})")
        return value

    def _item_reader(self, key: str, index: int, item: object) -> _Reader:
        if not isinstance(item, dict):
            self._fail_field(f"{key}[{index}]", f"must be an object, got {_type_name(item)}")
        return _Reader(item, self._label, f"{self._prefix}{key}[{index}].")


class Message:
    """Base of all payload classes: decoding and encoding around `_read` and `to_dict`."""

    _LABEL: ClassVar[str]

    @classmethod
    def from_json(cls, data: str | bytes | dict[str, Any]) -> Self:
        """Parse and validate a payload; raise InvalidMessage naming the problem."""
        return cls._read(_Reader(_load_object(data, cls._LABEL), cls._LABEL))

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


@dataclass(frozen=True)
class SubnetRequest(Message):
    """Worker asks its cluster for a node subnet (`DELETE` is accepted, upstream ignores it)."""

    method: str
    _LABEL: ClassVar[str] = "subnet"
    METHODS: ClassVar[tuple[str, ...]] = ("GET", "DELETE")

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(method=r.choice("METHOD", cls.METHODS))

    def to_dict(self) -> dict[str, Any]:
        return {"METHOD": self.method}


@dataclass(frozen=True)
class SubnetResult(Message):
    """The node subnet (v4 and/or v6 network address) the cluster assigned to a worker."""

    address: str
    addressv6: str
    _LABEL: ClassVar[str] = "subnetwork/result"

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        address, addressv6 = r.ip("address", 4), r.ip("addressv6", 6)
        if not address and not addressv6:
            r.fail("fields 'address' and 'addressv6' are both empty")
        return cls(address=address, addressv6=addressv6)

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "addressv6": self.addressv6}


@dataclass(frozen=True)
class TableQueryRequest(Message):
    """Worker asks for the instances of a job, by job name (`sname`) or service IP (`sip`)."""

    sname: str
    sip: str
    _LABEL: ClassVar[str] = "tablequery/request"

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        sname, sip = r.string("sname"), r.ip("sip", None)
        if not sname and not sip:
            r.fail("fields 'sname' and 'sip' are both empty")
        return cls(sname=sname, sip=sip)

    def to_dict(self) -> dict[str, Any]:
        return {"sname": self.sname, "sip": self.sip}


@dataclass(frozen=True)
class ServiceIp(Message):
    """One service IP of an instance: RR / Closest of the job, or the instance's own IP."""

    ip_type: str
    address: str
    address_v6: str
    _LABEL: ClassVar[str] = "service_ip"
    IP_TYPES: ClassVar[tuple[str, ...]] = tuple(services.IP_TYPES)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(
            ip_type=r.choice("IpType", cls.IP_TYPES),
            address=r.ip("Address", 4),
            address_v6=r.ip("Address_v6", 6),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"IpType": self.ip_type, "Address": self.address, "Address_v6": self.address_v6}


@dataclass(frozen=True)
class TableQueryInstance(Message):
    """One instance in a table query result.

    An instance not placed yet has null or absent location fields upstream; they read as
    "" (addresses) and 0 (`host_port`), which is also how they are sent.
    """

    instance_number: int
    instance_ip: str
    instance_ip_v6: str
    cluster_id: str
    namespace_ip: str
    namespace_ip_v6: str
    host_ip: str
    host_port: int
    service_ip: tuple[ServiceIp, ...]
    worker_id: str | None = None
    _LABEL: ClassVar[str] = "tablequery/result instance"

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(
            instance_number=r.integer("instance_number"),
            instance_ip=r.ip("instance_ip", 4),
            instance_ip_v6=r.ip("instance_ip_v6", 6),
            cluster_id=r.string_or_int("cluster_id"),
            namespace_ip=r.ip("namespace_ip", 4, missing_ok=True),
            # upstream unikernels report "<nil>": read as no IPv6 address
            namespace_ip_v6=r.ip(
                "namespace_ip_v6", 6, missing_ok=True, also=(NIL_ADDRESS,)
            ).replace(NIL_ADDRESS, ""),
            host_ip=r.ip("host_ip", None, missing_ok=True),
            host_port=r.port("host_port", missing_ok=True),
            service_ip=r.objects("service_ip", ServiceIp._read, max_items=MAX_SERVICE_IPS),
            worker_id=r.optional_string("worker_id"),
        )

    def to_dict(self) -> dict[str, Any]:
        data = {
            "instance_number": self.instance_number,
            "instance_ip": self.instance_ip,
            "instance_ip_v6": self.instance_ip_v6,
            "cluster_id": self.cluster_id,
            "namespace_ip": self.namespace_ip,
            "namespace_ip_v6": self.namespace_ip_v6,
            "host_ip": self.host_ip,
            "host_port": int(self.host_port),
            "service_ip": [entry.to_dict() for entry in self.service_ip],
        }
        if self.worker_id is not None:
            data["worker_id"] = self.worker_id
        return data


@dataclass(frozen=True)
class TableQueryResult(Message):
    """The cluster's answer to a table query; `app_name` is null when resolution failed.

    One bad instance must not cost a node the good ones: an invalid entry of
    `instance_list` is left out and counted in `rejected` (with the first reasons in
    `rejections`, for the log) instead of failing the whole answer.
    """

    app_name: str | None
    query_key: str
    instance_list: tuple[TableQueryInstance, ...]
    rejected: int = field(default=0, compare=False)
    rejections: tuple[str, ...] = field(default=(), compare=False)
    _LABEL: ClassVar[str] = "tablequery/result"

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        app_name, query_key = r.nullable_string("app_name"), r.string("query_key")
        instances, rejected, reasons = r.objects_keeping_valid(
            "instance_list", TableQueryInstance._read, max_items=MAX_INSTANCES
        )
        return cls(app_name, query_key, instances, rejected, reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_name": self.app_name,
            "query_key": self.query_key,
            "instance_list": [instance.to_dict() for instance in self.instance_list],
        }


@dataclass(frozen=True)
class _InstanceReport(Message):
    """Where an instance of job `appname` lives: the shape shared by three node reports.

    `host_port` is read from an integer or a digit string and always sent as a string
    (upstream contract). `nsipv6` may be "<nil>", which upstream unikernels send.
    """

    appname: str
    instance_number: int
    nsip: str
    nsipv6: str
    host_ip: str
    host_port: str
    status: str = ""
    _NSIP_REQUIRED: ClassVar[bool] = False

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(
            appname=r.string("appname", non_empty=True),
            instance_number=r.integer("instance_number"),
            nsip=r.ip("nsip", 4, non_empty=cls._NSIP_REQUIRED),
            nsipv6=r.ip("nsipv6", 6, also=(NIL_ADDRESS,)),
            host_ip=r.ip("host_ip", None),
            host_port=str(r.port("host_port")),
            status=r.string("status"),
        )

    @property
    def namespace_ip_v6(self) -> str:
        """`nsipv6` with upstream's "<nil>" read as no address ("")."""
        return "" if self.nsipv6 == NIL_ADDRESS else self.nsipv6

    def to_dict(self) -> dict[str, Any]:
        return {
            "appname": self.appname,
            "status": self.status,
            "instance_number": self.instance_number,
            "nsip": self.nsip,
            "nsipv6": self.nsipv6,
            "host_port": str(self.host_port),
            "host_ip": self.host_ip,
        }


@dataclass(frozen=True)
class ServiceDeployed(_InstanceReport):
    """A worker set up the network of an instance; `nsip` is required."""

    status: str = "DEPLOYED"
    _LABEL: ClassVar[str] = "service/deployed"
    _NSIP_REQUIRED: ClassVar[bool] = True


@dataclass(frozen=True)
class ServiceUndeployed(_InstanceReport):
    """A worker removed the network of an instance (we publish it; upstream never did)."""

    status: str = ""
    _LABEL: ClassVar[str] = "service/undeployed"


@dataclass(frozen=True)
class AddressChanged(_InstanceReport):
    """A worker's public address changed; `appname` is the job name (upstream: app name)."""

    status: str = ""
    _LABEL: ClassVar[str] = "service/address-changed"


@dataclass(frozen=True)
class InterestRemove(Message):
    """A worker lost interest in a job, named by job name or by a service IP string."""

    appname: str
    _LABEL: ClassVar[str] = "interest/remove"

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(appname=r.string("appname", non_empty=True))

    def to_dict(self) -> dict[str, Any]:
        return {"appname": self.appname}


@dataclass(frozen=True)
class UpdatesAvailable(Message):
    """The instances of a job changed (topic `jobs/<job>/updates_available`)."""

    type: str
    _LABEL: ClassVar[str] = "updates_available"
    TYPES: ClassVar[tuple[str, ...]] = ("DEPLOYMENT", "UNDEPLOYMENT")

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(type=r.choice("type", cls.TYPES))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type}
