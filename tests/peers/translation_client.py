"""The official Python SDK's clients through the gateway to a server of
any transport, for scripts/translation.sh.

Usage: translation_client.py KIND URL PROFILE
  KIND     sse        the legacy HTTP+SSE client (2024-11-05): URL is {path}/sse
           session    `Client(URL, mode="legacy")`: the initialize handshake
           stateless  `Client(URL, mode="2026-07-28")`: stateless requests
  PROFILE  the server behind: rmcp | pylegacy | everything (its tool names)

Lists the tools, calls the echo tool, runs 50 concurrent calls that each
report 20 progress notifications (counted: none may be lost), and round
trips a sampling and an elicitation request. Prints one JSON line; exits 1
with the reason when anything is off.
"""

import asyncio
import json
import sys

from mcp import Client, types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client

CALLS = 50
EACH = 20

PROFILES = {
    "rmcp": {
        "echo": ("echo", {"text": "hi"}, "hi"),
        "progress": ("progress_burst", {"count": EACH}),
        "sampling": ("test_sampling", {"prompt": "2+2"}, "echo:"),
        "elicitation": ("test_elicitation", {"message": "ok?"}, "accept"),
    },
    "pylegacy": {
        "echo": ("echo", {"text": "hi"}, "hi"),
        "progress": ("progress", {"steps": EACH}),
        "sampling": ("sample", {"prompt": "2+2"}, "echo:"),
        "elicitation": ("ask_name", {}, "hello yes please"),
    },
    "everything": {
        "echo": ("echo", {"message": "hi"}, "Echo: hi"),
        "progress": ("trigger-long-running-operation", {"duration": 1, "steps": EACH}),
        "sampling": ("trigger-sampling-request", {"prompt": "2+2", "maxTokens": 10}, "echo:"),
        "elicitation": ("trigger-elicitation-request", {}, "yes please"),
    },
}


async def sampling(context, params: types.CreateMessageRequestParams):
    asked = params.messages[0].content
    text = getattr(asked, "text", "")
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"echo:{text}"),
        model="test-model",
        stop_reason="endTurn",
    )


async def elicitation(context, params):
    return types.ElicitResult(action="accept", content={"response": "yes please", "name": "yes please"})


def text_of(result) -> str:
    return " ".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def exercise(call_tool, list_tools, profile: dict) -> dict:
    tools = await list_tools()
    names = [t.name for t in tools.tools]
    out = {"tools": len(names)}
    name, args, want = profile["echo"]
    text = text_of(await call_tool(name, args))
    assert want in text, f"echo: {text!r}"
    out["echo"] = text
    name, args = profile["progress"]
    seen = [[] for _ in range(CALLS)]

    def counter(i):
        async def cb(progress, total, message):
            seen[i].append(progress)

        return cb

    await asyncio.gather(*(call_tool(name, args, progress_callback=counter(i)) for i in range(CALLS)))
    counts = [len(s) for s in seen]
    assert counts == [EACH] * CALLS, f"progress lost or duplicated: {counts}"
    out["progress"] = sum(counts)
    for what in ("sampling", "elicitation"):
        name, args, want = profile[what]
        text = text_of(await call_tool(name, args))
        assert want in text, f"{what}: {text!r}"
        out[what] = text[:60]
    return out


async def main(kind: str, url: str, profile: str) -> None:
    p = PROFILES[profile]
    if kind == "sse":
        async with sse_client(url) as (r, w):
            async with ClientSession(r, w, sampling_callback=sampling, elicitation_callback=elicitation) as s:
                init = await s.initialize()
                out = await exercise(s.call_tool, s.list_tools, p)
                out["protocol"] = init.protocol_version
    else:
        mode = "legacy" if kind == "session" else "2026-07-28"
        async with Client(url, mode=mode, sampling_callback=sampling, elicitation_callback=elicitation) as c:
            out = await exercise(c.call_tool, c.list_tools, p)
    out["kind"] = kind
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
    except Exception as e:  # noqa: BLE001 - the script prints what failed
        print(f"translation client failed: {type(e).__name__}: {e!r}", file=sys.stderr)
        sys.exit(1)
