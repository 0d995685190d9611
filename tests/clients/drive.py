"""Sends requests with the providers' real Python clients, for tests/protocols.rs.

    drive.py BASE_URL CASE...

Each CASE is sent through BASE_URL (Envoy with the TruthTable filter) with the header
`x-test-case: CASE`, and `x-test-cut: 1` when the case name ends in `.cut` (the test upstream then
breaks the answer off). One JSON line per case goes to stdout, saying what the client read:

    {"case": ..., "answer": "...", "tool_calls": [{"name": ..., "arguments": {...}}], "error": null}

`error` is the exception the client raised (`"RemoteProtocolError: ..."`) and `answer` what it had
read before it. Versions are pinned in scripts/setup.
"""

import json
import sys

import ollama
import openai
from google import genai
from google.genai import types

TIMEOUT_S = 30


def headers(case):
    h = {"x-test-case": case}
    if case.endswith(".cut"):
        h["x-test-cut"] = "1"
    return h


class Reading:
    """What a client has read so far."""

    def __init__(self):
        self.answer = ""
        self.tool_calls = []


def ollama_client(base, case):
    return ollama.Client(host=base, headers=headers(case), timeout=TIMEOUT_S)


def ollama_generate(base, case, read):
    client = ollama_client(base, case)
    args = dict(
        model="llama3.2",
        prompt="Why is the sky blue?",
        system="Answer from the retrieved passage only.",
        images=[b"\x89PNG\r\n\x1a\n-a-tiny-test-image"],
    )
    if ".stream" in case:
        for chunk in client.generate(stream=True, **args):
            read.answer += chunk.response
    else:
        read.answer = client.generate(**args).response


def ollama_chat(base, case, read):
    client = ollama_client(base, case)
    messages = [
        {"role": "system", "content": "You answer weather questions from tool results."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18C and sunny", "tool_name": "get_weather"},
        {"role": "user", "content": "Should I take a coat?"},
    ]
    if ".tools" in case:
        messages = [
            {"role": "user", "content": "What is the weather in Paris?", "images": [b"\xff\xd8\xff-jpeg"]}
        ]
        tools = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather of a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            }
        ]
    else:
        tools = None
    if ".stream" in case:
        for chunk in client.chat(model="llama3.2", messages=messages, tools=tools, stream=True):
            read.answer += chunk.message.content or ""
            for call in chunk.message.tool_calls or []:
                read.tool_calls.append({"name": call.function.name, "arguments": dict(call.function.arguments)})
    else:
        message = client.chat(model="llama3.2", messages=messages, tools=tools).message
        read.answer = message.content or ""
        for call in message.tool_calls or []:
            read.tool_calls.append({"name": call.function.name, "arguments": dict(call.function.arguments)})


def openai_client(base, case):
    return openai.OpenAI(
        base_url=base + "/v1", api_key="sk-test-not-a-key", max_retries=0, timeout=TIMEOUT_S,
        default_headers=headers(case),
    )


def openai_completions(base, case, read):
    client = openai_client(base, case)
    args = dict(model="Qwen/Qwen2.5-0.5B-Instruct", prompt="The capital of France is", max_tokens=16, temperature=0)
    if ".stream" in case:
        stream = client.completions.create(stream=True, stream_options={"include_usage": True}, **args)
        for chunk in stream:
            if chunk.choices:
                read.answer += chunk.choices[0].text
    else:
        read.answer = client.completions.create(**args).choices[0].text


def ollama_openai_chat(base, case, read):
    """Ollama's OpenAI-compatible endpoint, through the openai package."""
    client = openai_client(base, case)
    args = dict(model="llama3.2", messages=[{"role": "user", "content": "What is the capital of France?"}])
    if ".stream" in case:
        for chunk in client.chat.completions.create(stream=True, **args):
            if chunk.choices:
                read.answer += chunk.choices[0].delta.content or ""
    else:
        read.answer = client.chat.completions.create(**args).choices[0].message.content


def gemini(base, case, read):
    client = genai.Client(
        api_key="AIza-test-not-a-key",
        http_options=types.HttpOptions(base_url=base, headers=headers(case), timeout=TIMEOUT_S * 1000),
    )
    config = types.GenerateContentConfig(system_instruction="Answer from the tool results only.")
    contents = [
        types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")]),
        types.Content(
            role="model",
            parts=[types.Part(function_call=types.FunctionCall(name="get_weather", args={"city": "Paris"}))],
        ),
        types.Content(
            role="user",
            parts=[
                types.Part(
                    function_response=types.FunctionResponse(name="get_weather", response={"output": "18C and sunny"})
                )
            ],
        ),
        types.Content(role="user", parts=[types.Part(text="Should I take a coat?")]),
    ]
    if ".tools" in case:
        contents = [
            types.Content(
                role="user",
                parts=[
                    types.Part(text="What is the weather in Paris?"),
                    types.Part.from_bytes(data=b"\x89PNG\r\n\x1a\n-img", mime_type="image/png"),
                ],
            )
        ]
        config.tools = [
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name="get_weather",
                        description="Current weather of a city",
                        parameters={"type": "OBJECT", "properties": {"city": {"type": "STRING"}}},
                    )
                ]
            )
        ]
        config.automatic_function_calling = types.AutomaticFunctionCallingConfig(disable=True)
    if ".stream" in case:
        for chunk in client.models.generate_content_stream(model="gemini-2.5-flash", contents=contents, config=config):
            read.answer += chunk.text or ""
    else:
        resp = client.models.generate_content(model="gemini-2.5-flash", contents=contents, config=config)
        parts = resp.candidates[0].content.parts or []
        read.answer = "".join(p.text for p in parts if p.text)
        for call in resp.function_calls or []:
            read.tool_calls.append({"name": call.name, "arguments": dict(call.args or {})})


DRIVERS = {
    "ollama.generate": ollama_generate,
    "ollama.chat": ollama_chat,
    "ollama.openai": ollama_openai_chat,
    "openai.completions": openai_completions,
    "gemini": gemini,
}


def main():
    base, cases = sys.argv[1], sys.argv[2:]
    for case in cases:
        drive = next(d for prefix, d in DRIVERS.items() if case.startswith(prefix + "."))
        read, error = Reading(), None
        try:
            drive(base, case, read)
        except Exception as e:  # the cut cases end in the client's own error
            error = f"{type(e).__name__}: {e}"
        line = {"case": case, "answer": read.answer, "tool_calls": read.tool_calls, "error": error}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
