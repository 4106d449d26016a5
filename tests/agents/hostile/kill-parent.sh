#!/bin/sh
# Tries to stop its supervisor: SIGTERM, then SIGKILL to its parent, then keeps working.
kill -TERM "$PPID" 2>/dev/null
echo "sent SIGTERM to my parent $PPID"
sleep 0.2
echo "still here"
