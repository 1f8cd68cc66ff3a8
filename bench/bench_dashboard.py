"""Figures: the dashboard's first-load size, and the server's time to serve it.

The first load is what a browser fetches for the sign-in page: index.html and the
JavaScript and CSS it names (Monaco, xterm and the session page load later, on demand).
Sizes are gzip -9 of the built files in ui/dist; the baseline is the same files
uncompressed. Serving is timed over one keep-alive connection, alternately with
GET /healthz (the floor of the HTTP layer).

    .venv/bin/python bench/run.py --only dashboard        # after `make ui`
"""

from __future__ import annotations

import gzip
import re

from common import ROOT, Figure, client, live_server, sample_pairs_ms

GOAL_FIRST_LOAD_KB = 300.0


def run(calls: int = 200, warmup: int = 20) -> list[Figure]:
    dist = ROOT / "ui" / "dist"
    if not (dist / "index.html").exists():
        print("  dashboard: ui/dist is not built (make ui); skipped")
        return []
    html = (dist / "index.html").read_text()
    first = ["index.html", *(p.lstrip("/") for p in re.findall(
        r'(?:src|href)="(/assets/[^"]+\.(?:js|css))"', html))]
    raw = sum((dist / f).stat().st_size for f in first)
    gz = sum(len(gzip.compress((dist / f).read_bytes(), 9)) for f in first)
    with live_server(env={"SOPHON_BOX_POOL_SIZE": "0"}) as (srv, key), \
            client(srv, key) as http:
        script = next(f for f in first if f.endswith(".js"))

        def page() -> None:
            http.get("/sessions/some-session").raise_for_status()  # the app's fallback
            http.get("/" + script).raise_for_status()

        served, health = sample_pairs_ms(page, lambda: http.get("/healthz").raise_for_status(),
                                         calls, warmup=warmup)
    return [
        Figure(key="dashboard_size", title="Dashboard first load, gzip (without Monaco)",
               command=".venv/bin/python bench/run.py --only dashboard", value=gz / 1024,
               unit="KB", baseline=raw / 1024, baseline_label="the same files uncompressed",
               goal=f"< {GOAL_FIRST_LOAD_KB:g} KB", met=gz / 1024 < GOAL_FIRST_LOAD_KB,
               details=[f"files: {', '.join(first)}"]),
        Figure(key="dashboard_serve", title="Serving the app: a client route + its main script",
               command=".venv/bin/python bench/run.py --only dashboard", value=served.p50,
               unit="ms", baseline=health.p50, baseline_label="GET /healthz p50",
               details=[f"app: {served.describe()}", f"/healthz: {health.describe()}"]),
    ]


if __name__ == "__main__":
    for fig in run():
        print(fig.title, fig.value, "\n  " + "\n  ".join(fig.details))
