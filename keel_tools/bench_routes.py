"""Per-route latency for `keel bench http` (issue #16): the service's own request histogram
(`keel_http_request_duration_seconds`, api/metrics.py) read before and after a scenario; the
difference is that scenario's requests, per route template and method, with percentiles
interpolated inside the histogram's buckets (so a figure is as fine as the bucket it falls in).

Service time, measured inside the process from the first byte of the request to the last of the
answer: it leaves out the time a request waited in the socket before the process read it, which
wrk's figures include. With `--workers N` > 1 the figures are those of the worker that answered
the scrape."""
from __future__ import annotations

import math
import re
import urllib.request
from collections import defaultdict
from typing import Any

METRIC = "keel_http_request_duration_seconds_bucket"
_LINE = re.compile(METRIC + r"\{(?P<labels>.*)\} (?P<value>\S+)$")  # label values may hold braces
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Buckets = dict[tuple[str, str], dict[float, float]]  # (method, route) -> upper bound -> cumulative count


def scrape(port: int) -> Buckets:
    """The cumulative bucket counts per (method, route), all statuses together; {} if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except Exception:  # noqa: BLE001 - a figure for the report, not a check
        return {}
    return parse(text)


def parse(text: str) -> Buckets:
    """The request histogram's buckets in a Prometheus text exposition."""
    out: Buckets = defaultdict(lambda: defaultdict(float))
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        le = math.inf if labels.get("le") == "+Inf" else float(labels.get("le", "nan"))
        out[(labels.get("method", "?"), labels.get("route", "?"))][le] += float(m.group("value"))
    return out


def _percentile(bounds: list[float], cumulative: list[float], q: float) -> float | None:
    total = cumulative[-1]
    if total <= 0:
        return None
    target = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= target:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: report its bound (a floor)
            share = (target - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return None


def route_latency(before: Buckets, after: Buckets, seconds: float) -> list[dict[str, Any]]:
    """Per route of the requests made between the two scrapes: count, requests/s, p50/p95/p99 ms;
    busiest first."""
    rows = []
    for key, buckets in after.items():
        bounds = sorted(buckets)
        old = before.get(key, {})
        cumulative = [buckets[b] - old.get(b, 0.0) for b in bounds]
        if not cumulative or cumulative[-1] <= 0:
            continue
        method, route = key
        row: dict[str, Any] = {"method": method, "route": route, "requests": int(cumulative[-1]),
                               "requests_per_s": round(cumulative[-1] / seconds, 1) if seconds else None}
        for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            v = _percentile(bounds, cumulative, q)
            row[name] = None if v is None else round(v * 1000, 2)
        rows.append(row)
    return sorted(rows, key=lambda r: -r["requests"])


def markdown(result: dict[str, Any]) -> str:
    """One table per scenario that read anything, plus the requests/s of the mixed scenario."""
    lines = []
    for r in result["scenarios"]:
        routes = r.get("routes") or []
        if not any(x["method"] == "GET" for x in routes):
            continue
        lines.append(f"\nPer route, {r['scenario']} scenario ({r.get('requests_per_s', 0):,.0f} requests/s in all; "
                     "service time from the process's own histogram, interpolated within its buckets):\n")
        lines.append("| route | requests/s | p50 ms | p95 ms | p99 ms |")
        lines.append("|---|---:|---:|---:|---:|")
        for x in routes:
            lines.append(f"| {x['method']} {x['route']} | {x['requests_per_s']:,} | {x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} |")
    return "\n".join(lines) + ("\n" if lines else "")
