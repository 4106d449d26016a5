#!/bin/sh
# Exits 0 but prints an error the way aider does when the API fails.
echo "litellm.RateLimitError: rate limit exceeded, retry later"
exit 0
