#!/bin/sh
# Says it is waiting, waits until the file named by $1 (relative to the workspace) exists, then
# succeeds.
echo "waiting for $1"
while [ ! -e "$DIRIGENT_WORKSPACE/$1" ]; do sleep 0.02; done
echo "released"
