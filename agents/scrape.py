"""Scraping a model server's Prometheus endpoint on the node, reduced to what mlfleet keeps.

Why reduce on the node: a vLLM server exposes hundreds of series (one per
label set and bucket); the controller needs a handful of numbers per scrape
(requests, errors, one latency histogram, a few gauges), so only those
travel in the poll answer (``ServiceStatus.scrape``).

Two parts: :func:`reduce_text` is pure (text and a timestamp in, a
:class:`ScrapeSample` out), :func:`scrape` is the I/O (one HTTP/1.1 GET on
127.0.0.1 with ``Connection: close``, a bounded body, a deadline). Neither
raises: a failed scrape is a ``ScrapeSample`` with ``error`` set, in one
sentence, because a server that is down or mid-restart is an ordinary state
here, not an exception.

Parsing is prometheus_client's text parser (``parser.text_string_to_metric_families``).
Its shapes, which the reduce relies on: a counter's family name drops
``_total`` and its samples are named ``<name>_total``; a histogram's samples
are ``<name>_bucket`` (label ``le``), ``<name>_sum`` and ``<name>_count``.
An OpenMetrics text (``# EOF``, counters typed under the bare name) parses
too: its ``<name>_total`` samples then come as untyped singletons, which is
why samples are matched by *sample* name, not family name.

Rules (docs in DEPLOY.md's contract):

* requests = sum over label sets of ``<requests>_total`` (or a bare untyped
  ``<requests>``); None when the server has no such series at all.
* errors = the ``errors`` counter summed likewise when named; else the
  requests samples whose ``status`` or ``code`` label starts with "5"; None
  when neither a named counter nor any status/code label is there.
* latency: buckets summed over label sets per ``le``. Label sets with
  different bucket bounds are combined as step functions (each set's count
  at a bound is its count at its own largest bound not above it), so the
  result is always cumulative; ``+Inf`` is last (added from ``_count`` when a
  server leaves it out).
* gauges: the named ones, else all of the server's gauges (sorted by name,
  32 at most), skipping prometheus_client's ``*_created`` timestamps; a gauge
  with several label sets is their sum.
* A series (name + labels) that appears twice counts once (the first), as
  Prometheus itself refuses duplicates; NaN and infinite values are left out
  (an ``le="+Inf"`` bound is a bound, not a value).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Iterable

from prometheus_client.parser import text_string_to_metric_families

from mlfleet.core.base.models import MetricNames, ScrapeSample

MAX_BODY = 8 * 1024 * 1024  # a metrics page this large is not one mlfleet should parse every few seconds
MAX_GAUGES = 32
MAX_HEADER = 64 * 1024
_ERROR_LABELS = ("status", "code")


def _base(name: str) -> str:
    """A configured counter name without a ``_total`` the user may have written."""
    return name[:-6] if name.endswith("_total") else name


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class _Series:
    """Samples seen once per (name, labels); the first of duplicates wins."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def first(self, name: str, labels: dict[str, str]) -> bool:
        key = (name, tuple(sorted(labels.items())))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _combine_buckets(by_set: dict[tuple[tuple[str, str], ...], dict[float, float]]) -> list[tuple[float, float]]:
    """Cumulative (le, count) summed over label sets; every set counted as a step function of le."""
    bounds = sorted({le for buckets in by_set.values() for le in buckets})
    total = dict.fromkeys(bounds, 0.0)
    for buckets in by_set.values():
        own = sorted(buckets.items())
        i, running = 0, 0.0
        for bound in bounds:
            while i < len(own) and own[i][0] <= bound:
                running = max(running, own[i][1])  # a non-monotone exposition never makes the sum go down
                i += 1
            total[bound] += running
    out, best = [], 0.0
    for bound in bounds:
        best = max(best, total[bound])
        out.append((bound, best))
    return out


def reduce_families(families: Iterable, names: MetricNames, ts: float) -> ScrapeSample:
    """The reduce over parsed families (prometheus_client ``Metric`` objects); pure."""
    requests_base = _base(names.requests)
    request_names = {requests_base + "_total", requests_base}
    errors_base = _base(names.errors) if names.errors else None
    error_names = {errors_base + "_total", errors_base} if errors_base else set()
    lat = names.latency
    bucket_name, sum_name, count_name = lat + "_bucket", lat + "_sum", lat + "_count"
    wanted_gauges = set(names.gauges)
    series = _Series()

    requests: float | None = None
    status_errors: float | None = None
    named_errors: float | None = None
    buckets: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    lat_sum: float | None = None
    lat_count: float | None = None
    gauges: dict[str, float] = {}
    family_names: set[str] = set()
    created: list[str] = []

    for family in families:
        family_names.add(family.name)
        ftype = family.type
        if family.name in (requests_base, errors_base) and ftype == "counter":
            if family.name == requests_base and requests is None:
                requests = 0.0  # the family is there with no series yet: nothing counted so far
            if family.name == errors_base and named_errors is None:
                named_errors = 0.0
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name in request_names and ftype in ("counter", "untyped", "unknown"):
                if not series.first(name, labels) or not _finite(value):
                    continue
                requests = (requests or 0.0) + value
                if any(k in labels for k in _ERROR_LABELS):
                    status_errors = status_errors or 0.0
                    if any(str(labels.get(k, "")).startswith("5") for k in _ERROR_LABELS):
                        status_errors += value
            elif name in error_names and ftype in ("counter", "untyped", "unknown"):
                if series.first(name, labels) and _finite(value):
                    named_errors = (named_errors or 0.0) + value
            elif name == bucket_name:
                if not series.first(name, labels) or not _finite(value):
                    continue
                try:
                    le = float(labels.get("le", ""))
                except ValueError:
                    continue
                if math.isnan(le):
                    continue
                key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                buckets.setdefault(key, {})[le] = value
            elif name == sum_name:
                if series.first(name, labels) and _finite(value):
                    lat_sum = (lat_sum or 0.0) + value
            elif name == count_name:
                if series.first(name, labels) and _finite(value):
                    lat_count = (lat_count or 0.0) + value
            elif (name in wanted_gauges if wanted_gauges else ftype == "gauge"):
                if not series.first(name, labels) or not _finite(value):
                    continue
                if not wanted_gauges and name.endswith("_created"):
                    created.append(name)
                gauges[name] = gauges.get(name, 0.0) + value

    for name in created:  # prometheus_client's creation timestamps of a counter or histogram: not a gauge
        if name[:-8] in family_names or name[:-8] + "_total" in family_names:
            gauges.pop(name, None)
    if not wanted_gauges and len(gauges) > MAX_GAUGES:
        gauges = {k: gauges[k] for k in sorted(gauges)[:MAX_GAUGES]}
    elif wanted_gauges:
        gauges = {k: gauges[k] for k in names.gauges[:MAX_GAUGES] if k in gauges}
    latency = _combine_buckets(buckets) if buckets else []
    if latency and not math.isinf(latency[-1][0]) and lat_count is not None:
        latency.append((math.inf, max(lat_count, latency[-1][1])))
    return ScrapeSample(ts=ts, requests=requests,
                        errors=named_errors if errors_base else status_errors,
                        latency_buckets=latency, latency_sum=lat_sum, latency_count=lat_count, gauges=gauges)


