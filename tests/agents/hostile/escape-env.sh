#!/bin/sh
# Escapes its process group with other DIRIGENT_* values than its own, then exits.
DIRIGENT_TASK_ID=somebody-else DIRIGENT_ATTEMPT=99 setsid sh -c 'echo $$ > "$DIRIGENT_WORKSPACE/escaped.pid"; exec sleep 1000' > /dev/null 2>&1 < /dev/null &
while [ ! -s "$DIRIGENT_WORKSPACE/escaped.pid" ]; do sleep 0.01; done
echo "left a disguised process behind"
