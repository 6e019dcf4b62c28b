"""Plain data shared by the controller, the agents and the clients.

These are msgspec Structs: cheap to build, typed, and encoded to the wire
protocol without hand-written (de)serialisers. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from mlfleet.core.base import units
from mlfleet.core.base.sweep_models import SweepSpec

# ----------------------------------------------------------------- job specs

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=NAME_PATTERN)]

MAX_GPUS_PER_JOB = 64
MAX_GPU_MEMORY = 1024**4  # 1 TiB: no single GPU comes close
MAX_HOST_MEMORY = 64 * 1024**4
MAX_TIMEOUT_S = 366 * 86400


class ByteSize(int):
    """A size in bytes, written in specs as ``20GiB`` (decoded by config.spec_dec_hook)."""


class Seconds(float):
    """A duration in seconds, written in specs as ``2h30m`` (decoded by config.spec_dec_hook)."""


class ZeroOrSeconds(Seconds):
    """A duration that may be zero (a probe's ``initial_delay``): a stored spec decodes again as it was written."""


class Resources(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a job needs from one host."""

    gpus: Annotated[int, Meta(ge=0, le=MAX_GPUS_PER_JOB)] = 0
    gpu_memory: ByteSize | None = None  # per GPU
    gpu_type: list[str] | str = msgspec.field(default_factory=list)
    cpus: Annotated[float, Meta(ge=0, le=1024)] = 0
    memory: ByteSize | None = None

    @property
    def gpu_types(self) -> list[str]:
        return [self.gpu_type] if isinstance(self.gpu_type, str) else list(self.gpu_type)


class Constraints(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Hard placement rules: a job never runs where they do not hold."""

    labels: dict[str, str] = msgspec.field(default_factory=dict)
    hosts: list[str] = msgspec.field(default_factory=list)


class SecretRef(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``env: {HF_TOKEN: {secret: hf}}``: a value kept in the controller's secret store (docs/secrets.md).

    The spec (its JSON in DuckDB, its hash) holds only this reference; the
    value is looked up at launch and travels to the agent in
    ``LaunchRequest.secret_env``, never in ``env``.
    """

    secret: Annotated[str, Meta(min_length=1, max_length=64)]


EnvValue = str | int | float | bool | SecretRef

PYTHON_VERSION_PATTERN = r"^3(\.[0-9]{1,3}){0,2}$"  # a version prefix: "3", "3.11" or "3.11.2"
Requirement = Annotated[str, Meta(min_length=1, max_length=4096)]


class Environment(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The Python environment a job runs in (issue 15; docs/environments.md).

    Resolved on the workstation for the node's interpreter and platform,
    built once on the node per ``env_hash``. Without an ``environment:``
    block (or with ``inherit: true``) a job runs in the node user's login
    environment. ``requirements`` is a list of requirement strings or the
    path of a requirements file in the workdir; ``project`` a folder in the
    workdir with pyproject.toml and uv.lock (core/jobs/spec.py checks that
    they do not come together).
    """

    python: Annotated[str, Meta(min_length=1, max_length=32)] | None = None  # checked against PYTHON_VERSION_PATTERN
    requirements: Annotated[list[Requirement], Meta(max_length=1000)] | Requirement | None = None
    project: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    setup: Annotated[list[Annotated[str, Meta(min_length=1, max_length=65536)]], Meta(max_length=100)] = \
        msgspec.field(default_factory=list)
    inherit: bool | None = None  # true: the node's login environment (what no environment: block means)

    @property
    def inherits(self) -> bool:
        return bool(self.inherit)


class JobSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A job as the user wrote it (after validation; workdir made absolute)."""

    name: Name
    command: list[str] | str
    project: Name = "default"
    workdir: str = "."
    env: dict[str, EnvValue] = msgspec.field(default_factory=dict)
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    resources: Resources = msgspec.field(default_factory=Resources)
    constraints: Constraints = msgspec.field(default_factory=Constraints)
    priority: Annotated[int, Meta(ge=-1000, le=1000)] = 0
    retries: Annotated[int, Meta(ge=0, le=100)] = 0
    timeout: Seconds | None = None
    # Files, folders or globs the job reads (relative to workdir, as on the node): the agent
    # records the sha256 of each at run start (lineage; docs/tracking.md).
    inputs: Annotated[list[Annotated[str, Meta(min_length=1, max_length=4096)]], Meta(max_length=1000)] = \
        msgspec.field(default_factory=list)
    environment: Environment | None = None  # None: the node user's login environment

    @property
    def builds_environment(self) -> bool:
        """Whether the job runs in an environment mlfleet builds (not the node's own)."""
        return self.environment is not None and not self.environment.inherits
    # A grid or random search: one child job per point (docs/sweeps.md); children have none.
    sweep: SweepSpec | None = None
    # Set only by deployments (core/deploy/): the run is a supervised server. A job spec file may not set it.
    service: "ServicePlan | None" = None

    @property
    def argv(self) -> list[str]:
        """The command as an argv list; a string runs through ``/bin/sh -c``."""
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)

    def env_strings(self) -> dict[str, str]:
        """The plain env values as text; secret references are left out (:meth:`secret_refs`)."""
        def text(v: EnvValue) -> str:
            if isinstance(v, bool):
                return "1" if v else "0"
            return str(v)

        return {k: text(v) for k, v in self.env.items() if not isinstance(v, SecretRef)}

    def secret_refs(self) -> dict[str, str]:
        """Env key -> the name of the secret it takes its value from (resolved only at launch)."""
        return {k: v.secret for k, v in self.env.items() if isinstance(v, SecretRef)}

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the spec: the run's ``spec_hash`` lineage field."""
        plain = to_plain(self)
        for optional in ("environment", "sweep", "service"):  # a spec without one hashes as it did before the field existed
            if plain.get(optional) is None:
                plain.pop(optional, None)
        return hashlib.sha256(msgspec.json.encode(plain, order="sorted")).hexdigest()


def spec_dec_hook(kind: type, value: Any) -> Any:
    """Decode the unit-bearing types of a job spec (sizes and durations)."""
    if kind is ByteSize:
        size = units.parse_size(_scalar(value, "a size like 20GiB"))
        if size > MAX_HOST_MEMORY:
            raise ValueError(f"{value!r} is larger than any machine ({units.format_size(MAX_HOST_MEMORY)} at most)")
        return ByteSize(size)
    if kind is ZeroOrSeconds:
        seconds = units.parse_duration(_scalar(value, "a duration like 0s or 2s"))
        if seconds > MAX_TIMEOUT_S:
            raise ValueError(f"{value!r} is longer than a year")
        return ZeroOrSeconds(seconds)
    if kind is Seconds:
        seconds = units.parse_duration(_scalar(value, "a duration like 2h or 30m"))
        if seconds <= 0:
            raise ValueError("must be longer than zero")
        if seconds > MAX_TIMEOUT_S:
            raise ValueError(f"{value!r} is longer than a year")
        return Seconds(seconds)
    raise NotImplementedError(kind)


def _scalar(value: Any, wanted: str) -> int | float | str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {wanted}, got {type(value).__name__}")
    return value


def _spec_enc_hook(obj: Any) -> Any:
    if isinstance(obj, ByteSize):
        return int(obj)
    if isinstance(obj, Seconds):
        return float(obj)
    raise NotImplementedError(type(obj))


def to_plain(obj: Any) -> Any:
    """Any model as JSON-ready builtins (sizes as bytes, durations as seconds)."""
    return msgspec.to_builtins(obj, enc_hook=_spec_enc_hook)


def spec_from_plain(data: Any) -> "JobSpec":
    """A JobSpec back from builtins (the DuckDB copy, a request)."""
    return msgspec.convert(data, JobSpec, dec_hook=spec_dec_hook, str_keys=True)


# ------------------------------------------------------------- telemetry

class GpuProcess(msgspec.Struct, kw_only=True):
    pid: int
    used_memory: int | None = None
    name: str | None = None
    run_id: str | None = None  # the mlfleet run it belongs to (from its environment); None: foreign


class GpuSample(msgspec.Struct, kw_only=True):
    """One GPU at one instant; every field may be None ("n/a") on its own."""

    index: int
    uuid: str | None = None
    name: str | None = None
    utilization: float | None = None  # percent
    memory_total: int | None = None
    memory_used: int | None = None
    memory_free: int | None = None
    temperature: float | None = None  # Celsius
    power_draw: float | None = None  # watts
    power_limit: float | None = None  # watts
    ecc_errors: int | None = None  # uncorrected, since the driver loaded
    throttle_reasons: list[str] = msgspec.field(default_factory=list)  # e.g. hw_thermal, sw_power_cap
    processes: list[GpuProcess] = msgspec.field(default_factory=list)


GpuState = Literal["ok", "no_driver", "error"]


class GpuClaim(msgspec.Struct, kw_only=True):
    """A GPU a live run on the node holds, by the node's own books (agents/claims.py).

    Every controller sharing the node sees it in the node's telemetry, so a
    GPU one controller placed on is in use for all of them before NVML
    shows the job's process. ``gpu_memory`` set: a share of the GPU by
    memory reservation (others may share it); None: the GPU is the run's alone.
    """

    index: int
    run_id: str
    job_id: str = ""
    controller: str = ""  # who placed it: user@host:home of its controller ("" from an older controller)
    owner: str = ""  # the user who submitted the job, as its controller knows them
    gpu_memory: int | None = None


class HostSample(msgspec.Struct, kw_only=True):
    """One telemetry sample of a host, numbered by the agent (``seq``)."""

    seq: int
    ts: float
    cpu_percent: float
    cpu_count: int
    load1: float
    memory_total: int
    memory_used: int
    swap_used: int
    disk_total: int
    disk_used: int
    net_rx_bps: float
    net_tx_bps: float
    gpu_state: GpuState = "no_driver"
    gpu_message: str = ""
    gpus: list[GpuSample] = msgspec.field(default_factory=list)
    # How closely each pair of GPUs is linked (0 NVLink, then NVML's topology levels: 10 same board,
    # 20 PCIe switches, 30 host bridge, 40 NUMA node, 50 across sockets); None when unknown.
    gpu_links: list[list[int]] | None = None
    # The GPUs live runs on this node hold, whichever controller placed them (agents/claims.py)
    gpu_claims: list[GpuClaim] = msgspec.field(default_factory=list)


# ------------------------------------------------------- job execution

# preparing: a job with an environment: block, between dispatched and running (resolve, ship, build on the node)
JobState = Literal["pending", "dispatched", "preparing", "running", "succeeded", "failed", "cancelled", "lost"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "lost"})
# What clients see: a started job being stopped shows as "cancelling" (core/jobs/records.py SHOWN_STATE).
SHOWN_JOB_STATES: tuple[str, ...] = ("pending", "dispatched", "preparing", "running", "cancelling", "succeeded", "failed",
                                     "cancelled", "lost")
ACTIVE_STATES: frozenset[str] = frozenset({"dispatched", "preparing", "running"})
NOT_STARTED_STATES: tuple[str, ...] = ("dispatched", "preparing")  # placed, its process not started yet


DEFAULT_LOG_MAX_SIZE = 100 * 1024**2  # logs.max_size when nothing says otherwise


class PinnedWheel(msgspec.Struct, frozen=True, kw_only=True):
    """One wheel of a resolved environment: what the node installs, and how it checks it."""

    name: str  # the distribution's normalised name (PEP 503)
    version: str
    filename: str  # the real wheel file name: installers read tags from it
    sha256: str  # lower-case hex; also the wheel's key in the node's wheelhouse (<state>/wheelhouse/<sha256>)
    size: int


class EnvPlan(msgspec.Struct, frozen=True, kw_only=True):
    """An environment resolved on the workstation for one node's interpreter and platform (issue 15).

    ``env_hash`` is its identity: sha256 over the interpreter version, the
    platform, the pinned wheels and the setup commands. The node builds it
    once into ``<state>/envs/<env_hash>`` from wheels already shipped to its
    wheelhouse, never from an index.
    """

    env_hash: str
    python: str  # the interpreter on the node to build with (a path the agent reported)
    python_version: str  # its full version, e.g. "3.11.2"
    platform: str  # the platform resolved for, e.g. "x86_64-manylinux_2_36"
    wheels: list[PinnedWheel] = msgspec.field(default_factory=list)
    setup: list[str] = msgspec.field(default_factory=list)  # shell commands run once in the new environment


class NodePython(msgspec.Struct, frozen=True, kw_only=True):
    """An interpreter found on a node, as its agent reports it."""

    path: str
    version: str  # full, e.g. "3.11.2"
    implementation: str = "cpython"


# ---------------------------------------------------------------- services (deployments' replicas)

class HealthProbe(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An HTTP check of a server on its node's loopback, made by the agent.

    The liveness probe (``health``) says the process answers; the deep probe
    makes a real prediction, so a server whose engine is dead while its
    ``/health`` says 200 is still found out.
    """

    path: Annotated[str, Meta(min_length=1, max_length=2048, pattern=r"^/")] = "/health"
    method: Literal["GET", "POST", "PUT", "HEAD"] = "GET"
    body: Annotated[str, Meta(max_length=65536)] | None = None  # sent as is; JSON when it parses as JSON
    expect_status: Annotated[int, Meta(ge=100, le=599)] = 200
    interval: Seconds = Seconds(5.0)
    timeout: Seconds = Seconds(2.0)
    initial_delay: ZeroOrSeconds = ZeroOrSeconds(0.0)
    failures: Annotated[int, Meta(ge=1, le=100)] = 3  # consecutive failed probes before a healthy server is unhealthy


class MetricNames(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which Prometheus families are a server's requests, errors and latency (vLLM's differ from a FastAPI app's).

    Names are as the text format writes them, without ``_total``/``_bucket``
    suffixes. Errors: a counter of its own, or else the samples of
    ``requests`` whose ``status``/``code`` label starts with 5.
    """

    path: Annotated[str, Meta(min_length=1, max_length=2048, pattern=r"^/")] = "/metrics"
    interval: Seconds = Seconds(5.0)
    requests: str = "http_requests"
    errors: str | None = None
    latency: str = "http_request_duration_seconds"
    # Gauges kept (all of the server's gauges when empty, at most 32)
    gauges: list[str] = msgspec.field(default_factory=list)


class ServicePlan(msgspec.Struct, frozen=True, kw_only=True):
    """What makes a run a supervised server (a deployment's replica), in its LaunchRequest and its JobSpec.

    The agent picks a free port at launch (kept across restarts of the
    server), puts ``{port}`` and ``{model_path}`` into the argv (and
    ``MLFLEET_PORT``, ``MLFLEET_MODEL_PATH``, ``MLFLEET_CAPTURE_FILE`` into the
    environment), restarts the server when it exits (backoff doubling from
    ``restart_backoff`` to ``max_backoff``; reset after ``max_backoff`` of
    good running), probes ``health`` (and ``deep``) on 127.0.0.1 and scrapes
    ``metrics``. A cancel is the only way such a run exits for good.
    """

    deployment: str
    version: int  # the model version this replica serves
    replica: str  # the replica's id (the deployment's own name for it; also the job's name)
    health: HealthProbe = HealthProbe()
    deep: HealthProbe | None = None
    metrics: MetricNames | None = None  # None: not scraped
    model_sha256: str | None = None  # the file in the node's model store (<state>/models/<sha256>/<model_file>)
    model_file: str | None = None
    port: int | None = None  # None: a free port picked by the agent
    restart_backoff: float = 1.0
    max_backoff: float = 30.0
    capture_max_size: int = 256 * 1024**2  # bytes of captured inputs kept on the node; past it new captures are dropped (and counted)


class ScrapeSample(msgspec.Struct, kw_only=True):
    """One scrape of a server's Prometheus endpoint, reduced on the node to what mlfleet keeps.

    Counters are totals since the server started (a restart resets them;
    rates are computed from deltas, resets handled: core/deploy/serving_stats.py).
    """

    ts: float
    requests: float | None = None
    errors: float | None = None
    latency_buckets: list[tuple[float, float]] = msgspec.field(default_factory=list)  # (le, cumulative count), +Inf last
    latency_sum: float | None = None
    latency_count: float | None = None
    gauges: dict[str, float] = msgspec.field(default_factory=dict)
    error: str = ""  # the scrape failed: why (the values above are then empty)


ServiceHealth = Literal["starting", "healthy", "unhealthy"]


class ServiceStatus(msgspec.Struct, kw_only=True):
    """The agent's view of a supervised server, in its run's RunStatus."""

    port: int | None = None
    health: ServiceHealth = "starting"
    since: float | None = None  # when ``health`` last changed, node clock
    restarts: int = 0  # server processes started after the first
    deep_ok: bool | None = None  # the last deep probe passed (None: none made yet, or no deep probe)
    last_error: str = ""  # the last failed probe or crash, in words
    probed_at: float | None = None
    scrape: ScrapeSample | None = None  # the latest scrape


class SlurmPlan(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How a run is handed to Slurm on a ``slurm`` host (agents/slurm.py): the sbatch options mlfleet sets.

    None of these is required: an empty plan is the cluster's default partition, account and QOS.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None  # e.g. "gpu:1" or "gpu:a100:2"
    cpus: int | None = None
    memory_mb: int | None = None
    time_limit_min: int | None = None  # --time, from the job's timeout


class LaunchRequest(msgspec.Struct, kw_only=True):
    """What the controller asks an agent to run: one attempt of one job.

    ``run_id`` is the idempotency key: an agent that already knows it never
    starts a second process for it.
    """

    run_id: str
    job_id: str
    argv: list[str]
    workdir: str
    env: dict[str, str]
    # Values of the spec's secret references (docs/secrets.md): sent at launch, never written to launch.json;
    # the runner gets them on its stdin (a Slurm run: a 0600 file it deletes once read) and masks them in the logs
    secret_env: dict[str, str] = msgspec.field(default_factory=dict)
    gpu_indices: list[int] = msgspec.field(default_factory=list)
    code_hash: str | None = None  # run in this shipped snapshot instead of ``workdir``
    timeout: float | None = None
    kill_grace: float = 10.0
    inputs: list[str] = msgspec.field(default_factory=list)  # hashed by the runner before the job starts
    log_max_size: int = DEFAULT_LOG_MAX_SIZE  # bytes kept of stdout and of stderr each (settings logs.max_size)
    # Folders beyond the run's folder and workdir whose files the agent may serve as artifacts (the host's
    # artifact_roots; agents/artifacts.py)
    artifact_roots: list[str] = msgspec.field(default_factory=list)
    # Run inside this environment, built (or reused) on the node first; None: the node user's login environment
    environment: EnvPlan | None = None
    # A supervised server (a deployment's replica) rather than a job that runs to its end
    service: ServicePlan | None = None
    # Submitted to Slurm with sbatch on this (login) node instead of started here (agents/slurm.py)
    slurm: SlurmPlan | None = None
    # The node's GPU claim of this run (agents/claims.py): a share by memory reservation (None: the GPUs whole),
    # and who asked, so a refusal names the holder to another controller's user
    gpu_memory: int | None = None
    controller: str = ""
    owner: str = ""


ProcessState = Literal["starting", "running", "exited"]


class RunStatus(msgspec.Struct, kw_only=True):
    """An agent's view of one run's process."""

    run_id: str
    state: ProcessState
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""  # exited | cancelled | timeout | failed-to-start | lost
    message: str = ""
    # state "starting" while the run's environment (LaunchRequest.environment) is being built or waited for:
    # when that began, by the node's clock; None otherwise. The job is "preparing" to its users then.
    preparing_since: float | None = None
    service: ServiceStatus | None = None  # a supervised server's port, health, restarts and latest scrape


# A metric line longer than this is one bad line, never sent (agents/metriclines.py): it keeps any one
# line's share of a poll answer bounded, however the line is escaped.
MAX_METRIC_LINE = 1024**2


class StreamChunk(msgspec.Struct, kw_only=True):
    """Bytes of a run's file from ``offset`` to ``end`` (whole lines only for metrics)."""

    run_id: str
    stream: str  # metrics | stdout | stderr
    offset: int
    end: int
    data: str  # UTF-8 text; undecodable bytes are replaced, offsets stay byte offsets
    eof: bool = False  # the run has exited and nothing more will come
    more: bool = False  # the file holds more than this chunk already: ask again now, not next tick
    # metrics: lines at the start of the chunk longer than MAX_METRIC_LINE, left out of ``data``; each is one
    # line (and one bad line) of the stream, so line numbers stay exact
    long_lines: int = 0
    # stdout/stderr: bytes between the offset asked for and ``offset`` that are no longer kept (logs.max_size)
    dropped: int = 0
    max_size: int = 0  # stdout/stderr: the bytes kept of the stream on the node (0: not known)


# ---------------------------------------------------------------- lineage

class InputDigest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One entry of a job's ``inputs:`` as the agent found it at run start."""

    path: str  # as written in the spec (a glob gives one entry per match)
    sha256: str | None = None  # a folder: sha256 over its files' relative paths and digests
    size: int | None = None  # bytes (a folder: all its files)
    files: int | None = None  # a folder: how many files
    error: str | None = None  # e.g. "no such file or folder"


class NodeLineage(msgspec.Struct, kw_only=True):
    """What the agent records about a run's environment before the job starts."""

    inputs: list[InputDigest] = msgspec.field(default_factory=list)
    python: str | None = None  # version of the interpreter that runs the job
    python_executable: str | None = None
    packages_hash: str | None = None  # sha256 of sorted "name==version" lines
    packages: int | None = None  # how many distributions
    hashed_bytes: int = 0  # input bytes read this time (0: all from the cache)
