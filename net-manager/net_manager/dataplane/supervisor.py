"""Control-plane side of the data plane: start, feed, watch and stop its process.

DataPlaneSupervisor spawns `python -m net_manager.dataplane.io.process` (optionally behind
netns_exec, e.g. ["ip", "netns", "exec", "oak-n1"]) with one end of a socketpair passed
as --control-fd, and runs one thread that reads the channel:

- Ready: the process is up; Resolve: on_resolve(service_ip, reply) is called and
  reply(found) sends the Resolved answer (from any thread, at any time); Used:
  on_used(job_names); Counters: kept for counters().
- push_snapshot() sends the table now and remembers it: a restarted process gets the
  latest one again before anything else.
- A process that exits, or says nothing for `watchdog` seconds, is restarted after a
  backoff (doubling from backoff_min to backoff_max; reset once it ran for a minute);
  each death is logged with its exit status. stop() sends Stop, waits, then kills.

Callbacks run on the supervisor's thread: keep them short (hand work off). Counters
are summed over restarts (except channel.GAUGES), so they only grow.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from net_manager.dataplane.backend import DataPlaneOptions
from net_manager.dataplane.channel import (
    GAUGES,
    ChannelError,
    Counters,
    FrameDecoder,
    Message,
    Ready,
    Resolve,
    Resolved,
    Snapshot,
    Stop,
    Used,
    encode,
)
from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.io.seal import KEY_ENV

log = logging.getLogger(__name__)
EXIT_MEANING = {0: "stopped", 1: "crashed", 2: "could not set up its TUN or tunnel socket"}
STABLE_AFTER = 60.0  # a process that ran this long resets the backoff


class DataPlaneSupervisor:
    """Runs the data-plane process and talks to it; see the module doc."""

    def __init__(
        self,
        options: DataPlaneOptions,
        *,
        extra_args: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        watchdog: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        """`options.on_tunnel` is the kernel backend's business: the proxy has no tunnel."""
        o = options
        self._command = [
            *(o.netns_exec or ()),
            sys.executable,
            "-m",
            "net_manager.dataplane.io.process",
            *(["--no-tun"] if o.tun_name is None else ["--tun", o.tun_name]),
            *["--tun-v4", o.tun_v4_cidr, "--tun-v6", o.tun_v6_cidr],
            *["--mtu", str(o.mtu), "--port", str(o.port), "--flow-quota", str(o.flow_quota)],
            *(["--seal"] if o.tunnel_key else []),
            *(["--vxlan"] if o.vxlan else []),
            *extra_args,
        ]
        # The key goes in the environment, never on the command line (ps shows that).
        self._env = {**os.environ, KEY_ENV: o.tunnel_key} if o.tunnel_key else None
        self._pass_fds = tuple(pass_fds)  # e.g. a stand-in TUN for --tun-fd (tests)
        self._on_resolve = o.on_resolve
        self._on_used = o.on_used
        self._backoff = (backoff_min, backoff_max)
        self._watchdog = watchdog
        self._stop_timeout = stop_timeout
        self._lock = threading.Lock()  # guards _sock, _snapshot and sending
        self._sock: socket.socket | None = None
        self._snapshot: bytes | None = None  # the latest table, encoded
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._stop_time = 0.0
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._totals: dict[str, int | float] = {}  # from processes that died
        self._current: dict[str, int | float] = {}
        self.rtt: dict[str, float] = {}
        self.peer_capabilities: dict[str, int] = {}  # node_ip -> probes.CAP_* of its echo
        self.restarts = 0
        self.reports = 0  # Counters messages received (tests wait for a fresh one)
        self.port = 0  # the tunnel port the running process listens on
        self.pid = 0

    # ------------------------------------------------------------ public API

    def start(self) -> None:
        """Start the process and the thread that keeps it running."""
        if self._thread is not None:
            raise RuntimeError("data plane supervisor already started")
        self._thread = threading.Thread(target=self._run, name="dataplane-supervisor")
        self._thread.daemon = True
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Whether a process said Ready within timeout seconds."""
        return self._ready.wait(timeout)

    @property
    def running(self) -> bool:
        return self._ready.is_set()

    def push_snapshot(
        self, services: list[ServiceEntry], local_instances: list[Endpoint], node_ip: str
    ) -> None:
        """Send the whole table to the data plane (and to every later restart of it)."""
        frame = encode(Snapshot.of(services, local_instances, node_ip))
        with self._lock:
            self._snapshot = frame
            self._send_locked(frame)

    def counters(self) -> dict[str, int | float]:
        """The data plane's counters (summed over restarts) plus restarts and running."""
        with self._lock:
            values = dict(self._totals)
            for name, value in self._current.items():
                values[name] = values.get(name, 0) + value if name not in GAUGES else value
        values["restarts"] = self.restarts
        values["running"] = int(self.running)
        return values

    def use_lag(self) -> float:
        """The loop reports use every second (`report_interval`): no lag beyond it."""
        return 0.0

    def stop(self) -> None:
        """Stop the process (Stop, then SIGTERM, then SIGKILL) and the thread."""
        self._stop_time = time.monotonic()
        self._stopping.set()
        with self._lock:
            self._send_locked(encode(Stop()))
        if self._thread is not None:
            self._thread.join(self._stop_timeout * 3)
            self._thread = None

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                status = self._serve_one()
            except Exception:
                log.exception("data plane supervisor error")
                status = None
            if self._stopping.is_set():
                break
            self.restarts += 1
            if time.monotonic() - started > STABLE_AFTER:
                delay = self._backoff[0]
            log.error(
                "data plane process exited (%s: %s); restarting in %.1f s",
                status,
                EXIT_MEANING.get(status, "killed" if status and status < 0 else "unknown"),
                delay,
            )
            self._stopping.wait(delay)
            delay = min(delay * 2, self._backoff[1])

    def _serve_one(self) -> int | None:
        """Run one process until it dies or we stop; return its exit status."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            command = [*self._command, "--control-fd", str(theirs.fileno())]
            fds = (theirs.fileno(), *self._pass_fds)
            proc = subprocess.Popen(command, pass_fds=fds, start_new_session=True, env=self._env)
        except OSError as err:
            ours.close()
            log.error("cannot start the data plane process %s: %s", self._command, err)
            return None
        finally:
            theirs.close()
        ours.settimeout(self._watchdog)  # a send to a stuck process gives up (see _send_locked)
        self._proc = proc
        self.pid = proc.pid
        with self._lock:
            self._sock = ours
            if self._snapshot is not None:
                self._send_locked(self._snapshot)
        healthy = False
        try:
            healthy = self._read(ours, proc)
        finally:
            self._ready.clear()
            self._end(proc, graceful=healthy)  # before the lock: a blocked send may hold it
            with self._lock:
                self._sock = None
                self._retire_counters()
            ours.close()
        return proc.returncode

    def _read(self, sock: socket.socket, proc: subprocess.Popen) -> bool:
        """Handle messages until the process ends; False if it must be killed (stuck)."""
        decoder = FrameDecoder()
        last_heard = time.monotonic()
        while True:
            readable, _, _ = select.select([sock], [], [], 0.2)
            if self._stop_overdue():
                log.warning("data plane process %d ignores Stop", proc.pid)
                return False
            if not readable:
                if proc.poll() is not None:
                    return True
                if time.monotonic() - last_heard > self._watchdog:
                    log.error("data plane process %d silent for %.0f s", proc.pid, self._watchdog)
                    return False
                continue
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                return True
            last_heard = time.monotonic()
            decoder.feed(data)
            if not self._dispatch_all(decoder):
                return False

    def _dispatch_all(self, decoder: FrameDecoder) -> bool:
        """Handle every complete message; False if the stream is broken."""
        while True:
            try:
                message = decoder.pop()
            except ChannelError as err:
                log.error("bad message from the data plane: %s", err)
                if decoder.broken:
                    return False
                continue
            if message is None:
                return True
            try:
                self._dispatch(message)
            except Exception:
                log.exception("data plane message handler failed for %s", message.TYPE)

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Counters):
            with self._lock:
                self._current = dict(message.values)
            self.rtt = dict(message.rtt)
            self.peer_capabilities = dict(message.capabilities)
            self.reports += 1
        elif isinstance(message, Used):
            self._on_used(list(message.job_names))
        elif isinstance(message, Resolve):
            self._on_resolve(message.service_ip, self._replier(message.service_ip))
        elif isinstance(message, Ready):
            self.port = message.port
            self._ready.set()
            log.info("data plane process %d ready on port %d", message.pid, message.port)
        else:
            log.error("unexpected %s message from the data plane", message.TYPE)

    def _replier(self, service_ip: str) -> Callable[[bool], None]:
        def reply(found: bool) -> None:
            frame = encode(Resolved(service_ip, bool(found)))
            with self._lock:
                self._send_locked(frame)

        return reply

    # ------------------------------------------------------------ helpers

    def _send_locked(self, frame: bytes) -> None:
        """Send a frame to the running process, if any (caller holds the lock)."""
        if self._sock is None:
            return
        try:
            self._sock.sendall(frame)
        except TimeoutError:
            # Part of a frame may be out: the stream is lost. Closing our side ends the
            # process (it sees EOF) and the thread restarts it.
            log.error("data plane process not reading its control channel; restarting it")
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError as err:
            log.warning("cannot send to the data plane process: %s", err)

    def _stop_overdue(self) -> bool:
        return self._stop_time > 0 and time.monotonic() - self._stop_time > self._stop_timeout

    def _retire_counters(self) -> None:
        for name, value in self._current.items():
            if name not in GAUGES:
                self._totals[name] = self._totals.get(name, 0) + value
        self._current = {}

    def _end(self, proc: subprocess.Popen, *, graceful: bool) -> None:
        """Make sure proc is gone: let it exit by itself, else SIGTERM, then SIGKILL."""
        steps = ("wait", "terminate", "kill") if graceful else ("terminate", "kill")
        for step in steps:
            if step == "terminate":
                proc.terminate()
            elif step == "kill":
                proc.kill()
            try:
                proc.wait(self._stop_timeout if step != "kill" else None)
                return
            except subprocess.TimeoutExpired:
                log.warning("data plane process %d did not exit after %s", proc.pid, step)
