"""A small stdio MCP server that tests ship into a session's sandbox."""

from __future__ import annotations

import json

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
    elif method == "tools/call" and msg["params"]["arguments"].get("text") == "hang":
        continue  # never answered
    elif method == "tools/call" and msg["params"]["arguments"].get("text") == "garble":
        print("this line is not JSON", flush=True)  # skipped, as MCP clients do
        print(json.dumps({"jsonrpc": "2.0", "id": rid, "result": "not an object"}),
              flush=True)  # the answer: JSON-RPC, but not an MCP result
        continue
    elif method == "tools/call" and msg["params"]["arguments"].get("text") == "save":
        open("saved.txt", "w").write("SAVE\n")  # a tool that changes the workspace
        result = {"content": [{"type": "text", "text": "saved"}]}
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


class HttpMcpServer:
    """An MCP server over streamable HTTP on 127.0.0.2 (boxes reach it through their
    door once SOPHON_EGRESS_ALLOW_PRIVATE lists it): one tool, `whoami`, that answers with
    the X-Team header it was sent; a tools/call is answered as an SSE stream."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.sessions_seen = []  # the Mcp-Session-Id of each request after the first

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append(self.headers.get("Mcp-Session-Id"))
                if "id" not in msg:
                    self.send_response(202)
                    self.end_headers()
                    return
                method = msg["method"]
                if method == "initialize":
                    result = {"protocolVersion": msg["params"]["protocolVersion"],
                              "capabilities": {"tools": {}},
                              "serverInfo": {"name": "web", "version": "1"}}
                elif method == "tools/list":
                    result = {"tools": [{"name": "whoami", "description": "Your team",
                                         "inputSchema": {"type": "object"}}]}
                else:
                    result = {"content": [{"type": "text",
                                           "text": f"team={self.headers.get('X-Team')}"}]}
                body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result})
                stream = method == "tools/call"
                self.send_response(200)
                self.send_header("Content-Type",
                                 "text/event-stream" if stream else "application/json")
                self.send_header("Mcp-Session-Id", "web-session-1")
                data = (f"event: message\ndata: {body}\n\n" if stream else body).encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.2:{self.port}/mcp"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self) -> HttpMcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
