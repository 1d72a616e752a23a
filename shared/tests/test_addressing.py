"""Address pools and subnet arithmetic, checked against the documented ranges and oracles.

The expected values here are written out (or computed with plain `ipaddress`), never taken
from the module's private tables, so a wrong table shows up as a failing test.
"""

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oakestra_net.addressing import (
    CLOSEST_V6,
    CONTAINERS_PER_NODE_V4,
    CONTAINERS_PER_NODE_V6,
    INSTANCE_V6_WINDOWS,
    NODE_SUBNET_V4_PREFIX,
    NODE_SUBNET_V6_PREFIX,
    PLATFORM_V4,
    PLATFORM_V6,
    RR_V6,
    SERVICE_V4,
    SERVICE_V6,
    TUN_V4,
    TUN_V6,
    InvalidAddress,
    Pool,
    PoolExhausted,
    bridge_address,
    container_address,
    in_pool,
    index_of,
    is_service_ip,
    nth,
    parse_user_address,
    pool_size,
    subnet_of,
)

WINDOW_V6 = 2**107  # addresses in a /21
TUN_BLOCK_V6_INDEX = (int(IPv6Address("fcef::dead:be00")) - int(IPv6Address("fc00::"))) // 256

# --- constants -------------------------------------------------------------------------


def test_constants_match_the_design():
    assert str(PLATFORM_V4) == "10.16.0.0/12" and str(PLATFORM_V6) == "fc00::/7"
    assert str(SERVICE_V4) == "10.30.0.0/16" and str(SERVICE_V6) == "fdff::/16"
    assert [str(w) for w in INSTANCE_V6_WINDOWS] == ["fdff::/21", "fdff:800::/21"]
    assert str(CLOSEST_V6) == "fdff:1000::/21" and str(RR_V6) == "fdff:2000::/21"
    assert str(TUN_V4) == "10.19.1.254/12" and str(TUN_V6) == "fcef::dead:beef/7"
    assert (NODE_SUBNET_V4_PREFIX, NODE_SUBNET_V6_PREFIX) == (26, 120)
    assert (CONTAINERS_PER_NODE_V4, CONTAINERS_PER_NODE_V6) == (61, 254)


def test_tun_routes_cover_the_platform():
    assert TUN_V4.network == PLATFORM_V4 and TUN_V6.network == PLATFORM_V6


def test_v6_service_windows_lie_in_the_proxy_range_and_do_not_overlap():
    windows = [*INSTANCE_V6_WINDOWS, CLOSEST_V6, RR_V6]
    assert all(w.subnet_of(SERVICE_V6) for w in windows)
    assert not any(a.overlaps(b) for i, a in enumerate(windows) for b in windows[i + 1 :])


def test_pool_names():
    assert [p.value for p in Pool] == [
        "service_v4",
        "instance_v6",
        "closest_v6",
        "rr_v6",
        "subnet_v4",
        "subnet_v6",
    ]
    assert Pool.RR_V6 == "rr_v6"


def test_exception_types():
    assert issubclass(InvalidAddress, ValueError)
    assert issubclass(PoolExhausted, RuntimeError) and not issubclass(PoolExhausted, ValueError)


# --- sizes, first and last ----------------------------------------------------------------

SIZES = {
    Pool.SERVICE_V4: 65534,
    Pool.INSTANCE_V6: 2 * (WINDOW_V6 - 1),
    Pool.CLOSEST_V6: WINDOW_V6 - 1,
    Pool.RR_V6: WINDOW_V6 - 1,
    Pool.SUBNET_V4: 15359,
    Pool.SUBNET_V6: 510 * 2**104 - 1,  # fc00..fdfd /16s, 2**104 /120s each, minus the TUN's
}

FIRST_LAST = {
    Pool.SERVICE_V4: ("10.30.0.1", "10.30.255.254"),
    Pool.INSTANCE_V6: ("fdff::1", "fdff:fff:ffff:ffff:ffff:ffff:ffff:ffff"),
    Pool.CLOSEST_V6: ("fdff:1000::1", "fdff:17ff:ffff:ffff:ffff:ffff:ffff:ffff"),
    Pool.RR_V6: ("fdff:2000::1", "fdff:27ff:ffff:ffff:ffff:ffff:ffff:ffff"),
    Pool.SUBNET_V4: ("10.16.0.0", "10.31.255.192"),
    Pool.SUBNET_V6: ("fc00::", "fdfd:ffff:ffff:ffff:ffff:ffff:ffff:ff00"),
}


