"""Node layer: makes the kernel of the node match desired state.

`reconciler` (desired state -> kernel, with its runner thread) drives a `Kernel`
(`kernel`: the facade, and `KernelApi`, the Protocol the fake in the tests satisfies
too), built from one module per job: `links` (netlink: links, addresses, routes),
`firewall` (iptables rules rendered as text, pure), `iptables` (applying them),
`sysctls`, `namespaces` (named namespaces and their marks), `unikernel` (the inside of a
unikernel's namespace), `commands` (running a tool inside a namespace), `validate`
(argument checks, pure). `portmap` is the port-mapping model.
"""
