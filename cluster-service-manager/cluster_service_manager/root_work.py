"""Root work that survives a restart: a journal in the cluster's store, replayed at start.

What waits for the root (a location report, a cleared location, an interest removal,
a subnet release) and node messages queued behind such work are `Recorded` steps: the
lanes journal them in the `root_work` collection while they wait and delete them when
done (see `lanes.py`). At start, before the lanes and the MQTT client run, `replay`
queues every entry again in its original order: a root call is rebuilt from its
record; a node message is handled again as if the node had just sent it (behind the
root work of its lane that was replayed before it). Every step is idempotent, so an
entry run twice (the process died between the call and the deletion) does no harm.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

from bson import ObjectId

from oakestra_net.log import get_logger
from oakestra_net.messages import (
    AddressChanged,
    InvalidMessage,
    Message,
    ServiceDeployed,
    ServiceUndeployed,
    SubnetRequest,
)

from .directory import Directory
from .lanes import Lanes, Recorded, Step
from .root_client import RootClient, RootRejected

log = get_logger(__name__)

COLLECTION = "root_work"
NODE_MESSAGES: dict[str, type[Message]] = {
    m._LABEL: m for m in (SubnetRequest, ServiceDeployed, ServiceUndeployed, AddressChanged)
}


class StoredJournal:
    """The lanes' journal in the cluster's store; entries sort in submission order."""

    def __init__(self, db: Any) -> None:
        self.collection = db[COLLECTION]

    def add(self, lane: Hashable, what: str, record: dict, barrier: bool) -> ObjectId:
        entry_id = ObjectId()  # increasing within a process: the lane's order
        self.collection.insert_one(
            {
                "_id": entry_id,
                "lane": str(lane),
                "what": what,
                "record": record,
                "barrier": barrier,
                "created_at": time.time(),
            }
        )
        return entry_id

    def replace(self, entry_id: Any, record: dict) -> None:
        self.collection.update_one({"_id": entry_id}, {"$set": {"record": record}})

    def remove(self, entry_id: Any) -> None:
        self.collection.delete_one({"_id": entry_id})

    def entries(self) -> list[dict]:
        return list(self.collection.find({}).sort("_id", 1))

    def count(self) -> int:
        return self.collection.count_documents({})

    def interest_drops(self) -> set[str]:
        """Jobs whose root interest removal waits here."""
        entries = self.collection.find({"record.kind": "drop_interest"}, {"record.job_name": 1})
        return {str(e["record"]["job_name"]) for e in entries}


def node_message(node_id: str, msg: Message) -> dict:
    """The record of a node message queued behind root work."""
    return {"kind": "node_message", "node_id": node_id, "label": msg._LABEL, "body": msg.to_dict()}


class RootWork:
    """The root calls made in lanes, as `Recorded` steps, and rebuilt from their records."""

    def __init__(self, root: RootClient, directory: Directory) -> None:
        self.root = root
        self.directory = directory

    def report_locations(self, job_id: str, instances: list[dict]) -> Recorded:
        record = {"kind": "report_locations", "job_id": job_id, "instances": instances}
        return Recorded(record, lambda: self.root.report_locations(job_id, instances))

    def report_cleared(self, job_id: str, instances: list[dict]) -> Recorded:
        record = {"kind": "report_cleared", "job_id": job_id, "instances": instances}
        return Recorded(record, lambda: self._report_cleared(job_id, instances))

    def release_subnet(self, subnet_v4: str | None, subnet_v6: str | None) -> Recorded:
        record = {"kind": "release_subnet", "subnet_v4": subnet_v4, "subnet_v6": subnet_v6}
        return Recorded(record, lambda: self.root.release_subnet(subnet_v4, subnet_v6))

    def drop_interest(self, job_name: str) -> Recorded:
        record = {"kind": "drop_interest", "job_name": job_name}
        return Recorded(record, lambda: self.directory.drop_root_interest(job_name))

    def _report_cleared(self, job_id: str, instances: list[dict]) -> None:
        try:
            self.root.report_locations(job_id, instances)
        except RootRejected as err:
            # Roots that require a location for every report (upstream's do) keep the old
            # one until the system manager removes the instance; our cache is right anyway.
            log.info("root did not take the cleared location", job_id=job_id, reason=str(err))

    def rebuild(self, record: dict) -> Step | None:
        """The step a stored record stands for; None if the record is not one of ours."""
        kind = record.get("kind")
        if kind in ("report_locations", "report_cleared"):
            build = self.report_locations if kind == "report_locations" else self.report_cleared
            return build(str(record["job_id"]), list(record["instances"]))
        if kind == "release_subnet":
            return self.release_subnet(record.get("subnet_v4"), record.get("subnet_v6"))
        if kind == "drop_interest":
            return self.drop_interest(str(record["job_name"]))
        return None


def replay(
    journal: StoredJournal,
    lanes: Lanes,
    work: RootWork,
    dispatch: Callable[[str, Message], None],
) -> int:
    """Queue the journaled work again, in order; `dispatch(node_id, msg)` handles a node
    message anew. Call before the lanes and the MQTT client start. Returns the count."""
    replayed = 0
    for entry in journal.entries():
        record = entry.get("record") or {}
        try:
            if record.get("kind") == "node_message":
                journal.remove(entry["_id"])  # handling it again journals it again if it waits
                message_type = NODE_MESSAGES[record["label"]]
                dispatch(str(record["node_id"]), message_type.from_json(record["body"]))
            else:
                step = work.rebuild(record)
                if step is None:
                    raise ValueError(f"unknown record kind {record.get('kind')!r}")
                lanes.submit(
                    entry["lane"],
                    entry.get("what", "replayed root work"),
                    step,
                    barrier=bool(entry.get("barrier", True)),
                    journal_id=entry["_id"],
                )
        except (KeyError, TypeError, ValueError, InvalidMessage) as err:
            log.error("journal entry unusable, dropped", entry=str(entry["_id"]), reason=str(err))
            journal.remove(entry["_id"])
            continue
        replayed += 1
    if replayed:
        log.info("root work from before the restart queued again", count=replayed)
    return replayed
