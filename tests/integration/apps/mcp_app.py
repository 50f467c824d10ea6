"""The MCP app: the tools of tests/fakes/mcp_server.py (launched over stdio by each process
that calls them) in a workflow `mcp_count` of two steps, each counting its call in
`$FAKE_MCP_COUNT_FILE` (so the test sees each call ran exactly once)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel

from stalwart import App, McpTool

REPO = Path(__file__).resolve().parents[3]

app = App()
app.mcp(
    "fake",
    command=[sys.executable, "-m", "tests.fakes.mcp_server", "stdio"],
    cwd=str(REPO),
    env={"FAKE_MCP_COUNT_FILE": os.environ.get("FAKE_MCP_COUNT_FILE", "mcp-count.txt")},
    prefix="fake_",
    timeout=20,
    tools={"count": McpTool(idempotent=True)},
)


class CountInput(BaseModel):
    label: str


app.workflow(
    "mcp_count",
    input=CountInput,
    templates=[
        {
            "name": "mcp_count",
            "steps": [
                {"id": "first", "tool": "fake_count", "args": {"label": "${input.label}-1"}},
                {
                    "id": "second",
                    "tool": "fake_count",
                    "args": {"label": "${steps.first.output.result}"},
                },
            ],
        }
    ],
)
