"""A real MCP server for the tests, written with the official SDK (`MCPServer`, FastMCP's
successor): `python -m tests.fakes.mcp_server stdio` or `... http PORT`.

Tools: `add` (plain text result), `weather` (structured output), `fail` (an `isError` result),
`busy` (a transient error), `sleepy` (sleeps), `count` (counts its calls in a file)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

server = MCPServer(name="fake-tools")


class Weather(BaseModel):
    """A forecast."""

    city: str
    celsius: float
    sunny: bool


@server.tool(description="Add two integers and say the sum as text.")
def add(a: int, b: int) -> str:
    return str(a + b)


@server.tool(description="The weather of a city, as structured output.")
def weather(city: str, days: int = 1) -> Weather:
    return Weather(city=city, celsius=21.5 + days, sunny=True)


@server.tool(description="Always fails.")
def fail(reason: str) -> str:
    raise ToolError(f"refused: {reason}")


@server.tool(description="Fails as if overloaded.")
def busy() -> str:
    raise ToolError("service temporarily unavailable (503), try again later")


@server.tool(description="Sleeps, then answers.")
async def sleepy(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "awake"


@server.tool(description="Counts its calls in the file named by FAKE_MCP_COUNT_FILE.")
def count(label: str) -> str:
    path = Path(os.environ.get("FAKE_MCP_COUNT_FILE", "mcp-count.txt"))
    with path.open("a") as fh:
        fh.write(label + "\n")
    return f"counted {label}"


@server.tool(description="The idempotency key the caller sent in the request's _meta.")
def whoami(ctx: Context) -> str:
    meta = ctx.request_context.meta or {}
    return str(meta.get("io.stalwart/idempotency-key", ""))


def main(argv: list[str]) -> None:
    """Run over stdio, or over streamable HTTP on 127.0.0.1:PORT."""
    if argv and argv[0] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(argv[1]))
    else:
        server.run("stdio")


if __name__ == "__main__":
    main(sys.argv[1:])
