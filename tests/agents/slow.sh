#!/bin/sh
# Sleeps the given seconds (default 0.2), then succeeds.
sleep "${1:-0.2}"
echo "slept ${1:-0.2}"
