#!/bin/sh
# A side command that lingers: starts a grandchild that sleeps (its pid in `<last arg>.pid` in
# the working directory), ignores SIGTERM, then waits. Only a kill of its whole group ends both.
for last; do :; done
sleep 1000 &
echo $! > "$last.pid.tmp" && mv "$last.pid.tmp" "$last.pid"
echo "started $!"
trap '' TERM
while :; do sleep 1; done