def reduce_text(text: str, names: MetricNames, ts: float) -> ScrapeSample:
    """Parse a metrics page and reduce it; a page that does not parse is a sample with ``error`` set."""
    try:
        return reduce_families(text_string_to_metric_families(text), names, ts)
    except Exception as exc:  # noqa: BLE001 - the parser raises ValueError, IndexError...; all mean "not this format"
        detail = " ".join(str(exc).split())[:200]
        return ScrapeSample(ts=ts, error=f"the metrics page is not in the Prometheus text format ({detail or type(exc).__name__})")


class _Refused(Exception):
    """A scrape that failed for a reason worth one sentence."""


async def http_get(port: int, path: str, timeout: float, max_body: int = MAX_BODY) -> bytes:
    """The body of ``GET path`` on 127.0.0.1:port (HTTP/1.1, Connection: close); raises _Refused or OSError."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=MAX_HEADER)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: mlfleet-agent\r\n"
                     "Accept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\nAccept-Encoding: identity\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _Refused(f"its headers are longer than {MAX_HEADER // 1024} KiB") from None
        except asyncio.IncompleteReadError:
            raise _Refused("it closed the connection before answering") from None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise _Refused(f"it did not answer in HTTP ({lines[0][:60]!r})")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if status != 200:
            raise _Refused(f"it answered HTTP {status}")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await _read_chunked(reader, max_body)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise _Refused(f"its Content-Length {length[:30]!r} is not a number")
            if int(length) > max_body:
                raise _Refused(f"its page is {int(length)} bytes, over the {max_body // 1024**2} MiB limit")
            try:
                return await reader.readexactly(int(length))
            except asyncio.IncompleteReadError:
                raise _Refused("it closed the connection in the middle of the page") from None
        body = await reader.read(max_body + 1)
        while len(body) <= max_body:
            more = await reader.read(max_body + 1 - len(body))
            if not more:
                break
            body += more
        if len(body) > max_body:
            raise _Refused(f"its page is over the {max_body // 1024**2} MiB limit")
        return body
    finally:
        writer.close()


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    body = bytearray()
    while True:
        try:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            raise _Refused("its chunked page is malformed") from None
        if size == 0:
            return bytes(body)
        if len(body) + size > max_body:
            raise _Refused(f"its page is over the {max_body // 1024**2} MiB limit")
        try:
            body += await reader.readexactly(size + 2)
        except asyncio.IncompleteReadError:
            raise _Refused("it closed the connection in the middle of the page") from None
        del body[-2:]


async def scrape(port: int, names: MetricNames, timeout: float) -> ScrapeSample:
    """One scrape of ``names.path`` on 127.0.0.1:port, reduced; never raises (an error is in the sample)."""
    ts = time.time()
    where = f"the metrics endpoint http://127.0.0.1:{port}{names.path}"
    try:
        body = await asyncio.wait_for(http_get(port, names.path, timeout), timeout)
    except asyncio.TimeoutError:
        return ScrapeSample(ts=ts, error=f"{where} did not answer within {timeout:g} s")
    except _Refused as exc:
        return ScrapeSample(ts=ts, error=f"{where} was not scraped: {exc}")
    except ConnectionRefusedError:
        return ScrapeSample(ts=ts, error=f"{where} refused the connection (is the server listening?)")
    except OSError as exc:
        return ScrapeSample(ts=ts, error=f"{where} could not be reached: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - a scrape must never take the probe loop down
        return ScrapeSample(ts=ts, error=f"{where} was not scraped: {type(exc).__name__}: {exc}")
    text = body.decode("utf-8", errors="replace")
    try:  # a large page is parsed off the event loop: the agent's other requests must not wait for it
        return await asyncio.to_thread(reduce_text, text, names, ts)
    except Exception as exc:  # noqa: BLE001
        return ScrapeSample(ts=ts, error=f"{where} was not scraped: {type(exc).__name__}: {exc}")