@pytest.mark.parametrize("pool", list(Pool))
def test_pool_size(pool):
    assert pool_size(pool) == SIZES[pool]


def test_subnet_v4_size_is_15359():
    assert pool_size(Pool.SUBNET_V4) == 15359


@pytest.mark.parametrize("pool", list(Pool))
def test_first_and_last(pool):
    first, last = FIRST_LAST[pool]
    assert nth(pool, 0) == first
    assert nth(pool, pool_size(pool) - 1) == last
    assert index_of(pool, first) == 0
    assert index_of(pool, last) == pool_size(pool) - 1


@pytest.mark.parametrize("pool", list(Pool))
@pytest.mark.parametrize("offset", [0, 1, 2**200])
def test_positions_outside_the_pool_raise_index_error(pool, offset):
    with pytest.raises(IndexError, match=f"outside pool {pool}"):
        nth(pool, pool_size(pool) + offset)
    with pytest.raises(IndexError):
        nth(pool, -1 - offset)  # no negative indexing from the end


@pytest.mark.parametrize("bad", ["0", 0.0, None, True, False])
def test_positions_must_be_ints(bad):
    with pytest.raises(TypeError, match="must be an int"):
        nth(Pool.SERVICE_V4, bad)


def test_unknown_pool_is_a_clear_error():
    with pytest.raises(ValueError, match="^unknown pool 'nope'$"):
        nth("nope", 0)
    with pytest.raises(ValueError, match="^unknown pool 'nope'$"):
        pool_size("nope")
    with pytest.raises(ValueError, match="^unknown pool 'nope'$"):
        parse_user_address("nope", "10.30.0.1")


# --- whole-pool oracles for the small v4 pools ---------------------------------------------


def test_service_v4_is_every_host_of_10_30_in_order():
    expected = [str(a) for a in IPv4Network("10.30.0.0/16").hosts()]
    assert [nth(Pool.SERVICE_V4, i) for i in range(pool_size(Pool.SERVICE_V4))] == expected
    assert all(index_of(Pool.SERVICE_V4, a) == i for i, a in enumerate(expected))


def test_subnet_v4_is_every_platform_26_except_service_range_and_tun_block():
    skipped_tun = IPv4Network("10.19.1.192/26")
    expected = [
        str(block.network_address)
        for block in IPv4Network("10.16.0.0/12").subnets(new_prefix=26)
        if not block.subnet_of(IPv4Network("10.30.0.0/16")) and block != skipped_tun
    ]
    assert len(expected) == 15359
    assert [nth(Pool.SUBNET_V4, i) for i in range(15359)] == expected
    assert all(index_of(Pool.SUBNET_V4, a) == i for i, a in enumerate(expected))


# --- around every skipped block ------------------------------------------------------------


@pytest.mark.parametrize(
    "pool, index, before, after, skipped",
    [
        (Pool.SUBNET_V4, 3079, "10.19.1.128", "10.19.2.0", ["10.19.1.192"]),
        (
            Pool.SUBNET_V4,
            14335,
            "10.29.255.192",
            "10.31.0.0",
            ["10.30.0.0", "10.30.0.64", "10.30.128.0", "10.30.255.192"],
        ),
        (
            Pool.SUBNET_V6,
            TUN_BLOCK_V6_INDEX,
            "fcef::dead:bd00",
            "fcef::dead:bf00",
            ["fcef::dead:be00"],
        ),
        (
            Pool.INSTANCE_V6,
            WINDOW_V6 - 1,
            "fdff:7ff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fdff:800::1",
            ["fdff:800::"],
        ),
    ],
)
def test_skipped_blocks_are_never_produced(pool, index, before, after, skipped):
    assert nth(pool, index - 1) == before
    assert nth(pool, index) == after
    assert index_of(pool, before) == index - 1
    assert index_of(pool, after) == index
    for address in skipped:
        assert index_of(pool, address) is None
        assert not in_pool(pool, address)


