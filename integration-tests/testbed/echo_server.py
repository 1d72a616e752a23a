"""A container's program: says which instance it is and whom it saw, over HTTP and UDP.

    python echo_server.py <instance name> [port]      (port 30443 by default)

HTTP (any GET path, e.g. /api/hello) and UDP on the same port, IPv4 and IPv6 (one
dual-stack socket each). Both answer a JSON object {"instance", "client", "port", ...}:
"client" is the source address the request arrived from, which through a service IP is
the caller's instance IP. Prints "ready" once both listen. Standard library only: it
runs with `ip netns exec` inside the container's namespace.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE = sys.argv[1] if len(sys.argv) > 1 else "unnamed"
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 30443


def plain(address: str) -> str:
    return address.removeprefix("::ffff:")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        peer = self.client_address
        body = json.dumps(
            {"instance": INSTANCE, "client": plain(peer[0]), "port": peer[1], "path": self.path}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def udp_echo(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(65535)
        answer = {
            "instance": INSTANCE,
            "client": plain(peer[0]),
            "port": peer[1],
            "size": len(data),
        }
        sock.sendto(json.dumps(answer).encode(), peer)


def main() -> None:
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", PORT))
    threading.Thread(target=udp_echo, args=(udp,), daemon=True).start()
    server = DualStackServer(("::", PORT), Handler)
    print(f"ready: {INSTANCE} on port {PORT}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
