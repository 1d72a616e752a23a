"""The TUN proxy's I/O: the separate data-plane process and its packet loop.

`process` (entry point, spawned by the supervisor), `loop` (the epoll loop), `pending`
(packets queued on a table miss), `peers` (tunnel sockets per remote node), `offload`
(GSO/TSO frames), `tun` (the TUN device), `probes` (RTT probes between nodes).
"""
