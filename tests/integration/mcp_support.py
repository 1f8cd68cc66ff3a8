"""A small stdio MCP server that tests ship into a session's sandbox."""

from __future__ import annotations

# A small stdio MCP server (one JSON-RPC message a line), as a user would ship one.
SERVER = r'''
import json, sys

TOOLS = [{"name": "shout", "description": "Upper-case a text",
          "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                          "required": ["text"]}},
         {"name": "crash", "description": "Exit at once", "inputSchema": {"type": "object"}}]

print("starting up (a stray line a client must skip)", flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    method, rid = msg["method"], msg["id"]
    if method == "initialize":
        result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities":
                  {"tools": {}}, "serverInfo": {"name": "demo", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call" and msg["params"]["name"] == "crash":
        sys.exit(7)
    elif method == "tools/call":
        text = msg["params"]["arguments"]["text"]
        result = {"content": [{"type": "text", "text": text.upper() + " (from " +
                               open("/proc/self/cwd/.marker").read().strip() + ")"}]}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601,
                                                                   "message": method}}))
        sys.stdout.flush()
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}), flush=True)
'''
DEMO = {"name": "demo", "command": ["python3", "demo_server.py"]}
