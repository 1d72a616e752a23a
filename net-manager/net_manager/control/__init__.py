"""Control layer: what the node should look like, from the cluster's point of view.

`daemon` (NodeDaemon: registration, instances and containers, status), `services`
(the translation table, interests and table queries), `session` (the MQTT glue to the
cluster), `addresses` (namespace IPs of this node's subnet), `statefile` (instances
kept across restarts). It decides; `node` makes the kernel match, `dataplane` moves
packets.
"""
