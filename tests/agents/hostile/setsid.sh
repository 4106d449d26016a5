#!/bin/sh
# Starts a process in a new session (escaping the process group), then exits.
setsid sh -c 'echo $$ > "$DIRIGENT_WORKSPACE/escaped.pid"; exec sleep 1000' > /dev/null 2>&1 < /dev/null &
# Wait until it has written its pid, so the test can find it.
while [ ! -s "$DIRIGENT_WORKSPACE/escaped.pid" ]; do sleep 0.01; done
echo "left a process in its own session"
