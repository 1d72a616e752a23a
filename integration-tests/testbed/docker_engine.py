"""A Docker engine of the test's own, inside a network namespace the test created.

`DockerEngine` installs Debian's docker.io, containerd and runc if they are missing,
then starts `dockerd` with `ip netns exec <namespace>` so its bridge, its iptables
rules and every container with "host" networking live in that namespace, never in the
machine's own. Everything else of it is private too: --data-root, --exec-root,
--pidfile and the API socket are under a temporary directory, and a private
/run/netns (what the net manager container bind-mounts) is mounted in the engine's
own mount namespace. `ip netns exec` remounts /sys for the namespace, which hides the
cgroup hierarchies, so they are mounted again there; `/` is made rshared so bind
mounts with propagation (the net manager's /run/netns) work, and since those mounts
were slaves of the machine's they only propagate inward.

`close()` stops dockerd by its PID (it stops its containers and containerd), waits for
it, deletes the namespace and the temporary directory. `DockerUnavailable` says why an
engine cannot run on this machine (not root, packages not installable, dockerd would
not start): the tier skips with that reason.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed.processes import Progress
from testbed.topology import unique_prefix

PACKAGES = {"dockerd": "docker.io", "containerd": "containerd", "runc": "runc"}
TOOL_PACKAGES = {"debootstrap": "debootstrap", "unshare": "util-linux"}
UPLINK = "uplink0"
UPLINK_ADDRESS = "198.19.200.1/24"
UPLINK_GATEWAY = "198.19.200.2"  # nobody: the route exists, the packets go nowhere
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# Runs as the first process after `ip netns exec` (a fresh mount namespace, / a slave
# of the machine's): cgroups back, a private /run/netns, / rshared, then dockerd.
_ENTER = r"""
set -e
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for line in $(cut -d: -f2 /proc/self/cgroup); do
  case "$line" in
    "") mkdir -p /sys/fs/cgroup/unified
        mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified 2>/dev/null || true ;;
    name=*) dir=${line#name=}; mkdir -p "/sys/fs/cgroup/$dir"
        mount -t cgroup -o "none,$line" cgroup "/sys/fs/cgroup/$dir" ;;
    *) mkdir -p "/sys/fs/cgroup/$line"; mount -t cgroup -o "$line" cgroup "/sys/fs/cgroup/$line" ;;
  esac
done
if ! grep -q ' - cgroup ' /proc/self/mountinfo; then
  umount /sys/fs/cgroup; mount -t cgroup2 cgroup2 /sys/fs/cgroup
