"""seal.py: sealed tunnel datagrams (AES-256-GCM with the cluster's tunnel key)."""

from __future__ import annotations

import pytest

from net_manager.dataplane.io.seal import OVERHEAD, SEAL_MAGIC, Sealer, parse_key

KEY = parse_key("11" * 32)
PACKET = bytes.fromhex("4500001c0001000040110000") + bytes(16)


def test_what_one_node_seals_the_other_opens() -> None:
    sealed = Sealer(KEY).seal(PACKET)
    assert sealed[0] == SEAL_MAGIC and len(sealed) == len(PACKET) + OVERHEAD
    assert PACKET not in sealed  # encrypted, not only signed
    assert Sealer(KEY).open(sealed) == PACKET
    assert Sealer(KEY).open(memoryview(bytearray(sealed))) == PACKET


@pytest.mark.parametrize("flip", [0, 5, 13, -1])
def test_any_changed_byte_makes_it_unopenable(flip: int) -> None:
    sealed = bytearray(Sealer(KEY).seal(PACKET))
    sealed[flip] ^= 0x01
    assert Sealer(KEY).open(sealed) is None


def test_another_key_a_plain_packet_or_a_short_datagram_does_not_open() -> None:
    sealed = Sealer(KEY).seal(PACKET)
    assert Sealer(parse_key("22" * 32)).open(sealed) is None
    assert Sealer(KEY).open(PACKET) is None
    assert Sealer(KEY).open(sealed[: OVERHEAD - 1]) is None


def test_no_two_datagrams_share_a_nonce() -> None:
    sealer, other = Sealer(KEY), Sealer(KEY)
    nonces = {sealer.seal(PACKET)[1:13] for _ in range(1000)}
    nonces |= {other.seal(PACKET)[1:13] for _ in range(1000)}
    assert len(nonces) == 2000


@pytest.mark.parametrize("text", ["", "11" * 31, "zz" * 32, "11" * 33])
def test_a_key_is_64_hex_digits(text: str) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        parse_key(text)
