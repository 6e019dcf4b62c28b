"""The agent's scrape of a model server's /metrics: what it keeps of real and hostile pages.

The reduce is pure and tested on text; the scrape itself against real HTTP
servers on loopback (prometheus_client's own exposition, a server that never
answers, one whose page is far too large).
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mlfleet.agents.scrape import MAX_BODY, MAX_GAUGES, reduce_text, scrape
from mlfleet.core.base.models import MetricNames

NAMES = MetricNames()
VLLM = MetricNames(requests="vllm:request_success", latency="vllm:e2e_request_latency_seconds",
                   gauges=["vllm:num_requests_running", "vllm:gpu_cache_usage_perc"])


def test_a_fastapi_style_page_gives_requests_errors_latency_and_gauges() -> None:
    text = """\
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="POST",status="200"} 90.0
http_requests_total{method="POST",status="503"} 7.0
http_requests_total{method="GET",status="500"} 3.0
http_requests_total{method="GET",status="404"} 5.0
# TYPE http_requests_created gauge
http_requests_created{method="POST",status="200"} 1.7e9
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{route="/a",le="0.1"} 10
http_request_duration_seconds_bucket{route="/a",le="1.0"} 20
http_request_duration_seconds_bucket{route="/a",le="+Inf"} 25
http_request_duration_seconds_count{route="/a"} 25
http_request_duration_seconds_sum{route="/a"} 12.5
http_request_duration_seconds_bucket{route="/b",le="0.1"} 1
http_request_duration_seconds_bucket{route="/b",le="1.0"} 2
http_request_duration_seconds_bucket{route="/b",le="+Inf"} 3
http_request_duration_seconds_count{route="/b"} 3
http_request_duration_seconds_sum{route="/b"} 2.5
# TYPE inflight gauge
inflight{worker="1"} 2
inflight{worker="2"} 3
"""
    got = reduce_text(text, NAMES, ts=100.0)
    assert got.error == ""
    assert got.ts == 100.0
    assert got.requests == 105.0
    assert got.errors == 10.0  # 503 and 500, not 404
    assert got.latency_buckets == [(0.1, 11.0), (1.0, 22.0), (math.inf, 28.0)]
    assert got.latency_sum == 15.0 and got.latency_count == 28.0
    assert got.gauges == {"inflight": 5.0}  # summed over workers; the _created timestamp is no gauge


def test_vllm_names_with_colons_and_an_errors_counter_of_its_own() -> None:
    text = """\
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="m"} 40
vllm:request_success_total{finished_reason="length",model_name="m"} 2
# TYPE vllm:request_failure_total counter
vllm:request_failure_total{model_name="m"} 4
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 6
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 9
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="m"} 5
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 42
vllm:e2e_request_latency_seconds_sum{model_name="m"} 80.5
vllm:e2e_request_latency_seconds_count{model_name="m"} 42
"""
    names = MetricNames(requests="vllm:request_success", errors="vllm:request_failure_total",
                        latency="vllm:e2e_request_latency_seconds", gauges=VLLM.gauges)
    got = reduce_text(text, names, ts=1.0)
    assert got.requests == 42.0 and got.errors == 4.0
    assert got.latency_buckets == [(0.3, 5.0), (math.inf, 42.0)]
    assert got.gauges == {"vllm:num_requests_running": 6.0, "vllm:gpu_cache_usage_perc": 0.25}  # only the named


def test_openmetrics_text_with_eof_and_created_series() -> None:
    text = """\
# TYPE http_requests counter
# HELP http_requests Requests.
http_requests_total{status="200"} 8.0
http_requests_created{status="200"} 1.7e9
http_requests_total{status="502"} 2.0
# TYPE http_request_duration_seconds histogram
# UNIT http_request_duration_seconds seconds
http_request_duration_seconds_bucket{le="0.5"} 4.0 # {trace_id="abc"} 0.3 1.7e9
http_request_duration_seconds_bucket{le="+Inf"} 10.0
http_request_duration_seconds_count 10.0
http_request_duration_seconds_sum 6.0
http_request_duration_seconds_created 1.7e9
# EOF
"""
    got = reduce_text(text, NAMES, ts=1.0)
    assert got.error == ""
    assert (got.requests, got.errors) == (10.0, 2.0)
    assert got.latency_buckets == [(0.5, 4.0), (math.inf, 10.0)]


def test_nan_and_infinite_values_are_left_out_and_duplicate_series_count_once() -> None:
    text = """\
