#!/bin/sh
# Dies by a signal (SIGSEGV).
echo "about to crash"
kill -SEGV $$
