#!/bin/sh
# Prints 1 GiB.
head -c 1073741824 /dev/zero | tr '\0' 'y'
