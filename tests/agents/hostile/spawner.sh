#!/bin/sh
# Submits another task like itself through dirigent's CLI ($1), forever: each generation makes
# the next.
"$1" submit --agent spawner "spawn again" >/dev/null 2>&1
echo "spawned"
