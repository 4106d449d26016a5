#!/bin/sh
# Hangs: starts a grandchild that also hangs (recording its pid), ignores SIGTERM, then waits.
sleep 1000 &
echo $! > "$DIRIGENT_WORKSPACE/grandchild.pid"
echo "started grandchild $!"
trap '' TERM
while :; do sleep 1; done