def test_subnet_v6_tun_block_index_is_where_the_design_says():
    assert nth(Pool.SUBNET_V6, 0xEF * 2**104) == "fcef::"
    assert TUN_BLOCK_V6_INDEX == 0xEF * 2**104 + 0xDEADBE


@pytest.mark.parametrize(
    "pool, address",
    [
        # neighbours just outside each pool, and reserved first/last addresses
        (Pool.SERVICE_V4, "10.30.0.0"),
        (Pool.SERVICE_V4, "10.30.255.255"),
        (Pool.SERVICE_V4, "10.29.255.255"),
        (Pool.SERVICE_V4, "10.31.0.0"),
        (Pool.INSTANCE_V6, "fdff::"),
        (Pool.INSTANCE_V6, "fdff:800::"),
        (Pool.INSTANCE_V6, "fdff:1000::1"),
        (Pool.INSTANCE_V6, "fdfe:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        (Pool.CLOSEST_V6, "fdff:1000::"),
        (Pool.CLOSEST_V6, "fdff:fff:ffff:ffff:ffff:ffff:ffff:ffff"),
        (Pool.CLOSEST_V6, "fdff:1800::"),
        (Pool.RR_V6, "fdff:2000::"),
        (Pool.RR_V6, "fdff:1fff:ffff:ffff:ffff:ffff:ffff:ffff"),
        (Pool.RR_V6, "fdff:2800::"),
        (Pool.RR_V6, "fdff:2800::1"),
        (Pool.SUBNET_V4, "10.15.255.192"),
        (Pool.SUBNET_V4, "10.32.0.0"),
        (Pool.SUBNET_V4, "10.16.0.1"),  # not a block start
        (Pool.SUBNET_V4, "10.16.0.32"),
        (Pool.SUBNET_V6, "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ff00"),
        (Pool.SUBNET_V6, "fdfe::"),
        (Pool.SUBNET_V6, "fdff::"),
        (Pool.SUBNET_V6, "fc00::1"),
        (Pool.SUBNET_V6, "fc00::80"),
    ],
)
def test_neighbours_are_not_members(pool, address):
    assert index_of(pool, address) is None
    assert in_pool(pool, address) is False


@pytest.mark.parametrize("pool", list(Pool))
@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "abc",
        "10.30.0",
        "10.30.0.1.",
        "10.30.0.256",
        "010.30.0.1",  # leading zeros are ambiguous (octal?) and rejected
        " 10.30.0.1",
        "10.30.0.1\n",
        "10.30.0.1/32",
        "fdff:2000::1/128",
        "fdff:2000::1%eth0",  # scoped
        "fdff:2000::1%1",
        "fdff:2000:::1",
        "::ffff:10.30.0.1",  # IPv4-mapped: an IPv6 address, not the IPv4 one
        None,
        169738241,  # 10.30.0.1 as an int
        IPv4Address("10.30.0.1"),
        b"10.30.0.1",
        ["10.30.0.1"],
    ],
)
def test_garbage_is_never_a_member(pool, garbage):
    assert index_of(pool, garbage) is None
    assert in_pool(pool, garbage) is False


@pytest.mark.parametrize(
    "pool, address",
    [
        (Pool.SERVICE_V4, "fdff::1"),
        (Pool.SERVICE_V4, "::a1e:1"),  # same low bits as 10.30.0.1
        (Pool.RR_V6, "10.30.0.1"),
        (Pool.SUBNET_V4, "fc00::"),
        (Pool.SUBNET_V6, "10.16.0.0"),
        (Pool.INSTANCE_V6, "0.0.0.1"),
    ],
)
def test_wrong_family_is_not_a_member(pool, address):
    assert index_of(pool, address) is None


def test_index_of_accepts_any_spelling_of_a_member():
    expected = index_of(Pool.RR_V6, "fdff:2000::30")
    assert expected == 0x2F
    for spelling in ("FDFF:2000:0::30", "fdff:2000:0:0:0:0:0:30", "fdff:2000::0.0.0.48"):
        assert index_of(Pool.RR_V6, spelling) == expected


