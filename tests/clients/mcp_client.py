"""Drives `dirigent mcp` with the official `mcp` client library: initialize, tools/list,
tools/call.

Usage: mcp_client.py DIRIGENT_BINARY WORKSPACE
Prints one JSON object with what it saw; the Rust test (tests/doors.rs) checks it.
"""
import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def main(binary, workspace):
    server = StdioServerParameters(command=binary, args=["--root", workspace, "mcp"])
    seen = {}
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            seen["server"] = init.server_info.name
            tools = await session.list_tools()
            seen["tools"] = sorted(t.name for t in tools.tools)

            done = await session.call_tool(
                "submit_task",
                {"prompt": "mcp waited", "agent": "good", "id": "by-mcp", "wait": True},
            )
            seen["submit_wait"] = {"error": bool(done.is_error), "text": text_of(done)}

            queued = await session.call_tool("submit_task", {"prompt": "mcp later"})
            later = json.loads(text_of(queued))["id"]
            waited = await session.call_tool("wait_task", {"id": later})
            seen["wait_task"] = {"error": bool(waited.is_error), "text": text_of(waited)}

            result = await session.call_tool("task_result", {"id": "by-mcp"})
            seen["task_result"] = text_of(result)

            status = await session.call_tool("task_status", {"id": "by-mcp"})
            seen["status_state"] = json.loads(text_of(status))["state"]

            agents = await session.call_tool("list_agents", {})
            seen["agents"] = sorted(a["name"] for a in json.loads(text_of(agents))["agents"])

            failing = await session.call_tool(
                "submit_task", {"prompt": "mcp failing", "agent": "broken", "wait": True}
            )
            seen["failing"] = {"error": bool(failing.is_error), "text": text_of(failing)}

            run = await session.call_tool(
                "run_workflow", {"name": "one", "vars": {"goal": "mcp goal"}, "wait": True}
            )
            seen["workflow"] = {"error": bool(run.is_error), "text": text_of(run)}

            missing = await session.call_tool("task_result", {"id": "no-such-task"})
            seen["missing"] = {"error": bool(missing.is_error), "text": text_of(missing)}
    print(json.dumps(seen))


asyncio.run(main(sys.argv[1], sys.argv[2]))
