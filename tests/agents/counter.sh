#!/bin/sh
# A generator: counts its rounds in the workspace and says which round it did.
n=$(( $(cat "$DIRIGENT_WORKSPACE/counter" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$DIRIGENT_WORKSPACE/counter"
echo "generated round $n"
