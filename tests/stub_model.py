#!/usr/bin/env python3
"""A stand-in model provider for checking the real agent CLIs end to end (stdlib only).

It speaks just enough of four APIs for the CLIs to complete a turn:
  - Anthropic Messages        POST .../v1/messages                       (claude, opencode, aider)
  - OpenAI Chat Completions   POST .../v1/chat/completions               (aider, opencode)
  - OpenAI Responses          POST .../v1/responses                      (codex)
  - Gemini                    POST .../v1beta/models/M:generateContent  and :streamGenerateContent
Streaming (SSE) and plain JSON answers both work; GET .../models lists one model.

The first path segment is the mode, so one server serves every case and a CLI's base URL picks
it: http://127.0.0.1:PORT/<mode>/... with <mode> one of
  ok          the answer ANSWER, with token usage
  r429        429 with `retry-after: 42` and a rate-limit error body
  r401        401 with an authentication error body
  overloaded  529 (Anthropic) or 503 (the others) with an "overloaded" body
  cut         a streamed answer cut off mid-way (the connection closes; no final event)
  stall       headers of a stream, then nothing (the connection is held open)

Every request is appended to the log file (one JSON line: time, mode, method, path) if given.

Usage: tests/stub_model.py [--port 0] [--log FILE]   (prints `listening on PORT` when ready)
"""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "STUB ANSWER: the quick brown fox jumps over the lazy dog."
USAGE_IN, USAGE_OUT = 1234, 56
MODES = ("ok", "r429", "r401", "overloaded", "cut", "stall")
# A stall holds its connection this long at most, so that a forgotten server lets go eventually.
STALL_SECS = 900


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_file = None
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    # -- plumbing ------------------------------------------------------------------------------

    def _body(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def _json(self, status, obj, headers=()):
        out = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(out)

    def _json_cut(self, obj):
        """A JSON answer whose connection closes half-way through the promised length."""
        out = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out[: len(out) // 2])
        self._cut()

    def _answer(self, mode, obj):
        return self._json_cut(obj) if mode == "cut" else self._json(200, obj)

    def _sse_start(self):
        # Chunked, as real providers answer: a stream that ends without its last (empty) chunk is
        # visibly cut, not a short answer.
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self._chunked = True

    def _chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _sse(self, data, event=None):
        chunk = ""
        if event:
            chunk += f"event: {event}\n"
        chunk += "data: " + (data if isinstance(data, str) else json.dumps(data)) + "\n\n"
        self._chunk(chunk.encode())

    def _sse_end(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self):
        """Ends the connection without the rest of the answer, as a dropped connection would."""
        self.wfile.flush()
        self.close_connection = True

    def _stall(self):
        self._sse_start()
        self.wfile.flush()
        time.sleep(STALL_SECS)
        self.close_connection = True

    # -- dispatch ------------------------------------------------------------------------------

    def _route(self):
        parts = self.path.split("?", 1)[0].strip("/").split("/", 1)
        mode, rest = parts[0], (parts[1] if len(parts) > 1 else "")
        if self.log_file:
            with self.lock, open(self.log_file, "a") as f:
                f.write(json.dumps({"t": time.time(), "mode": mode, "method": self.command,
                                    "path": self.path}) + "\n")
        if mode not in MODES:
            return self._json(404, {"error": {"message": f"unknown mode {mode!r}; use one of {MODES}"}})
        body = self._body() if self.command == "POST" else {}
        if self.command == "GET" and rest.rstrip("/").endswith("models"):
            return self._json(200, {"object": "list", "data": [
                {"id": "stub-model", "object": "model", "created": 0, "owned_by": "stub",
                 "type": "model", "display_name": "Stub"}]})
        if rest.endswith("messages/count_tokens"):
            return self._json(200, {"input_tokens": USAGE_IN})
        # (opencode drops the `/v1` of its configured base URL when it has no models.dev data)
        if rest.endswith("messages"):
            return self.anthropic(mode, body)
        if rest.endswith("chat/completions"):
            return self.chat(mode, body)
        if rest.endswith("responses"):
            return self.openai_responses(mode, body)
        if ":streamGenerateContent" in rest or ":generateContent" in rest:
            return self.gemini(mode, body, stream=":streamGenerateContent" in rest)
        if ":countTokens" in rest:
            return self._json(200, {"totalTokens": USAGE_IN})
        return self._json(404, {"error": {"message": f"the stub does not serve {self.path}"}})

    do_GET = do_POST = _route

    def _error(self, mode, api):
        """The error answer of `mode` in `api`'s shape, or None for the modes that stream."""
        if mode == "r429":
            status, kind, msg = 429, "rate_limit_error", "Rate limit exceeded: retry after 42 seconds"
        elif mode == "r401":
            status, kind, msg = 401, "authentication_error", "invalid x-api-key"
        elif mode == "overloaded":
            status = 529 if api == "anthropic" else 503
            kind, msg = "overloaded_error", "Overloaded"
        else:
            return None
        headers = [("retry-after", "42")] if mode == "r429" else []
        if api == "anthropic":
            obj = {"type": "error", "error": {"type": kind, "message": msg}}
        elif api == "gemini":
            code = {429: "RESOURCE_EXHAUSTED", 401: "UNAUTHENTICATED", 503: "UNAVAILABLE"}[status]
            obj = {"error": {"code": status, "message": msg, "status": code}}
        else:
            obj = {"error": {"message": msg, "type": kind, "code": kind}}
        self._json(status, obj, headers)
        return True

    # -- Anthropic Messages --------------------------------------------------------------------

    def anthropic(self, mode, body):
        if self._error(mode, "anthropic"):
            return
        if mode == "stall":
            return self._stall()
        model = body.get("model", "stub-model")
        usage = {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        message = {"id": "msg_stub", "type": "message", "role": "assistant", "model": model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {**usage, "output_tokens": 1}}
        if not body.get("stream"):
            message.update(content=[{"type": "text", "text": ANSWER}], stop_reason="end_turn",
                           usage=usage)
            return self._answer(mode, message)
        self._sse_start()
        self._sse({"type": "message_start", "message": message}, "message_start")
        self._sse({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}, "content_block_start")
        half = len(ANSWER) // 2
        self._sse({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": ANSWER[:half]}}, "content_block_delta")
        if mode == "cut":
            return self._cut()
        self._sse({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": ANSWER[half:]}}, "content_block_delta")
        self._sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        self._sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                   "usage": {"output_tokens": USAGE_OUT}}, "message_delta")
        self._sse({"type": "message_stop"}, "message_stop")
        self._sse_end()

    # -- OpenAI Chat Completions ---------------------------------------------------------------

    def chat(self, mode, body):
        if self._error(mode, "openai"):
            return
        if mode == "stall":
            return self._stall()
        model = body.get("model", "stub-model")
        usage = {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT,
                 "total_tokens": USAGE_IN + USAGE_OUT}
        base = {"id": "chatcmpl-stub", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            return self._answer(mode, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": ANSWER},
                 "finish_reason": "stop"}], "usage": usage})
        self._sse_start()
        chunk = {**base, "object": "chat.completion.chunk"}
        half = len(ANSWER) // 2
        self._sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ANSWER[:half]},
                                         "finish_reason": None}]})
        if mode == "cut":
            return self._cut()
        self._sse({**chunk, "choices": [{"index": 0, "delta": {"content": ANSWER[half:]},
                                         "finish_reason": None}]})
        self._sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "usage": usage})
        self._sse("[DONE]")
        self._sse_end()

    # -- OpenAI Responses ----------------------------------------------------------------------

    def openai_responses(self, mode, body):
        if self._error(mode, "openai"):
            return
        if mode == "stall":
            return self._stall()
        model = body.get("model", "stub-model")
        item = {"id": "msg_stub", "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]}
        usage = {"input_tokens": USAGE_IN, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": USAGE_OUT, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": USAGE_IN + USAGE_OUT}
        response = {"id": "resp_stub", "object": "response", "created_at": int(time.time()),
                    "model": model, "status": "in_progress", "output": []}
        if not body.get("stream"):
            return self._answer(mode, {**response, "status": "completed", "output": [item], "usage": usage})
        self._sse_start()
        self._sse({"type": "response.created", "response": response}, "response.created")
        self._sse({"type": "response.output_item.added", "output_index": 0,
                   "item": {**item, "status": "in_progress", "content": []}}, "response.output_item.added")
        half = len(ANSWER) // 2
        self._sse({"type": "response.output_text.delta", "item_id": "msg_stub", "output_index": 0,
                   "content_index": 0, "delta": ANSWER[:half]}, "response.output_text.delta")
        if mode == "cut":
            return self._cut()
        self._sse({"type": "response.output_text.delta", "item_id": "msg_stub", "output_index": 0,
                   "content_index": 0, "delta": ANSWER[half:]}, "response.output_text.delta")
        self._sse({"type": "response.output_item.done", "output_index": 0, "item": item},
                  "response.output_item.done")
        self._sse({"type": "response.completed",
                   "response": {**response, "status": "completed", "output": [item], "usage": usage}},
                  "response.completed")
        self._sse_end()

    # -- Gemini --------------------------------------------------------------------------------

    def gemini(self, mode, body, stream):
        if self._error(mode, "gemini"):
            return
        if mode == "stall":
            return self._stall()
        # gemini's model router asks for a JSON verdict first; answer it in kind.
        wants_json = (body.get("generationConfig") or {}).get("responseMimeType") == "application/json"
        text = json.dumps({"reasoning": "stub", "model_choice": "flash"}) if wants_json else ANSWER
        usage = {"promptTokenCount": USAGE_IN, "candidatesTokenCount": USAGE_OUT,
                 "totalTokenCount": USAGE_IN + USAGE_OUT}

        def part(t, done):
            c = {"content": {"parts": [{"text": t}], "role": "model"}, "index": 0}
            if done:
                c["finishReason"] = "STOP"
            return {"candidates": [c], "usageMetadata": usage, "modelVersion": "stub-model"}

        if not stream:
            return self._answer(mode, part(text, True))
        self._sse_start()
        half = len(text) // 2
        self._sse(part(text[:half], False))
        if mode == "cut":
            return self._cut()
        self._sse(part(text[half:], True))
        self._sse_end()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log")
    args = ap.parse_args()
    Handler.log_file = args.log
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
