"""Ablation of the kernel fast path's per-packet cost: UDP packets/s at < 1 % loss
through the kernel path with variants of the nft rules, vs the direct path, same run.

    python -m testbed.bench_rules [--repeat 3] [--variants current,previous,...]

Reuses `make bench`'s testbed (n1: c1, c3; n2: c2) and its UDP measurement, without
the TUN data planes. Each variant is a text edit of the rendered script of both nodes
(this is a measuring tool, not product code):

- current: the rules as rendered (use read from conntrack, no per-packet use rule);
- previous: the rules before that: a `used` chain whose set every packet of a served
  connection refreshes, and the tunnel's forward checks in one flat chain;
- used-set: current + that `used` chain (what per-packet use tracking costs);
- notrack-vxlan: current + no conntrack for the outer VXLAN packets (raw priority);
- minimal: only the NAT chains and tunnel_mark (no tunnel guards).

The direct paths run without any table and with a table that only switches conntrack
on ("+ct"), to show what conntrack costs by itself.

    python -m testbed.bench_rules --listing 2000,20000,100000 [--repeat 3] [--poll 20]

measures instead what reading use from conntrack costs the kernel backend each time
(`conntrack -L -g -o id`, the parse, the comparison) with that many DNATed connections
(inserted with `conntrack -I --dst-nat` in a namespace of their own), and the interval
its pace (`dataplane/kernel/pace.py`) then keeps between two listings; with `--poll`,
also the CPU (process and children) of a KernelBackend serving those connections'
service IP while its poll thread runs that many seconds.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.kernel.backend import KernelBackend
from net_manager.dataplane.kernel.flows import parse_listing, used_destinations
from net_manager.dataplane.kernel.nft import Conntrack, Nft
from net_manager.dataplane.kernel.pace import ListingPace
from net_manager.dataplane.kernel.ruleset import plan, tunnel_spec
from net_manager.node.kernel import Kernel
from net_manager.node.tunnel import DEVICE, port_of
from testbed.bench import (
    BRIDGE,
    C2,
    C3,
    LOCAL_RR,
    MTU,
    N1,
    N1_LOCAL,
    N1_TABLE,
    N2,
    N2_LOCAL,
    N2_TABLE,
    PORT,
    RR,
    UDP_SIZE,
    direct_routes,
    iperf,
    progress,
    udp_max_pps,
)
from testbed.netns import Testbed
from testbed.topology import BENCH_PREFIX, two_nodes, unique_prefix

CT_ONLY = """table inet oakb_ct {
  chain pre {
    type filter hook prerouting priority 0; policy accept;
    ct state new counter
  }
}
"""
CT_ONLY_DELETE = "table inet oakb_ct\ndelete table inet oakb_ct\n"


def _chain_removed(script: str, name: str) -> str:
    return re.sub(rf"\n  chain {name} {{\n.*?\n  }}", "", script, flags=re.S)


def _chain_body(script: str, name: str) -> list[str]:
    found = re.search(rf"\n  chain {name} {{\n(.*?)\n  }}", script, flags=re.S)
    return found.group(1).splitlines() if found else []


def _used_set(script: str) -> str:
    """The use tracking before conntrack's counts: every packet of a served connection
    refreshes its service IP in a set with a timeout."""
    objects, rules = [], []
    for version, ip, kind in ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr")):
        objects.append(
            f"  set used_v{version} {{ type {kind}; flags dynamic,timeout; timeout 2s; }}"
        )
        rules.append(
            f"    ct original {ip} daddr @services_v{version}"
            f" update @used_v{version} {{ ct original {ip} daddr }}"
        )
    chain = ["  chain used {",
             "    type filter hook prerouting priority dstnat + 10; policy accept;",
             *rules, "  }"]  # fmt: skip
    return script.replace(
        "  chain prerouting {", "\n".join([*objects, *chain, "  chain prerouting {"])
    )


def _previous(script: str) -> str:
    """The rules before this change: the used set, and the tunnel's forward checks as one
    flat chain (every rule tests the interface) instead of two jumps."""
    script = _used_set(script)
    if DEVICE not in script:
        return script
    flat = [f'    iifname "{DEVICE}" {rule.strip()}' for rule in _chain_body(script, "from_tunnel")]
    flat += [f'    oifname "{DEVICE}" {rule.strip()}' for rule in _chain_body(script, "to_tunnel")]
    script = _chain_removed(_chain_removed(script, "from_tunnel"), "to_tunnel")
    head = "    type filter hook forward priority filter - 10; policy accept;"
    body = "\n".join([head, *flat])
    chain = re.compile(r"(\n  chain tunnel_forward {\n).*?(\n  })", flags=re.S)
    return chain.sub(lambda m: m.group(1) + body + m.group(2), script)


def _notrack_vxlan(script: str) -> str:
    port = port_of(PORT)
    chains = f"""  chain vxlan_notrack_in {{
    type filter hook prerouting priority raw; policy accept;
    udp dport {port} notrack
  }}
  chain vxlan_notrack_out {{
    type filter hook output priority raw; policy accept;
    udp dport {port} notrack
  }}
