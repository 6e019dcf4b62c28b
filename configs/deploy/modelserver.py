"""The HTTP half that both example model servers share: routes, Prometheus metrics, capture, a graceful stop.

An example's ``serve.py`` only says how to load its model file and how to
turn a request body into a prediction; everything a replica of an mlfleet
deployment needs from a server is here, once:

* ``GET /health``: 200 once the model is loaded (503 while stopping), the
  agent's liveness probe;
* ``POST /predict``: a real prediction, also the deployment's deep probe;
* ``GET /metrics``: the Prometheus text format, for the agent's scrapes:
  ``http_requests_total{route,status}`` (every route, so probe failures are
  errors too), ``http_request_duration_seconds`` (predictions only: probes
  and scrapes answered in microseconds would drown the percentiles that
  matter), ``inflight_requests``, ``model_loaded_version`` and
  ``model_predictions_total{label}``;
* each prediction's inputs and outputs go to ``mlfleet.serve.capture`` (for
  drift checks), when that module is importable; except the agent's deep
  probes (``User-Agent: mlfleet-agent``): the same row every few seconds is
  not traffic, and would be most of an idle deployment's captures;
* SIGTERM (or SIGINT): stop accepting, answer every request already
  accepted, exit 0. Replicas are cancelled with SIGTERM after a drain, so
  a rollout loses no request that reached the server;
* ``--broken`` / ``MLFLEET_EXAMPLE_BROKEN=1`` / a model file marked broken:
  ``/predict`` answers 500 while ``/health`` stays 200, the case a liveness
  probe alone cannot see (the rollback story in docs/deployments.md);
* one log line at start and one at stop, none per request.

Only the standard library and ``prometheus_client`` are used (the agent's own
Python has both), HTTP/1.0 style: one request per connection, so a client
(``mlfleet deploy open``) spreads requests over replicas connection by
connection, and a stop never waits on an idle keep-alive connection.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

try:  # lands with the deployments capability; a server without it still serves
    from mlfleet import serve
except ImportError:
    serve = None

MAX_BODY = 1 << 20  # bytes of a /predict body; more is 413
BROKEN_ENV = "MLFLEET_EXAMPLE_BROKEN"
DELAY_ENV = "MLFLEET_EXAMPLE_DELAY"
PROBE_AGENT = "mlfleet-agent"  # the User-Agent of the agent's health probes (agents/httpprobe.py): not captured
ROUTES = ("/health", "/predict", "/metrics")  # the route label's values, plus "other": hostile paths add no series
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BadRequest(ValueError):
    """A request body the model cannot answer: 400 with this sentence."""


@dataclass(frozen=True)
class Prediction:
    """What ``predict`` made of one request body."""

    inputs: list[Any]  # for capture: one dict of named fields per row, so drift sees columns
    outputs: list[Any]  # for capture: one per row
    answer: dict[str, Any]  # the JSON response body
    labels: list[str] = field(default_factory=list)  # predicted class per row, counted in model_predictions_total


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to answer: its name, a description for the start line, and its predict function."""

    name: str
    describe: str
    predict: Callable[[Any], Prediction]  # raises BadRequest for a body it cannot use
    broken: bool = False  # the model file says so (trained with --broken)


