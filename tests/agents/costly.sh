#!/bin/sh
# Answers in claude's JSON shape and reports a cost: `costly.sh COST ok|fail` (use with
# `output: claude_json`). The prompt arrives on stdin.
prompt=$(cat)
if [ "$2" = "fail" ]; then
  printf '{"type":"result","subtype":"error_during_execution","is_error":true,"result":"failed after spending","total_cost_usd":%s,"usage":{"input_tokens":1000,"output_tokens":10}}\n' "$1"
  exit 1
fi
printf '{"type":"result","subtype":"success","is_error":false,"result":"costly: %s","total_cost_usd":%s,"usage":{"input_tokens":1000,"output_tokens":100}}\n' "$prompt" "$1"
