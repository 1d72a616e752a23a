"""Remove what test and benchmark runs left behind: namespaces with our prefixes.

    python -m testbed.sweep [--dry-run] [PREFIX ...]     (make clean runs it)

A namespace whose name starts with one of the prefixes (default oakt-, oakb- and oakr-,
see topology.PREFIXES) was made by a testbed run (tests, benchmarks, `make run`); the
processes still inside it were started by such a run, so they are stopped (SIGTERM,
then SIGKILL, by PID) before the namespace is deleted, which removes its devices too.
Nothing else is touched: no device, route or address of the namespace this runs in, no
other namespace.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from testbed.netns import run_command
from testbed.topology import PREFIXES


def our_namespaces(prefixes: tuple[str, ...] = PREFIXES) -> list[str]:
    result = run_command(["ip", "netns", "list"], "list namespaces")
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(prefixes)]


def pids_in(netns: str) -> list[int]:
    result = run_command(["ip", "netns", "pids", netns], f"list processes in {netns}")
    return [int(pid) for pid in result.stdout.split() if pid.isdigit() and int(pid) != os.getpid()]


def stop_pids(pids: list[int], timeout: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.05)
        if not any(_alive(pid) for pid in pids):
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (our own unreaped child) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sweep(prefixes: tuple[str, ...] = PREFIXES, *, dry_run: bool = False) -> list[str]:
    """Delete our leftover namespaces (and stop their processes); return their names."""
    swept = []
    for netns in our_namespaces(prefixes):
        pids = pids_in(netns)
        print(f"sweep: namespace {netns}" + (f", processes {pids}" if pids else ""))
        if not dry_run:
            stop_pids(pids)
            run_command(["ip", "netns", "del", netns], f"delete namespace {netns}")
        swept.append(netns)
    return swept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.sweep", description=__doc__)
    parser.add_argument("prefixes", nargs="*", default=list(PREFIXES))
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    bad = [p for p in args.prefixes if not p.startswith("oak") or len(p) < 4]
    if bad:
        parser.error(f"prefixes must start with 'oak' and say more: {bad}")
    if os.geteuid() != 0:
        print("sweep: not root, nothing to do (testbeds need root)")
        return 0
    swept = sweep(tuple(args.prefixes), dry_run=args.dry_run)
    print(f"sweep: {len(swept)} namespace(s) {'found' if args.dry_run else 'removed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
