"""Long-running processes inside our namespaces: start, readiness, restart, stop by PID.

A `Process` is one program (Mosquitto, a manager, a net manager, a container's server)
run with `ip netns exec <namespace>` (which execs it: the PID we hold is the
program's), in a session of its own so a Ctrl-C at the terminal reaches only us and
we stop things in order. Output goes to a log file in the run directory, appended
across restarts. `Progress` prints the "starting mosquitto… ok (0.2 s)" lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO, TypeVar

T = TypeVar("T")


class ProcessError(RuntimeError):
    """A process that would not start or get ready; the message names it and its log."""


class Process:
    def __init__(
        self,
        name: str,
        netns: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.netns = netns
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Process:
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; waits for the exit. Idempotent."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def terminate(self) -> None:
        """SIGTERM without waiting (stop() then waits); lets several stop at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL at once: a crash."""
        self._signal_and_wait(signal.SIGKILL, 5.0)

    def _signal_and_wait(self, sig: int, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proc = None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessError(
                f"{self.name} exited with {self.proc.returncode}; its log {self.log_path} "
                f"ends with:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 15) -> str:
        """The log's last lines, without the access-log lines of our own status polling."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        kept = [line for line in text.splitlines() if '"GET /status' not in line]
        return "\n".join(kept[-lines:])

    def wait_until(self, check: Callable[[], T], timeout: float, what: str) -> T:
        """Poll `check` (exceptions count as "not yet") until truthy; fail early if we died."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            self.check_alive()
            try:
                value = check()
            except Exception as err:  # noqa: BLE001 - not ready yet, whatever the reason
                value, last = None, err
            else:
                last = value
            if value:
                return value
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{self.name}: {what} not within {timeout:.0f} s (last: {last!r}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)


class Progress:
    """Prints steps as "starting mosquitto… ok (0.2 s)"; silent with out=None."""

    def __init__(self, out: TextIO | None = sys.stdout) -> None:
        self.out = out

    def say(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        started = time.monotonic()
        if self.out is not None:
            print(f"{text}… ", end="", file=self.out, flush=True)
        try:
            yield
        except BaseException:
            if self.out is not None:
                print(f"FAILED ({time.monotonic() - started:.1f} s)", file=self.out, flush=True)
            raise
        if self.out is not None:
            print(f"ok ({time.monotonic() - started:.1f} s)", file=self.out, flush=True)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A clean environment for our children: PATH and locale, no proxies or MongoDB URLs
    of the caller (the managers use their embedded store), plus `extra`."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "LOG_FORMAT": "human",
    }
    env.update(extra)
    return env
