"""The per-route latency table of `keel bench http` (issue #16) from the service's own histogram."""
from __future__ import annotations

from prometheus_client import generate_latest

from api.metrics import Metrics
from keel_tools.bench_routes import markdown, parse, route_latency


def test_per_route_percentiles_come_from_the_difference_of_two_scrapes() -> None:
    m = Metrics()
    for _ in range(10):
        m.request_latency.labels("GET", "/v1/accounts/{account_id:uuid}", "2xx").observe(0.0007)
    before = parse(generate_latest(m.registry).decode())
    for k in range(100):  # 90 fast, 10 slow; another status class of the same route counts too
        m.request_latency.labels("GET", "/v1/accounts/{account_id:uuid}", "2xx" if k else "4xx").observe(0.004 if k < 90 else 0.2)
    m.request_latency.labels("POST", "/v1/transfers", "2xx").observe(0.02)
    rows = route_latency(before, parse(generate_latest(m.registry).decode()), seconds=10.0)
    assert [(r["method"], r["requests"]) for r in rows] == [("GET", 100), ("POST", 1)]
    get = rows[0]
    assert get["requests_per_s"] == 10.0
    assert 2.5 <= get["p50_ms"] <= 5.0 and 100.0 <= get["p99_ms"] <= 250.0  # within the buckets holding them
    table = markdown({"scenarios": [{"scenario": "mixed", "requests_per_s": 10.1, "routes": rows}]})
    assert "| GET /v1/accounts/{account_id:uuid} | 10.0 |" in table and "POST /v1/transfers" in table
    assert markdown({"scenarios": [{"scenario": "uniform", "routes": rows[1:]}]}) == ""  # no reads: no table
