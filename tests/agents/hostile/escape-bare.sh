#!/bin/sh
# Leaves a process with no environment at all (no workspace marker) in a session of its own,
# then exits: only its adoption by the daemon says where it came from.
env -i /usr/bin/setsid /bin/sh -c 'echo $$ > "$0"; exec sleep 1000' "$DIRIGENT_WORKSPACE/bare.pid" > /dev/null 2>&1 < /dev/null &
while [ ! -s "$DIRIGENT_WORKSPACE/bare.pid" ]; do sleep 0.01; done
echo "left a bare process in its own session"
