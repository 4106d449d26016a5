#!/bin/sh
# Prints invalid UTF-8 and NUL bytes, on both streams.
printf 'before\000\377\376after\n'
printf '\377err\000\n' >&2
