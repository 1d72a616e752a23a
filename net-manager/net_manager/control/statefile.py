"""The node daemon's persistent state: registration and deployed instances.

Written atomically (temp file + rename) after every change, read once at start so a
restarted daemon re-adopts live containers with the same addresses and veths.
Format (version 1, JSON):
  {"version": 1, "node_id": str, "cluster_url": str, "subnet_v4": str, "subnet_v6": str,
   "addresses": {"v4": {"next": int, "free": [int]}, "v6": {...}},
   "instances": {"<job>.<n>": {<Instance fields>}}}
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from oakestra_net.log import get_logger

log = get_logger(__name__)
VERSION = 1


@dataclass
class Instance:
    """One attached container (or unikernel namespace) on this node."""

    job_name: str
    instance_number: int
    kind: str  # "container" | "unikernel"
    netns_path: str
    netns_inode: int
    namespace_ip: str
    namespace_ip_v6: str
    host_veth: str
    peer_veth: str
    port_mappings: str
    pid: int = 0

    @property
    def key(self) -> str:
        return instance_key(self.job_name, self.instance_number)


def instance_key(job_name: str, instance_number: int) -> str:
    return f"{job_name}.{instance_number}"


@dataclass
class NodeState:
    node_id: str = ""
    cluster_url: str = ""
    subnet_v4: str = ""
    subnet_v6: str = ""
    addresses: dict[str, Any] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeState:
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported state file version {data.get('version')!r}")
        instances = {k: Instance(**v) for k, v in data.get("instances", {}).items()}
        return cls(
            node_id=data.get("node_id", ""),
            cluster_url=data.get("cluster_url", ""),
            subnet_v4=data.get("subnet_v4", ""),
            subnet_v6=data.get("subnet_v6", ""),
            addresses=data.get("addresses", {}),
            instances=instances,
        )


def load(path: str) -> NodeState:
    """The saved state, or an empty one when there is none (or it is unreadable: logged)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return NodeState.from_dict(json.load(handle))
    except FileNotFoundError:
        return NodeState()
    except (OSError, ValueError, TypeError) as err:
        log.error("state file unreadable, starting empty", path=path, reason=str(err))
        return NodeState()


def save(path: str, state: NodeState) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state.to_dict(), handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
