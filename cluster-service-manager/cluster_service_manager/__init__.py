"""Oakestra cluster service manager: the nodes' MQTT endpoint and the cluster's cache of the
root's service tables (see docs/ARCHITECTURE.md, "Cluster service manager")."""
