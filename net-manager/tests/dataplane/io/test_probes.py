"""probes.Prober: probe schedule, echoes, RTT smoothing and expiry (a fake clock)."""

from __future__ import annotations

from net_manager.dataplane.io.probes import CAP_GSO, ECHO, MAGIC, PACKET, PROBE, Prober, is_control

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