# --- properties over the huge pools --------------------------------------------------------


@st.composite
def pool_and_position(draw):
    pool = draw(st.sampled_from(list(Pool)))
    return pool, draw(st.integers(min_value=0, max_value=pool_size(pool) - 1))


@given(pool_and_position())
def test_index_of_inverts_nth(case):
    pool, n = case
    address = nth(pool, n)
    assert index_of(pool, address) == n
    assert address == str(ip_address(address))  # canonical form


@given(pool_and_position())
def test_nth_is_strictly_increasing(case):
    pool, n = case
    if n + 1 < pool_size(pool):
        assert int(ip_address(nth(pool, n))) < int(ip_address(nth(pool, n + 1)))


def _member_oracle(pool, address):
    """Pool membership written straight from the documented ranges."""
    if pool is Pool.SERVICE_V4:
        return address in IPv4Network("10.30.0.0/16") and str(address) not in (
            "10.30.0.0",
            "10.30.255.255",
        )
    if pool is Pool.SUBNET_V4:
        return (
            address in IPv4Network("10.16.0.0/12")
            and int(address) % 64 == 0
            and address not in IPv4Network("10.30.0.0/16")
            and str(address) != "10.19.1.192"
        )
    if pool is Pool.SUBNET_V6:
        return (
            address in IPv6Network("fc00::/7")
            and int(address) % 256 == 0
            and address < IPv6Address("fdfe::")
            and str(address) != "fcef::dead:be00"
        )
    windows = {
        Pool.INSTANCE_V6: ["fdff::/21", "fdff:800::/21"],
        Pool.CLOSEST_V6: ["fdff:1000::/21"],
        Pool.RR_V6: ["fdff:2000::/21"],
    }[pool]
    return any(
        address in IPv6Network(w) and address != IPv6Network(w).network_address for w in windows
    )


COVER = {  # where each pool's members and its neighbours lie
    Pool.SERVICE_V4: IPv4Network("10.30.0.0/16"),
    Pool.SUBNET_V4: IPv4Network("10.16.0.0/12"),
    Pool.SUBNET_V6: IPv6Network("fc00::/7"),
    Pool.INSTANCE_V6: IPv6Network("fdff::/16"),
    Pool.CLOSEST_V6: IPv6Network("fdff::/16"),
    Pool.RR_V6: IPv6Network("fdff::/16"),
}


@st.composite
def pool_and_address(draw):
    pool = draw(st.sampled_from(list(Pool)))
    cover = COVER[pool]
    low = max(int(cover.network_address) - 300, 0)
    high = int(cover.broadcast_address) + 300
    value = draw(st.integers(min_value=low, max_value=high))
    if draw(st.booleans()):  # also hit block starts, window starts and the reserved ends
        value -= value % draw(st.sampled_from([64, 256, 2**107, 2**16]))
        value += draw(st.sampled_from([0, 0, 1, -1, 255]))
    make = IPv4Address if cover.version == 4 else IPv6Address
    return pool, make(max(value, 0))


@given(pool_and_address())
def test_membership_matches_the_design(case):
    pool, address = case
    index = index_of(pool, str(address))
    assert (index is not None) == _member_oracle(pool, address)
    if index is not None:
        assert nth(pool, index) == str(address)


# --- user-given addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "pool, value, expected",
    [
        (Pool.SERVICE_V4, "10.30.1.30", "10.30.1.30"),
        (Pool.SERVICE_V4, "10.30.0.1", "10.30.0.1"),
        (Pool.SERVICE_V4, "10.30.0.255", "10.30.0.255"),
        (Pool.SERVICE_V4, "10.30.254.0", "10.30.254.0"),
        (Pool.SERVICE_V4, "10.30.255.254", "10.30.255.254"),
        (Pool.RR_V6, "fdff:2000::30", "fdff:2000::30"),
        (Pool.RR_V6, "FDFF:2000:0::30", "fdff:2000::30"),
        (Pool.RR_V6, "fdff:2000:0000:0000:0000:0000:0000:0030", "fdff:2000::30"),
        (Pool.RR_V6, "fdff:2000::0.0.0.48", "fdff:2000::30"),
        (Pool.RR_V6, "fdff:27ff::1", "fdff:27ff::1"),  # upstream rejected all but fdff:20xx
        (Pool.RR_V6, "fdff:2100:0::1", "fdff:2100::1"),
        (Pool.CLOSEST_V6, "fdff:1000::AbC", "fdff:1000::abc"),
        (Pool.INSTANCE_V6, "fdff:800::1", "fdff:800::1"),
    ],
)
def test_user_addresses_are_returned_canonical(pool, value, expected):
    assert parse_user_address(pool, value) == expected


