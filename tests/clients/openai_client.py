"""Drives dirigent's OpenAI-compatible endpoint with the official `openai` client library.

Usage: openai_client.py BASE_URL TOKEN
Prints one JSON object with what it saw; the Rust test (tests/doors.rs) checks it.
"""
import json
import sys

import openai

base, token = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0, timeout=60)
seen = {}

seen["models"] = sorted(m.id for m in client.models.list())

reply = client.chat.completions.create(
    model="good",
    messages=[
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "openai plain"},
    ],
)
seen["plain"] = {
    "content": reply.choices[0].message.content,
    "finish_reason": reply.choices[0].finish_reason,
    "role": reply.choices[0].message.role,
}

parts = []
finish = None
with client.chat.completions.create(
    model="good",
    messages=[{"role": "user", "content": "openai streamed"}],
    stream=True,
) as stream:
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            if delta.content:
                parts.append(delta.content)
            if chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
seen["streamed"] = {"content": "".join(parts), "finish_reason": finish}

try:
    client.chat.completions.create(
        model="broken", messages=[{"role": "user", "content": "openai failing"}]
    )
    seen["failure"] = "no error"
except openai.APIStatusError as e:
    seen["failure"] = {"status": e.status_code, "message": e.message}

try:
    with client.chat.completions.create(
        model="broken",
        messages=[{"role": "user", "content": "openai failing streamed"}],
        stream=True,
    ) as stream:
        for _ in stream:
            pass
    seen["stream_failure"] = "no error"
except openai.APIError as e:
    seen["stream_failure"] = {"message": e.message}

try:
    client.chat.completions.create(
        model="no-such-model", messages=[{"role": "user", "content": "x"}]
    )
    seen["unknown_model"] = "no error"
except openai.NotFoundError as e:
    seen["unknown_model"] = {"status": e.status_code, "message": e.message}

print(json.dumps(seen))
