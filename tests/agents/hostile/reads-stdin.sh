#!/bin/sh
# Tries to read stdin; with the prompt given as an argument, stdin must be /dev/null (EOF at once).
got=$(cat)
echo "stdin had ${#got} bytes"