fi
mkdir -p /run/netns
mount -t tmpfs -o mode=755 netns /run/netns
mount --make-rshared /
exec "$@"
"""


class DockerUnavailable(RuntimeError):
    """Docker cannot run on this machine; the message says why (the tier skips)."""


def ensure_packages(progress: Progress, wanted: Mapping[str, str]) -> None:
    """apt-get install the packages of the programs in `wanted` that are missing."""
    missing = sorted({pkg for prog, pkg in wanted.items() if not _which(prog)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise DockerUnavailable(f"{', '.join(missing)} missing and not root to install them")
    with progress.step(f"apt-get install {' '.join(missing)}"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
            if result.returncode != 0:
                raise DockerUnavailable(f"{' '.join(argv)}: {result.stderr.strip()[-500:]}")


def _which(program: str) -> str | None:
    return shutil.which(program) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{program}", os.X_OK)), None
    )


class DockerEngine:
    """dockerd in a namespace of its own; `data_root` (images, layers) may be a cache
    kept across runs, everything else is under a fresh temporary directory."""

    def __init__(self, progress: Progress | None = None, data_root: Path | None = None) -> None:
        self.progress = progress or Progress(None)
        self.netns = f"{unique_prefix()}docker"
        self.home = Path(tempfile.mkdtemp(prefix="oakd-"))
        self.data_root = data_root or self.home / "data"
        self._lock: int | None = None
        self.socket = self.home / "docker.sock"
        self.log_path = self.home / "dockerd.log"
        self.config_dir = self.home / "client"
        self.proc: subprocess.Popen | None = None
        self._netns_made = False

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for the docker CLI and Compose: this engine, a private config,
        the classic builder (no BuildKit/buildx plugin in Debian's 20.10 engine)."""
        env = {
            **os.environ,
            "DOCKER_HOST": self.host,
            "DOCKER_CONFIG": str(self.config_dir),
            "DOCKER_BUILDKIT": "0",
            "COMPOSE_DOCKER_CLI_BUILD": "0",
        }
        env.update(extra or {})
        return env

    def start(self) -> DockerEngine:
        if os.geteuid() != 0:
            raise DockerUnavailable("needs root (network namespaces, dockerd)")
        ensure_packages(self.progress, {**PACKAGES, **TOOL_PACKAGES})
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_root()
        with self.progress.step(f"dockerd in namespace {self.netns}"):
            self._ip("netns", "add", self.netns)
            self._netns_made = True
            self._ip("-n", self.netns, "link", "set", "lo", "up")
            self._add_uplink()
            argv = [
                _which("dockerd") or "dockerd",
                "--data-root", str(self.data_root),
                "--exec-root", str(self.home / "exec"),
                "--pidfile", str(self.home / "dockerd.pid"),
                "--host", self.host,
                # documentation-range addresses, far from anything on a real network
                "--bip", "198.19.255.1/24",
                "--default-address-pool", "base=198.19.0.0/17,size=24",
            ]  # fmt: skip
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    ["ip", "netns", "exec", self.netns, "sh", "-c", _ENTER, "enter", *argv],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self._wait_ready()
        if self.data_root != self.home / "data":
            self._prune()
        return self

    def _lock_data_root(self) -> None:
        """One engine per data root: a second run at the same time uses a fresh one."""
        self.data_root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_root.parent / f".{self.data_root.name}.lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self.data_root = self.home / "data"
            return
        self._lock = fd

    def _prune(self) -> None:
        """A kept data root holds images (the build cache), nothing a killed run left:
        no container, volume or network; old untagged images go too."""
        with self.progress.step("pruning what earlier runs left in the engine's data root"):
            for kind in ("container", "volume", "network"):
                self.docker(kind, "prune", "--force")
            self.docker("image", "prune", "--force", "--filter", "until=24h")

    def _add_uplink(self) -> None:
        """An uplink and a default route, as a machine has (the net manager finds its
        node address through it). Both veth ends stay in the namespace and the gateway
        does not exist, so nothing sent that way goes anywhere."""
        ns = ["-n", self.netns]
        self._ip(*ns, "link", "add", UPLINK, "type", "veth", "peer", "name", f"{UPLINK}-peer")
        self._ip(*ns, "addr", "add", UPLINK_ADDRESS, "dev", UPLINK)
        self._ip(*ns, "link", "set", f"{UPLINK}-peer", "up")
        self._ip(*ns, "link", "set", UPLINK, "up")
        self._ip(*ns, "route", "add", "default", "via", UPLINK_GATEWAY, "dev", UPLINK)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DockerUnavailable(f"dockerd exited: {self.log_tail()}")
            if self.socket.exists():
                probe = self.docker("version", "--format", "{{.Server.Version}}", check=False)
                if probe.returncode == 0:
                    return
            time.sleep(0.2)
        raise DockerUnavailable(f"dockerd not ready in {START_TIMEOUT:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600.0, **kw
    ) -> subprocess.CompletedProcess:
        """Run the docker CLI against this engine; raises with its output when it fails."""
        return self.run(["docker", *args], check=check, timeout=timeout, **kw)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 600.0,
        env: Mapping[str, str] | None = None,
        **kw,
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=self.env(env), **kw
        )
        if check and result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
            raise RuntimeError(f"{' '.join(argv[:4])} … failed ({result.returncode}):\n{output}")
        return result

    def in_namespace(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """Run a command in the engine's network and mount namespaces (nsenter by PID)."""
        if self.pid is None:
            raise RuntimeError("engine not started")
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-n", *argv],
            capture_output=True,
            text=True,
            **kw,
        )

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with self.progress.step(f"stopping dockerd (pid {self.proc.pid})"):
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
        if self._netns_made:
            self._stop_leftovers()
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
            self._netns_made = False
        # overlay mounts lived in the engine's mount namespace, gone with it
        shutil.rmtree(self.home, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _stop_leftovers(self) -> None:
        """SIGKILL what still runs in our namespace (a shim dockerd left behind)."""
        result = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        for pid in result.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def _ip(self, *args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise DockerUnavailable(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def __enter__(self) -> DockerEngine:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
