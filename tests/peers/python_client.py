"""The official Python SDK's client, in its default mode, against a URL.

Usage: python_client.py URL
Connects with `mcp.Client(URL)` (mode "auto": a `server/discover` probe, then
the `initialize` handshake when the server is not a 2026-07-28 one), lists
the tools and calls `echo`. Prints one JSON line with what it saw; exits 1
with the error otherwise.
"""

import asyncio
import json
import sys

from mcp import Client


async def main(url: str) -> None:
    async with Client(url) as client:
        tools = await client.list_tools()
        names = sorted(t.name for t in tools.tools)
        result = await client.call_tool("echo", {"text": "hello from python"})
        texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
        print(
            json.dumps(
                {
                    "tools": names,
                    "echo": texts,
                    "is_error": bool(result.is_error),
                }
            )
        )


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1]))
    except Exception as e:  # noqa: BLE001 - the test prints what failed
        print(f"python client failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