@pytest.mark.parametrize(
    "pool, value, message",
    [
        (Pool.SERVICE_V4, "10.20.0.1", "RR_ip '10.20.0.1' is not in 10.30.0.0/16"),
        (Pool.SERVICE_V4, "10.31.0.1", "RR_ip '10.31.0.1' is not in 10.30.0.0/16"),
        (
            Pool.SERVICE_V4,
            "10.30.0.0",
            "RR_ip '10.30.0.0' is in 10.30.0.0/16 but not assignable:"
            " its first and last addresses are reserved",
        ),
        (
            Pool.SERVICE_V4,
            "10.30.255.255",
            "RR_ip '10.30.255.255' is in 10.30.0.0/16 but not assignable:"
            " its first and last addresses are reserved",
        ),
        (Pool.SERVICE_V4, "10.30.999.1", "RR_ip '10.30.999.1' is not a valid IP address"),
        (Pool.SERVICE_V4, "10.30.x.y", "RR_ip '10.30.x.y' is not a valid IP address"),
        (Pool.SERVICE_V4, "010.30.0.1", "RR_ip '010.30.0.1' is not a valid IP address"),
        (Pool.SERVICE_V4, "", "RR_ip '' is not a valid IP address"),
        (Pool.SERVICE_V4, "10.30.0.1 ", "RR_ip '10.30.0.1 ' is not a valid IP address"),
        (Pool.SERVICE_V4, "fdff:2000::1", "RR_ip 'fdff:2000::1' is not an IPv4 address"),
        (
            Pool.SERVICE_V4,
            "::ffff:10.30.0.1",
            "RR_ip '::ffff:10.30.0.1' is not an IPv4 address; write it as 10.30.0.1",
        ),
        (Pool.SERVICE_V4, 5, "RR_ip must be a string, got int"),
        (Pool.SERVICE_V4, None, "RR_ip must be a string, got NoneType"),
        (Pool.RR_V6, "10.30.0.1", "RR_ip_v6 '10.30.0.1' is not an IPv6 address"),
        (Pool.RR_V6, "fdff:2800::1", "RR_ip_v6 'fdff:2800::1' is not in fdff:2000::/21"),
        (Pool.RR_V6, "fdff::1", "RR_ip_v6 'fdff::1' is not in fdff:2000::/21"),
        (Pool.RR_V6, "::ffff:10.30.0.1", "RR_ip_v6 '::ffff:10.30.0.1' is not in fdff:2000::/21"),
        (
            Pool.RR_V6,
            "fdff:2000::",
            "RR_ip_v6 'fdff:2000::' is in fdff:2000::/21 but not assignable:"
            " its first address is reserved",
        ),
        (
            Pool.RR_V6,
            "fdff:2000::1%eth0",
            "RR_ip_v6 'fdff:2000::1%eth0' must not carry a scope id (%...)",
        ),
        (Pool.RR_V6, "fdff:2000::1/128", "RR_ip_v6 'fdff:2000::1/128' is not a valid IP address"),
        (
            Pool.CLOSEST_V6,
            "fdff:2000::1",
            "closest_ip_v6 'fdff:2000::1' is not in fdff:1000::/21",
        ),
        (
            Pool.INSTANCE_V6,
            "fdff:1000::1",
            "instance_ip_v6 'fdff:1000::1' is not in fdff::/21 or fdff:800::/21",
        ),
        (
            Pool.INSTANCE_V6,
            "fdff:800::",
            "instance_ip_v6 'fdff:800::' is in fdff::/21 or fdff:800::/21 but not assignable:"
            " the first address of each window is reserved",
        ),
        (
            Pool.SUBNET_V4,
            "10.19.1.192",
            "subnet_addr '10.19.1.192' is in 10.16.0.0/12 but not assignable: node subnets"
            " are /26 network addresses outside 10.30.0.0/16 and 10.19.1.192/26",
        ),
        (
            Pool.SUBNET_V6,
            "fdfe::",
            "subnet_addr_v6 'fdfe::' is in fc00::/7 but not assignable: node subnets are /120"
            " network addresses from fc00:: to fdfd:ffff:ffff:ffff:ffff:ffff:ffff:ff00"
            " outside fcef::dead:be00/120",
        ),
    ],
)
def test_user_address_errors_say_what_is_wrong(pool, value, message):
    with pytest.raises(InvalidAddress) as err:
        parse_user_address(pool, value)
    assert str(err.value) == message


