"""Data-path benchmark: through a service IP (TUN proxy, kernel fast path) vs the
direct kernel path, same run.

    python -m testbed.bench [--repeat 3] [--seconds 5] [--sendto] [--offload auto|on|off]

Builds its own namespaces (oakb-…): nodes n1, n2 on an underlay bridge, containers c1
and c3 on n1 and c2 on n2, a real data-plane process per node with a static table
(X3's RR IP 10.30.1.30 served by c2, X4's RR IP 10.30.1.40 served by c3). Paths:

- remote: the direct path is c1 -> c2's namespace IP 10.16.0.66 over plain routes
  between the node namespaces (n1: 10.16.0.64/26 via 198.18.0.2, and back), so both
  paths cross the same veths, bridges and underlay; the TUN path adds the TUNs, the two
  data planes and the UDP tunnel;
- local (same bridge): direct is c1 -> c3's namespace IP 10.16.0.3; TUN is c1 ->
  10.30.1.40 through n1's data plane; kernel is the same service IP with the kernel
  backend's nftables rules in n1 (applied only while the kernel path is measured);
- remote kernel: c1 -> 10.30.1.30 with the kernel backend's rules in n1 and n2 and the
  kernel tunnel between them (oak-vx0, VXLAN on port 50104: the node layer's
  `ensure_tunnel`), set up only while a kernel path is measured; its device routes
  replace the direct path's routes between the nodes, which come back afterwards.

Measurements, each repeated:

- TCP single-stream throughput (iperf3, --seconds each);
- UDP 1400-byte packets/s at < 1 % loss (iperf3 -u, offered rate stepped up, then
  bisected);
- UDP request/response round trip, p50 and p99 (Python ping-pong, 2000 exchanges);
- CPU per proxied packet (utime + stime of both data-plane processes from /proc/<pid>/
  stat over the proxied UDP runs, divided by the packets they handled; the same over
  the TCP runs, where with TUN offload a packet is a TCP segment of up to 64 KiB);
- first-packet latency of a table miss (the bench answers the resolve at once), for a
  remote instance through the TUN, and for a local one with the TUN alone and with n1's
  tables going through the kernel backend as the daemon builds it;
- the cost of tunnel admission (known sender node, inner source one of its instance
  IPs): the proxied UDP packets/s and round trip with admission and with the data
  planes restarted with --no-admission, alternating, each repeated; the cost is
  compared with the spread of the runs themselves (the run's noise);
- the sealed tunnel (AES-256-GCM, a shared key): TCP, UDP packets/s and round trip
  with the data planes restarted with a key, and the CPU cost of sealing and opening
  one 1400-byte packet in this process.

Prints progress on stderr and one table of medians and ratios on stdout. Everything it
creates is removed on exit (and by `python -m testbed.sweep`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from net_manager.dataplane.backend import DataPlaneOptions
from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.io.seal import Sealer
from net_manager.dataplane.kernel.backend import KernelBackend
from net_manager.dataplane.kernel.nft import Nft
from net_manager.dataplane.kernel.ruleset import plan, tunnel_spec
from net_manager.dataplane.supervisor import DataPlaneSupervisor
from net_manager.node.kernel import Kernel
from net_manager.node.tunnel import DEVICE, port_of
from testbed.netns import Testbed
from testbed.topology import BENCH_PREFIX, two_nodes, unique_prefix

N1, N2, PORT = "198.18.0.1", "198.18.0.2", 50103
X1, X3, X4 = "X.default.X1.default", "X.default.X3.default", "X.default.X4.default"
C1 = Endpoint(X1, 0, "10.16.0.2", "fc00::2", "10.30.0.2", "fdff::2", N1, PORT)
C2 = Endpoint(X3, 0, "10.16.0.66", "fc00::102", "10.30.0.6", "fdff::6", N2, PORT)
C3 = Endpoint(X4, 0, "10.16.0.3", "fc00::3", "10.30.0.7", "fdff::7", N1, PORT)
RR = ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (C2,))
LOCAL_RR = ServiceEntry("10.30.1.40", "fdff:2000::28", "RR", (C3,))
INSTANCE_IPS = [
    ServiceEntry(e.instance_ip, e.instance_ip_v6, "instance_ip", (e,)) for e in (C1, C2, C3)
]
N1_TABLE = [RR, LOCAL_RR, *INSTANCE_IPS]
N1_LOCAL = [C1, C3]
N2_TABLE, N2_LOCAL = INSTANCE_IPS, [C2]
BRIDGE = "oakbr0"  # the testbed's node bridge
MTU = 1450  # the testbed's containers and bridges; the VXLAN device's too (1500 underlay)
# path -> (target address, measured through the TUN data planes, kernel rules and tunnel on)
PATHS = {
    "direct": (C2.namespace_ip, False, False),
    "TUN": (RR.service_ip, True, False),
    "remote kernel": (RR.service_ip, False, True),
    "local direct": (C3.namespace_ip, False, False),
    "local TUN": (LOCAL_RR.service_ip, True, False),
    "local kernel": (LOCAL_RR.service_ip, False, True),
}
PROXIED = RR.service_ip  # the remote path through the TUN (admission, sealing)
UDP_SIZE = 1400
LOSS_LIMIT = 1.0  # percent
TARGETS = {"tcp": 0.05, "udp": 0.20, "rr_added_ms": 0.15}
KERNEL_TARGETS = {"tcp": 0.6, "udp": 0.8, "rr_added_ms": 0.025, "miss_ms": 20.0}

ECHO_SERVER = r"""
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 7777))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(65535)
    sock.sendto(data, peer)
