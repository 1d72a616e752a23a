"""Translation table: entry validity, indexes, replace/remove, ownership, the data-plane view."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from net_manager.control.services.table import (
    InvalidEntry,
    ServiceView,
    TableEntry,
    TranslationTable,
)
from oakestra_net.messages import ServiceIp, TableQueryInstance, TableQueryResult

X1 = "X.default.X1.default"
X3 = "X.default.X3.default"
RR_X1 = ServiceIp("RR", "10.30.0.1", "fdff:2000::1")
RR_X3 = ServiceIp("RR", "10.30.1.30", "fdff:2000::30")


def instance_ip(n: int, v6: bool = True) -> ServiceIp:
    return ServiceIp("instance_ip", f"10.30.0.{100 + n}", f"fdff::{100 + n:x}" if v6 else "")


def entry(
    job: str = X1,
    n: int = 0,
    *,
    nsip: str | None = None,
    nsip6: str | None = None,
    node: str = "192.168.1.10",
    port: int = 50103,
    service_ips: tuple[ServiceIp, ...] | None = None,
) -> TableEntry:
    return TableEntry(
        job_name=job,
        instance_number=n,
        namespace_ip=f"10.18.0.{2 + n}" if nsip is None else nsip,
        namespace_ip_v6=f"fc00::{2 + n:x}" if nsip6 is None else nsip6,
        node_ip=node,
        node_port=port,
        service_ips=(RR_X1, instance_ip(n)) if service_ips is None else service_ips,
    )


def wire_instance(**changes: object) -> TableQueryInstance:
    """An instance as the cluster sends it in a table query result."""
    fields: dict[str, object] = {
        "instance_number": 0,
        "instance_ip": "10.30.0.100",
        "instance_ip_v6": "fdff::64",
        "cluster_id": "c1",
        "namespace_ip": "10.18.0.2",
        "namespace_ip_v6": "fc00::2",
        "host_ip": "192.168.1.10",
        "host_port": 50103,
        "service_ip": [
            RR_X1.to_dict(),
            {"IpType": "instance_ip", "Address": "10.30.0.100", "Address_v6": "fdff::64"},
        ],
    }
    fields.update(changes)
    result = TableQueryResult.from_json(
        {"app_name": X1, "query_key": X1, "instance_list": [fields]}
    )
    return result.instance_list[0]


# ---------------------------------------------------------------- TableEntry


def test_entry_from_a_wire_instance() -> None:
    made = TableEntry.from_instance(X1, wire_instance())
    assert made == entry(
        X1, 0, service_ips=(RR_X1, ServiceIp("instance_ip", "10.30.0.100", "fdff::64"))
    )
    assert made is not None
    assert (made.instance_ip, made.instance_ip_v6) == ("10.30.0.100", "fdff::64")
    assert made.namespace_ips == ("10.18.0.2", "fc00::2")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"namespace_ip": None, "namespace_ip_v6": None}, "no namespace IP"),
        ({"host_ip": None}, "node_ip ''"),
        ({"host_port": None}, "node_port 0"),
        ({"service_ip": [], "instance_ip": "", "instance_ip_v6": ""}, "at least one service IP"),
        (
            {
                "service_ip": [{"IpType": "RR", "Address": "10.20.0.1", "Address_v6": ""}],
                "instance_ip": "",
                "instance_ip_v6": "",
            },
            "at least one service IP",
        ),
    ],
)
def test_instance_without_location_or_service_ip_is_invalid(
    changes: dict[str, object], reason: str
) -> None:
    instance = wire_instance(**changes)
    assert TableEntry.from_instance(X1, instance) is None
    with pytest.raises(InvalidEntry, match=reason):
        TableEntry.parse(X1, instance)


@pytest.mark.parametrize("job", ["X.default.X1", "X.def-ault.X1.default", "", "a.b.c.d.e"])
def test_invalid_job_name_gives_no_entry(job: str) -> None:
    assert TableEntry.from_instance(job, wire_instance()) is None
    with pytest.raises(InvalidEntry, match="invalid job name"):
        TableEntry.parse(job, wire_instance())


def test_unikernel_without_ipv6_is_kept() -> None:
    made = TableEntry.from_instance(X1, wire_instance(namespace_ip_v6=None))
    assert made is not None
    assert made.namespace_ips == ("10.18.0.2",)


def test_nil_ipv6_namespace_address_reads_as_none() -> None:
    made = TableEntry.from_instance(X1, replace(wire_instance(), namespace_ip_v6="<nil>"))
    assert made is not None and made.namespace_ip_v6 == ""


def test_service_addresses_outside_the_service_ranges_are_left_out() -> None:
    instance = wire_instance(
        service_ip=[
            {"IpType": "RR", "Address": "10.20.0.1", "Address_v6": "fdff:2000::1"},
            {"IpType": "Closest", "Address": "10.31.0.1", "Address_v6": "fcef::1"},
            {"IpType": "instance_ip", "Address": "10.30.0.100", "Address_v6": "fdff::64"},
        ]
    )
    made = TableEntry.from_instance(X1, instance)
    assert made is not None
    assert made.service_ips == (
        ServiceIp("RR", "", "fdff:2000::1"),
        ServiceIp("instance_ip", "10.30.0.100", "fdff::64"),
    )


def test_missing_instance_ip_listing_is_added_from_the_instance_fields() -> None:
    made = TableEntry.from_instance(X1, wire_instance(service_ip=[RR_X1.to_dict()]))
    assert made is not None
    assert made.service_ips == (RR_X1, ServiceIp("instance_ip", "10.30.0.100", "fdff::64"))


def test_upstream_instance_number_type_is_an_instance_ip() -> None:
    made = entry(service_ips=(RR_X1, ServiceIp("InstanceNumber", "10.30.0.7", "")))
    assert (made.instance_ip, made.instance_ip_v6) == ("10.30.0.7", "")


def test_last_instance_ip_listing_wins_as_upstream() -> None:
    made = entry(service_ips=(instance_ip(1), instance_ip(2)))
    assert made.instance_ip == "10.30.0.102"


def test_entry_addresses_are_canonical() -> None:
    made = entry(
        nsip6="FC00:0::0002",
        node="2001:DB8::1",
        service_ips=(ServiceIp("RR", "10.30.0.1", "FDFF:2000:0::1"),),
    )
    assert made.namespace_ip_v6 == "fc00::2"
    assert made.node_ip == "2001:db8::1"
    assert made.service_ips == (ServiceIp("RR", "10.30.0.1", "fdff:2000::1"),)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"instance_number": -1}, "instance_number must be an integer >= 0"),
        ({"instance_number": True}, "instance_number must be an integer >= 0"),
        ({"namespace_ip": "fc00::2"}, "namespace_ip 'fc00::2' is not an IPv4 address"),
        ({"namespace_ip_v6": "10.18.0.2"}, "namespace_ip_v6 '10.18.0.2' is not an IPv6"),
        ({"namespace_ip": "", "namespace_ip_v6": ""}, "no namespace IP"),
        ({"node_ip": "node-1"}, "node_ip 'node-1' is not an IP address"),
        ({"node_ip": "fe80::1%eth0"}, "node_ip 'fe80::1%eth0' is not an IP address"),
        ({"node_port": 0}, "node_port 0 is not a port 1-65535"),
        ({"node_port": 65536}, "node_port 65536"),
        ({"node_port": "50103"}, "node_port '50103'"),
        ({"service_ips": ()}, "at least one service IP"),
        ({"service_ips": (ServiceIp("RR", "", ""),)}, "RR service IP has no address"),
        ({"service_ips": (ServiceIp("RR", "10.20.0.1", ""),)}, "outside the service ranges"),
        ({"service_ips": (ServiceIp("Magic", "10.30.0.1", ""),)}, "known IpType"),
        ({"service_ips": ("10.30.0.1",)}, "known IpType"),
        ({"service_ips": (ServiceIp(["RR"], "10.30.0.1", ""),)}, "known IpType"),  # type: ignore[arg-type]
        ({"service_ips": (ServiceIp("RR", ["10.30.0.1"], ""),)}, "outside the service"),  # type: ignore[arg-type]
        ({"namespace_ip": 10}, "namespace_ip 10 is not an IPv4 address"),
    ],
)
def test_invalid_entry_names_the_instance_and_field(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEntry) as caught:
        replace(entry(X1, 3), **changes)
    assert f"table entry '{X1}' instance" in str(caught.value)
    assert reason in str(caught.value)


def test_non_string_job_name_is_an_invalid_entry() -> None:
    with pytest.raises(InvalidEntry, match=r"table entry \['X'\] instance 3: invalid job name"):
        replace(entry(X1, 3), job_name=["X"])  # type: ignore[arg-type]


def test_entry_status_dict() -> None:
    assert entry(X1, 0).to_status() == {
        "job_name": X1,
        "instance_number": 0,
        "namespace_ip": "10.18.0.2",
        "namespace_ip_v6": "fc00::2",
        "instance_ip": "10.30.0.100",
        "instance_ip_v6": "fdff::64",
        "node_ip": "192.168.1.10",
        "node_port": 50103,
        "service_ips": [
            {"IpType": "RR", "Address": "10.30.0.1", "Address_v6": "fdff:2000::1"},
            {"IpType": "instance_ip", "Address": "10.30.0.100", "Address_v6": "fdff::64"},
        ],
    }


# ---------------------------------------------------------------- TranslationTable


@pytest.fixture
def table() -> TranslationTable:
    return TranslationTable()


def test_lookups_by_every_index(table: TranslationTable) -> None:
    x1 = [entry(X1, 0), entry(X1, 1)]
    x3 = [entry(X3, 0, nsip="10.18.0.66", nsip6="fc00::166", service_ips=(RR_X3, instance_ip(7)))]
    assert table.replace_job(X1, x1) is True
    assert table.replace_job(X3, x3) is True
    assert table.by_service_ip("10.30.0.1") == tuple(x1)
    assert table.by_service_ip("fdff:2000::1") == tuple(x1)
    assert table.by_service_ip("10.30.1.30") == tuple(x3)
    assert table.by_service_ip("10.30.0.101") == (x1[1],)
    assert table.by_service_ip("fdff::65") == (x1[1],)
    assert table.by_namespace_ip("10.18.0.3") == x1[1]
    assert table.by_namespace_ip("fc00::166") == x3[0]
    assert table.by_job(X1) == tuple(x1)
    assert table.jobs() == {X1, X3}
    assert table.entries() == [*x1, *x3]


def test_lookups_accept_any_spelling_and_garbage(table: TranslationTable) -> None:
    table.replace_job(X1, [entry(X1, 0)])
    assert table.by_service_ip("FDFF:2000:0:0::1") == (entry(X1, 0),)
    assert table.by_namespace_ip("fc00:0::2") == entry(X1, 0)
    for garbage in ("", "10.30.0", "hello", "fdff::1%eth0"):
        assert table.by_service_ip(garbage) == ()
        assert table.by_namespace_ip(garbage) is None
        assert table.remove_namespace_ip(garbage) is False
    assert table.by_job("unknown.job.name.x") == ()


def test_replace_job_replaces_every_entry(table: TranslationTable) -> None:
    table.replace_job(X1, [entry(X1, 0), entry(X1, 1)])
    table.replace_job(X1, [entry(X1, 2)])
    assert table.by_job(X1) == (entry(X1, 2),)
    assert table.by_service_ip("10.30.0.1") == (entry(X1, 2),)
    assert table.by_service_ip("10.30.0.100") == ()
    assert table.by_namespace_ip("10.18.0.2") is None


def test_version_moves_only_on_change(table: TranslationTable) -> None:
    assert table.version == 0
    assert table.replace_job(X1, [entry(X1, 0)]) is True
    assert table.version == 1
    assert table.replace_job(X1, [entry(X1, 0)]) is False
    assert table.remove_job(X3) is False
    assert table.remove_namespace_ip("10.18.0.99") is False
    assert table.replace_job(X3, []) is False
    assert table.version == 1
    assert table.remove_namespace_ip("fc00::2") is True
    assert table.version == 2
    assert table.jobs() == set()


def test_empty_replace_removes_the_job(table: TranslationTable) -> None:
    table.replace_job(X1, [entry(X1, 0)])
    assert table.replace_job(X1, []) is True
    assert table.jobs() == set()
    assert table.by_service_ip("10.30.0.1") == ()


def test_remove_job_keeps_other_jobs(table: TranslationTable) -> None:
    table.replace_job(X1, [entry(X1, 0)])
    table.replace_job(X3, [entry(X3, 5, service_ips=(RR_X3,))])
    assert table.remove_job(X1) is True
    assert table.jobs() == {X3}
    assert table.by_service_ip("10.30.0.1") == ()
    assert table.by_namespace_ip("10.18.0.2") is None
    assert table.by_service_ip("10.30.1.30") == (entry(X3, 5, service_ips=(RR_X3,)),)


def test_remove_namespace_ip_drops_one_instance(table: TranslationTable) -> None:
    table.replace_job(X1, [entry(X1, 0), entry(X1, 1)])
    assert table.remove_namespace_ip("10.18.0.2") is True
    assert table.by_job(X1) == (entry(X1, 1),)
    assert table.by_namespace_ip("fc00::2") is None
    assert table.by_service_ip("10.30.0.100") == ()
    assert table.by_service_ip("10.30.0.1") == (entry(X1, 1),)


def test_entries_of_another_job_are_refused(table: TranslationTable) -> None:
    with pytest.raises(ValueError, match=f"among the entries of job '{X3}'"):
        table.replace_job(X3, [entry(X1, 0)])
    with pytest.raises(ValueError, match="among the entries"):
        table.replace_job(X1, ["not an entry"])  # type: ignore[list-item]
    assert table.version == 0


def test_same_instance_number_twice_keeps_the_last(table: TranslationTable) -> None:
    late = entry(X1, 0, node="192.168.1.20")
    table.replace_job(X1, [entry(X1, 0), late])
    assert table.by_job(X1) == (late,)
    assert table.by_namespace_ip("10.18.0.2") == late


def test_same_namespace_ip_twice_in_a_job_keeps_the_last(table: TranslationTable) -> None:
    late = entry(X1, 1, nsip="10.18.0.2", nsip6="fc00::9")
    table.replace_job(X1, [entry(X1, 0), late])
    assert table.by_job(X1) == (late,)
    assert table.by_namespace_ip("fc00::2") is None


def test_namespace_ip_taken_from_another_job(table: TranslationTable) -> None:
    table.replace_job(X1, [entry(X1, 0), entry(X1, 1)])
    newcomer = entry(X3, 0, nsip="10.18.0.2", nsip6="fc00::77", service_ips=(RR_X3,))
    table.replace_job(X3, [newcomer])
    assert table.by_namespace_ip("10.18.0.2") == newcomer
    assert table.by_namespace_ip("fc00::2") is None  # the old container is gone entirely
    assert table.by_job(X1) == (entry(X1, 1),)
    assert table.by_service_ip("10.30.0.100") == ()


def test_instance_ip_listed_by_two_instances_stays_with_the_first(
    table: TranslationTable,
) -> None:
    second = entry(X1, 1, service_ips=(RR_X1, instance_ip(0)))
    table.replace_job(X1, [entry(X1, 0), second])
    assert table.by_service_ip("10.30.0.100") == (entry(X1, 0),)
    assert table.by_job(X1)[1].service_ips == (RR_X1,)


def test_address_keeps_the_ip_type_it_has_first(table: TranslationTable) -> None:
    odd = entry(X1, 1, service_ips=(ServiceIp("Closest", "10.30.0.1", ""), instance_ip(1)))
    table.replace_job(X1, [entry(X1, 0), odd])
    assert table.by_service_ip("10.30.0.1") == (entry(X1, 0),)
    assert table.by_job(X1)[1].service_ips == (instance_ip(1),)


def test_entry_left_without_service_ips_is_dropped(table: TranslationTable) -> None:
    table.replace_job(X1, [entry(X1, 0), entry(X1, 1, service_ips=(instance_ip(0),))])
    assert table.by_job(X1) == (entry(X1, 0),)
    assert table.by_namespace_ip("10.18.0.3") is None


def test_newest_job_owns_a_contested_service_ip(table: TranslationTable) -> None:
    stale = entry(X1, 0)
    fresh = entry(X3, 0, nsip="10.18.0.66", nsip6="fc00::66", service_ips=(RR_X1,))
    table.replace_job(X1, [stale])
    table.replace_job(X3, [fresh])
    assert table.by_service_ip("10.30.0.1") == (fresh,)
    table.replace_job(X1, [stale, entry(X1, 1)])  # X1 refreshed later: now it owns it
    assert table.by_service_ip("10.30.0.1") == (stale, entry(X1, 1))
    table.remove_job(X1)
    assert table.by_service_ip("10.30.0.1") == (fresh,)


def test_partial_removal_keeps_ownership(table: TranslationTable) -> None:
    table.replace_job(X1, [entry(X1, 0), entry(X1, 1)])
    table.replace_job(X3, [entry(X3, 0, nsip="10.18.0.66", nsip6="fc00::66", service_ips=(RR_X1,))])
    table.replace_job(X1, [entry(X1, 0), entry(X1, 1), entry(X1, 2)])
    table.remove_namespace_ip("10.18.0.2")
    assert table.by_service_ip("10.30.0.1") == (entry(X1, 1), entry(X1, 2))


def test_status_lists_every_entry(table: TranslationTable) -> None:
    table.replace_job(X3, [entry(X3, 0, nsip="10.18.0.66", nsip6="", service_ips=(RR_X3,))])
    table.replace_job(X1, [entry(X1, 0)])
    status = table.to_status()
    assert [(row["job_name"], row["instance_number"]) for row in status] == [(X1, 0), (X3, 0)]
    assert status[0] == entry(X1, 0).to_status()


# ---------------------------------------------------------------- service view


def test_service_view_groups_pairs_for_the_data_plane(table: TranslationTable) -> None:
    x1 = (entry(X1, 0), entry(X1, 1))
    table.replace_job(X1, x1)
    assert table.service_view() == [
        ServiceView("10.30.0.1", "fdff:2000::1", "RR", X1, x1),
        ServiceView("10.30.0.100", "fdff::64", "instance_ip", X1, (x1[0],)),
        ServiceView("10.30.0.101", "fdff::65", "instance_ip", X1, (x1[1],)),
    ]


def test_service_view_splits_families_that_lead_to_different_entries(
    table: TranslationTable,
) -> None:
    first = entry(X1, 0, service_ips=(ServiceIp("RR", "10.30.0.1", "fdff:2000::1"),))
    second = entry(X1, 1, service_ips=(ServiceIp("RR", "10.30.0.1", ""),))
    table.replace_job(X1, [first, second])
    assert table.service_view() == [
        ServiceView("10.30.0.1", "", "RR", X1, (first, second)),
        ServiceView("", "fdff:2000::1", "RR", X1, (first,)),
    ]


def test_service_view_reports_instance_number_type_as_instance_ip(
    table: TranslationTable,
) -> None:
    only = entry(X1, 0, service_ips=(ServiceIp("InstanceNumber", "10.30.0.9", ""),))
    table.replace_job(X1, [only])
    assert table.service_view() == [ServiceView("10.30.0.9", "", "instance_ip", X1, (only,))]


def test_service_view_follows_changes(table: TranslationTable) -> None:
    table.replace_job(X1, [entry(X1, 0)])
    assert len(table.service_view()) == 2
    table.remove_job(X1)
    assert table.service_view() == []


def test_service_view_gives_a_contested_address_to_its_owner(table: TranslationTable) -> None:
    fresh = entry(
        X3,
        0,
        nsip="10.18.0.66",
        nsip6="fc00::66",
        service_ips=(ServiceIp("RR", "10.30.0.1", "fdff:2000::99"),),
    )
    table.replace_job(X1, [entry(X1, 0)])
    table.replace_job(X3, [fresh])
    view = {(v.service_ip, v.service_ip_v6): v.job_name for v in table.service_view()}
    assert view == {
        ("10.30.0.1", "fdff:2000::99"): X3,
        ("", "fdff:2000::1"): X1,
        ("10.30.0.100", "fdff::64"): X1,
    }


def test_concurrent_replace_and_lookup_stay_consistent(table: TranslationTable) -> None:
    versions = [[entry(X1, n) for n in range(size)] for size in (1, 5, 2, 8, 3)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                found = table.by_service_ip("10.30.0.1")
                assert found in {tuple(v) for v in versions} | {()}
                table.service_view()
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            for version in versions:
                table.replace_job(X1, version)
    finally:
        stop.set()
        reader.join()
    assert errors == []


# ---------------------------------------------------------------- model-based property test

JOBS = ["a.a.a.a", "b.b.b.b", "c.c.c.c"]
NSIPS = ["", "10.18.0.2", "10.18.0.3", "10.18.0.4"]
NSIPS6 = ["", "fc00::2", "fc00::3"]
SIPS = ["", "10.30.0.1", "10.30.0.2", "10.30.0.3"]
SIPS6 = ["", "fdff::1", "fdff::2"]
KIND = {"RR": "RR", "Closest": "Closest", "instance_ip": "instance_ip"}
KIND["InstanceNumber"] = "instance_ip"

service_ips = st.builds(
    ServiceIp, st.sampled_from(list(KIND)), st.sampled_from(SIPS), st.sampled_from(SIPS6)
).filter(lambda sip: bool(sip.address or sip.address_v6))


@st.composite
def entries(draw: st.DrawFn, job: str) -> TableEntry:
    nsip, nsip6 = draw(
        st.tuples(st.sampled_from(NSIPS), st.sampled_from(NSIPS6)).filter(lambda p: any(p))
    )
    return TableEntry(
        job_name=job,
        instance_number=draw(st.integers(0, 3)),
        namespace_ip=nsip,
        namespace_ip_v6=nsip6,
        node_ip=draw(st.sampled_from(["192.168.1.1", "192.168.1.2"])),
        node_port=50103,
        service_ips=tuple(draw(st.lists(service_ips, min_size=1, max_size=3))),
    )


@st.composite
def operations(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(["replace", "replace", "replace", "remove_job", "remove_ns"]))
    if kind == "remove_ns":
        return (kind, draw(st.sampled_from(NSIPS[1:] + NSIPS6[1:])))
    job = draw(st.sampled_from(JOBS))
    if kind == "remove_job":
        return (kind, job)
    return (kind, job, draw(st.lists(entries(job), max_size=4)))


class NaiveTable:
    """The table's rules written the slow, obvious way: lists and linear scans."""

    def __init__(self) -> None:
        self.jobs: dict[str, list[TableEntry]] = {}
        self.stamp: dict[str, int] = {}
        self.clock = 0

    def replace(self, job: str, new: list[TableEntry]) -> bool:
        normalized = self.normalize(new)
        if normalized == self.jobs.get(job, []):
            return False
        taken = {a for e in normalized for a in e.namespace_ips}
        for other in list(self.jobs):
            if other != job:
                self.set(other, [e for e in self.jobs[other] if not taken & set(e.namespace_ips)])
        self.set(job, normalized)
        self.clock += 1
        self.stamp[job] = self.clock
        return True

    @staticmethod
    def normalize(new: list[TableEntry]) -> list[TableEntry]:
        kept: list[TableEntry] = []
        for e in new:
            kept = [
                k
                for k in kept
                if k.instance_number != e.instance_number
                and not set(k.namespace_ips) & set(e.namespace_ips)
            ]
            kept.append(e)
        kept.sort(key=lambda e: e.instance_number)
        result: list[TableEntry] = []
        kinds: dict[str, str] = {}
        instance_taken: set[str] = set()
        for e in kept:
            sips: list[ServiceIp] = []
            for sip in e.service_ips:
                addrs = [a for a in (sip.address, sip.address_v6) if a]
                kind = KIND[sip.ip_type]
                if sip in sips or any(kinds.get(a, kind) != kind for a in addrs):
                    continue
                if kind == "instance_ip" and any(a in instance_taken for a in addrs):
                    continue
                sips.append(sip)
                kinds.update(dict.fromkeys(addrs, kind))
                if kind == "instance_ip":
                    instance_taken.update(addrs)
            if sips:
                result.append(replace(e, service_ips=tuple(sips)))
        return result

    def set(self, job: str, new: list[TableEntry]) -> None:
        if new:
            self.jobs[job] = new
        else:
            self.jobs.pop(job, None)

    def remove_job(self, job: str) -> bool:
        return self.jobs.pop(job, None) is not None

    def remove_ns(self, address: str) -> bool:
        for job, held in self.jobs.items():
            for e in held:
                if address in e.namespace_ips:
                    self.set(job, [k for k in held if k is not e])
                    return True
        return False

    def by_service_ip(self, address: str) -> tuple[TableEntry, ...]:
        def listing(job: str) -> list[TableEntry]:
            return [
                e
                for e in self.jobs[job]
                if any(address in (s.address, s.address_v6) for s in e.service_ips)
            ]

        claimants = [job for job in self.jobs if listing(job)]
        if not claimants:
            return ()
        return tuple(listing(max(claimants, key=lambda job: self.stamp[job])))

    def by_namespace_ip(self, address: str) -> TableEntry | None:
        found = [e for held in self.jobs.values() for e in held if address in e.namespace_ips]
        assert len(found) <= 1
        return found[0] if found else None


