#!/bin/sh
# An agent that leaves a mark where it runs: `doctor` must never run a custom command.
touch "${DIRIGENT_ROOT:-.}/ran"
echo "ran"
