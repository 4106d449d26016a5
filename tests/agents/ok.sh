#!/bin/sh
# Succeeds: prints the prompt it was given (stdin, or the first argument).
if [ $# -gt 0 ]; then prompt="$1"; else prompt=$(cat); fi
echo "ok from ${DIRIGENT_AGENT}: ${prompt}"
