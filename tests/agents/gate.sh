#!/bin/sh
# Waits until the file named by $1 (relative to the workspace) exists, then succeeds.
while [ ! -e "$DIRIGENT_WORKSPACE/$1" ]; do sleep 0.02; done
echo "released"
