"""The node's data plane: moves packets to service IPs, instances and other nodes.

`backend` is the seam the control layer uses (`DataPlaneBackend`); the TUN proxy
implements it: `supervisor` (control side: runs and feeds the process), `channel` (the
framed messages between the two), `io` (the process: TUN, tunnel sockets, the packet
loop) around `core` (pure packet translation, no I/O).
"""
