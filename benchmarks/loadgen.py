"""A constant-rate HTTP load generator: N requests a second to host:port for D seconds, one TCP connection each.

    .venv/bin/python benchmarks/loadgen.py --port 8080 --rate 200 --duration 10 \\
        --body '{"rows": [[5.1, 3.5, 1.4, 0.2]]}'

Open loop: request ``i`` starts at ``i / rate`` seconds whatever happened to
the ones before, so a slow or dying server shows as failures and latency, not
as a generator that quietly slowed down (the rollout benchmark counts what a
client loses while replicas are replaced). Every request opens its own
connection (``Connection: close``), as a client through ``mlfleet deploy
open`` lands on the next replica per connection. A request is ok when the
status is 2xx and the whole body (its Content-Length) arrived within
``--timeout``; anything else is failed, by reason (``status 500``,
``refused``, ``reset``, ``timeout``...). Prints one JSON summary: counts,
latency percentiles of the ok requests (ms), and a per-second timeline.

Import ``run_load`` to drive it from a test or another benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    started: float  # seconds after the run began
    lag: float  # seconds it started after its slot (a generator that cannot keep up shows here)
    latency: float  # seconds
    ok: bool
    reason: str  # "ok", "status 503", "refused", "reset", "timeout", "bad response"


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending list; None when it is empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(outcomes: list[Outcome], *, target: str, rate: float, duration: float, wall: float) -> dict:
    """The JSON summary of a run (pure: the outcomes in, numbers out)."""
    ok = sorted(round(o.latency * 1000, 3) for o in outcomes if o.ok)
    lags = sorted(o.lag * 1000 for o in outcomes)
    reasons = Counter(o.reason for o in outcomes if not o.ok)
    seconds = max(1, math.ceil(duration))
    timeline = [{"second": s, "ok": 0, "failed": 0} for s in range(seconds)]
    for o in outcomes:
        slot = timeline[min(int(o.started), seconds - 1)]
        slot["ok" if o.ok else "failed"] += 1
    return {
        "target": target,
        "rate": rate,
        "duration_s": duration,
        "sent": len(outcomes),
        "ok": len(ok),
        "failed": len(outcomes) - len(ok),
        "failures": dict(sorted(reasons.items())),
        "schedule_lag_ms_p99": round(percentile(lags, 99), 3) if lags else None,
        "wall_s": round(wall, 3),
        "latency_ms": {
            "p50": percentile(ok, 50), "p90": percentile(ok, 90), "p95": percentile(ok, 95),
            "p99": percentile(ok, 99), "max": ok[-1] if ok else None,
            "mean": round(sum(ok) / len(ok), 3) if ok else None,
        },
        "timeline": timeline,
    }


def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


async def one_request(host: str, port: int, payload: bytes, timeout: float) -> tuple[bool, str]:
    """Send one request on a new connection and read the whole answer: (ok, reason)."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(payload)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                return False, "bad response"
            status = int(parts[1])
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length is None:
                await reader.read()  # until the server closes
            else:
                await reader.readexactly(length)
            return (200 <= status < 300), ("ok" if 200 <= status < 300 else f"status {status}")
    except TimeoutError:
        return False, "timeout"
    except ConnectionRefusedError:
        return False, "refused"
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
        return False, "reset"
    except (OSError, ValueError) as exc:
        return False, type(exc).__name__
    finally:
        if writer is not None:
            writer.close()


async def run_load(host: str, port: int, *, rate: float, duration: float, body: bytes | str,
                   path: str = "/predict", timeout: float = 5.0) -> dict:
    """Send ``rate`` requests a second for ``duration`` seconds; return the summary (see :func:`summarize`)."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    payload = request_bytes(host, port, path, body.encode() if isinstance(body, str) else body)
    total = int(rate * duration)
    loop = asyncio.get_running_loop()
    began = loop.time()

    async def timed(i: int) -> Outcome:
        at = began + i / rate
        await asyncio.sleep(max(0.0, at - loop.time()))
        start = loop.time()
        ok, reason = await one_request(host, port, payload, timeout)
        return Outcome(started=start - began, lag=max(0.0, start - at), latency=loop.time() - start, ok=ok,
                       reason=reason)

    wall = time.monotonic()
    outcomes = await asyncio.gather(*(timed(i) for i in range(total)))
    return summarize(list(outcomes), target=f"http://{host}:{port}{path}", rate=rate, duration=duration,
                     wall=time.monotonic() - wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--rate", type=float, default=50.0, help="requests a second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a request may take")
    parser.add_argument("--body", default='{"rows": [[5.1, 3.5, 1.4, 0.2]]}', help="the JSON body sent")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        print("loadgen: --rate and --duration must be positive", file=sys.stderr)
        return 2
    summary = asyncio.run(run_load(args.host, args.port, rate=args.rate, duration=args.duration,
                                   body=args.body, path=args.path, timeout=args.timeout))
    print(json.dumps(summary, indent=2))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
