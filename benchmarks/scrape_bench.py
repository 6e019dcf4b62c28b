"""CPU of the agent's scrapes: N model servers scraped at 1 Hz, as the probe loop does.

Each server is a real ThreadingHTTPServer (in a child process of its own, so
its CPU is not counted) exposing prometheus_client's generate_latest output:
a FastAPI-like page (requests by method/route/status, a latency histogram
per route, a few gauges) of about ``--series`` series. The agent side runs
``agents.scrape.scrape`` for every server each second in one asyncio loop and
measures its own process CPU (user + system, threads included) over the run.

    python benchmarks/scrape_bench.py --replicas 10 --seconds 20 --routes 4
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import resource
import time

from mlfleet.agents.scrape import reduce_text, scrape
from mlfleet.core.base.models import MetricNames


def _serve(port_queue: "multiprocessing.Queue[int]", routes: int) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    requests = Counter("http_requests", "Requests", ["method", "route", "status"], registry=registry)
    latency = Histogram("http_request_duration_seconds", "Latency", ["route"], registry=registry)
    for g in ("inflight", "queue_depth", "model_loaded"):
        Gauge(g, g, registry=registry).set(1)
    for r in range(routes):
        for status in ("200", "400", "500", "503"):
            requests.labels("POST", f"/r{r}", status).inc(r + 1)
        for v in (0.01, 0.1, 1.0):
            latency.labels(f"/r{r}").observe(v)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run(ports: list[int], seconds: float, names: MetricNames) -> tuple[int, int, float]:
    ok = failed = 0
    started_cpu, started = _cpu(), time.monotonic()
    next_at = started
    while time.monotonic() - started < seconds:
        samples = await asyncio.gather(*(scrape(p, names, timeout=2.0) for p in ports))
        ok += sum(1 for s in samples if not s.error)
        failed += sum(1 for s in samples if s.error)
        next_at += 1.0
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return ok, failed, _cpu() - started_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--routes", type=int, default=4, help="routes per server (each: 4 counters, 17 buckets)")
    args = parser.parse_args()
    names = MetricNames()
    ctx = multiprocessing.get_context("spawn")
    queue: "multiprocessing.Queue[int]" = ctx.Queue()
    servers = [ctx.Process(target=_serve, args=(queue, args.routes), daemon=True) for _ in range(args.replicas)]
    for proc in servers:
        proc.start()
    ports = [queue.get(timeout=60) for _ in servers]
    try:
        import urllib.request

        page = urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics").read().decode()
        series = sum(1 for line in page.splitlines() if line and not line.startswith("#"))
        t0 = _cpu()
        for _ in range(100):
            reduce_text(page, names, 0.0)
        parse_ms = (_cpu() - t0) * 10
        ok, failed, cpu = asyncio.run(_run(ports, args.seconds, names))
    finally:
        for proc in servers:
            proc.kill()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| replicas | series/page | page bytes | scrapes ok | failed | seconds | agent CPU (s) | CPU % of one core "
          "| reduce of one page (ms CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.replicas} | {series} | {len(page)} | {ok} | {failed} | {args.seconds:g} | {cpu:.3f} "
          f"| {100 * cpu / args.seconds:.2f} | {parse_ms:.2f} |")


if __name__ == "__main__":
    main()
