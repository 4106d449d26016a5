#!/bin/sh
# Imitates codex exec --json with no network: it never exits, and keeps printing reconnect
# errors on stdout and log lines on stderr.
echo '{"type":"thread.started","thread_id":"t"}'
echo '{"type":"turn.started"}'
while :; do
  echo '{"type":"error","message":"Reconnecting... waiting for network (Connection failed: error sending request)"}'
  echo 'ERROR codex_api::endpoint::responses_websocket: failed to connect to Responses WebSocket' >&2
  sleep 0.1
done
