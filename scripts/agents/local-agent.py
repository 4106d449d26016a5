#!/usr/bin/env python3
"""A local script agent for dirigent: sends the prompt (stdin) to an Ollama server and prints the
answer. Standard library only.

Configure it in .context/dirigent.yaml:

  agents:
    local:
      command: ["python3", "scripts/agents/local-agent.py", "--model", "{model}"]
      model: qwen2.5-coder
      prompt: stdin
      env: { OLLAMA_HOST: "127.0.0.1:11434" }

Exit status: 0 with the answer on stdout; 1 with `Error: …` on stderr when the server cannot be
reached or answers with an error (dirigent then tries the next agent in the chain).
"""
import argparse
import json
import os
import sys
import urllib.error
import urllib.request


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the Ollama model, e.g. qwen2.5-coder")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the answer")
    args = ap.parse_args()

    prompt = sys.stdin.read()
    if not prompt.strip():
        print("Error: empty prompt on stdin", file=sys.stderr)
        return 1
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    if not host.startswith(("http://", "https://")):
        host = "http://" + host
    body = json.dumps({"model": args.model, "prompt": prompt, "stream": False}).encode()
    req = urllib.request.Request(host.rstrip("/") + "/api/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            answer = json.load(resp)
    except urllib.error.HTTPError as e:
        print(f"Error: {host} answered {e.code}: {e.read().decode(errors='replace')[:500]}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"Error: cannot reach Ollama at {host}: {e}", file=sys.stderr)
        return 1
    if answer.get("error"):
        print(f"Error: {answer['error']}", file=sys.stderr)
        return 1
    print(answer.get("response", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
