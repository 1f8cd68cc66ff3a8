import { useEffect, useRef, useState, type FormEvent } from "react";
import { capabilities, images, sessions as api, type Capabilities, type Capability, type ImageInfo } from "../api";
import { parseMcpServers } from "../session/mcpServers";
import { NetworkFields, parseHosts, type NetworkDraft } from "../session/NetworkFields";
import type { SessionView } from "../types";

const BASES = [
  ["generic", "generic: bash, coreutils, git"],
  ["python", "python: python3 with pip, git"],
  ["node", "node: node and npm, git"],
  ["dotnet", "dotnet: the .NET SDK, git"],
];
const MODELS = ["sonnet", "opus", "haiku"];
const TOOLS = ["Read", "Write", "Edit", "Glob", "Grep"];
const SECRET_NAME = /^[A-Z][A-Z0-9_]{0,127}$/;

interface SecretRow {
  name: string;
  value: string;
}

export function NewSessionDialog(props: {
  onClose: () => void;
  onCreated: (s: SessionView) => void;
}) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [name, setName] = useState("");
  const [starter, setStarter] = useState<"empty" | "git" | "template">("empty");
  const [gitUrl, setGitUrl] = useState("");
  const [gitRef, setGitRef] = useState("");
  const [template, setTemplate] = useState("python");
  const [base, setBase] = useState("generic");
  const [model, setModel] = useState("sonnet");
  const [customModel, setCustomModel] = useState("");
  const [runtime, setRuntime] = useState("native");
  const [systemPrompt, setSystemPrompt] = useState("");
  const [shell, setShell] = useState("ask_once");
  const [tools, setTools] = useState<Record<string, string>>({});
  const [webhook, setWebhook] = useState("");
  const [maxTurns, setMaxTurns] = useState("");
  const [budget, setBudget] = useState("");
  const [diskMb, setDiskMb] = useState("");
  const [memoryMb, setMemoryMb] = useState("");
  const [cpus, setCpus] = useState("");
  const [pids, setPids] = useState("");
  const [secrets, setSecrets] = useState<SecretRow[]>([]);
  const [network, setNetwork] = useState<NetworkDraft>({ allowText: "", ask: false, connectors: [] });
  const [mcpText, setMcpText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [caps, setCaps] = useState<Capabilities | null>(null);
  const [ownImages, setOwnImages] = useState<ImageInfo[]>([]);

  useEffect(() => {
    const d = dialog.current!;
    if (!d.open) d.showModal();
    return () => d.close();
  }, []);

  useEffect(() => {
    // What this server can run: the rest is shown, disabled, with the reason.
    capabilities().then(setCaps, () => setCaps(null));
    // The user's own images (a server without images lists none).
    images().then((r) => setOwnImages(r.images.filter((i) => !i.builtin)), () => setOwnImages([]));
  }, []);
  const offered = (list: Capability[] | undefined, name: string) => list?.find((c) => c.name === name);
  // What the chosen base (or image of the user's) gets unless the form asks otherwise.
  const defaults = caps?.bases.find((b) => b.name === base)?.limits ?? ownImages.find((i) => i.name === base)?.limits ?? undefined;

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    const bad = secrets.find((s) => s.name && !SECRET_NAME.test(s.name));
    if (bad) {
      setError(`Secret name “${bad.name}”: uppercase letters, digits and _, starting with a letter.`);
      return;
    }
    const servers = parseMcpServers(mcpText);
    if (typeof servers === "string") {
      setError(servers);
      return;
    }
    const body: Record<string, unknown> = {
      name: name.trim(),
      base,
      model: model === "custom" ? customModel.trim() : model,
      runtime,
      approval: {
        shell,
        tools: Object.fromEntries(Object.entries(tools).filter(([, v]) => v !== "allow")),
        ...(webhook.trim() ? { webhook: webhook.trim() } : {}),
      },
      starter:
        starter === "git"
          ? { type: "git", url: gitUrl.trim(), ...(gitRef.trim() ? { ref: gitRef.trim() } : {}) }
          : starter === "template"
            ? { type: "template", name: template }
            : { type: "empty" },
    };
    body.network = { allow: parseHosts(network.allowText), ask: network.ask };
    body.connectors = network.connectors;
    if (servers.length) body.mcp_servers = servers;
    if (systemPrompt.trim()) body.system_prompt = systemPrompt;
    if (maxTurns) body.max_turns = Number(maxTurns);
    if (budget) body.max_budget_usd = Number(budget);
    if (diskMb) body.disk_mb = Number(diskMb);
    const limits: Record<string, number> = {};
    if (memoryMb) limits.memory_mb = Number(memoryMb);
    if (cpus) limits.cpus = Number(cpus);
    if (pids) limits.pids = Number(pids);
    if (Object.keys(limits).length) body.limits = limits;
    setBusy(true);
    try {
      const created = await api.create(body);
      for (const s of secrets.filter((r) => r.name && r.value)) {
        await api.putSecret(created.id, s.name, s.value);
      }
      props.onCreated(created);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <dialog
      ref={dialog}
      className="dialog wide"
      aria-labelledby="new-session-title"
      onCancel={(e) => {
        e.preventDefault();
        if (!busy) props.onClose();
      }}
    >
      <form onSubmit={submit} className="form">
        <h2 id="new-session-title">New session</h2>
        <div className="grid2">
          <label>
            Name
            <input required maxLength={200} autoFocus value={name} onChange={(e) => setName(e.target.value)} placeholder="refactor-api" />
          </label>
          <label>
            Base
            <select value={base} onChange={(e) => setBase(e.target.value)}>
              {BASES.map(([v, fallback]) => {
                const cap = offered(caps?.bases, v);
                const off = cap !== undefined && !cap.available;
                // What the server's image of the base holds, when it says.
                const label = cap && "description" in cap ? `${v}: ${cap.description}` : fallback;
                return (
                  <option key={v} value={v} disabled={off} title={off ? cap.reason ?? "" : undefined}>
                    {off ? `${label} (unavailable: ${cap.reason})` : label}
                  </option>
                );
              })}
              {ownImages.length > 0 && (
                <optgroup label="Your images">
                  {ownImages.map((i) => (
                    <option key={i.name} value={i.name} disabled={i.status !== "ready"} title={i.reason ?? i.status}>
                      {`${i.name}: ${i.description}` + (i.status === "ready" ? "" : ` (${i.status})`)}
                    </option>
                  ))}
                </optgroup>
              )}
            </select>
          </label>
        </div>

        <fieldset>
          <legend>Start from</legend>
          <div className="radios">
            {(["empty", "git", "template"] as const).map((t) => (
              <label key={t} className="radio">
                <input type="radio" name="starter" value={t} checked={starter === t} onChange={() => setStarter(t)} />
                {t === "empty" ? "An empty project" : t === "git" ? "A git repository" : "A template"}
              </label>
            ))}
          </div>
          {starter === "git" && (
            <div className="grid2">
              <label>
                Repository URL or path
                <input required value={gitUrl} onChange={(e) => setGitUrl(e.target.value)} placeholder="/srv/repos/api.git" />
              </label>
              <label>
                Branch or tag (optional)
                <input value={gitRef} onChange={(e) => setGitRef(e.target.value)} placeholder="main" />
              </label>
            </div>
          )}
          {starter === "template" && (
            <label>
              Template
              <select value={template} onChange={(e) => setTemplate(e.target.value)}>
                <option value="python">python: a small package with tests</option>
                <option value="node">node: a small package with tests</option>
              </select>
            </label>
          )}
        </fieldset>

        <div className="grid3">
          <label>
            Model
            <select value={model} onChange={(e) => setModel(e.target.value)}>
              {MODELS.map((m) => (
                <option key={m}>{m}</option>
              ))}
              <option value="custom">a full model id…</option>
            </select>
          </label>
          {model === "custom" && (
            <label>
              Model id
              <input required pattern="claude-[a-z0-9.\-]+" value={customModel} onChange={(e) => setCustomModel(e.target.value)} placeholder="claude-sonnet-4-5" />
            </label>
          )}
          <label>
            Runtime
            <select value={runtime} onChange={(e) => setRuntime(e.target.value)}>
              <option value="native">native (Sophon's agent)</option>
              {(() => {
                const cap = offered(caps?.runtimes, "claude-code");
                const off = cap !== undefined && !cap.available;
                return (
                  <option value="claude-code" disabled={off} title={off ? cap.reason ?? "" : undefined}>
                    {off ? `claude-code (unavailable: ${cap.reason})` : "claude-code (the Claude Code CLI)"}
                  </option>
                );
              })()}
            </select>
          </label>
        </div>

        <label>
          System prompt (optional)
          <textarea rows={3} value={systemPrompt} onChange={(e) => setSystemPrompt(e.target.value)} />
        </label>

        <fieldset>
          <legend>Approvals</legend>
          <div className="grid2">
            <label>
              Shell commands (Bash)
              <select value={shell} onChange={(e) => setShell(e.target.value)}>
                <option value="ask_once">ask the first time, then allow</option>
                <option value="allow">always allow</option>
                <option value="deny">never allow</option>
              </select>
            </label>
            <label>
              Webhook that answers instead (optional)
              <input type="url" value={webhook} onChange={(e) => setWebhook(e.target.value)} placeholder="https://…" />
            </label>
          </div>
          <div className="tool-policy">
            {TOOLS.map((t) => (
              <label key={t} className="inline">
                {t}
                <select value={tools[t] ?? "allow"} onChange={(e) => setTools({ ...tools, [t]: e.target.value })}>
                  <option value="allow">allow</option>
                  <option value="ask">ask</option>
                  <option value="deny">deny</option>
                </select>
              </label>
            ))}
          </div>
        </fieldset>

        <fieldset>
          <legend>Network</legend>
          <NetworkFields base={base} draft={network} onChange={setNetwork} idPrefix="new" />
        </fieldset>

        <fieldset>
          <legend>Tools from MCP servers (optional)</legend>
          <label>
            One per line, as server=command (run in the sandbox) or server=URL; the agent
            gets their tools as mcp__server__tool and asks before each use
            <textarea
              rows={2}
              value={mcpText}
              placeholder="docs=python3 docs_server.py"
              spellCheck={false}
              onChange={(e) => setMcpText(e.target.value)}
            />
          </label>
        </fieldset>

        <fieldset>
          <legend>Limits (optional)</legend>
          <div className="grid3">
            <label>
              Max turns
              <input type="number" min={1} max={10000} step={1} value={maxTurns} onChange={(e) => setMaxTurns(e.target.value)} />
            </label>
            <label>
              Budget (USD)
              <input type="number" min={0.01} step={0.01} value={budget} onChange={(e) => setBudget(e.target.value)} />
            </label>
            <label>
              Disk (MB)
              <input type="number" min={16} max={caps?.limits?.disk_max_mb} step={1} value={diskMb} placeholder={defaults?.disk_mb?.toString()} onChange={(e) => setDiskMb(e.target.value)} />
            </label>
          </div>
          {/* The box's size: the base's defaults (the placeholders) unless asked, within the server's ceilings. */}
          <div className="grid3">
            <label>
              Memory (MiB)
              <input type="number" min={64} max={caps?.limits?.memory_max_mb} step={1} value={memoryMb} placeholder={defaults?.memory_mb?.toString()} onChange={(e) => setMemoryMb(e.target.value)} />
            </label>
            <label>
              CPUs
              <input type="number" min={0.1} max={caps?.limits?.cpus_max} step={0.1} value={cpus} placeholder={defaults?.cpus?.toString()} onChange={(e) => setCpus(e.target.value)} />
            </label>
            <label>
              Processes
              <input type="number" min={16} max={caps?.limits?.pids_max} step={1} value={pids} placeholder={defaults?.pids?.toString()} onChange={(e) => setPids(e.target.value)} />
            </label>
          </div>
        </fieldset>

        <fieldset>
          <legend>Secrets (environment variables in the sandbox; only names are shown later)</legend>
          {secrets.map((s, i) => (
            <div key={i} className="secret-row">
              <input aria-label="Secret name" placeholder="GITHUB_TOKEN" value={s.name} onChange={(e) => setSecrets(secrets.map((r, j) => (j === i ? { ...r, name: e.target.value.toUpperCase() } : r)))} />
              <input aria-label="Secret value" type="password" autoComplete="off" placeholder="value" value={s.value} onChange={(e) => setSecrets(secrets.map((r, j) => (j === i ? { ...r, value: e.target.value } : r)))} />
              <button type="button" className="ghost" aria-label={`Remove secret ${s.name}`} onClick={() => setSecrets(secrets.filter((_, j) => j !== i))}>
                ✕
              </button>
            </div>
          ))}
          <button type="button" className="ghost" onClick={() => setSecrets([...secrets, { name: "", value: "" }])}>
            + Add a secret
          </button>
        </fieldset>

        {error && (
          <p className="error" role="alert">
            {error}
          </p>
        )}
        <div className="actions">
          <button type="button" className="ghost" onClick={props.onClose} disabled={busy}>
            Cancel
          </button>
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Creating… (starting the sandbox)" : "Create session"}
          </button>
        </div>
      </form>
    </dialog>
  );
}
