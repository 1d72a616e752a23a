"""probes.Prober: probe schedule, echoes, RTT smoothing and expiry (a fake clock)."""

from __future__ import annotations

from net_manager.dataplane.io.probes import (
    CAP_GSO,
    CAP_VXLAN,
    CAP_VXLAN_PEER,
    ECHO,
    MAGIC,
    MAX_CALLERS,
    PACKET,
    PROBE,
    Prober,
    is_control,
)

PEER = ("198.18.0.2", 50103)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pair() -> tuple[Prober, Prober, dict[str, float], Clock]:
    clock, rtt = Clock(), {}
    here = Prober(rtt, interval=3.0, clock=clock)
    there = Prober({}, capabilities=CAP_GSO, clock=clock)
    here.set_peers([PEER])
    return here, there, rtt, clock


def test_a_probe_echoed_by_the_peer_gives_the_rtt() -> None:
    here, there, rtt, clock = pair()
    [(probe, address)] = here.probes_due()
    assert address == PEER and is_control(probe[0]) and PACKET.unpack(probe)[:2] == (MAGIC, PROBE)
    echo = there.handle(probe, "198.18.0.1")
    assert echo is not None and PACKET.unpack(echo)[1] == ECHO
    clock.now += 0.002
    assert here.handle(echo, "198.18.0.2") is None
    assert abs(rtt["198.18.0.2"] - 0.002) < 1e-6
    assert here.peers_with(CAP_GSO) == [PEER]


def test_probes_go_out_once_per_interval() -> None:
    here, _, _, clock = pair()
    assert len(here.probes_due()) == 1 and here.probes_due() == []
    clock.now += 3.0
    assert len(here.probes_due()) == 1


def test_forged_or_foreign_echoes_are_ignored() -> None:
    here, there, rtt, _ = pair()
    [(probe, _)] = here.probes_due()
    forged = PACKET.pack(MAGIC, ECHO, 0, 12345, PACKET.unpack(probe)[4])  # wrong nonce
    for data, source in [(forged, "198.18.0.2"), (there.handle(probe, "x"), "198.18.0.9")]:
        assert here.handle(data, source) is None
    assert here.handle(b"\xa5\x01", "198.18.0.2") is None
    assert rtt == {} and here.bad == 3


def test_rtt_is_smoothed_and_a_silent_peer_is_forgotten() -> None:
    here, there, rtt, clock = pair()
    for sample in (0.004, 0.008):
        [(probe, _)] = here.probes_due()
        echo = there.handle(probe, "198.18.0.1")
        clock.now += sample
        here.handle(echo, "198.18.0.2")
        clock.now += 3.0
    assert abs(rtt["198.18.0.2"] - 0.005) < 1e-6  # 0.004 + 0.25 * (0.008 - 0.004)
    clock.now += 10.0
    here.probes_due()
    assert rtt == {} and here.peers_with(CAP_GSO) == []


# ------------------------------------------------ the kernel tunnel's handshake

ONE, TWO = ("198.18.0.1", 50103), ("198.18.0.2", 50103)


def exchange(sender: Prober, receiver: Prober, sender_address, receiver_address) -> None:
    """Deliver sender's due probes to receiver and the echoes back."""
    for probe, address in sender.probes_due():
        assert address == receiver_address
        echo = receiver.handle(probe, sender_address[0], sender_address)
        assert echo is not None
        sender.handle(echo, receiver_address[0], receiver_address)


def test_kernel_nodes_learn_each_other_although_only_one_table_names_the_other() -> None:
    """Node 1 (a caller) probes node 2 (the server), whose table does not know node 1:
    node 2 probes node 1 back at once, and from then on its echoes say it admits node 1."""
    clock = Clock()
    one = Prober({}, interval=3.0, capabilities=CAP_VXLAN, clock=clock)
    two = Prober({}, interval=3.0, capabilities=CAP_VXLAN, clock=clock)
    one.set_peers([TWO])
    two.set_peers([])
    exchange(one, two, ONE, TWO)
    assert one.peer_capabilities == {TWO[0]: CAP_VXLAN}  # two did not know one yet
    clock.now += 0.5  # before two's next round: the new caller is probed anyway
    exchange(two, one, TWO, ONE)
    assert two.peer_capabilities == {ONE[0]: CAP_VXLAN | CAP_VXLAN_PEER}  # one knows two
    clock.now += 3.0
    exchange(one, two, ONE, TWO)
    assert one.peer_capabilities == {TWO[0]: CAP_VXLAN | CAP_VXLAN_PEER}


def test_a_node_without_the_kernel_tunnel_never_gets_the_bits_or_probes_back() -> None:
    clock = Clock()
    tun_only = Prober({}, interval=3.0, capabilities=CAP_GSO, clock=clock)
    kernel = Prober({}, interval=3.0, capabilities=CAP_VXLAN, clock=clock)
    tun_only.set_peers([TWO])
    kernel.set_peers([])
    exchange(tun_only, kernel, ONE, TWO)
    assert tun_only.peer_capabilities == {TWO[0]: CAP_VXLAN}
    clock.now += 0.5
    assert kernel.probes_due() == []  # a probe without CAP_VXLAN makes no caller


def test_callers_are_bounded_and_forgotten_when_they_stop_probing() -> None:
    clock = Clock()
    kernel = Prober({}, interval=3.0, capabilities=CAP_VXLAN, clock=clock)
    kernel.set_peers([])
    probe = PACKET.pack(MAGIC, PROBE, CAP_VXLAN, 1, 2)
    for n in range(MAX_CALLERS + 10):
        address = (f"10.99.{n // 256}.{n % 256}", 50103)
        kernel.handle(probe, address[0], address)
    assert len(kernel.probes_due()) == MAX_CALLERS
    clock.now += 3.0 * 3 + 3.1
    kernel.probes_due()
    clock.now += 3.1
    assert kernel.probes_due() == []
