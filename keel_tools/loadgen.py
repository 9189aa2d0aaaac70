"""An open-loop HTTP load generator for `keel bench http` (scenario 5: latency at a fixed rate).

Requests are *scheduled* at a constant rate and latency is measured from each request's
scheduled time, not from when a connection became free, so a slow server cannot hide its queue
(no coordinated omission). Raw HTTP/1.1 over asyncio streams with keep-alive: cheap enough to
share two cores with the server it measures. Run as `python -m keel_tools.loadgen SPEC.json`; prints
one JSON object.
"""
from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from typing import Any

REQUESTS_MAX = 2_000_000


async def _connection(stream: tuple[Any, Any], queue: asyncio.Queue[Any], latencies: list[float], errors: list[int], spec: dict[str, Any]) -> None:
    host, port = spec["host"], spec["port"]
    reader, writer = stream
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            scheduled, request = item
            try:
                writer.write(request)
                status_line = await reader.readline()
                status = int(status_line.split()[1])
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                errors.append(599)
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            latency = time.perf_counter() - scheduled
            latencies.append(latency)
            spec["_per_second"].setdefault(int(scheduled - spec["_start"]), []).append(latency)
            if status >= 300:
                errors.append(status)
    finally:
        writer.close()


def _request(spec: dict[str, Any], rng: random.Random) -> bytes:
    a, b = rng.sample(spec["accounts"], 2)
    body = json.dumps({"debit_account_id": a, "credit_account_id": b, "amount": rng.randint(1, 100), "currency": "USD"}).encode()
    return (
        f"POST /v1/transfers HTTP/1.1\r\nHost: {spec['host']}\r\nAuthorization: Bearer {spec['token']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    rate = float(spec["rate"])
    seconds = float(spec["seconds"])
    total = min(int(rate * seconds), REQUESTS_MAX)
    rng = random.Random(spec.get("seed", 1))
    queue: asyncio.Queue[Any] = asyncio.Queue()
    latencies: list[float] = []
    errors: list[int] = []
    spec["_per_second"] = {}
    # Connected before the clock starts: the schedule measures the server, not our connects.
    streams = await asyncio.gather(*(asyncio.open_connection(spec["host"], spec["port"]) for _ in range(spec["connections"])))
    spec["_start"] = time.perf_counter() + 0.05
    conns = [asyncio.create_task(_connection(stream, queue, latencies, errors, spec)) for stream in streams]
    start = spec["_start"]
    for k in range(total):
        scheduled = start + k / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((scheduled, _request(spec, rng)))
    for _ in conns:
        queue.put_nowait(None)
    await asyncio.gather(*conns)
    elapsed = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()
    timeline = []
    for second, values in sorted(spec["_per_second"].items()):
        values.sort()
        timeline.append({
            "t": second, "requests": len(values),
            "p50_ms": round(values[len(values) // 2] * 1000, 2),
            "p99_ms": round(values[min(len(values) - 1, int(0.99 * len(values)))] * 1000, 2),
        })  # fmt: skip

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 2) if latencies else 0.0

    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "rate_target": rate,
        "rate_achieved": round(len(latencies) / elapsed, 1),
        "errors": len(errors),
        "error_statuses": sorted(set(errors)),
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "p99_9_ms": pct(99.9),
        "loadgen_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "timeline": timeline,
    }  # fmt: skip


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:  # the faster loop when installed (a dependency on Linux): less of the CPU the server needs
        import uvloop

        result = uvloop.run(run(spec))
    except ImportError:
        result = asyncio.run(run(spec))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
