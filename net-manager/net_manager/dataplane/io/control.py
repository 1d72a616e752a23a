"""The packet loop's side of the control channel, and the misses it resolves through it.

Snapshot replaces the table, Stop ends the loop; the loop sends Resolve, Used and
Counters. Packets waiting for an address (a service IP a container sent to, or the source
of tunnelled packets waiting for admission) are replayed once, by the first snapshot
that holds the address; the control side sends that snapshot before the Resolved of the
query, on this one ordered channel, and a Resolved that found nothing drops them. A
replay puts the first fragment of a datagram before its later fragments, so a datagram
that waited arrives whole.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable
from ipaddress import ip_address
from typing import TypeVar

from net_manager.dataplane.channel import (
    ChannelClosed,
    ChannelError,
    Message,
    Resolve,
    Resolved,
    Snapshot,
    Stop,
)
from net_manager.dataplane.core.packet import Header, parse
from net_manager.dataplane.core.translate import Action, Verdict, build_snapshot

log = logging.getLogger("net_manager.dataplane.io.loop")
T = TypeVar("T")


class ControlDispatch:
    """PacketLoop's methods for control messages and table misses."""

    def _queue_miss(self, verdict: Verdict, packet: bytes) -> None:
        service_ip = verdict.service_ip
        outcome = self.pending.add(service_ip, packet, self._clock(), verdict.owner)
        if outcome == "resolve":
            self.counts["resolve_requests"] += 1
            self._send(Resolve(service_ip))
        elif outcome != "queued":
            self.counts["drop_" + outcome] += 1

    def _queue_admission(self, verdict: Verdict, packet: bytes) -> None:
        """A tunnelled packet whose source may be a caller's instance IP: resolve it."""
        address = verdict.service_ip
        outcome = self.admission.add(address, (verdict.owner, packet), self._clock(), verdict.owner)
        if outcome == "resolve":
            self.counts["admission_resolves"] += 1
            self._send(Resolve(address))
        elif outcome != "queued":
            self.counts["drop_admission_" + outcome.removeprefix("miss_")] += 1

    def _replay(self, address: str) -> None:
        """Run the packets waiting for address through the translator again."""
        deadline = self.pending.deadline(address)
        still_missing = []
        for packet in _firsts_first(self.pending.take(address), lambda packet: packet):
            n = len(packet)
            self._buf[:n] = packet
            verdict = self.translator.outgoing(self._buf, n)
            if verdict.action is Action.MISS:
                still_missing.append(packet)
            else:
                self._forward(verdict, n)
        self.pending.put_back(address, still_missing, deadline)
        deadline = self.admission.deadline(address)
        still_waiting = []
        for item in _firsts_first(self.admission.take(address), lambda item: item[1]):
            sender, packet = item
            n = len(packet)
            self._buf[:n] = packet
            verdict = self.translator.from_tunnel(self._buf, n, sender)
            if verdict.action is Action.MISS:
                still_waiting.append(item)
            else:
                self._forward(verdict, n)
        self.admission.put_back(address, still_waiting, deadline)

    def _on_control(self) -> None:
        try:
            messages = self._control.receive()
        except ChannelClosed as err:
            log.info("data plane stopping: %s", err)
            self._running = False
            return
        for error in self._control.errors:
            self.counts["control_errors"] += 1
            log.error("bad message on the control channel: %s", error)
        self._control.errors.clear()
        for message in messages:
            self._handle(message)
        self._flush_control()

    def _handle(self, message: Message) -> None:
        if isinstance(message, Snapshot):
            self._apply_snapshot(message)
        elif isinstance(message, Resolved):
            self._resolved(message)
        elif isinstance(message, Stop):
            log.info("data plane stopping: asked to")
            self._running = False
        else:
            self.counts["control_errors"] += 1
            log.error("unexpected %s message from the control plane", message.TYPE)

    def _apply_snapshot(self, message: Snapshot) -> None:
        try:
            services, instances = message.entries()
            snapshot = build_snapshot(services, instances, message.node_ip)
        except (ChannelError, ValueError) as err:
            self.counts["snapshot_errors"] += 1
            log.error("snapshot refused, keeping the previous table: %s", err)
            return
        self.translator.set_snapshot(snapshot)
        self.counts["snapshots"] += 1
        addresses = {
            target.verdict.address
            for route in snapshot.routes.values()
            for target in route.targets.values()
            if target.verdict.address is not None
        }
        self.peers.set_source(snapshot.node_ip)
        self.peers.retain(addresses)
        self.prober.set_peers(addresses)
        self._update_gso_peers()
        for address in {*self.pending.service_ips, *self.admission.service_ips}:
            if ip_address(address).packed in snapshot.routes:
                self._replay(address)

    def _resolved(self, message: Resolved) -> None:
        if message.found:
            self._replay(message.service_ip)
        else:
            now = self._clock()
            self.counts["drop_unresolved"] += self.pending.fail(message.service_ip, now)
            dropped = self.admission.fail(message.service_ip, now)
            self.counts["drop_admission_unresolved"] += dropped

    def _send(self, message: Message) -> None:
        try:
            if not self._control.send(message):
                self.counts["control_dropped"] += 1
        except ChannelClosed as err:
            log.info("data plane stopping: %s", err)
            self._running = False
        self._watch_control_writes()

    def _flush_control(self) -> None:
        try:
            self._control.flush()
        except ChannelClosed:
            self._running = False
        self._watch_control_writes()

    def _watch_control_writes(self) -> None:
        """Wake up for EPOLLOUT on the control fd only while frames wait to be written."""
        if self._epoll is not None:
            events = select.EPOLLIN | (select.EPOLLOUT if self._control.pending else 0)
            self._epoll.modify(self._control.fileno(), events)


_HEADER = Header()


def _firsts_first(items: list[T], packet_of: Callable[[T], bytes]) -> list[T]:
    """items with every non-first fragment moved behind the rest (order kept otherwise):
    a later fragment replayed before its first one would find no flow."""
    later = []
    firsts = []
    for item in items:
        packet = bytearray(packet_of(item))
        if parse(packet, len(packet), _HEADER) is None and not _HEADER.l4:
            later.append(item)
        else:
            firsts.append(item)
    return firsts + later if later else items
