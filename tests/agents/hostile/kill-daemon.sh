#!/bin/sh
# Finds the daemon by its lock file and sends it SIGTERM (or the signal given), then finishes.
pid=$(cat "$DIRIGENT_CONTEXT_DIR/daemon.lock")
kill -"${1:-TERM}" "$pid"
echo "signalled the daemon $pid"
sleep 0.3
echo "done anyway"