def test_user_address_error_can_name_another_field():
    with pytest.raises(InvalidAddress, match=r"^closest_ip '10\.31\.0\.1' is not in 10\.30"):
        parse_user_address(Pool.SERVICE_V4, "10.31.0.1", field="closest_ip")
    with pytest.raises(InvalidAddress, match=r"^addresses\.rr_ip must be a string"):
        parse_user_address(Pool.SERVICE_V4, 1, field="addresses.rr_ip")


def test_user_address_error_does_not_echo_huge_input():
    with pytest.raises(InvalidAddress) as err:
        parse_user_address(Pool.RR_V6, "f" * 100_000)
    assert len(str(err.value)) < 200


@given(pool_and_position())
def test_every_member_is_accepted_as_user_input(case):
    pool, n = case
    address = nth(pool, n)
    assert parse_user_address(pool, address) == address
    assert parse_user_address(pool, address.upper()) == address


# --- service IPs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, expected",
    [
        ("10.30.0.0", True),  # the proxy matches the whole /16
        ("10.30.1.30", True),
        ("10.30.255.255", True),
        ("10.29.255.255", False),
        ("10.31.0.0", False),
        ("10.16.0.2", False),
        ("fdff::", True),
        ("fdff:2000::30", True),
        ("FDFF:2000::30", True),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
        ("fdfe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", False),
        ("fc00::2", False),
        ("::ffff:10.30.0.1", False),
        ("fdff::1%eth0", False),
        ("", False),
        ("10.30", False),
        (None, False),
        (169738241, False),
    ],
)
def test_is_service_ip(address, expected):
    assert is_service_ip(address) is expected


# --- node subnets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subnet, bridge",
    [
        ("10.16.0.0", "10.16.0.1"),
        ("10.18.0.64", "10.18.0.65"),
        ("10.31.255.192", "10.31.255.193"),
        ("fc00::", "fc00::1"),
        ("FC00::100", "fc00::101"),
        ("fdfd:ffff:ffff:ffff:ffff:ffff:ffff:ff00", "fdfd:ffff:ffff:ffff:ffff:ffff:ffff:ff01"),
    ],
)
def test_bridge_address(subnet, bridge):
    assert bridge_address(subnet) == bridge


@pytest.mark.parametrize(
    "subnet, message",
    [
        (
            "10.16.0.1",
            "subnet '10.16.0.1' is not the network address of a /26 (that would be 10.16.0.0)",
        ),
        (
            "10.16.0.32",
            "subnet '10.16.0.32' is not the network address of a /26 (that would be 10.16.0.0)",
        ),
        ("fc00::1", "subnet 'fc00::1' is not the network address of a /120 (that would be fc00::)"),
        ("192.168.0.0", "subnet '192.168.0.0' is not in 10.16.0.0/12"),
        ("10.32.0.0", "subnet '10.32.0.0' is not in 10.16.0.0/12"),
        ("fe00::", "subnet 'fe00::' is not in fc00::/7"),
        ("10.16.0.0/26", "subnet '10.16.0.0/26' is not a valid IP address"),
        ("", "subnet '' is not a valid IP address"),
        ("fc00::%eth0", "subnet 'fc00::%eth0' must not carry a scope id (%...)"),
        (None, "subnet must be a string, got NoneType"),
    ],
)
def test_bad_subnets_are_rejected(subnet, message):
    for call in (lambda: bridge_address(subnet), lambda: container_address(subnet, 0)):
        with pytest.raises(InvalidAddress) as err:
            call()
        assert str(err.value) == message