class Metrics:
    """The server's Prometheus families, in a registry of its own (only what the server means to say)."""

    def __init__(self, version: int) -> None:
        # No ``*_created`` samples: they are timestamps inside the counter's family, and a scraper
        # summing the family's samples would count them as billions of requests.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=self.registry)
        self.duration = Histogram("http_request_duration_seconds", "Time to answer a prediction request",
                                  ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inflight = Gauge("inflight_requests", "Prediction requests being answered now", registry=self.registry)
        self.version = Gauge("model_loaded_version", "Registry version of the loaded model (0: not from a registry)",
                             registry=self.registry)
        self.predictions = Counter("model_predictions", "Rows predicted, by predicted label", ["label"],
                                   registry=self.registry)
        self.version.set(version)
        self.loaded_version = version

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class App:
    """What the request handlers share: the model, the metrics, the switches and the capture hook."""

    def __init__(self, model: LoadedModel, metrics: Metrics, *, broken: bool, delay: float) -> None:
        self.model = model
        self.metrics = metrics
        self.broken = broken or model.broken
        self.delay = delay
        self.stopping = threading.Event()
        self._capture_failed = False

    def capture(self, prediction: Prediction) -> None:
        """Hand inputs and outputs to ``mlfleet.serve.capture``; a capture problem never fails a prediction."""
        if serve is None:
            return
        try:
            serve.capture(prediction.inputs, prediction.outputs)
        except Exception as exc:  # noqa: BLE001 - said once, then the server keeps serving
            if not self._capture_failed:
                self._capture_failed = True
                print(f"capture failed ({type(exc).__name__}: {exc}); predictions go on without it",
                      file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    server_version = "mlfleet-example/1"
    app: App  # set on a subclass per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Silent: a replica's log is for its start and stop, not for every probe."""

    @property
    def route(self) -> str:
        """The path without its query string (``/health?probe=1`` is /health)."""
        return self.path.split("?", 1)[0]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.route == "/health":
            self._health()
        elif self.route == "/metrics":
            self._send("/metrics", 200, self.app.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif self.route == "/predict":
            self._json(self._route(), 405, {"error": "POST a JSON body to /predict"})
        else:
            self._json(self._route(), 404, {"error": f"no route {self.path[:200]}; try /predict, /health, /metrics"})

    def do_POST(self) -> None:  # noqa: N802
        if self.route != "/predict":
            self._json(self._route(), 404, {"error": "POST to /predict"})
            return
        metrics = self.app.metrics
        metrics.inflight.inc()
        started = time.perf_counter()
        try:
            status, answer = self._predict()
        finally:
            metrics.inflight.dec()
            metrics.duration.labels("/predict").observe(time.perf_counter() - started)
        self._json("/predict", status, answer)

    def _predict(self) -> tuple[int, dict[str, Any]]:
        app = self.app
        body = self._body()
        if isinstance(body, tuple):
            return body
        if app.delay:
            time.sleep(app.delay)
        if app.broken:
            return 500, {"error": f"this server is broken on purpose ({BROKEN_ENV}, --broken or a model "
                                  "trained with --broken)"}
        try:
            prediction = app.model.predict(body)
        except BadRequest as exc:
            return 400, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a 500 with the reason, and one line in the log
            print(f"predict failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 500, {"error": f"prediction failed: {type(exc).__name__}"}
        for label in prediction.labels:
            app.metrics.predictions.labels(label).inc()
        if self.headers.get("User-Agent") != PROBE_AGENT:
            app.capture(prediction)
        return 200, prediction.answer

    def _body(self) -> Any:
        """The request's JSON body, or (status, answer) saying why there is none."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return 411, {"error": "send the JSON body with a Content-Length"}
        if int(length) > MAX_BODY:
            return 413, {"error": f"the body is {length} bytes; at most {MAX_BODY} are read"}
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return 400, {"error": f"the body is not JSON: {exc}"}

    def _health(self) -> None:
        if self.app.stopping.is_set():
            self._json("/health", 503, {"status": "stopping"})
        else:
            self._json("/health", 200, {"status": "ok", "model": self.app.model.name,
                                        "version": self.app.metrics.loaded_version})

    def _route(self) -> str:
        return self.route if self.route in ROUTES else "other"

    def _json(self, route: str, status: int, answer: dict[str, Any]) -> None:
        self._send(route, status, json.dumps(answer).encode(), "application/json")

    def _send(self, route: str, status: int, data: bytes, content_type: str) -> None:
        # Counted before the answer leaves: a client that reads /metrics right after its answer sees it counted.
        self.app.metrics.requests.labels(route, str(status)).inc()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away; the request still counts
            pass


class Server(ThreadingHTTPServer):
    """A thread per request, a real backlog, and a close that waits for the requests it accepted."""

    request_queue_size = 128  # socketserver's 5 drops a burst of connections (the client retries a second later)
    daemon_threads = False  # server_close() joins every request thread: in-flight requests finish
    block_on_close = True


def model_version() -> int:
    """The registry version the agent says this replica serves (MLFLEET_MODEL_VERSION), 0 outside a deployment."""
    text = os.environ.get("MLFLEET_MODEL_VERSION", "")
    return int(text) if text.isdigit() else 0


def parse_args(argv: list[str] | None, name: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"{name}/serve.py", description=f"Serve the {name} example model.")
    parser.add_argument("--model", required=True, type=Path, help="the model file (mlfleet passes {model_path})")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MLFLEET_PORT", "8080")),
                        help="TCP port (0: any free one, printed at start)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (the agent probes 127.0.0.1)")
    parser.add_argument("--broken", action="store_true", default=os.environ.get(BROKEN_ENV, "") not in ("", "0"),
                        help=f"answer /predict with 500 while /health stays 200 (also {BROKEN_ENV}=1)")
    parser.add_argument("--delay", type=float, default=float(os.environ.get(DELAY_ENV, "0") or 0),
                        help=f"seconds each prediction takes on top (a heavier model; also {DELAY_ENV})")
    return parser.parse_args(argv)


def main(name: str, load: Callable[[Path], LoadedModel], argv: list[str] | None = None) -> int:
    """Load the model, serve until SIGTERM/SIGINT, answer what was accepted, return 0."""
    args = parse_args(argv, name)
    stop_asked = threading.Event()
    server: Server | None = None
    app: App | None = None

    def on_signal(signum: int, frame: Any) -> None:
        if stop_asked.is_set():
            return
        stop_asked.set()
        if app is not None:
            app.stopping.set()  # /health says 503 from now on
        if server is not None:
            # shutdown() waits for serve_forever, which runs in this (the main) thread: ask from another one.
            threading.Thread(target=server.shutdown, name="stop", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        model = load(args.model)
    except (OSError, ValueError, KeyError) as exc:
        print(f"{name}: cannot load the model {args.model}: {exc}", file=sys.stderr, flush=True)
        return 2
    metrics = Metrics(model_version())
    app = App(model, metrics, broken=args.broken, delay=args.delay)
    handler = type("BoundHandler", (Handler,), {"app": app})
    try:
        server = Server((args.host, args.port), handler)
    except OSError as exc:
        print(f"{name}: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 2
    port = server.server_address[1]
    mode = " BROKEN (predict answers 500)" if app.broken else ""
    print(f"{name}: serving {model.describe} (version {metrics.loaded_version}) on "
          f"http://{args.host}:{port}{mode}", flush=True)
    if not stop_asked.is_set():
        server.serve_forever(poll_interval=0.1)
    app.stopping.set()
    server.server_close()  # stops accepting, then waits for the requests already accepted
    print(f"{name}: stopped, every accepted request answered", flush=True)
    # A second SIGTERM while the interpreter winds down (buffers flushed at exit: capture) would
    # otherwise find the default handler back and end the process with -15 instead of 0.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0
