import { useCallback, useEffect, useMemo, useState } from "react";
import { sessions as api } from "../api";
import { Chart, type Series } from "../lib/Chart";
import { clock, tokens, usd, usdFine } from "../lib/format";
import type { SessionView, UsageReport, WireEvent } from "../types";
import { NetworkStats } from "./NetworkTab";

/** One session's model calls: cumulative tokens and cost, and the budget left. */
export default function UsageTab(props: {
  session: SessionView;
  subscribe: (fn: (batch: WireEvent[]) => void) => () => void;
}) {
  const { session } = props;
  const [report, setReport] = useState<UsageReport | null>(null);
  const [error, setError] = useState<string | null>(null);

  const load = useCallback(async () => {
    try {
      setReport(await api.usage(session.id));
      setError(null);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  }, [session.id]);

  useEffect(() => {
    load();
    let timer = 0;
    const off = props.subscribe((batch) => {
      if (batch.some((e) => e.type === "usage" || e.type === "network_denied" || e.type === "exec_end")) {
        clearTimeout(timer);
        timer = window.setTimeout(load, 300);
      }
    });
    return () => {
      off();
      clearTimeout(timer);
    };
  }, [load, props.subscribe]);

  const calls = report?.calls ?? [];
  const x = useMemo(() => calls.map((c) => Date.parse(c.ts) / 1000), [calls]);
  const series = useMemo<Series[]>(
    () => [
      { label: "tokens (cumulative)", color: "#58a6ff", values: calls.map((c) => c.cumulative_input_tokens + c.cumulative_output_tokens), format: tokens },
      { label: "cost (cumulative)", color: "#f0b72f", axis: "right", values: calls.map((c) => c.cumulative_cost_usd), format: usdFine },
    ],
    [calls],
  );
  const totals = report?.totals;
  const budget = session.max_budget_usd;

  return (
    <div className="tab-page">
      <div className="tab-head">
        <h2>Usage</h2>
        <span className="spacer" />
        <button onClick={load}>Refresh</button>
      </div>
      {error && <p className="error" role="alert">{error}</p>}
      {totals && (
        <dl className="stats">
          <div><dt>Input tokens</dt><dd>{tokens(totals.input_tokens)}</dd></div>
          <div><dt>Output tokens</dt><dd>{tokens(totals.output_tokens)}</dd></div>
          <div><dt>Cost</dt><dd>{usd(totals.cost_usd)}</dd></div>
          <div><dt>Model calls</dt><dd>{calls.length}</dd></div>
          <div>
            <dt>Budget left</dt>
            <dd>{budget ? `${usd(Math.max(0, budget - totals.cost_usd))} of ${usd(budget)}` : "no limit"}</dd>
          </div>
        </dl>
      )}
      {report?.network && (
        <>
          <h3 className="sub">Network</h3>
          <NetworkStats usage={report.network} />
        </>
      )}
      {calls.length > 0 ? (
        <Chart title="Tokens and cost over the session" x={x} series={series} />
      ) : (
        report && <p className="muted">No model calls yet.</p>
      )}
      {calls.length > 0 && (
        <table className="calls small">
          <caption className="muted">Model calls</caption>
          <thead>
            <tr><th>Time</th><th>Model</th><th className="num">In</th><th className="num">Out</th><th className="num">Cached</th><th className="num">Cost</th></tr>
          </thead>
          <tbody>
            {calls.slice(-100).reverse().map((c, i) => (
              <tr key={i}>
                <td>{clock(c.ts)}</td>
                <td>{c.model}</td>
                <td className="num">{tokens(c.input_tokens)}</td>
                <td className="num">{tokens(c.output_tokens)}</td>
                <td className="num">{tokens(c.cache_read_tokens)}</td>
                <td className="num">{usd(c.cost_usd)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