"""
    return script.rstrip().removesuffix("}") + chains + "}\n"


def _minimal(script: str) -> str:
    for name in ("tunnel_in", "tunnel_forward", "from_tunnel", "to_tunnel", "tunnel_out"):
        script = _chain_removed(script, name)
    return script


VARIANTS: dict[str, Callable[[str], str]] = {
    "current": lambda s: s,
    "previous": _previous,
    "used-set": _used_set,
    "notrack-vxlan": _notrack_vxlan,
    "minimal": _minimal,
}


def saturated(bed: Testbed, target: str, seconds: float = 2.0) -> float:
    """Received packets/s when c1 sends 1400-byte datagrams as fast as it can (loss
    ignored): the sender's core carries the whole forward path, so this follows the
    per-packet cost more finely than the < 1 % loss search."""
    argv = ["-u", "-b", "0", "-l", str(UDP_SIZE), "-w", "4M"]
    total = iperf(bed, target, *argv, seconds=seconds)["end"]["sum"]
    return (total["packets"] - total["lost_packets"]) / total["seconds"]


class Rules:
    def __init__(self, bed: Testbed) -> None:
        self.bed = bed
        self.nodes = []
        for node, node_ip, peer, table, local in (
            ("n1", N1, N2, N1_TABLE, N1_LOCAL),
            ("n2", N2, N1, N2_TABLE, N2_LOCAL),
        ):
            spec = tunnel_spec(table, [peer], node_ip, port=port_of(PORT), mtu=MTU, bridge=BRIDGE)
            script = plan(
                table, local, node_ip, bridge=BRIDGE, kernel_peers={peer}, tunnel=spec
            ).render()
            self.nodes.append((Nft(bed.netns_exec(node)), bed.topology.netns(node), spec, script))
        self.state = "off"
        self.tunnel = False

    def set(self, state: str) -> None:
        """off | ct | vxlan | vxlan-ct | a variant name (vxlan: the tunnel's routes
        between the nodes, no table; -ct: with a table that only switches conntrack on)."""
        if state == self.state:
            return
        tunnel = state in VARIANTS or state.startswith("vxlan")
        for nft, netns, spec, script in self.nodes:
            nft.delete_table()
            nft.apply(CT_ONLY_DELETE)
            with Kernel(netns) as kernel:
                if tunnel and not self.tunnel:
                    kernel.ensure_tunnel(spec)
                if not tunnel and self.tunnel:
                    kernel.delete_tunnel(DEVICE, BRIDGE)
            if state in ("ct", "vxlan-ct"):
                nft.apply(CT_ONLY)
            elif state in VARIANTS:
                nft.apply(VARIANTS[state](script))
        if not tunnel and self.tunnel:
            direct_routes(self.bed)
        self.tunnel = tunnel
        self.state = state


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _dnat_entries(count: int) -> str:
    """`conntrack -R` lines: `count` UDP connections to one service IP, DNATed."""
    lines = []
    for n in range(count):
        caller, sport = f"10.16.{n // 60000 % 256}.{2 + n // 60000 // 256}", 1024 + n % 60000
        lines.append(
            f"-I -p udp -s {caller} -d 10.30.1.30 --sport {sport} --dport 80 -r 10.16.0.3 "
            f"-q {caller} --reply-port-src 80 --reply-port-dst {sport} -t 600 "
            "--dst-nat 10.16.0.3"
        )
    return "\n".join(lines) + "\n"


def listing_cost(counts: list[int], repeat: int, poll: float) -> None:
    """Per count: conntrack's CPU and wall time, the parse, and the pace that follows."""
    netns = f"{unique_prefix(BENCH_PREFIX)}ct"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    prefix = ["ip", "netns", "exec", netns]
    try:
        subprocess.run([*prefix, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"], check=True)
        print("connections  conntrack CPU  wall    parse   interval  share at 1 s  paced")
        for count in counts:
            subprocess.run([*prefix, "conntrack", "-F"], capture_output=True)
            with tempfile.NamedTemporaryFile("w", suffix=".ct") as entries:
                entries.write(_dnat_entries(count))
                entries.flush()
                subprocess.run([*prefix, "conntrack", "-R", entries.name], check=True,
                               capture_output=True)  # fmt: skip
            rows = [_one_listing(Conntrack(prefix), count) for _ in range(repeat)]
            cpu, wall, parse = (statistics.median(r[i] for r in rows) for i in range(3))
            pace = ListingPace(1.0)
            pace.listed(0.0, wall + parse)
            busy, interval = cpu + parse, pace.interval  # CPU seconds a listing, seconds apart
            print(
                f"{count:>11,}  {cpu:>11.3f} s  {wall:.3f} s  {parse:.3f} s  {interval:>6.1f} s"
                f"  {busy:>11.1%}  {busy / interval:>5.1%}"
            )
            if poll:
                share, listings, paced = _poll_share(prefix, poll)
                print(
                    f"{'':11}  poll thread: {share:.1%} of a core, {listings} listings in"
                    f" {poll} s, last interval {paced:.1f} s"
                )
    finally:
        subprocess.run([*prefix, "conntrack", "-F"], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], check=True)


class _NoProxy:
    rtt: dict[str, float] = {}
    peer_capabilities: dict[str, int] = {}

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def push_snapshot(self, *table: object) -> None: ...
    def counters(self) -> dict[str, int | float]:
        return {}

    def use_lag(self) -> float:
        return 0.0


def _poll_share(prefix: list[str], seconds: float) -> tuple[float, int, float]:
    """(CPU seconds per second of this process and its children, listings, the last
    interval) while a KernelBackend whose rules DNAT 10.30.1.30 to 10.16.0.3 polls for
    `seconds`."""
    here = "198.18.0.1"
    caller = Endpoint("X.d.a.d", 0, "10.16.0.2", "", "10.30.0.2", "", here, PORT)
    server = Endpoint("X.d.b.d", 0, "10.16.0.3", "", "10.30.0.3", "", here, PORT)
    service = ServiceEntry("10.30.1.30", "", "RR", (server,))
    backend = KernelBackend(_NoProxy(), Nft(prefix), bridge=BRIDGE, on_used=lambda jobs: None,
                            conntrack=Conntrack(prefix))  # fmt: skip
    backend.start()
    try:
        backend.push_snapshot([service], [caller, server], here)
        time.sleep(2)  # a measuring tool: the first listings, then a fixed window
        cpu, started = _process_cpu(), time.monotonic()
        time.sleep(seconds)
        share = (_process_cpu() - cpu) / (time.monotonic() - started)
        counters = backend.counters()
        listings = int(counters["kernel_use_listings"])
        return share, listings, float(counters["kernel_use_interval_seconds"])
    finally:
        backend.stop()


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + _children_cpu()


def _one_listing(conntrack: Conntrack, count: int) -> tuple[float, float, float]:
    cpu, started = _children_cpu(), time.perf_counter()
    listing = conntrack.listing()
    listed = time.perf_counter()
    cpu = _children_cpu() - cpu
    used, _ = used_destinations({}, parse_listing(listing), {"10.30.1.30"})
    if count and used != {"10.30.1.30"}:
        raise SystemExit(f"the listing of {count} connections shows none: {listing[:200]!r}")
    return cpu, listed - started, time.perf_counter() - listed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.bench_rules", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--print", action="store_true", help="print n1's scripts and exit")
    parser.add_argument("--vxlan", action="store_true", help="also direct over the tunnel")
    parser.add_argument(
        "--saturate", action="store_true", help="received packets/s at an unlimited rate"
    )
    parser.add_argument("--check", action="store_true", help="apply each variant and exit")
    parser.add_argument(
        "--listing", metavar="COUNTS", help="cost of reading use with these DNATed connections"
    )
    parser.add_argument(
        "--poll", type=float, default=0, metavar="SECONDS", help="with --listing: poll thread CPU"
    )
    args = parser.parse_args(argv)
    if args.listing:
        listing_cost([int(c) for c in args.listing.split(",")], args.repeat, args.poll)
        return 0
    variants = args.variants.split(",")
    rows: dict[str, list[float]] = {}
    with Testbed(two_nodes(unique_prefix(BENCH_PREFIX), extra_container_on_n1=True)) as bed:
        direct_routes(bed)
        for server in ("c2", "c3"):
            bed.popen(server, ["iperf3", "-s", "-p", "5201"], stdout=-3, stderr=-3)
        rules = Rules(bed)
        if args.print:
            for v in variants:
                print(f"# {v}\n{VARIANTS[v](rules.nodes[0][3])}")
            return 0
        if args.check:
            for state in ["ct", "vxlan", "vxlan-ct", *variants, "off"]:
                rules.set(state)
                progress(f"{state} applied")
            return 0
        try:
            for i in range(1, args.repeat + 1):
                first = ["off", "ct", "vxlan", "vxlan-ct"] if args.vxlan else ["off", "ct"]
                order = [*first, *(variants if i % 2 else reversed(variants))]
                for state in order:
                    rules.set(state)
                    for where, target, service in (("local", C3, LOCAL_RR), ("remote", C2, RR)):
                        direct = state not in VARIANTS
                        address = target.namespace_ip if direct else service.service_ip
                        pps = (
                            saturated(bed, address) if args.saturate else udp_max_pps(bed, address)
                        )
                        rows.setdefault(f"{where} {state}", []).append(pps)
                        progress(f"{i}/{args.repeat} {where} {state}: {pps:,.0f} packets/s")
        finally:
            rules.set("off")
    med = statistics.median
    for where in ("local", "remote"):
        base = med(rows[f"{where} off"])
        for state in ["off", "ct", *(["vxlan", "vxlan-ct"] if args.vxlan else []), *variants]:
            values = rows[f"{where} {state}"]
            runs = ", ".join(f"{v / 1000:.0f}k" for v in values)
            print(
                f"{where:6} {state:14} {med(values):>10,.0f}  {med(values) / base:6.1%}  ({runs})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
