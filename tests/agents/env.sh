#!/bin/sh
# Prints the dirigent environment and what it reads on stdin.
echo "task=$DIRIGENT_TASK_ID attempt=$DIRIGENT_ATTEMPT ctx=$DIRIGENT_CONTEXT_DIR prev=${DIRIGENT_PREVIOUS_CLASS:-none} cwd=$(pwd)"
echo "stdin=[$(cat)]"
