"""Installation settings from ``config.yaml`` (optional; every key has a default).

```yaml
controller:
  tick: 0.5s            # how often hosts are polled and the queue scheduled
  answer_timeout: 15s   # a host's poll unanswered this long: the link is torn down and reconnected
  max_connections: 256  # clients held at once; over it a newcomer is told the controller is busy
  log_max_size: 10MiB   # logs/controller.log and logs/agent-local.log rotate at this size
  log_backups: 3        # rotated files kept (controller.log.1 ...); 0: the log is emptied instead
  url: null             # a shared controller: ssh://[user@]host[:port][/socket] (docs/team.md); null: this machine's
  identity: null        # the SSH private key for url (null: ssh-agent and ~/.ssh/id_*)
telemetry:
  sample_interval: 1s   # agent sampling period (the local agent)
  window: 10s           # one averaged row per host per window in DuckDB
  retention: 7d         # older telemetry rows are deleted
scheduler:              # see docs/scheduler.md
  memory_margin: 1GiB
  busy_utilization: 10  # percent
  utilization_window: 30s
  aging_per_hour: 1
  fair_share_weight: 10
  backfill: true
  lost_after: 10m       # a host unreachable this long: its runs count as lost and retry elsewhere
local:
  labels: {}
  simulate_gpus: null   # a file of simulated GPUs for the embedded host (demos, tests)
  artifact_roots: []    # folders beyond a run's folder and workdir whose files may be served as artifacts
client:
  submit_retry: 60s     # a submit that lost the controller asks again (same key) this long
logs:
  max_size: 100MiB      # of each run's stdout and of its stderr, on the node; the newest output is kept
environments:           # per-job environments (docs/environments.md)
  index_url: null       # the package index resolution uses; null: uv's default (PyPI)
  find_links: []        # folders of wheels to use as well (full paths)
  no_index: false       # true: only find_links, never an index (offline teams, tests)
  keep_for: 14d         # nodes remove built environments unused this long
  disk_budget: 50GiB    # then the least recently used ones while the rest is over this (null: no limit)
query:                  # mlfleet db query (docs/store.md)
  time_limit: 30s       # a query still running after this is interrupted
  workers: 2            # queries at once; more wait for a slot (within their time limit)
  allow_file_reads: false  # true: read_csv, read_parquet, 'file.csv'... read files as the controller's user
```

Mistakes are SpecErrors with file:line:field, like job specs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from mlfleet.core.base import units
from mlfleet.core.base.controller_url import url_problem
from mlfleet.core.base.validation import spec_error_from_validation
from mlfleet.core.base.errors import SpecError
from mlfleet.core.base.validation import AbsolutePath, check_absolute_paths
from mlfleet.core.base.models import DEFAULT_LOG_MAX_SIZE, ByteSize, Seconds, spec_dec_hook
from mlfleet.core.base.yamlsource import read_yaml


class ControllerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tick: Seconds = Seconds(0.5)
    answer_timeout: Seconds = Seconds(15.0)  # a poll unanswered this long tears the link down (it reconnects)
    # Clients held at once on the socket (TUIs, CLI calls, scripts); over it a newcomer is told "busy".
    max_connections: Annotated[int, Meta(ge=4, le=65536)] = 256
    # logs/controller.log and logs/agent-local.log: rotated at this size, this many old files kept.
    log_max_size: ByteSize = ByteSize(10 * 1024**2)
    log_backups: Annotated[int, Meta(ge=0, le=100)] = 3
    # A shared controller on a head node, reached over SSH (docs/team.md); --controller and
    # MLFLEET_CONTROLLER come first. None: this machine's own controller, started on demand.
    url: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    identity: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None  # None: ssh-agent, ~/.ssh/id_*


class TelemetrySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    sample_interval: Seconds = Seconds(1.0)
    window: Seconds = Seconds(10.0)
    retention: Seconds = Seconds(7 * 86400.0)


class SchedulerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    memory_margin: ByteSize = ByteSize(1024**3)
    busy_utilization: Annotated[float, Meta(ge=0, le=100)] = 10.0
    utilization_window: Seconds = Seconds(30.0)
    aging_per_hour: Annotated[float, Meta(ge=0, le=1000)] = 1.0
    fair_share_weight: Annotated[float, Meta(ge=0, le=1000)] = 10.0
    backfill: bool = True
    lost_after: Seconds = Seconds(600.0)  # a host unreachable this long: its runs are lost and retried


class LogSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_size: ByteSize = ByteSize(DEFAULT_LOG_MAX_SIZE)  # per stream (stdout, stderr) of each run; newest kept


class LocalHostSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    simulate_gpus: str | None = None  # demos and tests: the embedded host with simulated GPUs
    artifact_roots: list[AbsolutePath] = msgspec.field(default_factory=list)  # as in hosts.yaml, for this host


class ClientSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # How long `mlfleet submit` (and the TUI's) keeps asking again, with the same key, after the
    # controller was lost mid-submit, before it says the job may exist (exit 5).
    submit_retry: Seconds = Seconds(60.0)


class QuerySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    time_limit: Seconds = Seconds(30.0)  # enforced on the controller: the statement is interrupted
    workers: Annotated[int, Meta(ge=1, le=16)] = 2  # users' queries get their own, never the controller's readers
    allow_file_reads: bool = False  # files are read as the controller's OS user: a team controller reads for all


class EnvironmentSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    index_url: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None  # None: uv's default (PyPI)
    find_links: list[AbsolutePath] = msgspec.field(default_factory=list)  # folders of wheels, on this machine
    no_index: bool = False  # only find_links: resolution never asks an index
    keep_for: Seconds = Seconds(14 * 86400)  # a node removes an environment unused this long (agents/envs/gc.py)
    disk_budget: ByteSize | None = ByteSize(50 * 1024**3)  # then least recently used ones past this; None: no limit


class StoreSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # DuckDB's memory bound for the whole controller (ingest, reads, users' queries); None: automatic,
    # a quarter of this machine's memory within 1..8 GiB. A query needing more spills or fails; a
    # huge aggregate in `db query` fails at once with a sentence instead of growing the controller.
    memory_limit: ByteSize | None = None
    spill_limit: ByteSize = ByteSize(8 * 1024**3)  # disk (next to the store) for what does not fit in memory


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    controller: ControllerSettings = msgspec.field(default_factory=ControllerSettings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
    scheduler: SchedulerSettings = msgspec.field(default_factory=SchedulerSettings)
    local: LocalHostSettings = msgspec.field(default_factory=LocalHostSettings)
    client: ClientSettings = msgspec.field(default_factory=ClientSettings)
    logs: LogSettings = msgspec.field(default_factory=LogSettings)
    query: QuerySettings = msgspec.field(default_factory=QuerySettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    environments: EnvironmentSettings = msgspec.field(default_factory=EnvironmentSettings)


def load_settings(path: Path) -> Settings:
    """The settings in ``path``, or the defaults when it does not exist."""
    if not path.exists():
        return Settings()
    located = read_yaml(path, allow_empty=True)
    if located.data is None or located.data == {}:
        return Settings()
    if not isinstance(located.data, dict):
        raise SpecError(located.path, 1, None, "settings must be a YAML mapping", "see docs/configuration.md")
    try:
        settings = msgspec.convert(located.data, Settings, dec_hook=spec_dec_hook, str_keys=True)
    except msgspec.ValidationError as exc:
        raise spec_error_from_validation(str(exc), located.data, located, {
            (): Settings, ("controller",): ControllerSettings, ("telemetry",): TelemetrySettings,
            ("scheduler",): SchedulerSettings, ("local",): LocalHostSettings,
            ("client",): ClientSettings, ("logs",): LogSettings, ("query",): QuerySettings,
            ("store",): StoreSettings, ("environments",): EnvironmentSettings}) from None
    for parts, value, low, high in (
        (("controller", "tick"), settings.controller.tick, 0.05, 60),
        (("controller", "answer_timeout"), settings.controller.answer_timeout, 1, 600),
        (("telemetry", "sample_interval"), settings.telemetry.sample_interval, 0.1, 60),
        (("telemetry", "window"), settings.telemetry.window, 1, 3600),
        (("telemetry", "retention"), settings.telemetry.retention, 3600, 3650 * 86400),
        (("scheduler", "utilization_window"), settings.scheduler.utilization_window, 0.5, 3600),
        (("scheduler", "lost_after"), settings.scheduler.lost_after, 1, 7 * 86400),
        (("client", "submit_retry"), settings.client.submit_retry, 1, 3600),
        (("query", "time_limit"), settings.query.time_limit, 0.1, 86400),
    ):
        if not low <= value <= high:
            raise SpecError(located.path, located.line_of(parts), ".".join(parts),
                            f"{value:g} s is out of range", f"use between {low:g} s and {high:g} s")
    if not 64 * 1024 <= settings.controller.log_max_size <= 1024**4:
        raise SpecError(located.path, located.line_of(("controller", "log_max_size")), "controller.log_max_size",
                        f"{int(settings.controller.log_max_size)} bytes is out of range", "use between 64KiB and 1TiB")
    if settings.controller.url is not None and (problem := url_problem(settings.controller.url)):
        raise SpecError(located.path, located.line_of(("controller", "url")), "controller.url", problem,
                        "or remove it to use this machine's own controller")
    check_absolute_paths(located, ("local", "artifact_roots"), "local.artifact_roots", settings.local.artifact_roots)
    check_absolute_paths(located, ("environments", "find_links"), "environments.find_links",
                         settings.environments.find_links)
    for parts, size, low, high in (
        (("logs", "max_size"), settings.logs.max_size, "1MiB", "1TiB"),
        (("store", "memory_limit"), settings.store.memory_limit, "128MiB", "64TiB"),
        (("store", "spill_limit"), settings.store.spill_limit, "0B", "64TiB"),
    ):
        if size is not None and not units.parse_size(low) <= size <= units.parse_size(high):
            raise SpecError(located.path, located.line_of(parts), ".".join(parts),
                            f"{size} bytes is out of range", f"use between {low} and {high}")
    return settings


def store_memory_limit(settings: Settings) -> int:
    """``store.memory_limit``, or when unset a quarter of this machine's memory, kept within 1..8 GiB.

    DuckDB's own default (80 % of memory) suits a database server, not a
    controller sharing a workstation with the training jobs it launches.
    """
    if settings.store.memory_limit is not None:
        return int(settings.store.memory_limit)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 4 * 1024**3
    return max(1024**3, min(8 * 1024**3, total // 4))


def file_digest(path: Path) -> str | None:
    """sha256 of a config file, or None when it does not exist (to audit changes)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
