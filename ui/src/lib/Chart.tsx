// A small time chart on uPlot (canvas, ~20 KB): tokens as bars or a line with points,
// cost on a second axis (points alone where x is a set of categories). Only the usage
// views import it, so it loads with them.
import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface Series {
  label: string;
  values: (number | null)[];
  color: string;
  axis?: "left" | "right";
  format?: (v: number) => string;
}

export function Chart(props: {
  x: number[]; // unix seconds, or indexes into `categories`
  categories?: string[];
  series: Series[];
  bars?: boolean;
  height?: number;
  title: string;
  dayAxis?: boolean;
}) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const el = host.current!;
    const right = props.series.find((s) => s.axis === "right");
    const left = props.series.find((s) => s.axis !== "right");
    const axisStyle = { stroke: "#9aa7b4", grid: { stroke: "#2a3440", width: 1 }, ticks: { stroke: "#2a3440" } };
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: props.height ?? 260,
      scales: {
        x: props.categories
          ? { time: false, range: () => [-0.6, Math.max(props.x.length, 3) - 0.4] }
          : props.dayAxis
            ? { time: true, range: (_u, lo, hi) => [lo - 43200, hi + 43200] }
            : { time: true },
        y: { range: (_u, _lo, hi) => [0, hi > 0 ? hi * 1.1 : 1] },
        r: { range: (_u, _lo, hi) => [0, hi > 0 ? hi * 1.1 : 1] },
      },
      legend: { show: true },
      cursor: { points: { size: 8 } },
      axes: [
        {
          ...axisStyle,
          ...(props.categories
            ? { splits: () => props.x, values: (_u: uPlot, ticks: number[]) => ticks.map((t) => props.categories![t] ?? "") }
            : props.dayAxis
            ? { values: (_u: uPlot, ticks: number[]) => ticks.map((t) => new Date(t * 1000).toLocaleDateString([], { month: "short", day: "numeric" })) }
            : {}),
        },
        { ...axisStyle, scale: "y", values: (_u: uPlot, t: number[]) => t.map((v) => (left?.format ? left.format(v) : String(v))), size: 60 },
        ...(right
          ? [{ ...axisStyle, scale: "r", side: 1 as const, grid: { show: false }, values: (_u: uPlot, t: number[]) => t.map((v) => (right.format ? right.format(v) : String(v))), size: 70 }]
          : []),
      ],
      series: [
        {
          label: props.categories ? "session" : props.dayAxis ? "day" : "time",
          value: (_u, v) =>
            v == null ? "—" : props.categories ? props.categories[v] ?? "" : props.dayAxis ? new Date(v * 1000).toLocaleDateString() : new Date(v * 1000).toLocaleTimeString(),
        },
        ...props.series.map((s) => ({
          label: s.label,
          stroke: s.color,
          fill: props.bars && s.axis !== "right" ? s.color + "aa" : undefined,
          width: 2,
          scale: s.axis === "right" ? "r" : "y",
          value: (_u: uPlot, v: number | null) => (v == null ? "—" : s.format ? s.format(v) : String(v)),
          points: { show: true, size: 7, fill: s.color },
          // Categories (sessions) are separate things: a line between them would say
          // they follow one another, so their second series is points alone.
          paths: props.bars && s.axis !== "right"
            ? uPlot.paths.bars!({ size: [0.6, 48] })
            : props.categories ? () => null : undefined,
        })),
      ],
    };
    const data = [props.x, ...props.series.map((s) => s.values)] as uPlot.AlignedData;
    plot.current = new uPlot(opts, data, el);
    const observer = new ResizeObserver(() => {
      plot.current?.setSize({ width: Math.max(200, el.clientWidth), height: props.height ?? 260 });
    });
    observer.observe(el);
    return () => {
      observer.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [props.x, props.series, props.bars, props.height, props.dayAxis, props.categories]);

  const label = (i: number) =>
    props.categories
      ? props.categories[i]
      : props.dayAxis
        ? new Date(props.x[i] * 1000).toLocaleDateString()
        : new Date(props.x[i] * 1000).toLocaleString();
  return (
    <figure className="chart" aria-label={props.title} data-points={props.x.length}>
      <div ref={host} className="chart-host" aria-hidden="true" />
      {/* The same numbers for screen readers (a canvas says nothing). */}
      <table className="visually-hidden">
        <caption>{props.title}</caption>
        <thead>
          <tr>
            <th scope="col">{props.categories ? "session" : props.dayAxis ? "day" : "time"}</th>
            {props.series.map((s) => (
              <th key={s.label} scope="col">{s.label}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {props.x.map((_, i) => (
            <tr key={i}>
              <th scope="row">{label(i)}</th>
              {props.series.map((s) => {
                const v = s.values[i];
                return <td key={s.label}>{v == null ? "" : s.format ? s.format(v) : String(v)}</td>;
              })}
            </tr>
          ))}
        </tbody>
      </table>
    </figure>
  );
}
