"""Names of the devices and namespaces the net manager owns, and the platform ranges.

Every link we create starts with PREFIX, so a sweep can tell ours from the rest.
"""

import re

PREFIX = "oak-"
BRIDGE = "oak-br0"
TUN = "oak-tun0"
CONTAINER_IFNAME = "eth0"
IFNAMSIZ = 15
NETNS_RUN_DIR = "/run/netns"
PLATFORM_V4 = "10.16.0.0/12"
PLATFORM_V6 = "fc00::/7"

# Inside a unikernel's namespace: the guest behind tap0 has .2 and uses .1 on virbr0 as
# its gateway (the node engine relies on these names).
UNIKERNEL_BRIDGE = "virbr0"
UNIKERNEL_TAP = "tap0"
UNIKERNEL_GATEWAY = "192.168.1.1/30"
UNIKERNEL_GUEST = "192.168.1.2"
UNIKERNEL_GATEWAY_V6 = "fd00:1::1/126"
UNIKERNEL_GUEST_V6 = "fd00:1::2"
NETNS_MARK = "oakestra-net"  # alias of `lo` in the named namespaces we create
NETNS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
