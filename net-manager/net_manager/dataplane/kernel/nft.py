"""Runs `nft` inside the node's namespace: apply a script, read our table back.

Every command is prefixed with `netns_exec` (e.g. `ip netns exec <node>`), so the
daemon of a test node never programs the namespace it runs in. Only our table
(`ruleset.TABLE`) is ever read or written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from net_manager.dataplane.kernel.ruleset import FAMILY, TABLE, render_delete

TIMEOUT = 10.0

# The smallest ruleset using everything the kernel path needs (inet nat, numgen, maps,
# ct expressions), checked by the kernel and never committed (`nft -c`).
_PROBE = f"""table {FAMILY} {TABLE}_probe {{
  map to {{ type ipv4_addr : ipv4_addr; }}
  chain pre {{
    type nat hook prerouting priority dstnat - 10; policy accept;
    ip daddr 10.30.0.1 dnat ip to numgen inc mod 2 map {{ 0 : 10.16.0.2, 1 : 10.16.0.3 }}
    ip6 daddr fdff::1 dnat ip6 to fc00::2
  }}
  chain post {{
    type nat hook postrouting priority srcnat - 10; policy accept;
    ct status dnat ct original ip daddr 10.30.0.1 snat ip to ip saddr map @to
  }}
}}
"""


_ACCOUNTING = "/proc/sys/net/netfilter/nf_conntrack_acct"
_ACCOUNTING_ON = f'[ "$(cat {_ACCOUNTING})" = 1 ] || echo 1 > {_ACCOUNTING}'


class NftError(RuntimeError):
    """nft failed; the message has its error output."""


class Nft:
    """`nft` in one namespace (see the module doc)."""

    def __init__(self, netns_exec: Sequence[str] | None = None, binary: str = "nft") -> None:
        self._prefix = [*(netns_exec or ()), binary]
        self._binary = binary

    def apply(self, script: str, *, check_only: bool = False) -> None:
        """Run a script as one transaction (all or nothing); NftError if refused."""
        self._run(["-c", "-f", "-"] if check_only else ["-f", "-"], script)

    def delete_table(self) -> None:
        self.apply(render_delete())

    def table(self) -> list[dict[str, Any]]:
        """Our table as nft's JSON objects ([] when it does not exist)."""
        listing = self._run(["-j", "list", "tables"])
        names = {o["table"]["name"] for o in _objects(listing) if "table" in o}
        if TABLE not in names:
            return []
        return _objects(self._run(["-j", "list", "table", FAMILY, TABLE]))

    def supported(self) -> tuple[bool, str]:
        """(True, "") when nft exists and the kernel takes our kind of ruleset, else
        (False, why). Nothing is committed."""
        if shutil.which(self._binary) is None:
            return False, f"{self._binary} is not installed"
        try:
            self.apply(_PROBE, check_only=True)
        except NftError as err:
            return False, str(err)
        return True, ""

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        try:
            done = subprocess.run(
                [*self._prefix, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise NftError(f"nft {' '.join(args)}: {err}") from None
        if done.returncode != 0:
            raise NftError(f"nft {' '.join(args)}: {done.stderr.strip()[:2000]}")
        return done.stdout


class Conntrack:
    """`conntrack` in one namespace: lists the DNATed connections with their packet
    counts (which services are used) and forgets the connections NATed to an instance
    that left. Without the tool, no use is seen and such connections run into the void
    until they end."""

    def __init__(self, netns_exec: Sequence[str] | None = None, binary: str = "conntrack"):
        self._netns_exec = list(netns_exec or ())
        self._prefix = [*self._netns_exec, binary]
        self._binary = binary

    def enable_accounting(self) -> None:
        """Have conntrack count packets per connection (`nf_conntrack_acct`, a setting of
        the namespace; connections that exist already stay uncounted)."""
        argv = [*self._netns_exec, "sh", "-c", _ACCOUNTING_ON]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise NftError(f"conntrack accounting: {err}") from None
        if done.returncode != 0:
            raise NftError(f"conntrack accounting: {done.stderr.strip()[:500]}")

    def listing(self) -> str:
        """`conntrack -L -g -o id`: the DNATed connections of both families, one a line."""
        if shutil.which(self._binary) is None:
            raise NftError(f"{self._binary} is not installed")
        argv = ["-L", "-g", "-o", "id"]
        try:
            done = subprocess.run(
                [*self._prefix, *argv], capture_output=True, text=True, timeout=TIMEOUT
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise NftError(f"conntrack {' '.join(argv)}: {err}") from None
        if done.returncode != 0:
            raise NftError(f"conntrack {' '.join(argv)}: {done.stderr.strip()[:500]}")
        return done.stdout

    def forget(self, version: int, service_ip: str, namespace_ip: str) -> None:
        """Delete the entries of connections to service_ip that went to namespace_ip."""
        if shutil.which(self._binary) is None:
            raise NftError(f"{self._binary} is not installed")
        family = "ipv4" if version == 4 else "ipv6"
        argv = ["-D", "-f", family, "--orig-dst", service_ip, "--reply-src", namespace_ip]
        try:
            done = subprocess.run(
                [*self._prefix, *argv], capture_output=True, text=True, timeout=TIMEOUT
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise NftError(f"conntrack {' '.join(argv)}: {err}") from None
        # exit status 1 with "0 flow entries have been deleted" is not an error
        if done.returncode not in (0, 1) or "entries have been deleted" not in done.stderr:
            raise NftError(f"conntrack {' '.join(argv)}: {done.stderr.strip()[:500]}")


def _objects(listing: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(listing or "{}")
    except json.JSONDecodeError as err:
        raise NftError(f"nft printed no JSON: {err}") from None
    return [o for o in data.get("nftables", []) if isinstance(o, dict)]


def chain_packets(objects: list[dict[str, Any]]) -> dict[str, int]:
    """Packets counted by the `counter` of each chain of our table (by chain name)."""
    packets: dict[str, int] = {}
    for obj in objects:
        rule = obj.get("rule")
        if not isinstance(rule, dict):
            continue
        for statement in rule.get("expr", []):
            counter = statement.get("counter") if isinstance(statement, dict) else None
            if isinstance(counter, dict):
                chain = str(rule.get("chain", ""))
                packets[chain] = packets.get(chain, 0) + int(counter.get("packets", 0))
    return packets
