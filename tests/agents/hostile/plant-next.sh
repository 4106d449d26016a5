#!/bin/sh
# Plants links where the next attempt's files will be ($2 is the next agent), pointing at the
# file given ($1), then fails so that the chain moves on.
dir="$DIRIGENT_CONTEXT_DIR/runs/$DIRIGENT_TASK_ID"
next=$((DIRIGENT_ATTEMPT + 1))
for ext in stdout stderr prompt; do
  ln -s "$1" "$dir/$next-$2.$ext"
done
echo "planted" >&2
exit 1
