"""GET /metrics: Prometheus's text format, for admins only, with what an operator watches."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sophon.testing import ModelServer
from tests.conftest import LiveServer, free_port, serve_with_model, wait_for
from tests.integration.session_support import sh, turn, user


@pytest.fixture(scope="module")
def admin(server: LiveServer) -> str:
    """The key of a user named in SOPHON_ADMIN_USERS (by default: admin)."""
    return server.add_user("admin")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_for_admins_only(server: LiveServer, http: httpx.Client,
                                     admin: str) -> None:
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    refused = http.get("/metrics")  # an ordinary user
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert "SOPHON_ADMIN_USERS" in refused.json()["message"]
    ok = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/plain")


def test_metrics_count_requests_executions_and_boxes(server: LiveServer, http: httpx.Client,
                                                      admin: str) -> None:
    scrape = lambda: _samples(httpx.get(  # noqa: E731
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {admin}"}).text)
    before = scrape()
    r = http.post("/v1/sandbox/execute", json={"code": "echo hi", "language": "bash"})
    assert r.status_code == 200 and r.json()["success"], r.text
    assert http.get("/v1/sessions/ses_doesnotexist").status_code == 404
    after = scrape()

    # Requests by route template, never by raw path (an id would make a series each).
    route = ("sophon_http_requests_total", "POST", "/v1/sandbox/execute", "200")
    assert (_value(after, route[0], method=route[1], route=route[2], status=route[3])
            == _value(before, route[0], method=route[1], route=route[2], status=route[3]) + 1)
    assert not any("ses_doesnotexist" in str(key) for key in after)
    assert any(k[0] == "sophon_http_requests_total" and ("status", "404") in k[1]
               and ("route", "/v1/sessions/{session_id}") in k[1] for k in after)
    # Execution latency by final status.
    name = "sophon_execution_duration_seconds_count"
    assert _value(after, name, status="success") == _value(before, name, status="success") + 1
    # Gauges read at scrape time.
    assert ("sophon_box_pool_level", ()) in after
    assert ("sophon_executions_in_flight", ()) in after
    assert ("sophon_boxes_awake", (("kind", "execution"),)) in after
    assert ("sophon_boxes_asleep", ()) in after


def test_metrics_count_session_events(server: LiveServer, http: httpx.Client,
                                      admin: str) -> None:
    headers = {"Authorization": f"Bearer {admin}"}
    created = http.post("/v1/sessions", json={"name": "metrics"})
    assert created.status_code in (200, 201), created.text
    text = httpx.get(f"{server.url}/metrics", headers=headers).text
    samples = _samples(text)
    assert sum(v for (n, _), v in samples.items() if n == "sophon_events_appended_total") > 0
    assert _value(samples, "sophon_boxes_awake", kind="session") >= 1


def test_metrics_count_turns_model_calls_webhooks_and_the_door(model: ModelServer) -> None:
    """What only a model, a webhook and a box's network make: a turn's latency, the
    gateway's tokens and cost, a webhook delivery (here one that fails: nobody listens),
    and a connection the egress door refused."""
    nobody = f"127.0.0.1:{free_port()}"
    with serve_with_model(model, SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS=nobody,
                          SOPHON_WEBHOOK_RETRY_DELAYS="0.05") as srv, user(srv) as http:
        headers = {"Authorization": f"Bearer {srv.add_user('admin')}"}

        def scrape() -> dict:
            return _samples(httpx.get(f"{srv.url}/metrics", headers=headers).text)

        def grew(before: dict, name: str, **labels: str) -> bool:
            return _value(scrape(), name, **labels) > _value(before, name, **labels)

        before = scrape()
        model.set_script({"turns": ["counted"]})
        sid = http.post("/v1/sessions", json={"name": "metered"}).json()["id"]
        turn(http, sid, "hello")
        after = scrape()
        assert (_value(after, "sophon_turn_duration_seconds_count", outcome="ended")
                == _value(before, "sophon_turn_duration_seconds_count", outcome="ended") + 1)
        assert sum(v for (n, _), v in after.items() if n == "sophon_gateway_tokens_total") > \
            sum(v for (n, _), v in before.items() if n == "sophon_gateway_tokens_total")
        assert any(n == "sophon_gateway_cost_usd_total" for n, _ in after)

        assert http.post("/v1/webhooks/secret").status_code == 200  # signs deliveries
        r = http.post("/v1/sandbox/execute", json={
            "code": "true", "language": "bash", "webhook_url": f"http://{nobody}/hook"})
        assert r.status_code in (200, 202), r.text
        wait_for(lambda: grew(before, "sophon_webhook_deliveries_total", kind="execution",
                              outcome="failed"), 30, 0.1, "the failed delivery counted")

        code = sh(http, sid, "curl -s -o /dev/null -w '%{http_code}' http://blocked.example/")
        assert code == "403", code
        wait_for(lambda: grew(before, "sophon_door_connections_total", outcome="refused"),
                 10, 0.2, "the refused connection counted")
        assert ("sophon_door_connections_open", ()) in scrape()
