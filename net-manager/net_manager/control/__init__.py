"""Control layer: what the node should look like, from the cluster's point of view.

`daemon` (NodeDaemon: lifecycle, registration, desired state, status), `instances`
(attaching and detaching containers and unikernels), `services` (the translation table,
interests, table queries, and `feed`, which glues them to the session and the data
plane), `session` (the MQTT glue to the cluster), `addresses` (namespace IPs of this
node's subnet), `statefile` (instances kept across restarts). It decides; `node` makes
the kernel match, `dataplane` moves packets.
"""