def check_same(table: TranslationTable, model: NaiveTable) -> None:
    assert table.jobs() == set(model.jobs)
    for job in JOBS:
        assert table.by_job(job) == tuple(model.jobs.get(job, []))
    for address in NSIPS[1:] + NSIPS6[1:]:
        assert table.by_namespace_ip(address) == model.by_namespace_ip(address)
    for address in SIPS[1:] + SIPS6[1:]:
        assert table.by_service_ip(address) == model.by_service_ip(address)
    seen: list[str] = []
    for view in table.service_view():
        for address in (view.service_ip, view.service_ip_v6):
            if address:
                seen.append(address)
                assert view.entries == model.by_service_ip(address)
                assert view.job_name == view.entries[0].job_name
        if view.ip_type == "instance_ip":
            assert len(view.entries) == 1
    assert sorted(seen) == sorted(a for a in SIPS[1:] + SIPS6[1:] if model.by_service_ip(a))


@settings(max_examples=300, deadline=None)
@given(st.lists(operations(), max_size=12))
def test_table_matches_the_naive_model(ops: list[tuple]) -> None:
    table, model = TranslationTable(), NaiveTable()
    for op in ops:
        before = table.version
        if op[0] == "replace":
            changed = table.replace_job(op[1], op[2])
            assert changed == model.replace(op[1], op[2])
        elif op[0] == "remove_job":
            changed = table.remove_job(op[1])
            assert changed == model.remove_job(op[1])
        else:
            changed = table.remove_namespace_ip(op[1])
            assert changed == model.remove_ns(op[1])
        assert table.version == before + int(changed)
        check_same(table, model)