@pytest.mark.parametrize(
    "subnet, n, expected",
    [
        ("10.16.0.0", 0, "10.16.0.2"),
        ("10.16.0.0", 60, "10.16.0.62"),
        ("10.18.0.64", 0, "10.18.0.66"),
        ("10.18.0.64", 60, "10.18.0.126"),
        ("fc00::", 0, "fc00::2"),
        ("fc00::", 253, "fc00::ff"),
        ("fc00::100", 1, "fc00::103"),
    ],
)
def test_container_address(subnet, n, expected):
    assert container_address(subnet, n) == expected


@pytest.mark.parametrize(
    "subnet, n", [("10.16.0.0", 61), ("10.16.0.0", -1), ("fc00::", 254), ("fc00::", -1)]
)
def test_container_number_out_of_range(subnet, n):
    with pytest.raises(IndexError, match=f"container number {n} is outside subnet {subnet}"):
        container_address(subnet, n)


@pytest.mark.parametrize("n", [True, "1", 1.0, None])
def test_container_number_must_be_int(n):
    with pytest.raises(TypeError, match="container number must be an int"):
        container_address("10.16.0.0", n)


@pytest.mark.parametrize(
    "subnet, count, bridge, last, broadcast",
    [
        ("10.16.0.64", 61, "10.16.0.65", "10.16.0.126", "10.16.0.127"),
        ("fc00::", 254, "fc00::1", "fc00::ff", None),  # v6 uses the whole /120
    ],
)
def test_containers_fill_the_subnet_after_the_bridge(subnet, count, bridge, last, broadcast):
    addresses = [container_address(subnet, n) for n in range(count)]
    assert len(set(addresses)) == count
    assert addresses[-1] == last
    assert subnet not in addresses and bridge not in addresses and broadcast not in addresses
    assert all(subnet_of(a) == subnet for a in addresses)


@pytest.mark.parametrize(
    "address, subnet",
    [
        ("10.16.0.0", "10.16.0.0"),
        ("10.16.0.5", "10.16.0.0"),
        ("10.16.0.63", "10.16.0.0"),
        ("10.16.0.64", "10.16.0.64"),
        ("10.31.255.255", "10.31.255.192"),
        ("fc00::1ff", "fc00::100"),
        ("FC00::1FF", "fc00::100"),
        ("fdfd:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fdfd:ffff:ffff:ffff:ffff:ffff:ffff:ff00"),
        ("10.15.255.255", None),
        ("10.32.0.0", None),
        ("192.168.1.2", None),
        ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("fe00::", None),
        ("::ffff:10.16.0.5", None),
        ("fc00::5%eth0", None),
        ("", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_subnet_of(address, subnet):
    assert subnet_of(address) == subnet


def test_tun_addresses_sit_in_blocks_no_node_gets():
    assert subnet_of(str(TUN_V4.ip)) == "10.19.1.192"
    assert subnet_of(str(TUN_V6.ip)) == "fcef::dead:be00"
    assert not in_pool(Pool.SUBNET_V4, "10.19.1.192")
    assert not in_pool(Pool.SUBNET_V6, "fcef::dead:be00")


@given(
    st.sampled_from([Pool.SUBNET_V4, Pool.SUBNET_V6]).flatmap(
        lambda pool: st.tuples(
            st.just(pool),
            st.integers(0, pool_size(pool) - 1),
            st.integers(0, (61 if pool is Pool.SUBNET_V4 else 254) - 1),
        )
    )
)
def test_every_container_address_maps_back_to_its_subnet(case):
    pool, index, n = case
    subnet = nth(pool, index)
    address = container_address(subnet, n)
    assert subnet_of(address) == subnet
    assert subnet_of(bridge_address(subnet)) == subnet
    assert not is_service_ip(address)
