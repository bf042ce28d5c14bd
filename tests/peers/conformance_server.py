"""A conformance fixture built on the official Python SDK (PyPI `mcp`), which
implements the 2026-07-28 revision (results carry `resultType`, stateless
requests, `server/discover`), for running the 2026-07-28 conformance suite
in front of and behind the gateway.

Usage: conformance_server.py
Listens on 127.0.0.1 with a port the system picks and prints
`python conformance server on http://127.0.0.1:PORT/mcp` once it serves.
The fixtures (names, texts, resources, prompts) are those the conformance
suite's server scenarios expect, as in examples/support/fixtures.rs.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import Message
from mcp.shared.exceptions import MCPError
from mcp_types import (
    InputRequiredResult,
    AudioContent,
    BlobResourceContents,
    Completion,
    EmbeddedResource,
    ImageContent,
    PromptReference,
    ResourceTemplateReference,
    TextContent,
    TextResourceContents,
)

# 1x1 red PNG and a minimal WAV file: the suite's test media.
TEST_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
TEST_AUDIO = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

server = MCPServer(name="mcp-gateway-python-conformance-server", version="0.1.0")


@server.tool(description="Tests simple text content response")
def test_simple_text() -> list:
    return [TextContent(type="text", text="This is a simple text response for testing.")]


@server.tool(description="Tests image content response")
def test_image_content() -> list:
    return [ImageContent(type="image", data=TEST_IMAGE, mime_type="image/png")]


@server.tool(description="Tests audio content response")
def test_audio_content() -> list:
    return [AudioContent(type="audio", data=TEST_AUDIO, mime_type="audio/wav")]


def _embedded() -> EmbeddedResource:
    return EmbeddedResource(
        type="resource",
        resource=TextResourceContents(
            uri="test://embedded-resource",
            mime_type="text/plain",
            text="This is an embedded resource content.",
        ),
    )


@server.tool(description="Tests embedded resource content response")
def test_embedded_resource() -> list:
    return [_embedded()]


@server.tool(description="Tests response with multiple content types (text, image, resource)")
def test_multiple_content_types() -> list:
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=TEST_IMAGE, mime_type="image/png"),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="test://mixed-content-resource",
                mime_type="application/json",
                text=json.dumps({"test": "data", "value": 123}),
            ),
        ),
    ]


@server.tool(description="Tests tool that emits log messages during execution")
async def test_tool_with_logging(ctx: Context) -> str:
    for msg in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.info(msg)
        await asyncio.sleep(0.05)
    return "Tool with logging executed successfully"


@server.tool(description="Tests tool that reports progress notifications")
async def test_tool_with_progress(ctx: Context) -> str:
    for p in (0, 50, 100):
        await ctx.report_progress(p, 100, f"Completed step {p} of 100")
        await asyncio.sleep(0.05)
    return "Progress tool completed"


@server.tool(description="Tests error response handling")
def test_error_handling() -> str:
    raise RuntimeError("This tool intentionally returns an error for testing")


@server.tool(description="Echoes its `text` argument")
def echo(text: str) -> str:
    return text


@server.tool(
    description="Needs the client's sampling capability: refused with -32021 when it is not declared"
)
def test_missing_capability(ctx: Context) -> str:
    caps = ctx.client_capabilities
    if caps is None or caps.sampling is None:
        raise MCPError(
            code=-32021,
            message="Missing required client capability: sampling",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "sampling capability present"


@server.tool(
    name="json_schema_2020_12_tool",
    description="Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
)
def json_schema_tool(name: str = "", address: dict | None = None) -> str:
    return f"JSON Schema 2020-12 tool called with: {json.dumps({'name': name, 'address': address})}"


# --- 2026-07-28 input_required (SEP-2322) fixtures ---------------------------
# requestState is HMAC-signed with a per-process key: a tampered state is
# refused with -32602.
_STATE_KEY = os.urandom(32)


def _seal(state: dict) -> str:
    body = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
    tag = hmac.new(_STATE_KEY, body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{tag}"


def _open(token: str | None) -> dict | None:
    if not token or "." not in token:
        return None
    body, tag = token.rsplit(".", 1)
    want = hmac.new(_STATE_KEY, body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(tag, want):
        raise MCPError(code=-32602, message="Invalid params: requestState failed its integrity check")
    return json.loads(base64.urlsafe_b64decode(body))


def _elicit(message: str, field: str, kind: str = "string") -> dict:
    return {
        "method": "elicitation/create",
        "params": {
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": {field: {"type": kind}},
                "required": [field],
            },
        },
    }


def _sample(text: str, max_tokens: int) -> dict:
    return {
        "method": "sampling/createMessage",
        "params": {
            "messages": [{"role": "user", "content": {"type": "text", "text": text}}],
            "maxTokens": max_tokens,
        },
    }


_ROOTS = {"method": "roots/list", "params": {}}


def _ask(requests: dict, state: dict | None = None) -> InputRequiredResult:
    raw: dict = {"resultType": "input_required", "inputRequests": requests}
    if state is not None:
        raw["requestState"] = _seal(state)
    return InputRequiredResult.model_validate(raw)


def _responses(ctx: Context) -> dict:
    got = ctx.input_responses
    if not got:
        return {}
    return {k: (v.model_dump(by_alias=True, exclude_none=True) if hasattr(v, "model_dump") else v) for k, v in got.items()}


def _text_of(resp: dict) -> str:
    content = resp.get("content")
    if isinstance(content, dict) and "name" in content:
        return str(content["name"])
    if isinstance(content, dict) and "text" in content:
        return str(content["text"])
    return json.dumps(content)


@server.tool(description="SEP-2322: asks for the user's name by elicitation")
def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    got = _responses(ctx)
    if "user_name" not in got:
        return _ask({"user_name": _elicit("What is your name?", "name")})
    return f"Hello, {_text_of(got['user_name'])}!"


@server.tool(description="SEP-2322: asks the client's model a question")
def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    got = _responses(ctx)
    if "capital_question" not in got:
        return _ask({"capital_question": _sample("What is the capital of France?", 100)})
    return f"The model answered: {_text_of(got['capital_question'])}"


@server.tool(description="SEP-2322: asks for the client's roots")
def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    got = _responses(ctx)
    if "client_roots" not in got:
        return _ask({"client_roots": _ROOTS})
    roots = got["client_roots"].get("roots", [])
    return "Roots: " + ", ".join(r.get("uri", "?") for r in roots)


@server.tool(description="SEP-2322: input and an opaque requestState")
def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    got = _responses(ctx)
    state = _open(ctx.request_state)
    if "confirm" not in got or state is None:
        return _ask({"confirm": _elicit("Please confirm", "ok", "boolean")}, {"round": 1})
    return "state-ok: confirmed"


@server.tool(description="SEP-2322: elicitation, sampling and roots at once")
def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    got = _responses(ctx)
    state = _open(ctx.request_state)
    want = {"user_name", "greeting", "client_roots"}
    if state is None or not want <= set(got):
        return _ask(
            {
                "user_name": _elicit("What is your name?", "name"),
                "greeting": _sample("Generate a greeting", 50),
                "client_roots": _ROOTS,
            },
            {"round": 1},
        )
    return "All inputs received"


@server.tool(description="SEP-2322: two rounds of input")
def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    got = _responses(ctx)
    state = _open(ctx.request_state)
    if state is None or "step1" not in got and state.get("round") == 1:
        return _ask({"step1": _elicit("Step 1: What is your name?", "name")}, {"round": 1})
    if state.get("round") == 1:
        return _ask(
            {"step2": _elicit("Step 2: What is your favorite color?", "color")},
            {"round": 2, "name": _text_of(got["step1"])},
        )
    if "step2" not in got:
        return _ask(
            {"step2": _elicit("Step 2: What is your favorite color?", "color")},
            state,
        )
    return f"Done: {state.get('name')} likes {json.dumps(got['step2'].get('content'))}"


@server.tool(description="SEP-2322: a signed requestState that must not be tampered with")
def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    got = _responses(ctx)
    state = _open(ctx.request_state)
    if state is None or "confirm" not in got:
        return _ask({"confirm": _elicit("Please confirm", "ok", "boolean")}, {"round": 1})
    return "state-ok"


@server.tool(description="SEP-2322: asks only for what the client declared it can do")
def test_input_required_result_capabilities(ctx: Context) -> str | InputRequiredResult:
    got = _responses(ctx)
    if got:
        return "Inputs received"
    caps = ctx.client_capabilities
    asks = {}
    if caps is not None and caps.sampling is not None:
        asks["question"] = _sample("What is the capital of France?", 100)
    if caps is not None and caps.elicitation is not None:
        asks["user_name"] = _elicit("What is your name?", "name")
    if caps is not None and getattr(caps, "roots", None) is not None:
        asks["client_roots"] = _ROOTS
    if not asks:
        return "No input the client can give"
    return _ask(asks)


@server.resource("test://static-text", mime_type="text/plain", description="A static text resource for testing")
def static_text() -> str:
    return "This is the content of the static text resource."


@server.resource("test://static-binary", mime_type="image/png", description="A static binary resource (image) for testing")
def static_binary() -> bytes:
    return base64.b64decode(TEST_IMAGE)


@server.resource("test://watched-resource", mime_type="text/plain", description="A resource that can be subscribed to")
def watched() -> str:
    return "Watched resource content"


@server.resource(
    "test://template/{id}/data",
    mime_type="application/json",
    description="A resource template with parameter substitution",
)
def template(id: str) -> str:
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@server.prompt(description="A simple prompt without arguments")
def test_simple_prompt() -> str:
    return "This is a simple prompt for testing."


@server.prompt(description="A prompt with required arguments")
def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
    return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"


@server.prompt(description="A prompt with image content")
def test_prompt_with_image() -> list:
    return [
        Message(role="user", content=ImageContent(type="image", data=TEST_IMAGE, mime_type="image/png")),
        Message(role="user", content=TextContent(type="text", text="Please analyze the image above.")),
    ]


@server.prompt(description="A prompt with an embedded resource")
def test_prompt_with_embedded_resource(resourceUri: str) -> list:
    return [
        Message(
            role="user",
            content=EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
                ),
            ),
        ),
        Message(role="user", content=TextContent(type="text", text="Please process the embedded resource above.")),
    ]


@server.prompt(description="SEP-2322: a prompt that needs input first")
def test_input_required_result_prompt(ctx: Context) -> list | InputRequiredResult:
    got = _responses(ctx)
    if "user_context" not in got:
        return _ask({"user_context": _elicit("What context should the prompt use?", "context")})
    return [Message(role="user", content=TextContent(type="text", text=f"Context: {_text_of(got['user_context'])}"))]


@server.completion()
async def complete(ref, argument, context):
    if isinstance(ref, PromptReference) or isinstance(ref, ResourceTemplateReference):
        values = [v for v in ("paris", "park", "party") if v.startswith(argument.value)]
        return Completion(values=values, total=len(values), has_more=False)
    return None


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = server.streamable_http_app(streamable_http_path="/mcp")
    config = uvicorn.Config(app, log_level="warning")
    uv = uvicorn.Server(config)
    print(f"python conformance server on http://127.0.0.1:{port}/mcp", flush=True)
    await uv.serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(main())
