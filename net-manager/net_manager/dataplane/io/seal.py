"""Sealed tunnel datagrams: AES-256-GCM with a key every node of the cluster shares.

With a tunnel key, every datagram a node sends (IP packet, GSO frame, RTT probe) goes
out as [SEAL_MAGIC][nonce 12][ciphertext + tag 16], and a datagram that is not sealed
with the key is dropped. The magic is in the tunnel's control range (first nibble
neither 4 nor 6): an upstream node drops such datagrams, so a sealed cluster has no
upstream nodes. The nonce is 8 random bytes drawn when the process starts (and again
every 2**32 datagrams) and a counter, so no two datagrams of any process share one.
Not covered: replay of a captured datagram, and a node with the key posing as another.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEAL_MAGIC = 0xA9
KEY_ENV = "OAK_TUNNEL_KEY"  # how the supervisor hands the key to the process (not argv)
OVERHEAD = 1 + 12 + 16
_MAGIC = bytes([SEAL_MAGIC])


def parse_key(text: str) -> bytes:
    """A tunnel key: 64 hex digits (32 bytes); ValueError naming what is wrong."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("the tunnel key must be 64 hex digits") from None
    if len(key) != 32:
        raise ValueError(f"the tunnel key must be 64 hex digits (32 bytes), got {len(key)} bytes")
    return key


class Sealer:
    """Seals and opens tunnel datagrams with one key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._prefix = os.urandom(8)
        self._counter = 0

    def seal(self, data: bytes | bytearray | memoryview) -> bytes:
        self._counter += 1
        if self._counter >= 1 << 32:
            self._prefix, self._counter = os.urandom(8), 1
        nonce = self._prefix + self._counter.to_bytes(4, "big")
        return _MAGIC + nonce + self._aead.encrypt(nonce, bytes(data), _MAGIC)

    def open(self, datagram: bytes | bytearray | memoryview) -> bytes | None:
        """The datagram's content, or None if it is not sealed with our key."""
        if len(datagram) < OVERHEAD or datagram[0] != SEAL_MAGIC:
            return None
        try:
            return self._aead.decrypt(bytes(datagram[1:13]), bytes(datagram[13:]), _MAGIC)
        except InvalidTag:
            return None
