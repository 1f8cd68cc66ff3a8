// A session's MCP servers as text, one per line: "docs=python3 'my server.py' -v" (a
// command run in the sandbox; quotes group words, as a shell's do) or
// "search=https://mcp.example.com/mcp" (a URL the sandbox reaches through its network).
import type { McpServer } from "../types";

const SERVER_NAME = /^[A-Za-z0-9_-]{1,32}$/;
const WORD = /"([^"]*)"|'([^']*)'|(\S+)/g;

/** The servers the text names, or a sentence saying what is wrong with it. A server
 *  that keeps its command or URL keeps the env and headers it had in `before`. */
export function parseMcpServers(text: string, before: McpServer[] = []): McpServer[] | string {
  const out: McpServer[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const eq = line.indexOf("=");
    const name = eq > 0 ? line.slice(0, eq).trim() : "";
    const words = [...line.slice(eq + 1).matchAll(WORD)].map((m) => m[1] ?? m[2] ?? m[3]);
    if (!SERVER_NAME.test(name) || !words.length) {
      return `MCP server “${line}”: write server=command or server=URL, the server in letters, digits, _ or -.`;
    }
    if (out.some((s) => s.name === name)) return `Two MCP servers are named “${name}”.`;
    const url = words.length === 1 && /^https?:\/\/\S/.test(words[0]) ? words[0] : null;
    const server: McpServer = url ? { name, url } : { name, command: words };
    const old = before.find((s) => s.name === name);
    if (old && formatMcpServer(old) === formatMcpServer(server)) {
      if (old.env && Object.keys(old.env).length) server.env = old.env;
      if (old.headers && Object.keys(old.headers).length) server.headers = old.headers;
    }
    out.push(server);
  }
  return out;
}

function quote(word: string): string {
  if (/^[\w@%+=:,./-]+$/.test(word)) return word;
  return word.includes("'") ? `"${word}"` : `'${word}'`;
}

/** One line of the text for a server: what parseMcpServers reads back as the same. */
export function formatMcpServer(s: McpServer): string {
  return `${s.name}=${s.url ? s.url : (s.command ?? []).map(quote).join(" ")}`;
}

export function mcpText(servers: McpServer[] | undefined): string {
  return (servers ?? []).map(formatMcpServer).join("\n");
}
