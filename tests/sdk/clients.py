"""Drives the LockStock gateway with the real OpenAI and Anthropic Python SDKs.

Usage: clients.py CASE[=ARG] [CASE[=ARG] ...]. Configuration comes from the environment the Rust test sets:
OPENAI_BASE_URL, ANTHROPIC_BASE_URL, OPENAI_API_KEY, ANTHROPIC_API_KEY, LOCKSTOCK_AGENT
(sent as X-D3cipher-Agent when set) and FIXTURES (the recordings' directory). Each case
sends the request body that was recorded with a fixture and prints, as one JSON object,
what the SDK parsed, so the test can compare it with the recording. SDK errors are printed
as {"error": {"status": ..., "message": ...}} instead of raising.
"""

import asyncio
import json
import os
import sys

import anthropic
import openai

FIXTURES = os.environ["FIXTURES"]
AGENT = os.environ.get("LOCKSTOCK_AGENT")
HEADERS = {"X-D3cipher-Agent": AGENT} if AGENT else {}


def request(name):
    with open(os.path.join(FIXTURES, name + ".request.json")) as f:
        return json.load(f)


def anthropic_request(name):
    """The recorded body, with what this SDK version no longer takes as arguments (older
    recordings carry `temperature`) passed through `extra_body`, so the wire body is the same."""
    import inspect
    body = request(name)
    accepted = inspect.signature(anthropic.resources.messages.Messages.create).parameters
    extra = {k: body.pop(k) for k in list(body) if k not in accepted}
    return dict(body, extra_body=extra) if extra else body


def fixture(name):
    return {"x-fixture": name}


def oa():
    return openai.OpenAI(default_headers=HEADERS, max_retries=0)


def an():
    return anthropic.Anthropic(default_headers=HEADERS, max_retries=0)


def openai_chat():
    r = oa().chat.completions.create(**request("openai-chat"), extra_headers=fixture("openai-chat"))
    return {"content": r.choices[0].message.content, "usage": [r.usage.prompt_tokens, r.usage.completion_tokens]}


async def _openai_chat_async():
    client = openai.AsyncOpenAI(default_headers=HEADERS, max_retries=0)
    r = await client.chat.completions.create(**request("openai-chat"), extra_headers=fixture("openai-chat"))
    return {"content": r.choices[0].message.content, "usage": [r.usage.prompt_tokens, r.usage.completion_tokens]}


def openai_chat_async():
    return asyncio.run(_openai_chat_async())


def openai_tools():
    r = oa().chat.completions.create(**request("openai-chat-tool-calls"), extra_headers=fixture("openai-chat-tool-calls"))
    calls = [[c.function.name, c.function.arguments] for c in r.choices[0].message.tool_calls]
    return {"tool_calls": calls, "usage": [r.usage.prompt_tokens, r.usage.completion_tokens]}


def _collect_chat_stream(stream):
    content, usage, usage_only_chunks, calls = "", None, 0, {}
    for chunk in stream:
        if chunk.usage is not None:
            usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
        if not chunk.choices:
            usage_only_chunks += 1
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            content += delta.content
        for tc in delta.tool_calls or []:
            entry = calls.setdefault(tc.index, ["", ""])
            if tc.function and tc.function.name:
                entry[0] += tc.function.name
            if tc.function and tc.function.arguments:
                entry[1] += tc.function.arguments
    return {"content": content, "usage": usage, "usage_only_chunks": usage_only_chunks,
            "tool_calls": [calls[i] for i in sorted(calls)]}


def openai_stream_usage():
    s = oa().chat.completions.create(**request("openai-chat-stream-usage"), extra_headers=fixture("openai-chat-stream-usage"))
    return _collect_chat_stream(s)


def openai_stream_plain(max_tokens=None):
    # No stream_options: the gateway asks for usage itself and hides the extra chunk.
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Say hi"}]}
    if max_tokens:
        body["max_tokens"] = int(max_tokens)
    return _collect_chat_stream(oa().chat.completions.create(**body))


def openai_stream_tools():
    s = oa().chat.completions.create(**request("openai-chat-stream-tool-calls"), extra_headers=fixture("openai-chat-stream-tool-calls"))
    return _collect_chat_stream(s)