# TYPE http_requests_total counter
http_requests_total{status="200"} 5
http_requests_total{status="200"} 5
http_requests_total{status="201"} NaN
http_requests_total{status="202"} +Inf
# TYPE temperature gauge
temperature NaN
# TYPE load gauge
load -Inf
# TYPE ok gauge
ok 1
"""
    got = reduce_text(text, NAMES, ts=1.0)
    assert got.requests == 5.0
    assert got.errors == 0.0  # status labels are there and none is 5xx
    assert got.gauges == {"ok": 1.0}


def test_a_server_without_those_series_gives_none_not_zero() -> None:
    got = reduce_text("# TYPE up gauge\nup 1\n", NAMES, ts=1.0)
    assert got.error == ""
    assert got.requests is None and got.errors is None and got.latency_buckets == [] and got.latency_count is None
    unlabelled = reduce_text("# TYPE http_requests_total counter\nhttp_requests_total 3\n", NAMES, ts=1.0)
    assert unlabelled.requests == 3.0 and unlabelled.errors is None  # no status label: errors are unknown


def test_label_sets_with_different_bounds_still_give_a_cumulative_histogram() -> None:
    text = """\
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{a="1",le="0.1"} 4
http_request_duration_seconds_bucket{a="1",le="+Inf"} 10
http_request_duration_seconds_count{a="1"} 10
http_request_duration_seconds_bucket{a="2",le="0.5"} 1
http_request_duration_seconds_bucket{a="2",le="+Inf"} 2
http_request_duration_seconds_count{a="2"} 2
"""
    got = reduce_text(text, NAMES, ts=1.0)
    assert got.latency_buckets == [(0.1, 4.0), (0.5, 5.0), (math.inf, 12.0)]
    counts = [c for _, c in got.latency_buckets]
    assert counts == sorted(counts)


def test_ten_thousand_series_are_reduced_and_gauges_capped() -> None:
    lines = ["# TYPE http_requests_total counter"]
    lines += [f'http_requests_total{{path="/p{i}",status="{200 if i % 10 else 500}"}} 1' for i in range(10_000)]
    for g in range(100):
        lines += [f"# TYPE g{g:03d} gauge", f"g{g:03d} {g}"]
    got = reduce_text("\n".join(lines) + "\n", NAMES, ts=1.0)
    assert got.requests == 10_000.0 and got.errors == 1_000.0
    assert len(got.gauges) == MAX_GAUGES and "g000" in got.gauges and "g099" not in got.gauges


def test_a_page_that_is_not_prometheus_text_is_an_error_sentence() -> None:
    got = reduce_text('<html>{"oops": true}</html>\n', NAMES, ts=3.0)
    assert got.error.startswith("the metrics page is not in the Prometheus text format")
    assert got.ts == 3.0 and got.requests is None


# ----------------------------------------------------------------- real servers

class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def model_server() -> Iterator[tuple[_Server, Counter, Histogram]]:
    """A server exposing prometheus_client's own generate_latest output on /metrics."""
    registry = CollectorRegistry()
    requests = Counter("http_requests", "Requests", ["status"], registry=registry)
    latency = Histogram("http_request_duration_seconds", "Latency", registry=registry)
    Gauge("inflight", "In flight", registry=registry).set(2)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = _Server(Handler)
    try:
        yield server, requests, latency
    finally:
        server.close()


def test_scrape_of_a_real_prometheus_client_server(model_server) -> None:
    server, requests, latency = model_server
    for _ in range(7):
        requests.labels("200").inc()
    requests.labels("500").inc(3)
    for v in (0.003, 0.2, 0.2, 4.0):
        latency.observe(v)
    got = asyncio.run(scrape(server.port, NAMES, timeout=5))
    assert got.error == ""
    assert got.requests == 10.0 and got.errors == 3.0
    assert got.latency_count == 4.0 and got.latency_sum == pytest.approx(4.403)
    assert got.latency_buckets[-1] == (math.inf, 4.0)
    assert dict(got.latency_buckets)[0.25] == 3.0
    assert got.gauges["inflight"] == 2.0
    assert not any(name.endswith("_created") for name in got.gauges)


def test_a_wrong_path_or_a_closed_port_is_an_error_sentence(model_server) -> None:
    server, _, _ = model_server
    wrong = asyncio.run(scrape(server.port, MetricNames(path="/nope"), timeout=5))
    assert wrong.error == f"the metrics endpoint http://127.0.0.1:{server.port}/nope was not scraped: it answered HTTP 404"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    closed = asyncio.run(scrape(free, NAMES, timeout=5))
    assert "refused the connection" in closed.error and closed.requests is None


def test_a_server_that_never_answers_is_given_up_within_the_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (the kernel does) and never says a word
    try:
        started = time.monotonic()
        got = asyncio.run(scrape(listener.getsockname()[1], NAMES, timeout=0.5))
        assert time.monotonic() - started < 5  # bounded; generous for a loaded machine
        assert got.error.endswith("did not answer within 0.5 s")
    finally:
        listener.close()


@pytest.mark.parametrize("declared", [True, False])
def test_a_huge_page_is_refused_not_read(declared: bool) -> None:
    sent = {"bytes": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            if declared:
                self.send_header("Content-Length", str(64 * 1024**2))
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            line = b"# TYPE x gauge\n" + b"x 1\n" * 16384
            try:
                while sent["bytes"] < 64 * 1024**2:
                    self.wfile.write(line)
                    sent["bytes"] += len(line)
            except OSError:
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = _Server(Handler)
    try:
        got = asyncio.run(scrape(server.port, NAMES, timeout=20))
        assert "over the 8 MiB limit" in got.error
        assert got.requests is None and got.gauges == {}
    finally:
        server.close()
    assert MAX_BODY == 8 * 1024**2


def test_a_chunked_page_is_read_whole() -> None:
    registry = CollectorRegistry()
    Counter("http_requests", "r", ["status"], registry=registry).labels("200").inc(4)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7):
                piece = body[i:i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args: object) -> None:
            pass

    server = _Server(Handler)
    try:
        got = asyncio.run(scrape(server.port, NAMES, timeout=5))
        assert got.error == "" and got.requests == 4.0
    finally:
        server.close()
