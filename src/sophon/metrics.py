"""What the server is doing, in Prometheus's text format (``GET /metrics``, admins only).

Counters and histograms are recorded where things happen (one line at each place: a
request in ``api/app.py``'s middleware, an execution, a turn, an event appended, a model
call metered, a webhook delivered, the door's tallies written); gauges that describe the
present (boxes awake, the pool, executions in flight, the door's open connections) are
read from the services when the page is scraped, so they
can never drift from the truth.

One registry per process: a server is one process, and the registry is this module's
own (not prometheus_client's global one), so importing a library that registers metrics
of its own adds nothing to the page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from a warm execute (a few ms) to a long agent turn (minutes).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

registry = CollectorRegistry(auto_describe=True)

http_requests = Counter(
    "sophon_http_requests", "HTTP requests answered, by route template and status",
    ["method", "route", "status"], registry=registry)
http_seconds = Histogram(
    "sophon_http_request_duration_seconds",
    "Time to the end of the response (a stream counts until it closes)",
    ["method", "route"], buckets=_LATENCY_BUCKETS, registry=registry)
executions = Histogram(
    "sophon_execution_duration_seconds",
    "Executions of the execute API, from accepted to result, by final status",
    ["status"], buckets=_LATENCY_BUCKETS, registry=registry)
turns = Histogram(
    "sophon_turn_duration_seconds", "Agent turns, from the user's message to the end",
    ["outcome"], buckets=_LATENCY_BUCKETS, registry=registry)
events = Counter(
    "sophon_events_appended", "Session events written to the log, by type",
    ["type"], registry=registry)
gateway_tokens = Counter(
    "sophon_gateway_tokens", "Tokens metered by the model gateway",
    ["model", "kind"], registry=registry)
gateway_cost = Counter(
    "sophon_gateway_cost_usd", "What the metered model calls cost, in US dollars",
    ["model"], registry=registry)
door_connections = Counter(
    "sophon_door_connections", "Connections boxes asked of the egress door, by outcome "
    "(opened, refused); counted when the door's tallies are written (every 2 s)",
    ["outcome"], registry=registry)
door_bytes = Counter(
    "sophon_door_bytes", "Bytes through the egress door, by direction (out: from boxes)",
    ["direction"], registry=registry)
webhook_deliveries = Counter(
    "sophon_webhook_deliveries", "Outbound webhook deliveries, by kind and outcome",
    ["kind", "outcome"], registry=registry)


class LiveGauges(Collector):
    """Gauges read at scrape time from a callable that returns ``{name: (help, value or
    {label value: value}, label name)}``; set up once the services exist."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, object, str]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        for name, (help_text, value, label) in self._read().items():
            if isinstance(value, dict):
                family = GaugeMetricFamily(name, help_text, labels=[label])
                for label_value, v in sorted(value.items()):
                    family.add_metric([label_value], float(v))
            else:
                family = GaugeMetricFamily(name, help_text, value=float(value))  # type: ignore[arg-type]
            yield family


_live: LiveGauges | None = None


def install_live(read: Callable[[], dict[str, tuple[str, object, str]]]) -> None:
    """Point the live gauges at this process's services (again after a restart of them)."""
    global _live
    if _live is not None:
        registry.unregister(_live)
    _live = LiveGauges(read)
    registry.register(_live)


def render() -> bytes:
    return generate_latest(registry)
