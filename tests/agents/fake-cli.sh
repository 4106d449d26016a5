#!/bin/sh
# Imitates a real agent CLI (chosen by the name it is called as: claude, gemini, codex,
# opencode, aider) failing or succeeding the way the real one does, for the provider tests.
# The mode comes from the file $FAKE_MODE_FILE when it exists, else $FAKE_MODE (default ok):
#   ok | auth | rate_limit | network | tool_error | bad_output | exit0_error
#   offline | noauth: what the real CLI printed run offline (with a key / with none), copied from
#   the real CLIs (see docs/judging.md); these never exit on their own, like the real ones.
# $FAKE_RESET_SECS: how far ahead a rate limit says it resets (default 30).
# Every call appends "<cli> <mode>" to $FAKE_LOG when set.
cli=$(basename "$0")
[ "$1" = "--version" ] && { echo "$cli 0.0.0-fake"; exit 0; }
mode=${FAKE_MODE:-ok}
if [ -n "$FAKE_MODE_FILE" ] && [ -f "$FAKE_MODE_FILE" ]; then mode=$(cat "$FAKE_MODE_FILE"); fi
[ -n "$FAKE_LOG" ] && echo "$cli $mode" >> "$FAKE_LOG"
# The prompt is the argument after -p / --message, or the last argument.
prompt=""; prev=""
for a in "$@"; do
  case "$prev" in -p|--message) prompt="$a" ;; esac
  prev="$a"
done
[ -z "$prompt" ] && for a in "$@"; do prompt="$a"; done
reset=$(( $(date +%s) + ${FAKE_RESET_SECS:-30} ))

