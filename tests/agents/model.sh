#!/bin/sh
# A stand-in for a model: answers by the shape of the question.
prompt=$(cat)
case "$prompt" in
  *"JSON list"*) echo '[{"category": "frontend", "prompt": "the form"}, {"category": "backend", "prompt": "the API"}, {"category": "test", "prompt": "the tests"}]' ;;
  *"[category] what to do"*) printf -- '- [frontend] the form\n- [backend] the API\n  with pagination\n- [test] the tests\n' ;;
  *"PASS or FAIL"*) echo "PASS"; echo "looks right" ;;
  *) echo "answer from ${DIRIGENT_AGENT}: $(printf '%s\n' "$prompt" | head -n 1)" ;;
esac
