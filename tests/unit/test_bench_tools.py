"""The benchmark's own tools: the open-loop generator measures the server, and the report says
what ran. (`keel bench http` itself needs wrk and minutes; these parts are checked here.)"""
from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import Any

from keel_tools import loadgen
from keel_tools.bench_http import markdown, svg


async def _server(delay_s: float) -> tuple[asyncio.AbstractServer, int, list[int]]:
    """A tiny HTTP/1.1 keep-alive server answering every request 201 after `delay_s`."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                length = 0
                line = await reader.readline()
                if not line:
                    return
                while line not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    line = await reader.readline()
                await reader.readexactly(length)
                await asyncio.sleep(delay_s)
                writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


def test_open_loop_keeps_its_schedule_and_measures_from_it() -> None:
    async def scenario() -> tuple[dict[str, Any], list[int]]:
        server, port, connections = await _server(delay_s=0.01)
        spec = {"host": "127.0.0.1", "port": port, "token": "t", "accounts": ["a", "b", "c"],
                "rate": 200.0, "seconds": 1.0, "connections": 4}  # fmt: skip
        try:
            return await loadgen.run(spec), connections
        finally:
            server.close()

    result, connections = asyncio.run(scenario())
    assert len(connections) == 4  # one connection each, kept alive (no reconnect per request)
    assert result["requests"] == 200 and result["errors"] == 0
    # Every request waited at least the server's 10 ms; 4 connections serve 400/s, twice the
    # rate, so latency stays near it rather than growing with a queue.
    assert 10 <= result["p50_ms"] < 200
    assert sum(t["requests"] for t in result["timeline"]) == 200


def test_open_loop_counts_the_queue_a_slow_server_builds() -> None:
    """No coordinated omission: 100 requests/s into one connection that serves 20/s must show
    latencies growing with the schedule, not the 50 ms each request took once sent."""

    async def scenario() -> dict[str, Any]:
        server, port, _ = await _server(delay_s=0.05)
        spec = {"host": "127.0.0.1", "port": port, "token": "t", "accounts": ["a", "b"],
                "rate": 100.0, "seconds": 0.5, "connections": 1}  # fmt: skip
        try:
            return await loadgen.run(spec)
        finally:
            server.close()

    result = asyncio.run(scenario())
    assert result["requests"] == 50
    assert result["p99_ms"] > 1000  # the last request was scheduled at 0.5 s and served at ~2.5 s


def test_report_names_the_configuration_and_every_scenario() -> None:
    result = {
        "when": "2026-11-25T00:00:00+00:00", "cpus": 2, "workers": 2, "followers": "none",
        "server": {"fsync": "on", "synchronous_commit": "on"}, "pgbench_tps": 3500.0,
        "ratios": {"uniform_vs_pgbench": 1.1},
        "scenarios": [
            {"scenario": "uniform", "transfers_per_s": 3850.0, "p50_ms": 14.0, "p95_ms": 22.0, "p99_ms": 28.0,
             "p99_9_ms": 40.0, "errors": 0, "loadgen_cpu_share": 0.05, "service_rss_mb": 247.0, "settle_s": 0.0},
            {"scenario": "open", "transfers_per_s": 2695.0, "p50_ms": 15.0, "p95_ms": 21.0, "p99_ms": 26.0,
             "p99_9_ms": 30.0, "errors": 0, "loadgen_cpu_share": 0.08, "service_rss_mb": 247.0, "settle_s": 1.5,
             "projection_lag_events": 0, "projection_lag_ms": 0, "fraud_lag_events": 12.0,
             "timeline": [{"t": 0, "requests": 2695, "p50_ms": 15.0, "p99_ms": 26.0}, {"t": 1, "requests": 2695, "p50_ms": 14.0, "p99_ms": 25.0}]},
        ],
    }  # fmt: skip
    text = markdown(result, "keel bench http --workers 2 --followers none")
    assert "`keel bench http --workers 2 --followers none`" in text
    assert "none: no projections, fraud or expiry worker ran" in text
    rows = [line for line in text.splitlines() if line.startswith("| uniform") or line.startswith("| open")]
    assert rows[0].startswith("| uniform | 3,850 | 3,850 | 1.10× |") and "n/a / n/a | n/a | 0.0 |" in rows[0]
    assert rows[1].startswith("| open | 2,695 | 2,695 | 0.77× |") and "| 0 / 0 | 12.0 | 1.5 |" in rows[1]
    drawing = ET.fromstring(svg(result))  # well-formed, with a bar per scenario plus pgbench
    assert len([e for e in drawing.iter() if e.tag.endswith("rect")]) == 1 + 3
    assert len([e for e in drawing.iter() if e.tag.endswith("polyline")]) == 2


def test_open_rate_is_parsed_and_bounded() -> None:
    """`keel bench http --open-rate` pins the open loop's rate; a rate that is not a positive,
    bounded number is refused before anything starts."""
    import argparse

    import pytest

    from keel_tools.bench_http import add_arguments, bench_http

    parser = argparse.ArgumentParser()
    add_arguments(parser.add_subparsers())
    args = parser.parse_args(["http", "--open-rate", "1600"])
    assert args.open_rate == 1600.0
    assert parser.parse_args(["http"]).open_rate is None
    for bad in ("0", "-5", "nan", "1e9"):
        with pytest.raises(SystemExit, match="--open-rate"):
            bench_http(parser.parse_args(["http", "--open-rate", bad, "--pg", "postgresql://nobody@127.0.0.1:1/x"]))