def openai_responses_stream():
    text, usage = "", None
    s = oa().responses.create(**request("openai-responses-stream"), extra_headers=fixture("openai-responses-stream"))
    for event in s:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            usage = [event.response.usage.input_tokens, event.response.usage.output_tokens]
    return {"content": text, "usage": usage}


def anthropic_messages():
    r = an().messages.create(**anthropic_request("anthropic-messages"), extra_headers=fixture("anthropic-messages"))
    return {"content": "".join(b.text for b in r.content if b.type == "text"),
            "usage": [r.usage.input_tokens, r.usage.output_tokens]}


def anthropic_tools():
    r = an().messages.create(**anthropic_request("anthropic-messages-tool-use"), extra_headers=fixture("anthropic-messages-tool-use"))
    return {"tool_calls": [[b.name, b.input] for b in r.content if b.type == "tool_use"],
            "usage": [r.usage.input_tokens, r.usage.output_tokens]}


def _anthropic_stream(name):
    text, tools, usage, current = "", [], [0, 0], None
    stream = an().messages.create(**anthropic_request(name), extra_headers=fixture(name))
    for event in stream:
        if event.type == "message_start":
            usage = [event.message.usage.input_tokens, event.message.usage.output_tokens]
        elif event.type == "content_block_start" and event.content_block.type == "tool_use":
            current = [event.content_block.name, ""]
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
        elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            current[1] += event.delta.partial_json
        elif event.type == "content_block_stop" and current is not None:
            tools.append([current[0], json.loads(current[1] or "{}")])
            current = None
        elif event.type == "message_delta":
            usage[1] = event.usage.output_tokens
    return {"content": text, "tool_calls": tools, "usage": usage}


def anthropic_stream():
    return _anthropic_stream("anthropic-messages-stream")


def anthropic_stream_tools():
    return _anthropic_stream("anthropic-messages-stream-tool-use")


async def _concurrent_streams(n):
    client = openai.AsyncOpenAI(default_headers=HEADERS, max_retries=0)

    async def one():
        try:
            s = await client.chat.completions.create(
                model="gpt-4o", stream=True, max_tokens=10,
                messages=[{"role": "user", "content": "Say hi"}],
                extra_headers={"x-fixture-delay-ms": "20"})
            async for _ in s:
                pass
            return 200
        except openai.APIStatusError as e:
            return e.status_code

    return {"statuses": await asyncio.gather(*(one() for _ in range(n)))}


def concurrent_streams(n="32"):
    return asyncio.run(_concurrent_streams(int(n)))


def provider_error():
    try:
        oa().chat.completions.create(**request("openai-error-401-invalid-api-key"), extra_headers=fixture("openai-error-401-invalid-api-key"))
        return {"error": None}
    except openai.APIStatusError as e:
        return {"error": {"status": e.status_code, "message": e.message, "body": e.body}}


def anthropic_error():
    try:
        an().messages.create(**anthropic_request("anthropic-error-401-authentication"), extra_headers=fixture("anthropic-error-401-authentication"))
        return {"error": None}
    except anthropic.APIStatusError as e:
        return {"error": {"status": e.status_code, "body": e.body}}


def _message(e):
    body = e.body
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict) and "message" in body["error"]:
            return body["error"]["message"]
        if "message" in body:
            return body["message"]
    return e.message


def run(spec):
    """One case, `name` or `name=arg`; SDK errors become {"error": {...}}."""
    name, _, arg = spec.partition("=")
    try:
        return CASES[name](arg) if arg else CASES[name]()
    except (openai.APIStatusError, anthropic.APIStatusError) as e:
        return {"error": {"status": e.status_code, "message": _message(e), "sdk_message": str(e.message)}}


CASES = {name: fn for name, fn in globals().items() if callable(fn) and not name.startswith("_")
         and name not in ("request", "anthropic_request", "fixture", "oa", "an", "run")}

if __name__ == "__main__":
    # One JSON line per case given, in order: one interpreter start serves many calls.
    for spec in sys.argv[1:]:
        print(json.dumps(run(spec)), flush=True)
