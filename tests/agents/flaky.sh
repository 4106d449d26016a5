#!/bin/sh
# Fails the first time it runs in a workspace, succeeds afterwards.
marker="$DIRIGENT_WORKSPACE/flaky.marker"
if [ -e "$marker" ]; then echo "worked the second time"; exit 0; fi
touch "$marker"
echo "first run fails" >&2
exit 1
