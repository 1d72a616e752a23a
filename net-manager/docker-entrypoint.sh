#!/bin/sh
# Entry point of the net manager image: `net-manager run` with any arguments given.
# When the container is stopped (docker stop, docker compose down) and
# NETMANAGER_CLEANUP_ON_STOP is true, the daemon is stopped first and then everything
# of ours on the node is removed (`net-manager cleanup --all`: oak* devices, OAK*
# chains), so a node is left as it was. Leave it false to keep containers' links across
# a restart of the daemon (the state file then lets it pick them up again).
net-manager run "$@" &
daemon=$!
stop() {
    kill -TERM "$daemon" 2>/dev/null
    wait "$daemon"
    status=$?
    case "${NETMANAGER_CLEANUP_ON_STOP:-false}" in
        1|true|yes) net-manager cleanup --all ;;
    esac
    exit "$status"
}
trap stop TERM INT
wait "$daemon"
status=$?
# the daemon ended by itself (an error): a restart policy may start it again
exit "$status"
