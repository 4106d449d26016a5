#!/bin/sh
# SIGKILLs its parent (the attempt's supervisor), then lingers in the attempt's process group
# without the workspace marker in its environment: after a crash, only the group finds it.
echo $$ > "$DIRIGENT_WORKSPACE/left.pid"
kill -KILL "$PPID" 2>/dev/null
echo "killed my parent"
exec env -u DIRIGENT_WORKSPACE sleep 1000
