#!/bin/sh
# SIGKILLs its parent, then lingers (the supervisor must still clean up after it).
kill -KILL "$PPID" 2>/dev/null
echo "killed my parent"
sleep 1000
