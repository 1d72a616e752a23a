#!/usr/local/bin/python
"""`mongod` for the test-only stand-in image: runs SecantusDB with mongod's flags.

Understands --port, --bind_ip, --bind_ip_all and --dbpath (the rest is ignored) and
serves as a standalone server, data in --dbpath (default /data/db).
"""

import argparse
import os
import sys

parser = argparse.ArgumentParser(prog="mongod")
parser.add_argument("--port", default="27017")
parser.add_argument("--bind_ip", default="127.0.0.1")
parser.add_argument("--bind_ip_all", action="store_true")
parser.add_argument("--dbpath", default="/data/db")
args, _ignored = parser.parse_known_args()
host = "0.0.0.0" if args.bind_ip_all else args.bind_ip.split(",")[0]
argv = ["secantusd-py", "--host", host, "--port", args.port]
argv += ["--storage-path", args.dbpath, "--standalone", "--log-level", "WARNING"]
sys.stdout.flush()
os.execvp(argv[0], argv)
