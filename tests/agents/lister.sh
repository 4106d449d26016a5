#!/bin/sh
# A planner: answers with a JSON task list, wrapped in prose as models do.
cat > /dev/null
echo "Here is the split:"
echo '[{"category": "frontend", "prompt": "build the form"}, {"category": "backend", "prompt": "build the API"}]'
