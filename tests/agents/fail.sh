#!/bin/sh
# Fails with the exit code given as the first argument (default 1).
echo "fail.sh: something went wrong" >&2
exit "${1:-1}"
