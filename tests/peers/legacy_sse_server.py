"""A legacy HTTP+SSE (2024-11-05) MCP server built on the official Python
SDK (PyPI `mcp`, `MCPServer.sse_app()`), for the gateway's legacy SSE
backend tests.

Usage: legacy_sse_server.py
Listens on 127.0.0.1 with a port the system picks and prints
`legacy sse server on http://127.0.0.1:PORT/sse` once it serves.

Tools: `echo` (its `text`), `progress` (`steps` progress notifications,
then "done"), `ask_name` (an elicitation, then "hello NAME"), `sample`
(a sampling request, then the model's text).
"""

import asyncio
import socket

import uvicorn
from pydantic import BaseModel
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import SamplingMessage, TextContent

server = MCPServer("legacy-sse-fixture")


@server.tool(description="Echoes its `text` argument")
def echo(text: str) -> str:
    return text


@server.tool(description="Reports `steps` progress notifications, then says done")
async def progress(steps: int, ctx: Context) -> str:
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"step {i + 1}")
    return "done"


class Name(BaseModel):
    name: str


@server.tool(description="Asks the user's name (elicitation)")
async def ask_name(ctx: Context) -> str:
    r = await ctx.elicit("What is your name?", Name)
    if r.action == "accept" and r.data is not None:
        return f"hello {r.data.name}"
    return f"no name ({r.action})"


@server.tool(description="Asks the client's model (sampling)")
async def sample(prompt: str, ctx: Context) -> str:
    r = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=50,
        related_request_id=ctx.request_id,
    )
    c = r.content
    return getattr(c, "text", str(c))


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = server.sse_app()
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    print(f"legacy sse server on http://127.0.0.1:{port}/sse", flush=True)
    await uv.serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(main())
