#!/bin/sh
# Runs only the model named in $PICKY_OK: `picky.sh MODEL`. Any other model fails like an
# unavailable one would.
cat > /dev/null
if [ "$1" = "$PICKY_OK" ]; then echo "picky: ran $1"; exit 0; fi
echo "model $1 is not available" >&2
exit 1