"""

PING_PONG = r"""
import json, socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
clock, times, payload = time.perf_counter_ns, [], b"p" * 64
for i in range(count + 50):
    start = clock()
    sock.sendto(payload, (host, 7777))
    sock.recvfrom(2048)
    if i >= 50:
        times.append(clock() - start)
times.sort()
print(json.dumps({"p50": times[len(times) // 2] / 1e6, "p99": times[int(len(times) * 0.99)] / 1e6}))
"""

FIRST_PACKET = r"""
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
rtts = []
for _ in range(2):
    start = time.perf_counter()
    sock.sendto(b"first", (sys.argv[1], 7777))
    sock.recvfrom(2048)
    rtts.append((time.perf_counter() - start) * 1000)
print(json.dumps(rtts))
"""


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


@dataclass
class Plane:
    supervisor: DataPlaneSupervisor
    extra: list[ServiceEntry] = field(default_factory=list)
    miss_instance: Endpoint = C2  # what the instant control plane answers a miss with
    kernel: KernelBackend | None = None  # set: tables go through the kernel backend

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.supervisor.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def packets(self) -> int:
        """Packets handled so far (read from the TUN or the tunnel), from a fresh report."""
        seen = self.supervisor.reports
        deadline = time.monotonic() + 5
        while self.supervisor.reports < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        values = self.supervisor.counters()
        return values.get("tun_packets_read", 0) + values.get("tunnel_packets_received", 0)


class CpuMeter:
    """CPU seconds and packets of both data planes over the proxied runs."""

    def __init__(self, planes: list[Plane]) -> None:
        self.planes = planes
        self.cpu = 0.0
        self.packets = 0

    def measure(self, run: Callable[[], float]) -> float:
        cpu = sum(p.cpu_seconds() for p in self.planes)
        packets = sum(p.packets() for p in self.planes)
        result = run()
        self.cpu += sum(p.cpu_seconds() for p in self.planes) - cpu
        self.packets += sum(p.packets() for p in self.planes) - packets
        return result

    @property
    def us_per_packet(self) -> float:
        return self.cpu / self.packets * 1e6 if self.packets else float("nan")


# ---------------------------------------------------------------- setup


def start_plane(bed: Testbed, node: str, extra_args: list[str], tunnel_key: str = "") -> Plane:
    plane: Plane

    def on_resolve(service_ip: str, reply: Callable[[bool], None]) -> None:
        entry = ServiceEntry(service_ip, "", "RR", (plane.miss_instance,))  # instant
        plane.extra.append(entry)
        (plane.kernel or plane.supervisor).push_snapshot([*N1_TABLE, *plane.extra], N1_LOCAL, N1)
        reply(True)

    options = DataPlaneOptions(
        tun_name="oaktun0",
        tun_v4_cidr="10.19.1.254/12",
        tun_v6_cidr="fcef::dead:beef/7",
        mtu=1450,
        port=PORT,
        on_resolve=on_resolve,
        on_used=lambda jobs: None,
        netns_exec=bed.netns_exec(node),
        tunnel_key=tunnel_key,
    )
    supervisor = DataPlaneSupervisor(options, extra_args=extra_args)
    plane = Plane(supervisor)
    supervisor.start()
    if not supervisor.wait_ready(15):
        raise RuntimeError(f"data plane in {node} did not start")
    return plane


def direct_routes(bed: Testbed) -> None:
    """The direct path between the nodes (the kernel tunnel's routes replace them)."""
    bed.ip("n1", "route", "replace", "10.16.0.64/26", "via", N2)
    bed.ip("n2", "route", "replace", "10.16.0.0/26", "via", N1)


def set_up(bed: Testbed, extra_args: list[str]) -> list[Plane]:
    direct_routes(bed)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    for server in ("c2", "c3"):
        bed.popen(server, ["iperf3", "-s", "-p", "5201"], **quiet)
        echo = bed.popen(
            server, [sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True
        )
        bed.wait_for_line(echo)
    return start_planes(bed, extra_args)


def start_planes(bed: Testbed, extra_args: list[str], tunnel_key: str = "") -> list[Plane]:
    """Both data planes, with their tables taken."""
    planes = [
        start_plane(bed, "n1", extra_args, tunnel_key),
        start_plane(bed, "n2", extra_args, tunnel_key),
    ]
    planes[0].supervisor.push_snapshot(N1_TABLE, N1_LOCAL, N1)
    planes[1].supervisor.push_snapshot(INSTANCE_IPS, [C2], N2)
    deadline = time.monotonic() + 10
    while not all(p.supervisor.counters().get("snapshots") for p in planes):
        if time.monotonic() > deadline:
            raise RuntimeError("data planes did not take their tables")
        time.sleep(0.05)
    return planes


# ---------------------------------------------------------------- measurements


def iperf(bed: Testbed, target: str, *args: str, seconds: float) -> dict:
    argv = ["iperf3", "-c", target, "-p", "5201", "-J", "-t", str(seconds), *args]
    for _ in range(3):  # the server takes one test at a time; a busy answer is retried
        result = bed.run("c1", argv, check=False, timeout=seconds + 30)
        report = json.loads(result.stdout or "{}")
        if "error" not in report and result.returncode == 0:
            return report
        time.sleep(0.5)
    raise RuntimeError(f"iperf3 to {target} failed: {report.get('error', result.stderr)}")


def tcp_gbps(bed: Testbed, target: str, seconds: float) -> float:
    report = iperf(bed, target, seconds=seconds)
    return report["end"]["sum_received"]["bits_per_second"] / 1e9


def udp_trial(bed: Testbed, target: str, pps: int, seconds: float = 1.0) -> tuple[float, float]:
    """(received packets/s, loss %) at an offered rate (4 MB socket buffers both ends)."""
    bits = pps * UDP_SIZE * 8
    argv = ["-u", "-b", str(bits), "-l", str(UDP_SIZE), "-w", "4M"]
    total = iperf(bed, target, *argv, seconds=seconds)["end"]["sum"]
    received = total["packets"] - total["lost_packets"]
    return received / total["seconds"], total["lost_percent"]


def udp_max_pps(bed: Testbed, target: str) -> float:
    """The highest received rate with < LOSS_LIMIT % loss: double, then bisect.

    Stops early when the sender cannot offer the rate asked for (iperf3 is CPU-bound).
    """
    good, low, bad, rate = 0.0, 0, 0, 20_000
    while rate <= 1_600_000:
        received, loss = udp_trial(bed, target, rate)
        if loss >= LOSS_LIMIT:
            bad = rate
            break
        good, low = max(good, received), rate
        if received < 0.8 * rate:
            return good
        rate *= 2
    for _ in range(3 if bad else 0):
        middle = (low + bad) // 2
        received, loss = udp_trial(bed, target, middle)
        if loss < LOSS_LIMIT:
            good, low = max(good, received), middle
        else:
            bad = middle
    return good


def ping_pong(bed: Testbed, target: str, count: int = 2000) -> dict:
    return json.loads(bed.python("c1", PING_PONG, target, str(count), timeout=60))


def first_packet_ms(bed: Testbed, service_ip: str) -> tuple[float, float]:
    # The data plane resolves at most 5 new service IPs per second per container (after a
    # burst); the bench's misses stay under that, so none is refused as rate-limited.
    time.sleep(0.25)
    first, second = json.loads(bed.python("c1", FIRST_PACKET, service_ip, timeout=20))
    return first, second


# ---------------------------------------------------------------- the run


class KernelRules:
    """The kernel backend's rules for both nodes' tables and the kernel tunnel between
    them (as the backends of two kernel-mode nodes that verified each other would have
    them), switched on only for the kernel paths."""

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
        self.on = False
        self.tunnel_packets = 0  # sent by n1's oak-vx0 while the kernel paths were on

    def switch(self, on: bool) -> None:
        if on == self.on:
            return
        if not on:  # the remote kernel path goes through the device, not the direct routes
            stats = self.bed.run("n1", ["ip", "-j", "-s", "link", "show", DEVICE]).stdout
            self.tunnel_packets += json.loads(stats)[0]["stats64"]["tx"]["packets"]
        for nft, netns, spec, script in self.nodes:
            with Kernel(netns) as kernel:
                if on:
                    kernel.ensure_tunnel(spec)
                    nft.apply(script)
                else:
                    nft.delete_table()
                    kernel.delete_tunnel(DEVICE, BRIDGE)
        if not on:
            direct_routes(self.bed)
        self.on = on


def _per_path() -> dict[str, list[float]]:
    return {path: [] for path in PATHS}


@dataclass
class Results:
    tcp: dict[str, list[float]] = field(default_factory=_per_path)
    udp: dict[str, list[float]] = field(default_factory=_per_path)
    p50: dict[str, list[float]] = field(default_factory=_per_path)
    p99: dict[str, list[float]] = field(default_factory=_per_path)
    miss: list[tuple[float, float]] = field(default_factory=list)
    local_miss: dict[str, list[float]] = field(default_factory=lambda: {"TUN": [], "kernel": []})
    cpu_us: float = float("nan")  # per packet per data plane, UDP runs
    tcp_cpu_us: float = float("nan")  # per packet per data plane, TCP runs (GSO: 64 KiB)
    # proxied path with admission ("on") and without ("off"), runs alternating
    admission_udp: dict[str, list[float]] = field(default_factory=lambda: {"on": [], "off": []})
    admission_p50: dict[str, list[float]] = field(default_factory=lambda: {"on": [], "off": []})
    sealed_tcp: list[float] = field(default_factory=list)
    sealed_udp: list[float] = field(default_factory=list)
    sealed_p50: list[float] = field(default_factory=list)
    seal_us: float = float("nan")  # seal + open of one 1400-byte packet, this process


def measure(bed: Testbed, planes: list[Plane], repeat: int, seconds: float) -> Results:
    results, meter, tcp_meter = Results(), CpuMeter(planes), CpuMeter(planes)
    rules = KernelRules(bed)
    try:
        _measure_paths(bed, rules, results, meter, tcp_meter, repeat, seconds)
    finally:
        rules.switch(False)
    progress(f"{DEVICE} in n1 sent {rules.tunnel_packets:,} packets")
    if not rules.tunnel_packets:
        raise RuntimeError(f"the remote kernel path did not go through {DEVICE}")
    for i in range(1, repeat + 1):
        first, second = first_packet_ms(bed, f"10.30.2.{i}")
        results.miss.append((first, second))
        progress(f"table miss {i}/{repeat}: first packet {first:.2f} ms, next {second:.2f} ms")
    measure_local_misses(bed, planes[0], results, repeat)
    results.cpu_us = meter.us_per_packet
    results.tcp_cpu_us = tcp_meter.us_per_packet
    return results


class RunningPlane:
    """A started data plane as the kernel backend's inner backend: starting and stopping
    it is the bench's business, not the kernel backend's."""

    def __init__(self, supervisor: DataPlaneSupervisor) -> None:
        self.supervisor = supervisor

    def __getattr__(self, name: str):
        return getattr(self.supervisor, name)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def measure_local_misses(
    bed: Testbed, n1: Plane, results: Results, repeat: int, *, defer: bool = True
) -> None:
    """First packets to a service IP n1 does not know yet whose instance is c3 (local):
    with the TUN alone, and with n1's tables going through the kernel backend as the
    daemon builds it (a table that only adds reaches the proxy first, its rules follow)."""
    n1.miss_instance = C3
    try:
        for mode, prefix in (("TUN", "10.30.4"), ("kernel", "10.30.3")):
            if mode == "kernel":
                n1.kernel = KernelBackend(
                    RunningPlane(n1.supervisor),  # type: ignore[arg-type]
                    Nft(bed.netns_exec("n1")),
                    bridge=BRIDGE,
                    on_used=lambda _: None,
                    defer_additions=defer,
                )
                n1.kernel.start()
            for i in range(1, repeat + 1):
                first, _ = first_packet_ms(bed, f"{prefix}.{i}")
                results.local_miss[mode].append(first)
                progress(f"local table miss, {mode} mode {i}/{repeat}: first packet {first:.2f} ms")
            if n1.kernel is not None:
                applied = n1.kernel.counters()["kernel_applies"]
                progress(f"kernel rules applied {applied} times during the misses")
    finally:
        if n1.kernel is not None:
            n1.kernel.stop()
        n1.kernel, n1.miss_instance = None, C2


def _measure_paths(
    bed: Testbed,
    rules: KernelRules,
    results: Results,
    meter: CpuMeter,
    tcp_meter: CpuMeter,
    repeat: int,
    seconds: float,
) -> None:
    for i in range(1, repeat + 1):
        for path, (target, tun, kernel) in PATHS.items():
            rules.switch(kernel)
            run = lambda t=target: tcp_gbps(bed, t, seconds)  # noqa: E731
            gbps = tcp_meter.measure(run) if tun else run()
            results.tcp[path].append(gbps)
            progress(f"TCP {path} {i}/{repeat}: {gbps:.3f} Gbit/s")
    for i in range(1, repeat + 1):
        for path, (target, tun, kernel) in PATHS.items():
            rules.switch(kernel)
            run = lambda t=target: udp_max_pps(bed, t)  # noqa: E731
            pps = meter.measure(run) if tun else run()
            results.udp[path].append(pps)
            progress(f"UDP {path} {i}/{repeat}: {pps:,.0f} packets/s at < {LOSS_LIMIT} % loss")
    for i in range(1, repeat + 1):
        for path, (target, _, kernel) in PATHS.items():
            rules.switch(kernel)
            rtt = ping_pong(bed, target)
            results.p50[path].append(rtt["p50"])
            results.p99[path].append(rtt["p99"])
            progress(f"RR {path} {i}/{repeat}: p50 {rtt['p50']:.3f} ms, p99 {rtt['p99']:.3f} ms")


def measure_admission(
    bed: Testbed, planes: list[Plane], extra_args: list[str], repeat: int, results: Results
) -> None:
    """Proxied UDP packets/s and p50 with admission and without, alternating (the
    planes are restarted for each mode; `planes` always holds the running ones)."""
    for i in range(1, repeat + 1):
        for mode in ("off", "on"):
            for plane in planes:
                plane.supervisor.stop()
            planes.clear()
            args = extra_args + (["--no-admission"] if mode == "off" else [])
            planes.extend(start_planes(bed, args))
            pps = udp_max_pps(bed, PROXIED)
            p50 = ping_pong(bed, PROXIED)["p50"]
            results.admission_udp[mode].append(pps)
            results.admission_p50[mode].append(p50)
            progress(f"admission {mode} {i}/{repeat}: {pps:,.0f} packets/s, p50 {p50:.3f} ms")


def measure_sealed(
    bed: Testbed,
    planes: list[Plane],
    extra_args: list[str],
    repeat: int,
    seconds: float,
    results: Results,
) -> None:
    """The proxied path with a sealed tunnel (planes restarted with a key)."""
    for plane in planes:
        plane.supervisor.stop()
    planes.clear()
    planes.extend(start_planes(bed, extra_args, tunnel_key=secrets.token_hex(32)))
    for i in range(1, repeat + 1):
        results.sealed_tcp.append(tcp_gbps(bed, PROXIED, seconds))
        results.sealed_udp.append(udp_max_pps(bed, PROXIED))
        results.sealed_p50.append(ping_pong(bed, PROXIED)["p50"])
        progress(
            f"sealed {i}/{repeat}: {results.sealed_tcp[-1]:.3f} Gbit/s, "
            f"{results.sealed_udp[-1]:,.0f} packets/s, p50 {results.sealed_p50[-1]:.3f} ms"
        )
    sealer, packet, count = Sealer(os.urandom(32)), os.urandom(UDP_SIZE), 20_000
    started = time.perf_counter()
    for _ in range(count):
        sealer.open(sealer.seal(packet))
    results.seal_us = (time.perf_counter() - started) / count * 1e6


def spread(values: list[float]) -> float:
    """(max - min) / median: how far repeated runs of one measurement lie apart."""
    return (max(values) - min(values)) / statistics.median(values) if values else float("nan")


def table(results: Results) -> str:
    return "\n\n".join([remote_table(results), kernel_remote_table(results), local_table(results)])


def kernel_remote_table(results: Results) -> str:
    """The remote path through the kernel tunnel vs direct (same namespaces) and TUN."""
    med = statistics.median
    paths = ("direct", "TUN", "remote kernel")
    tcp = [med(results.tcp[p]) for p in paths]
    udp = [med(results.udp[p]) for p in paths]
    p50 = [med(results.p50[p]) for p in paths]
    p99 = [med(results.p99[p]) for p in paths]
    rows = [
        ("c1 -> c2 on n2 (median)", "direct", "TUN", "kernel+VXLAN", "TUN ratio",
         "kernel ratio", "kernel / TUN", "target (kernel)"),
        ("TCP 1 stream, Gbit/s", *(f"{v:.3f}" for v in tcp), f"{tcp[1] / tcp[0]:.1%}",
         f"{tcp[2] / tcp[0]:.1%}", f"{tcp[2] / tcp[1]:.1f}x",
         _check(tcp[2] / tcp[0] >= KERNEL_TARGETS["tcp"], ">= 60 %")),
        ("UDP 1400 B, packets/s < 1 % loss", *(f"{v:,.0f}" for v in udp),
         f"{udp[1] / udp[0]:.1%}", f"{udp[2] / udp[0]:.1%}", f"{udp[2] / udp[1]:.1f}x",
         _check(udp[2] / udp[0] >= KERNEL_TARGETS["udp"], ">= 80 %")),
        ("UDP round trip p50, ms", *(f"{v:.3f}" for v in p50), f"+{p50[1] - p50[0]:.3f} ms",
         f"+{p50[2] - p50[0]:.3f} ms", "",
         _check(p50[2] - p50[0] <= KERNEL_TARGETS["rr_added_ms"], "<= +0.025 ms")),
        ("UDP round trip p99, ms", *(f"{v:.3f}" for v in p99), f"+{p99[1] - p99[0]:.3f} ms",
         f"+{p99[2] - p99[0]:.3f} ms", "", ""),
    ]  # fmt: skip
    return _format(rows)


def remote_table(results: Results) -> str:
    med = statistics.median
    tcp_d, tcp_p = med(results.tcp["direct"]), med(results.tcp["TUN"])
    udp_d, udp_p = med(results.udp["direct"]), med(results.udp["TUN"])
    p50_d, p50_p = med(results.p50["direct"]), med(results.p50["TUN"])
    p99_d, p99_p = med(results.p99["direct"]), med(results.p99["TUN"])
    first = med(m[0] for m in results.miss)
    second = med(m[1] for m in results.miss)
    rows = [
        ("c1 -> c2 on n2 (median)", "direct", "TUN", "ratio / added", "target (TUN)"),
        ("TCP 1 stream, Gbit/s", f"{tcp_d:.3f}", f"{tcp_p:.3f}", f"{tcp_p / tcp_d:.1%}",
         _check(tcp_p / tcp_d >= TARGETS["tcp"], ">= 5 %")),
        ("UDP 1400 B, packets/s < 1 % loss", f"{udp_d:,.0f}", f"{udp_p:,.0f}",
         f"{udp_p / udp_d:.1%}", _check(udp_p / udp_d >= TARGETS["udp"], ">= 20 %")),
        ("UDP round trip p50, ms", f"{p50_d:.3f}", f"{p50_p:.3f}", f"+{p50_p - p50_d:.3f} ms",
         _check(p50_p - p50_d <= TARGETS["rr_added_ms"], "<= +0.15 ms")),
        ("UDP round trip p99, ms", f"{p99_d:.3f}", f"{p99_p:.3f}", f"+{p99_p - p99_d:.3f} ms", ""),
        ("CPU per packet per data plane, us", "-", f"{results.cpu_us:.1f}", "UDP runs", ""),
        ("  same, TCP runs (up to 64 KiB each)", "-", f"{results.tcp_cpu_us:.1f}", "", ""),
        ("table miss: first packet RTT, ms", "-", f"{first:.2f}", f"next packet {second:.2f}", ""),
        *_admission_rows(results, udp_d, p50_d),
        *_sealed_rows(results, tcp_d, udp_d, p50_d),
    ]  # fmt: skip
    return _format(rows)


def local_table(results: Results) -> str:
    med = statistics.median
    tcp = [med(results.tcp[p]) for p in ("local direct", "local TUN", "local kernel")]
    udp = [med(results.udp[p]) for p in ("local direct", "local TUN", "local kernel")]
    p50 = [med(results.p50[p]) for p in ("local direct", "local TUN", "local kernel")]
    p99 = [med(results.p99[p]) for p in ("local direct", "local TUN", "local kernel")]
    rows = [
        ("c1 -> c3 on n1 (median)", "direct", "TUN", "kernel", "TUN ratio", "kernel ratio",
         "target (kernel)"),
        ("TCP 1 stream, Gbit/s", *(f"{v:.3f}" for v in tcp), f"{tcp[1] / tcp[0]:.1%}",
         f"{tcp[2] / tcp[0]:.1%}", _check(tcp[2] / tcp[0] >= KERNEL_TARGETS["tcp"], ">= 60 %")),
        ("UDP 1400 B, packets/s < 1 % loss", *(f"{v:,.0f}" for v in udp),
         f"{udp[1] / udp[0]:.1%}", f"{udp[2] / udp[0]:.1%}",
         _check(udp[2] / udp[0] >= KERNEL_TARGETS["udp"], ">= 80 %")),
        ("UDP round trip p50, ms", *(f"{v:.3f}" for v in p50), f"+{p50[1] - p50[0]:.3f} ms",
         f"+{p50[2] - p50[0]:.3f} ms",
         _check(p50[2] - p50[0] <= KERNEL_TARGETS["rr_added_ms"], "<= +0.025 ms")),
        ("UDP round trip p99, ms", *(f"{v:.3f}" for v in p99), f"+{p99[1] - p99[0]:.3f} ms",
         f"+{p99[2] - p99[0]:.3f} ms", ""),
        *_local_miss_rows(results),
    ]  # fmt: skip
    return _format(rows)


def _local_miss_rows(results: Results) -> list[tuple[str, ...]]:
    if not results.local_miss["kernel"]:
        return []
    tun, kernel = (statistics.median(results.local_miss[m]) for m in ("TUN", "kernel"))
    return [("table miss: first packet RTT, ms", "-", f"{tun:.2f}", f"{kernel:.2f}", "", "",
             _check(kernel <= KERNEL_TARGETS["miss_ms"], "<= 20 ms"))]  # fmt: skip


def _format(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _admission_rows(results: Results, udp_d: float, p50_d: float) -> list[tuple[str, ...]]:
    """Service-IP path without and with admission, vs direct; the cost vs the noise."""
    if not results.admission_udp["on"]:
        return []
    med = statistics.median
    udp_on, udp_off = med(results.admission_udp["on"]), med(results.admission_udp["off"])
    p50_on, p50_off = med(results.admission_p50["on"]), med(results.admission_p50["off"])
    ratio = udp_on / udp_off
    noise = max(spread(results.admission_udp["on"]), spread(results.admission_udp["off"]))
    return [
        ("UDP packets/s, admission off", f"{udp_d:,.0f}", f"{udp_off:,.0f}",
         f"{udp_off / udp_d:.1%}", ""),
        ("UDP packets/s, admission on", f"{udp_d:,.0f}", f"{udp_on:,.0f}",
         f"{udp_on / udp_d:.1%}", ""),
        ("  admission on / off (packets/s)", "-", f"{ratio:.1%}", f"run spread {noise:.1%}",
         _check(abs(1 - ratio) <= noise, "within noise")),
        ("UDP round trip p50, admission off/on, ms", f"{p50_d:.3f}", f"{p50_off:.3f}/{p50_on:.3f}",
         f"{(p50_on - p50_off) * 1000:+.1f} us", ""),
    ]  # fmt: skip


def _sealed_rows(
    results: Results, tcp_d: float, udp_d: float, p50_d: float
) -> list[tuple[str, ...]]:
    if not results.sealed_udp:
        return []
    med = statistics.median
    tcp, udp, p50 = med(results.sealed_tcp), med(results.sealed_udp), med(results.sealed_p50)
    return [
        ("sealed tunnel: TCP 1 stream, Gbit/s", f"{tcp_d:.3f}", f"{tcp:.3f}", f"{tcp / tcp_d:.1%}",
         ""),
        ("sealed tunnel: UDP packets/s", f"{udp_d:,.0f}", f"{udp:,.0f}", f"{udp / udp_d:.1%}", ""),
        ("sealed tunnel: UDP round trip p50, ms", f"{p50_d:.3f}", f"{p50:.3f}",
         f"+{p50 - p50_d:.3f} ms", ""),
        ("  seal + open one 1400 B packet, us", "-", f"{results.seal_us:.1f}", "", ""),
    ]  # fmt: skip


def _check(ok: bool, target: str) -> str:
    return f"{target} {'ok' if ok else 'MISSED'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.bench", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per TCP run")
    parser.add_argument("--sendto", action="store_true", help="data planes use sendto")
    parser.add_argument("--offload", choices=("auto", "on", "off"), default="auto")
    parser.add_argument(
        "--paths-only", action="store_true", help="skip the admission and sealed-tunnel runs"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        print("make bench needs root and iperf3 (make setup installs it)", file=sys.stderr)
        return 2
    started = time.monotonic()
    extra_args = ["--offload", args.offload] + (["--sendto"] if args.sendto else [])
    with Testbed(two_nodes(unique_prefix(BENCH_PREFIX), extra_container_on_n1=True)) as bed:
        progress(f"namespaces {', '.join(bed.topology.namespaces)} built")
        planes = set_up(bed, extra_args)
        try:
            results = measure(bed, planes, args.repeat, args.seconds)
            if not args.paths_only:
                measure_admission(bed, planes, extra_args, args.repeat, results)
                measure_sealed(bed, planes, extra_args, args.repeat, args.seconds, results)
        finally:
            for plane in planes:
                plane.supervisor.stop()
    progress(f"done in {time.monotonic() - started:.0f} s, namespaces removed")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
