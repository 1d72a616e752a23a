"""Mosquitto password files written without `mosquitto_passwd`.

A line is `user:$7$<iterations>$<base64 salt>$<base64 hash>`, the PBKDF2-HMAC-SHA512
form every Mosquitto 2.x reads and `mosquitto_passwd` writes by default (101
iterations, 12 bytes of salt). The compose broker's init service runs on one of our
Python images, which has no Mosquitto tools, and must still set passwords; these
functions do it with the standard library only. Pure apart from `os.urandom`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

ITERATIONS = 101
SALT_BYTES = 12


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """`$7$…` hash of `password` (a new random salt unless one is given)."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    encoded = (base64.b64encode(part).decode() for part in (salt, digest))
    return f"$7${iterations}${'$'.join(encoded)}"


def verify(password: str, hashed: str) -> bool:
    """True when `hashed` (a `$7$` entry) is the hash of `password`."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(hash_password(password, salt, iterations), hashed)


def users(text: str) -> dict[str, str]:
    """{user: hash} of a password file's text."""
    entries = {}
    for line in text.splitlines():
        user, sep, hashed = line.partition(":")
        if sep and user:
            entries[user] = hashed
    return entries


def with_user(text: str, user: str, password: str) -> str:
    """The password file's text with `user` added, or its password replaced."""
    if ":" in user or not user or user.strip() != user:
        raise ValueError(f"broker user {user!r} must be non-empty, without ':' or blanks")
    entries = users(text)
    entries[user] = hash_password(password)
    return "".join(f"{name}:{hashed}\n" for name, hashed in entries.items())


def without_user(text: str, user: str) -> str:
    """The password file's text without `user`."""
    entries = users(text)
    entries.pop(user, None)
    return "".join(f"{name}:{hashed}\n" for name, hashed in entries.items())
