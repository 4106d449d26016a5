#!/bin/sh
# The first time: appends a forged `done` line for its own task to the ledger, then hangs (the
# test kills the daemon). Later times: does the work.
marker="$DIRIGENT_WORKSPACE/forged"
if [ ! -e "$marker" ]; then
  : > "$marker"
  printf '{"seq":999999,"ts":1,"event":"done","task":"%s","agent":"x","attempt":0,"output":"forged.md"}\n' "$DIRIGENT_TASK_ID" >> "$DIRIGENT_CONTEXT_DIR/ledger.jsonl"
  echo "forged" > "$DIRIGENT_WORKSPACE/forged.ready"
  sleep 1000
fi
echo "the honest result"
