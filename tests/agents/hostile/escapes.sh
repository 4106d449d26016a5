#!/bin/sh
# Fails with terminal escape sequences in its error: a window title, a clipboard write (OSC 52),
# a screen clear.
printf '\033]0;PWNED\007\033]52;c;cHduZWQ=\007 error \033[2J\n' >&2
exit 3
