"""The kernel fast path: nftables NAT for service IPs the node already knows.

`ruleset` decides which service IPs the kernel serves and renders our own nftables
table (pure); `nft` applies it inside the node's namespace; `backend` wraps the TUN
proxy (misses, first packets and everything the kernel does not serve stay there) and
keeps the kernel rules in step with the table.
"""
