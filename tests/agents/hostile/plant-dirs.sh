#!/bin/sh
# Puts links to a directory of its choosing in the place of dirigent's own directories.
out="$DIRIGENT_WORKSPACE/outside"
mkdir -p "$out"
for d in outbox runs escalations inbox; do
  mv "$DIRIGENT_CONTEXT_DIR/$d" "$DIRIGENT_CONTEXT_DIR/$d.old"
  ln -s "$out" "$DIRIGENT_CONTEXT_DIR/$d"
done
echo planted
