#!/bin/sh
# Leaves a grandchild holding stdout open after it exits.
sleep 1000 &
echo $! > "$DIRIGENT_WORKSPACE/grandchild.pid"
echo "done, but my child still holds stdout"
exit 0
