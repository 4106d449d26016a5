#!/bin/sh
# Prints the given number of MiB (default 50).
head -c $(( ${1:-50} * 1048576 )) /dev/zero | tr '\0' 'x'
