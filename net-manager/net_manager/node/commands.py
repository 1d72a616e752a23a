"""Running a tool (ip, iptables, sh) inside a namespace, under nsenter.

The calling thread never switches namespace; a failure is a KernelError naming the
command and the namespace.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from net_manager.node.errors import KernelError

COMMAND_TIMEOUT = 30.0


def run_command(
    netns_path: str | None,
    where: str,
    argv: list[str],
    *,
    check: bool = True,
    stdin: str | None = None,
):
    """Run `argv` inside `netns_path` (None: here); KernelError naming it if it fails."""
    command = argv if netns_path is None else nsenter(netns_path, argv)
    shown = " ".join(argv) if stdin is None else f"{argv[0]} with {stdin!r}"
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, input=stdin, timeout=COMMAND_TIMEOUT
        )
    except FileNotFoundError:
        raise KernelError(f"cannot run {command[0]}: not installed") from None
    except subprocess.TimeoutExpired:
        raise KernelError(f"{shown} in {where} did not finish in {COMMAND_TIMEOUT} s") from None
    if check and result.returncode != 0:
        raise KernelError(f"{shown} in {where} failed: {result.stderr.strip()}")
    return result


def nsenter(netns_path: str, argv: Sequence[str]) -> list[str]:
    return ["nsenter", f"--net={netns_path}", "--", *argv]
