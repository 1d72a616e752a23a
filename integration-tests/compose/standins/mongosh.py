#!/usr/local/bin/python
"""`mongosh` for the test-only stand-in image: only the healthcheck's ping.

`mongosh [--quiet] [--host H] [--port P] --eval "<anything with ping>"` prints 1 when
the server answers a ping, else exits 1.
"""

import argparse
import sys

from pymongo import MongoClient

parser = argparse.ArgumentParser(prog="mongosh")
parser.add_argument("--quiet", action="store_true")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", default="27017")
parser.add_argument("--eval", default="")
args, _ignored = parser.parse_known_args()
if "ping" not in args.eval:
    sys.exit(f"mongosh stand-in: only the ping healthcheck is supported, not {args.eval!r}")
client = MongoClient(
    args.host, int(args.port), directConnection=True, serverSelectionTimeoutMS=3000
)
try:
    print(int(client.admin.command("ping")["ok"]))
except Exception as error:  # noqa: BLE001 - any failure means unhealthy
    sys.exit(f"mongosh stand-in: {error}")