case "$cli:$mode" in
  claude:ok) printf '{"type":"result","subtype":"success","is_error":false,"result":"fake claude: %s","total_cost_usd":0.0123,"usage":{"input_tokens":1200,"output_tokens":300}}\n' "$prompt" ;;
  claude:auth) echo '{"type":"result","subtype":"success","is_error":true,"result":"Invalid API key · Please run /login"}'; exit 1 ;;
  claude:rate_limit) echo "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":true,\"result\":\"Claude AI usage limit reached|$reset\"}"; exit 1 ;;
  claude:network) echo '{"type":"result","subtype":"success","is_error":true,"result":"API Error: Connection error."}'; exit 1 ;;
  claude:tool_error) echo '{"type":"result","subtype":"error_during_execution","is_error":true,"result":"Tool use failed"}'; exit 1 ;;
  claude:bad_output) echo '{"type":"result","subtype":"succ'; exit 0 ;;
  claude:whoami)
    # With $FAKE_PEERS_DIR: wait (at most ~10 s) until two instances run at once.
    if [ -n "$FAKE_PEERS_DIR" ]; then
      touch "$FAKE_PEERS_DIR/$$"; i=0
      while [ "$(ls "$FAKE_PEERS_DIR" | wc -l)" -lt 2 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
    fi
    printf '{"type":"result","subtype":"success","is_error":false,"result":"dir=%s cred=%s"}\n' "$CLAUDE_CONFIG_DIR" "$(cat "$CLAUDE_CONFIG_DIR/.credentials.json" 2>/dev/null)" ;;

  gemini:ok) printf '{"response":"fake gemini: %s","stats":{"models":{"gemini-2.5-pro":{"tokens":{"prompt":900,"candidates":100,"total":1000}}}}}\n' "$prompt" ;;
  gemini:auth) echo 'Loaded cached credentials.' >&2; echo '{"error":{"type":"Error","message":"Please set an Auth method in your settings.json","code":41}}' >&2; exit 41 ;;
  gemini:rate_limit) echo "{\"error\":{\"message\":\"[API Error: 429 RESOURCE_EXHAUSTED] Quota exceeded. Please retry in ${FAKE_RESET_SECS:-30}s.\",\"code\":429}}" >&2; exit 1 ;;
  gemini:network) echo '{"error":{"message":"fetch failed","code":1}}' >&2; exit 1 ;;

  codex:ok) printf '{"type":"thread.started"}\n{"type":"item.completed","item":{"type":"agent_message","text":"fake codex: %s"}}\n{"type":"turn.completed","usage":{"input_tokens":500,"cached_input_tokens":100,"output_tokens":50}}\n' "$prompt" ;;
  codex:network) printf '{"type":"thread.started"}\n{"type":"error","message":"Reconnecting... 1/5"}\n{"type":"turn.failed","error":{"message":"stream disconnected before completion: error sending request for url (https://api.openai.com/v1/responses)"}}\n'; exit 1 ;;
  codex:rate_limit) printf '{"type":"turn.failed","error":{"message":"429 Too Many Requests: You exceeded your current quota. Try again in %ss."}}\n' "${FAKE_RESET_SECS:-30}"; exit 1 ;;

  opencode:ok) printf '{"type":"text","part":{"text":"fake opencode: %s"}}\n{"type":"step_finish","part":{"cost":0.002,"tokens":{"input":700,"output":70}}}\n' "$prompt" ;;
  opencode:network) echo '{"type":"error","error":{"name":"UnknownError","data":{"message":"Error: Unable to connect. Is the computer able to access the url?"}}}' ;;
  opencode:bad_output) echo 'opencode crashed mid-turn' ;;

  aider:ok) echo "fake aider: $prompt" ;;
  aider:exit0_error) echo 'litellm.APIConnectionError: Connection refused'; exit 0 ;;
  aider:tool_error) echo 'litellm.BadRequestError: model gpt-9 does not exist'; exit 0 ;;

  codex:offline)
    echo '{"type":"thread.started","thread_id":"01a22ff9-34fa-7090-932a-85dac92faf03"}'
    echo '{"type":"turn.started"}'
    for n in 2 3 4 5; do
      echo "{\"type\":\"error\",\"message\":\"Reconnecting... $n/5 (stream disconnected before completion: failed to lookup address information: Name does not resolve)\"}"
      echo 'ERROR codex_api::endpoint::responses_websocket: failed to connect to Responses WebSocket stage=Unknown' >&2
      sleep 0.05
    done
    while :; do
      echo '{"type":"error","message":"Reconnecting... waiting for network (Connection failed: error sending request)"}'
      sleep 0.2
    done ;;
  gemini:offline)
    echo 'YOLO mode is enabled. All tool calls will be automatically approved.' >&2
    n=1
    while :; do
      echo "Attempt $n failed. Retrying with backoff... Error: exception TypeError: fetch failed sending request" >&2
      echo '    at async retryWithBackoff (file:///gemini-cli/bundle/chunk.js:308039:23)' >&2
      n=$((n+1)); sleep 0.3
    done ;;
  aider:noauth)
    echo 'Warning: Input is not a terminal (fd=0).' >&2
    printf 'Analytics have been permanently disabled.\n\nNo LLM model was specified and no API keys were provided.\nOpenRouter provides free and paid access to many LLMs.\n\nPlease open this URL in your browser to connect Aider with OpenRouter:\n\nhttps://openrouter.ai/auth?callback_url=http://localhost:8484/callback/aider\n\nWaiting up to 5 minutes for you to finish in the browser...\nUse Control-C to interrupt.\n'
    exec sleep 300 ;;
  aider:offline)
    printf 'Using sonnet model with API key from environment.\n'
    # Its model price list cannot be fetched either; aider goes on regardless.
    echo "HTTPSConnectionPool(host='raw.githubusercontent.com', port=443): Max retries exceeded (Caused by NameResolutionError(\"Failed to resolve 'raw.githubusercontent.com' ([Errno -2] Name or service not known)\"))"
    printf 'Aider v0.86.2\nMain model: claude-sonnet-4-5 with diff edit format, infinite output\nGit repo: none\n\n'
    d=1
    while :; do
      printf 'litellm.InternalServerError: AnthropicException - [Errno -2] Name or service not\nknown. Handle with `litellm.InternalServerError`.\nThe API provider'"'"'s servers are down or overloaded.\nRetrying in 0.%s seconds...\n' "$d"
      d=$((d+1)); sleep 0.3
    done ;;

  *) echo "fake-cli.sh: no mode $cli:$mode" >&2; exit 3 ;;
esac
