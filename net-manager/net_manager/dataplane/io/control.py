"""The packet loop's side of the control channel, and the misses it resolves through it.

Snapshot replaces the table, Resolved replays (once) or fails the packets waiting for one
service IP, Stop ends the loop; the loop sends Resolve, Used and Counters. The control
side sends the snapshot holding a resolved IP before its Resolved, on this one ordered
channel, so the replay finds it.
"""

from __future__ import annotations

import logging
import select

from net_manager.dataplane.channel import (
    ChannelClosed,
    ChannelError,
    Message,
    Resolve,
    Resolved,
    Snapshot,
    Stop,
)
from net_manager.dataplane.core.translate import Action, build_snapshot

log = logging.getLogger("net_manager.dataplane.io.loop")


class ControlDispatch:
    """PacketLoop's methods for control messages and table misses."""

    def _queue_miss(self, service_ip: str, packet: bytes) -> None:
        outcome = self.pending.add(service_ip, packet, self._clock())
        if outcome == "resolve":
            self.counts["resolve_requests"] += 1
            self._send(Resolve(service_ip))
        elif outcome != "queued":
            self.counts["drop_" + outcome] += 1

    def _replay(self, service_ip: str) -> None:
        """Run the packets waiting for service_ip through the translator again."""
        deadline = self.pending.deadline(service_ip)
        still_missing = []
        for packet in self.pending.take(service_ip):
            n = len(packet)
            self._buf[:n] = packet
            verdict = self.translator.outgoing(self._buf, n)
            if verdict.action is Action.MISS:
                still_missing.append(packet)
            else:
                self._forward(verdict, n)
        self.pending.put_back(service_ip, still_missing, deadline)

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
        self.peers.retain(addresses)
        self.prober.set_peers(addresses)
        self._update_gso_peers()

    def _resolved(self, message: Resolved) -> None:
        if message.found:
            self._replay(message.service_ip)
        else:
            self.counts["drop_unresolved"] += self.pending.fail(message.service_ip, self._clock())

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
